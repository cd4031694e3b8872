"""ONNX emotion classifier: one pinned onnxruntime session, validated against its manifest.

Typical use::

    model = EmotionModel.load(DEFAULT_MODEL_DIR)
    out = model.predict(features)          # features: (batch, len(model.feature_names))
    out.probabilities                      # (batch, len(model.labels)), rows sum to 1
    out.arousal                            # (batch,) in 0..1

A model trained on per-call normalised features (``model.call_norm`` is not None) wants
each leg's windows normalised by that leg's running statistics: the engine keeps one
``model.new_call_normaliser()`` per leg and calls ``predict(z, normalised=True)``.

The session runs on one thread in sequential mode: the engine batches every call that
is due this tick into one ``predict`` and scales by running more engine processes, so
intra-op threads would only fight those processes for cores.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from emotion_engine.errors import ManifestMismatchError, ModelError
from emotion_engine.model.manifest import ModelManifest, load_manifest
from emotion_engine.model.normalise import CallNormaliser, CallNormParams

MODEL_FILE = "emotion.onnx"
MANIFEST_FILE = "emotion.manifest.json"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "models"
"""``<repo>/models``: where the shipped model and its manifest live."""


@dataclass(frozen=True, slots=True)
class ModelOutput:
    """``probabilities``: (batch, n_labels) float32; ``arousal``: (batch,) float32 in 0..1."""

    probabilities: NDArray[np.float32]
    arousal: NDArray[np.float32]


def manifest_path_for(onnx_path: Path) -> Path:
    """``emotion.onnx`` -> ``emotion.manifest.json`` in the same directory."""
    return onnx_path.with_name(onnx_path.stem + ".manifest.json")


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data`` (the manifest's ``onnx_sha256``)."""
    return hashlib.sha256(data).hexdigest()


def _running_feature_names() -> tuple[str, ...]:
    # Imported lazily so the model package stays importable while features are rebuilt.
    from emotion_engine.features.functionals import FUNCTIONAL_NAMES

    return tuple(FUNCTIONAL_NAMES)


