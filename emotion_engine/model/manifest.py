"""Model manifest: everything needed to use (and to reproduce) a shipped ONNX model.

The manifest travels beside the graph as ``<stem>.manifest.json``. The runtime trusts
nothing about the graph that the manifest does not also state: label order, feature
order, sample rate and the graph's sha256 are checked at load time, so a model trained
on one feature version can never silently run on another.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from emotion_engine.errors import ModelError

MANIFEST_FORMAT_VERSION = 1
"""Bump when a field changes meaning; the loader refuses other versions."""


@dataclass(frozen=True, slots=True)
class ModelManifest:
    """Description of one exported emotion model (``emotion.manifest.json``).

    ``labels`` is the column order of the ``probabilities`` output; ``feature_names``
    the column order of the ``features`` input. ``normalisation`` holds the
    standardisation already applied inside the graph (``mean``/``scale`` per feature),
    recorded for inspection only. ``arousal`` says how the ``arousal`` output in 0..1
    was defined and trained.
    """

    labels: tuple[str, ...]
    feature_names: tuple[str, ...]
    onnx_file: str
    onnx_sha256: str
    sample_rate_hz: int = 8000
    input_name: str = "features"
    probabilities_name: str = "probabilities"
    arousal_name: str = "arousal"
    arousal: Mapping[str, Any] = field(default_factory=dict)
    model_type: str = ""
    feature_params: Mapping[str, Any] = field(default_factory=dict)
    window_params: Mapping[str, Any] = field(default_factory=dict)
    normalisation: Mapping[str, Any] = field(default_factory=dict)
    training_data: Mapping[str, Any] = field(default_factory=dict)
    licences: Mapping[str, str] = field(default_factory=dict)
    seed: int = 0
    command: str = ""
    package_versions: Mapping[str, str] = field(default_factory=dict)
    created_utc: str = ""
    format_version: int = MANIFEST_FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists)."""
        out = asdict(self)
        out["labels"] = list(self.labels)
        out["feature_names"] = list(self.feature_names)
        return out

    def save(self, path: str | Path) -> Path:
        """Write the manifest as indented JSON to ``path``; returns the path."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")
        return path

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<dict>") -> ModelManifest:
        """Validate and build a manifest; raises ``ModelError`` naming ``source``."""
        if not isinstance(data, Mapping):
            raise ModelError(f"{source}: manifest must be a JSON object, got {type(data).__name__}")
        version = data.get("format_version")
        if version != MANIFEST_FORMAT_VERSION:
            raise ModelError(
                f"{source}: format_version {version!r} is not supported "
                f"(this engine reads {MANIFEST_FORMAT_VERSION})"
            )
        known = {f.name for f in fields(cls)}
        missing = [
            n for n in ("labels", "feature_names", "onnx_file", "onnx_sha256") if n not in data
        ]
        if missing:
            raise ModelError(f"{source}: manifest lacks required field(s) {missing}")
        kwargs: dict[str, Any] = {k: v for k, v in data.items() if k in known}
        for key in ("labels", "feature_names"):
            value = kwargs[key]
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise ModelError(f"{source}: {key} must be a list of strings, got {value!r:.80}")
            if len(set(value)) != len(value):
                raise ModelError(f"{source}: {key} has duplicates: {value!r:.200}")
            kwargs[key] = tuple(value)
        if not kwargs["labels"]:
            raise ModelError(f"{source}: labels is empty")
        for key in ("onnx_file", "onnx_sha256"):
            if not isinstance(kwargs[key], str) or not kwargs[key]:
                raise ModelError(f"{source}: {key} must be a non-empty string, got {kwargs[key]!r}")
        if not isinstance(kwargs.get("sample_rate_hz", 8000), int):
            raise ModelError(
                f"{source}: sample_rate_hz must be an int, got {kwargs['sample_rate_hz']!r}"
            )
        return cls(**kwargs)


def load_manifest(path: str | Path) -> ModelManifest:
    """Read and validate ``path`` (``*.manifest.json``); raises ``ModelError``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ModelError(f"cannot read model manifest {path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelError(f"model manifest {path} is not valid JSON: {exc}") from exc
    return ModelManifest.from_dict(data, source=str(path))


def save_manifest(manifest: ModelManifest, path: str | Path) -> Path:
    """Write ``manifest`` to ``path``; same as ``manifest.save(path)``."""
    return manifest.save(path)