def _resolve(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    if path.is_dir():
        manifest_path = path / MANIFEST_FILE
        if manifest_path.is_file():
            # The manifest names its graph, so a directory may hold a renamed model.
            return path / load_manifest(manifest_path).onnx_file, manifest_path
        return path / MODEL_FILE, manifest_path
    if path.suffix == ".json":
        return path.with_name(load_manifest(path).onnx_file), path
    return path, manifest_path_for(path)


class EmotionModel:
    """A loaded, validated emotion model. Build it with :meth:`load`."""

    def __init__(self, *, session: Any, manifest: ModelManifest, onnx_path: Path) -> None:
        self._session = session
        self.manifest = manifest
        self.onnx_path = onnx_path
        self.labels: tuple[str, ...] = manifest.labels
        self.feature_names: tuple[str, ...] = manifest.feature_names
        self.n_features = len(manifest.feature_names)
        self._outputs = [manifest.probabilities_name, manifest.arousal_name]
        # the per-call normalisation the graph expects; None: raw features (old manifests)
        self.call_norm: CallNormParams | None = CallNormParams.from_manifest(
            manifest.normalisation, n_features=self.n_features
        )

    def __repr__(self) -> str:
        return (
            f"EmotionModel({self.onnx_path.name!r}, labels={list(self.labels)}, "
            f"n_features={self.n_features}, sha256={self.manifest.onnx_sha256[:12]})"
        )

    @classmethod
    def load(
        cls,
        path: str | Path = DEFAULT_MODEL_DIR,
        *,
        expected_feature_names: Sequence[str] | None = None,
    ) -> EmotionModel:
        """Load ``path``: a directory holding ``emotion.onnx`` + ``emotion.manifest.json``,
        the ``.onnx`` file (manifest beside it), or the manifest itself.

        ``expected_feature_names``: the feature order the caller will feed; ``None``
        means the running code's ``FUNCTIONAL_NAMES``. Raises ``ModelError`` for a
        missing or unloadable file and ``ManifestMismatchError`` when manifest, graph
        and running code disagree (sha256, feature count/order, label count).
        """
        import onnxruntime as ort

        onnx_path, manifest_path = _resolve(path)
        if not manifest_path.is_file():
            raise ModelError(f"model manifest not found: {manifest_path}")
        manifest = load_manifest(manifest_path)
        try:
            blob = onnx_path.read_bytes()
        except OSError as exc:
            raise ModelError(f"cannot read ONNX model {onnx_path}: {exc.strerror or exc}") from exc
        digest = sha256_bytes(blob)
        if digest != manifest.onnx_sha256:
            raise ManifestMismatchError(
                f"{onnx_path} has sha256 {digest[:16]}..., but {manifest_path.name} "
                f"expects {manifest.onnx_sha256[:16]}... (model replaced or corrupted)"
            )
        expected = tuple(
            _running_feature_names() if expected_feature_names is None else expected_feature_names
        )
        if len(expected) != len(manifest.feature_names):
            raise ManifestMismatchError(
                f"{manifest_path.name} lists {len(manifest.feature_names)} features but the "
                f"running feature code produces {len(expected)}: retrain the model"
            )
        for i, (want, have) in enumerate(zip(expected, manifest.feature_names, strict=True)):
            if want != have:
                raise ManifestMismatchError(
                    f"feature {i} is {have!r} in {manifest_path.name} but {want!r} in the "
                    "running feature code: retrain the model"
                )

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(
                blob, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(f"onnxruntime cannot load {onnx_path}: {exc}") from exc

        inputs = session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != manifest.input_name:
            raise ManifestMismatchError(
                f"{onnx_path.name} inputs {[i.name for i in inputs]} != manifest input "
                f"{manifest.input_name!r}"
            )
        width = inputs[0].shape[-1] if inputs[0].shape else None
        if isinstance(width, int) and width != len(manifest.feature_names):
            raise ManifestMismatchError(
                f"{onnx_path.name} takes {width} features but {manifest_path.name} lists "
                f"{len(manifest.feature_names)}"
            )
        output_names = {o.name for o in session.get_outputs()}
        for name in (manifest.probabilities_name, manifest.arousal_name):
            if name not in output_names:
                raise ManifestMismatchError(
                    f"{onnx_path.name} has no output {name!r} (outputs: {sorted(output_names)})"
                )
        model = cls(session=session, manifest=manifest, onnx_path=onnx_path)
        # One zero row proves the output widths; graph shapes are often symbolic.
        probe = model._run(np.zeros((1, model.n_features), dtype=np.float32))
        if probe.probabilities.shape != (1, len(manifest.labels)):
            raise ManifestMismatchError(
                f"{onnx_path.name} gives {probe.probabilities.shape[-1]} probabilities but "
                f"{manifest_path.name} lists {len(manifest.labels)} labels"
            )
        return model

    def _run(self, features: NDArray[np.float32]) -> ModelOutput:
        probabilities, arousal = self._session.run(
            self._outputs, {self.manifest.input_name: features}
        )
        return ModelOutput(
            probabilities=np.asarray(probabilities, dtype=np.float32),
            arousal=np.asarray(arousal, dtype=np.float32).reshape(-1),
        )

    def new_call_normaliser(self) -> CallNormaliser | None:
        """Fresh running statistics for one call leg, or None when the model takes raw
        features."""
        return None if self.call_norm is None else CallNormaliser(self.call_norm)

    def predict(self, features: NDArray[np.float32], *, normalised: bool = False) -> ModelOutput:
        """Score a batch of windows.

        ``features``: (batch, n_features) in ``feature_names`` order (any float dtype;
        cast to float32). Raw functionals by default: a per-call model then scores each
        row against the population statistics alone, as if it were a call's first
        window (no call context). ``normalised=True``: rows already normalised by a
        :meth:`new_call_normaliser` (the engine's path). Returns (batch, n_labels)
        probabilities and (batch,) arousal.
        """
        x = np.asarray(features)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ModelError(f"features must be (batch, {self.n_features}), got shape {x.shape}")
        if x.shape[0] == 0:
            return ModelOutput(
                probabilities=np.zeros((0, len(self.labels)), dtype=np.float32),
                arousal=np.zeros((0,), dtype=np.float32),
            )
        if self.call_norm is not None and not normalised:
            z = (x - self.call_norm.mean) / self.call_norm.std
            return self._run(np.ascontiguousarray(z, dtype=np.float32))
        return self._run(np.ascontiguousarray(x, dtype=np.float32))

    def predict_dict(self, features: NDArray[np.float32]) -> list[dict[str, float]]:
        """Like :meth:`predict`, as one ``{label: probability}`` dict per row."""
        out = self.predict(features)
        return [dict(zip(self.labels, map(float, row), strict=True)) for row in out.probabilities]
