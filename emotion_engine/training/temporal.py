"""A small temporal model over LLD frames, compared with the functionals classifier.

    python -m emotion_engine.training.temporal --data ../shared/data --out models/temporal.json

The shipped model sees one vector of functionals per 2 s window. This module trains a
1-D CNN (``--arch cnn``, default), a GRU (``--arch gru``) or both (``--arch cnn,gru``,
each trained and scored in turn) on the window's frame-level
descriptors themselves (:func:`emotion_engine.features.compute_lld`, 26 LLDs per 25 ms
frame, 10 ms hop) and scores it under the project's leave-one-corpus-out protocol:
train on the other corpora, test on the held-out one, for every corpus whose labels
cover the four classes (BAVED carries arousal levels only and is left out).

Data, as the functionals pipeline (:mod:`emotion_engine.training.featurize`): every
training clip twice, once through the G.711 mu-law round trip and once through the
seeded random telephony augmentation; held-out clips through mu-law only. LLD
sequences are cached on disk like the functionals.

Windows: fixed crops of ``--crop-frames`` frames (default 100 = 1 s: TurEV-DB clips last
~1 s, so a 2 s crop would be mostly padding there). Training draws one random crop per
clip and epoch among the crops holding at least ``min_voiced_frames`` voiced frames
(the engine's speech gate); a clip shorter than a crop is wrap-padded. At test time a
clip is cut into crops every ``hop_frames`` (the engine's 0.5 s hop), crops failing the
speech gate are dropped (the engine does not score them either) and the probabilities
of the rest are averaged, as the live engine averages over windows.

Standardisation: each LLD by the mean and std of the training frames, stored in the
network (the ONNX graph takes raw LLDs), so it is identical at train and test and costs
nothing live. Per-window z-scoring (``--norm window``) is the alternative: it removes
level and pitch offsets of talker and channel but also the absolute level and pitch
that separate angry from sad.

Loss: cross-entropy weighted by inverse class frequency. No early stopping: the held-out
corpus is never looked at before the final scoring. Test metrics are computed with
onnxruntime on the exported graph (the path the engine would run), and per-window
latency is measured beside the shipped functionals model's.

Late fusion: when the functionals model is trained in the same run (no
``--functionals-json``), each network's held-out clip probabilities are averaged with the
functionals model's (same split, same clips; alignment asserted) at weight 0.5 and, with
``--tune-fusion-weight``, at a weight chosen per split by an inner leave-one-corpus-out
on that split's training corpora only.

Torch is an optional dependency: ``pip install -e '.[temporal]'``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from emotion_engine.audio.framing import frame_signal
from emotion_engine.config import DEFAULT_FEATURE_PARAMS, DEFAULT_WINDOW_PARAMS, FeatureParams
from emotion_engine.errors import ConfigError, DatasetError, EngineError
from emotion_engine.features.functionals import voiced_ratio
from emotion_engine.features.lld import LLD_NAMES, compute_lld
from emotion_engine.training.data import NO_LABEL, Clip, Dataset, load_dataset, read_clip
from emotion_engine.training.featurize import (
    cache_key,
    clip_rng,
    default_cache_dir,
    degrade,
)
from emotion_engine.training.metrics import confusion_matrix, recalls, roc_auc, uar

if TYPE_CHECKING:
    import torch

    from emotion_engine.training.evaluate import Features

log = logging.getLogger(__name__)

N_LLD = len(LLD_NAMES)
ARCHITECTURES: tuple[str, ...] = ("cnn", "gru")
NORMS: tuple[str, ...] = ("global", "window")
ONNX_OPSET = 17
INPUT_NAME = "lld"
OUTPUT_NAME = "probabilities"
DEFAULT_CROP_FRAMES = 100  # 1 s
DEFAULT_HOP_FRAMES = DEFAULT_WINDOW_PARAMS.hop_frames  # 0.5 s, the engine's window hop
DEFAULT_CHANNELS: dict[str, int] = {"cnn": 32, "gru": 64}
"""Hidden width per network: a 64-channel CNN measured ~4x slower per epoch than 32 on
the 2-core build host; the GRU's recurrence is cheaper per channel."""
_STD_FLOOR = 1e-3  # a constant LLD in the training frames (never in practice) stays finite


class TorchMissingError(EngineError):
    """The temporal model needs PyTorch, an optional dependency."""


def require_torch() -> Any:
    """Import torch or raise :class:`TorchMissingError` saying how to install it."""
    try:
        import torch
    except ImportError as exc:
        raise TorchMissingError(
            f"the temporal model needs PyTorch: pip install -e '.[temporal]' (import failed: {exc})"
        ) from exc
    return torch


# ---------------------------------------------------------------------------------------
# LLD sequences (numpy only)


def clip_lld(
    *, samples: NDArray[np.float32], params: FeatureParams = DEFAULT_FEATURE_PARAMS
) -> NDArray[np.float32]:
    """LLD frames of a clip: (n_samples,) float32 8 kHz -> (n_frames, N_LLD) float32.

    The same framing as :func:`emotion_engine.features.extract_clip_features` (one frame
    every ``hop_length`` samples, no padding); a clip shorter than one frame gives (0, N_LLD).
    """
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise ConfigError(f"samples must be (n_samples,), got {x.shape}")
    if x.shape[0] < params.frame_length:
        return np.zeros((0, N_LLD), dtype=np.float32)
    frames = frame_signal(samples=x, frame_length=params.frame_length, hop_length=params.hop_length)
    return compute_lld(frames=frames, params=params)


@dataclass(frozen=True, slots=True)
class LldSequences:
    """Variable-length LLD sequences stored end to end.

    ``frames``: (total_frames, N_LLD) float32; ``offsets``: (n_clips + 1,) int64, clip
    ``i`` is ``frames[offsets[i]:offsets[i + 1]]``.
    """

    frames: NDArray[np.float32]
    offsets: NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.offsets.size - 1)

    def clip(self, i: int) -> NDArray[np.float32]:
        """(n_frames_i, N_LLD) frames of clip ``i`` (a view)."""
        return self.frames[self.offsets[i] : self.offsets[i + 1]]

    @classmethod
    def from_list(cls, seqs: Sequence[NDArray[np.float32]]) -> LldSequences:
        lengths = np.array([s.shape[0] for s in seqs], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        frames = (
            np.concatenate(seqs).astype(np.float32)
            if seqs
            else np.zeros((0, N_LLD), dtype=np.float32)
        )
        return cls(frames=frames, offsets=offsets)


def lld_sequences(
    *,
    clips: Sequence[Clip],
    condition: str,
    seed: int = 0,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> LldSequences:
    """LLD sequences of ``clips`` after ``condition`` (``"test"``: mu-law; ``"train"``:
    the per-clip seeded telephony augmentation), cached like the functionals.

    The audio is exactly what :func:`emotion_engine.training.featurize.featurize` turns
    into functionals for the same clips, condition and seed.
    """
    if condition not in ("test", "train"):
        raise ConfigError(f"condition must be 'test' or 'train', got {condition!r}")
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    # the functionals' key covers the feature, codec and augmentation code, seed and
    # files; the prefix keeps these files apart from the functionals
    key = cache_key(clips=clips, condition=condition, seed=seed, extractor_id="engine")
    path = cache_dir / f"lldseq-{condition}-{key}.npz"
    if path.is_file():
        with np.load(path) as cached:
            log.info("LLD sequences from cache %s", path)
            return LldSequences(frames=cached["frames"], offsets=cached["offsets"])

    from tqdm import tqdm

    seqs: list[NDArray[np.float32]] = []
    for clip in tqdm(clips, desc=f"LLD sequences ({condition})", unit="clip", disable=not progress):
        samples = read_clip(clip.path)
        rng = clip_rng(seed=seed, clip=clip) if condition == "train" else None
        audio = degrade(samples=samples, condition=condition, rng=rng)
        seqs.append(clip_lld(samples=audio))
    out = LldSequences.from_list(seqs)
    if not np.all(np.isfinite(out.frames)):
        raise DatasetError(f"LLD frames are not finite under condition {condition!r}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, frames=out.frames, offsets=out.offsets)
    tmp.replace(path)
    return out


def voiced_frames(*, lld: NDArray[np.floating]) -> NDArray[np.bool_]:
    """(n_frames,) True where a frame counts as voiced for the engine's speech gate.

    ``lld``: (n_frames, N_LLD). Same rule as :func:`voiced_ratio` (which it checks).
    """
    if lld.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    # voiced_ratio of one-frame windows is the per-frame flag, so the rule stays in one place
    flags: NDArray[np.bool_] = voiced_ratio(lld=np.asarray(lld)[:, None, :]) > 0.5
    return flags


def crop(*, lld: NDArray[np.float32], start: int, crop_frames: int) -> NDArray[np.float32]:
    """(crop_frames, N_LLD) frames from ``start``; ``lld``: (n_frames, N_LLD).

    A clip shorter than the crop is wrap-padded (its own frames repeated) rather than
    zero-padded, so the padding carries the clip's statistics and no artificial frames
    the live engine (whose windows are always full) would never see. An empty clip
    gives zeros.
    """
    n = lld.shape[0]
    if n == 0:
        return np.zeros((crop_frames, lld.shape[1]), dtype=np.float32)
    if n <= crop_frames:
        return np.ascontiguousarray(np.pad(lld, ((0, crop_frames - n), (0, 0)), mode="wrap"))
    if not 0 <= start <= n - crop_frames:
        raise ConfigError(f"crop start {start} outside 0..{n - crop_frames}")
    return np.ascontiguousarray(lld[start : start + crop_frames])


def window_starts(*, n_frames: int, crop_frames: int, hop_frames: int) -> NDArray[np.int64]:
    """(n_windows,) start frames of the test windows: every ``hop_frames``, the last one
    flush with the clip's end so no tail is lost; ``[0]`` for a clip no longer than a crop."""
    if crop_frames < 1 or hop_frames < 1:
        raise ConfigError(f"crop_frames {crop_frames} and hop_frames {hop_frames} must be >= 1")
    if n_frames <= crop_frames:
        return np.zeros(1, dtype=np.int64)
    last = n_frames - crop_frames
    starts = np.arange(0, last + 1, hop_frames, dtype=np.int64)
    if starts[-1] != last:
        starts = np.append(starts, last)
    return starts


def voiced_counts(*, voiced: NDArray[np.bool_], crop_frames: int) -> NDArray[np.int64]:
    """Voiced frames in every crop: (n_frames,) flags -> (max(n_frames - crop_frames, 0) + 1,)
    counts for starts 0, 1, ...; a clip shorter than a crop gives its total once."""
    csum: NDArray[np.int64] = np.concatenate([[0], np.cumsum(voiced, dtype=np.int64)])
    n = voiced.size
    if n <= crop_frames:
        return csum[-1:].copy()
    return csum[crop_frames:] - csum[: n - crop_frames + 1]


def speech_starts(
    *, lld: NDArray[np.float32], crop_frames: int, min_voiced_frames: int
) -> NDArray[np.int64]:
    """(k,) crop starts whose crop passes the speech gate; ``lld``: (n_frames, N_LLD).

    When no crop passes (a clip with almost no voicing), the crop with the most voiced
    frames is kept, so every labelled clip trains and scores.
    """
    counts = voiced_counts(voiced=voiced_frames(lld=lld), crop_frames=crop_frames)
    ok: NDArray[np.int64] = np.flatnonzero(counts >= min_voiced_frames).astype(np.int64)
    return ok if ok.size else np.array([int(np.argmax(counts))], dtype=np.int64)


def clip_windows(
    *,
    lld: NDArray[np.float32],
    crop_frames: int,
    hop_frames: int,
    min_voiced_frames: int,
    gate_lld: NDArray[np.float32] | None = None,
) -> NDArray[np.float32]:
    """The test windows of one clip: (n_frames, N_LLD) -> (n_windows, crop_frames, N_LLD).

    Windows every ``hop_frames`` (see :func:`window_starts`); those with fewer than
    ``min_voiced_frames`` voiced frames are dropped, as the engine drops "no speech"
    windows, unless that drops all, when the most voiced window is kept. ``gate_lld``:
    the raw frames the speech gate reads when ``lld`` is normalised (same shape).
    """
    gate = lld if gate_lld is None else gate_lld
    if gate.shape != lld.shape:
        raise ConfigError(f"gate frames {gate.shape} do not match the frames {lld.shape}")
    starts = window_starts(n_frames=lld.shape[0], crop_frames=crop_frames, hop_frames=hop_frames)
    counts = voiced_counts(voiced=voiced_frames(lld=gate), crop_frames=crop_frames)
    per_window = counts[np.minimum(starts, counts.size - 1)]
    keep = starts[per_window >= min_voiced_frames]
    if keep.size == 0:
        keep = starts[[int(np.argmax(per_window))]]
    return np.stack([crop(lld=lld, start=int(s), crop_frames=crop_frames) for s in keep])


def average_windows(
    *, probabilities: NDArray[np.floating], clip_index: NDArray[np.int64], n_clips: int
) -> NDArray[np.float64]:
    """Mean window probabilities per clip: (n_windows, n_classes) with (n_windows,) clip
    indices -> (n_clips, n_classes). Every clip must own at least one window."""
    p = np.asarray(probabilities, dtype=np.float64)
    idx = np.asarray(clip_index, dtype=np.int64)
    if p.ndim != 2 or idx.shape != (p.shape[0],):
        raise ConfigError(f"probabilities {p.shape} and clip_index {idx.shape} do not match")
    counts = np.bincount(idx, minlength=n_clips)
    if counts.size != n_clips or np.any(counts == 0):
        raise ConfigError("every clip needs at least one window")
    sums = np.zeros((n_clips, p.shape[1]), dtype=np.float64)
    np.add.at(sums, idx, p)
    out: NDArray[np.float64] = sums / counts[:, None]
    return out


def eval_windows(
    *,
    seqs: LldSequences,
    rows: NDArray[np.int64],
    crop_frames: int,
    hop_frames: int,
    min_voiced_frames: int,
    gate_seqs: LldSequences | None = None,
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """All test windows of clips ``rows``: (n_windows, crop_frames, N_LLD) and (n_windows,)
    index into ``rows`` of the clip each window belongs to. ``gate_seqs``: raw sequences
    for the speech gate when ``seqs`` are normalised."""
    windows: list[NDArray[np.float32]] = []
    owner: list[NDArray[np.int64]] = []
    for k, i in enumerate(rows):
        w = clip_windows(
            lld=seqs.clip(int(i)),
            crop_frames=crop_frames,
            hop_frames=hop_frames,
            min_voiced_frames=min_voiced_frames,
            gate_lld=None if gate_seqs is None else gate_seqs.clip(int(i)),
        )
        windows.append(w)
        owner.append(np.full(w.shape[0], k, dtype=np.int64))
    return np.concatenate(windows), np.concatenate(owner)


def class_weights(*, y: NDArray[np.int64], n_classes: int) -> NDArray[np.float32]:
    """(n_classes,) inverse-frequency weights, mean 1 over the samples: the balanced loss."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    if np.any(counts == 0):
        raise DatasetError(f"a class has no training clip (counts {counts.tolist()})")
    w = y.size / (n_classes * counts)
    return w.astype(np.float32)


def frame_stats(
    *, seqs: Sequence[LldSequences], rows: NDArray[np.int64]
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """(N_LLD,) mean and std of every frame of clips ``rows`` across ``seqs``."""
    total = np.zeros(N_LLD, dtype=np.float64)
    total_sq = np.zeros(N_LLD, dtype=np.float64)
    n = 0
    for s in seqs:
        for i in rows:
            f = s.clip(int(i)).astype(np.float64)
            total += f.sum(axis=0)
            total_sq += np.square(f).sum(axis=0)
            n += f.shape[0]
    if n == 0:
        raise DatasetError("no training frames")
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean**2, 0.0))
    return mean.astype(np.float32), np.maximum(std, _STD_FLOOR).astype(np.float32)


SPEAKER_NORM_DESCRIPTION = (
    "per speaker and per audio condition (mu-law, augmented) separately: each of the 26 "
    "LLDs minus the speaker's mean, divided by the speaker's std, both over the "
    "speech-gated frames (voiced flag > 0.5 and F0 > 0, the engine's per-frame gate) of "
    "all of that speaker's clips, test speakers included; the std floored at 0.1 x the "
    "pooled speech-frame std of that LLD; LLDs constant over speech frames (pooled std "
    "<= 1e-6: the binary voiced flag) are left unchanged; every frame of a clip "
    "(unvoiced ones too) is transformed; crop selection and the test windows' speech "
    "gate read the raw frames; the network's in-graph standardisation (training-frame "
    "mean/std) is kept and sees the normalised frames"
)
SPEAKER_STD_SHRINK = 0.1
"""Per-speaker std floor as a share of the pooled (all speakers) speech-frame std of the
same descriptor, so a speaker near-constant in one LLD is not blown up."""
_CONSTANT_STD = 1e-6  # pooled speech-frame std at or below this: the LLD is left as it is


@dataclass(frozen=True, slots=True)
class SpeakerNormStats:
    """Per-speaker LLD statistics from :func:`speaker_frame_stats`.

    ``mean``/``std``: speaker -> (N_LLD,) float64 (``std`` already floored, 1 and mean 0
    where the descriptor is left unchanged); ``pooled_std``: (N_LLD,) over every speech
    frame; ``unchanged``: (N_LLD,) True for descriptors constant over the speech frames
    (the binary ``voiced`` flag under the voicing gate), which are not normalised;
    ``speech_frames``: speaker -> frames the statistics came from.
    """

    mean: dict[str, NDArray[np.float64]]
    std: dict[str, NDArray[np.float64]]
    pooled_std: NDArray[np.float64]
    unchanged: NDArray[np.bool_]
    speech_frames: dict[str, int]


def speaker_frame_stats(
    *, seqs: LldSequences, speaker: Sequence[str], shrink: float = SPEAKER_STD_SHRINK
) -> SpeakerNormStats:
    """Per speaker, the mean and std of every LLD over the speech-gated frames
    (:func:`voiced_frames`) of all of that speaker's clips in ``seqs``.

    ``speaker``: one name per clip of ``seqs``. A speaker's std is floored at ``shrink``
    times the pooled speech-frame std of that descriptor; a descriptor constant over all
    speech frames (pooled std <= 1e-6) is marked ``unchanged``. A speaker without any
    speech frame falls back to all of its frames.
    """
    if len(speaker) != len(seqs):
        raise ConfigError(f"{len(speaker)} speaker names for {len(seqs)} clips")
    names = np.asarray(speaker)
    gate = voiced_frames(lld=seqs.frames)
    per_frame_speaker = np.repeat(names, np.diff(seqs.offsets))
    speech = seqs.frames[gate].astype(np.float64)
    pooled_std = speech.std(axis=0) if speech.shape[0] else np.zeros(N_LLD)
    unchanged = pooled_std <= _CONSTANT_STD
    floor = np.maximum(shrink * pooled_std, _CONSTANT_STD)
    mean: dict[str, NDArray[np.float64]] = {}
    std: dict[str, NDArray[np.float64]] = {}
    counts: dict[str, int] = {}
    for name in np.unique(names):
        mine = per_frame_speaker == name
        rows = mine & gate
        if not rows.any():
            rows = mine
        f = seqs.frames[rows].astype(np.float64)
        counts[str(name)] = int(rows.sum())
        if f.shape[0] == 0:
            mu, sd = np.zeros(N_LLD), np.ones(N_LLD)
        else:
            mu, sd = f.mean(axis=0), np.maximum(f.std(axis=0), floor)
        mean[str(name)] = np.where(unchanged, 0.0, mu)
        std[str(name)] = np.where(unchanged, 1.0, sd)
    return SpeakerNormStats(
        mean=mean, std=std, pooled_std=pooled_std, unchanged=unchanged, speech_frames=counts
    )


def speaker_normalise(
    *, seqs: LldSequences, speaker: Sequence[str], shrink: float = SPEAKER_STD_SHRINK
) -> tuple[LldSequences, SpeakerNormStats]:
    """Every clip's frames z-scored with its speaker's statistics
    (:func:`speaker_frame_stats`, from the same ``seqs``): same offsets, float32.

    Transductive when a test speaker's statistics include its test clips: an upper bound
    for per-call normalisation, not something a live call can do. The speech gate must
    still be applied to the raw sequences (the normalised ones no longer hold a voicing
    flag and F0 in their units).
    """
    stats = speaker_frame_stats(seqs=seqs, speaker=speaker, shrink=shrink)
    per_frame_speaker = np.repeat(np.asarray(speaker), np.diff(seqs.offsets))
    out = np.empty_like(seqs.frames, dtype=np.float32)
    for name, mu in stats.mean.items():
        mine = per_frame_speaker == name
        out[mine] = ((seqs.frames[mine] - mu) / stats.std[name]).astype(np.float32)
    return LldSequences(frames=out, offsets=seqs.offsets.copy()), stats


# ---------------------------------------------------------------------------------------
# the network (torch)


@dataclass(frozen=True, slots=True)
class TrainConfig:
    arch: str = "cnn"
    norm: str = "global"
    crop_frames: int = DEFAULT_CROP_FRAMES
    hop_frames: int = DEFAULT_HOP_FRAMES
    min_voiced_frames: int = DEFAULT_WINDOW_PARAMS.min_voiced_frames
    channels: int = 32
    epochs: int = 25
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 1e-2
    dropout: float = 0.3
    seed: int = 0
    threads: int = 1


def build_net(*, config: TrainConfig, mean: NDArray[np.float32], std: NDArray[np.float32]) -> Any:
    """The network: (batch, crop_frames, N_LLD) raw LLDs -> (batch, n_classes) logits.

    ``cnn``: three 1-D convolutions (kernel 5, dilation 1/2/4, batch norm, ReLU; a 0.29 s
    receptive field) then mean and max over time. ``gru``: one GRU layer, mean and last
    state. Both end in dropout and one linear layer. ``mean``/``std`` (N_LLD,) standardise
    the input inside the graph (``norm="global"``); ``norm="window"`` z-scores each LLD
    over the window instead.
    """
    th = require_torch()
    nn = th.nn
    module: Any = nn.Module  # torch is imported lazily: its classes are values here
    n_classes = 4
    c = config.channels

    class Standardise(module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", th.from_numpy(np.asarray(mean, dtype=np.float32)))
            self.register_buffer("std", th.from_numpy(np.asarray(std, dtype=np.float32)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if config.norm == "window":
                mu = x.mean(dim=1, keepdim=True)
                sd = x.std(dim=1, keepdim=True) + _STD_FLOOR
                return (x - mu) / sd
            scaled: torch.Tensor = (x - self.mean) / self.std
            return scaled

    class Cnn(module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.standardise = Standardise()
            layers: list[Any] = []
            width = N_LLD
            for dilation in (1, 2, 4):
                layers += [
                    nn.Conv1d(width, c, kernel_size=5, dilation=dilation, padding=2 * dilation),
                    nn.BatchNorm1d(c),
                    nn.ReLU(),
                ]
                width = c
            self.body = nn.Sequential(*layers)
            self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(2 * c, n_classes))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.body(self.standardise(x).transpose(1, 2))  # (batch, c, time)
            pooled = th.cat([h.mean(dim=2), h.amax(dim=2)], dim=1)
            out: torch.Tensor = self.head(pooled)
            return out

    class Gru(module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.standardise = Standardise()
            self.gru = nn.GRU(N_LLD, c, batch_first=True)
            self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(2 * c, n_classes))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h, _ = self.gru(self.standardise(x))  # (batch, time, c)
            pooled = th.cat([h.mean(dim=1), h[:, -1]], dim=1)
            out: torch.Tensor = self.head(pooled)
            return out

    if config.arch == "cnn":
        return Cnn()
    if config.arch == "gru":
        return Gru()
    raise ConfigError(f"unknown architecture {config.arch!r} (expected one of {ARCHITECTURES})")


@dataclass(frozen=True, slots=True)
class TrainSet:
    """Training clips: LLD sequences under each condition, and labels.

    ``sources``: the sequences (mu-law and augmented); ``rows``: (n,) clip indices into
    them; ``y``: (n,) labels of those clips; ``gates``: when the sources are normalised,
    the raw sequences (same order) whose frames the speech gate reads.
    """

    sources: tuple[LldSequences, ...]
    rows: NDArray[np.int64]
    y: NDArray[np.int64]
    gates: tuple[LldSequences, ...] | None = None


def train_net(
    *, train_set: TrainSet, config: TrainConfig, progress: bool = True, desc: str = "train"
) -> Any:
    """Fit a fresh network on random crops; returns it in eval mode.

    Each epoch draws one speech-gated random crop of every training clip from every
    source (so each clip is seen mu-law and augmented), in shuffled batches.
    """
    th = require_torch()
    from tqdm import tqdm

    th.manual_seed(config.seed)
    th.set_num_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    mean, std = frame_stats(seqs=train_set.sources, rows=train_set.rows)
    net = build_net(config=config, mean=mean, std=std)
    # (source, clip) pairs and the crop starts that pass the speech gate, computed once
    pairs = [(s, int(i)) for s in range(len(train_set.sources)) for i in train_set.rows]
    labels = np.tile(train_set.y, len(train_set.sources))
    gates = train_set.sources if train_set.gates is None else train_set.gates
    if len(gates) != len(train_set.sources):
        raise ConfigError(f"{len(gates)} gate sequences for {len(train_set.sources)} sources")
    allowed = [
        speech_starts(
            lld=gates[s].clip(i),
            crop_frames=config.crop_frames,
            min_voiced_frames=config.min_voiced_frames,
        )
        for s, i in pairs
    ]
    weights = th.from_numpy(class_weights(y=labels, n_classes=4))
    loss_fn = th.nn.CrossEntropyLoss(weight=weights)
    optimiser = th.optim.AdamW(
        net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    steps_per_epoch = int(np.ceil(len(pairs) / config.batch_size))
    scheduler = th.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.learning_rate, total_steps=config.epochs * steps_per_epoch
    )
    net.train()
    bar = tqdm(range(config.epochs), desc=desc, unit="epoch", disable=not progress)
    for _ in bar:
        order = rng.permutation(len(pairs))
        total_loss = 0.0
        for b in range(steps_per_epoch):
            batch = order[b * config.batch_size : (b + 1) * config.batch_size]
            x = np.stack(
                [
                    crop(
                        lld=train_set.sources[pairs[k][0]].clip(pairs[k][1]),
                        start=int(rng.choice(allowed[k])),
                        crop_frames=config.crop_frames,
                    )
                    for k in batch
                ]
            )
            logits = net(th.from_numpy(x))
            loss = loss_fn(logits, th.from_numpy(labels[batch]))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            scheduler.step()
            total_loss += float(loss.detach()) * batch.size
        bar.set_postfix(loss=f"{total_loss / len(pairs):.3f}")
    net.eval()
    return net


def torch_probabilities(*, net: Any, windows: NDArray[np.float32]) -> NDArray[np.float32]:
    """Softmax output of ``net`` in eval mode: (n, crop_frames, N_LLD) -> (n, n_classes)."""
    th = require_torch()
    with th.no_grad():
        p = th.softmax(net(th.from_numpy(np.ascontiguousarray(windows))), dim=1)
    out: NDArray[np.float32] = p.numpy().astype(np.float32)
    return out


def export_onnx(*, net: Any, path: Path, crop_frames: int) -> None:
    """Write ``net`` + softmax as ONNX (opset :data:`ONNX_OPSET`): input ``lld``
    (batch, crop_frames, N_LLD) float32, output ``probabilities`` (batch, 4); batch dynamic."""
    th = require_torch()

    module: Any = th.nn.Module  # torch is imported lazily: its classes are values here

    class WithSoftmax(module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = th.softmax(self.net(x), dim=1)
            return out

    model = WithSoftmax().eval()
    dummy = th.zeros(1, crop_frames, N_LLD, dtype=th.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # the TorchScript exporter is deprecated in favour of the dynamo one, which
        # needs onnxscript (not a dependency); its graph is the same for this net
        warnings.simplefilter("ignore")
        th.onnx.export(
            model,
            (dummy,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )


def onnx_session(path: Path) -> Any:
    """A single-threaded onnxruntime session, configured as the engine's EmotionModel."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def onnx_probabilities(
    *, session: Any, windows: NDArray[np.float32], batch_size: int = 512
) -> NDArray[np.float32]:
    """(n, crop_frames, N_LLD) -> (n, n_classes) probabilities from the ONNX session."""
    parts = [
        session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(windows[s : s + batch_size])})[
            0
        ]
        for s in range(0, windows.shape[0], batch_size)
    ]
    return np.concatenate(parts).astype(np.float32)


# ---------------------------------------------------------------------------------------
# evaluation


def emotion_metrics(
    *,
    y_true: NDArray[np.int64],
    probabilities: NDArray[np.floating],
    labels: Sequence[str],
) -> dict[str, Any]:
    """UAR, per-class recall, angry-vs-rest AUC and confusion of (n,) labels against
    (n, n_classes) clip probabilities."""
    n = len(labels)
    pred = np.asarray(probabilities).argmax(axis=1)
    cm = confusion_matrix(y_true=y_true, y_pred=pred, n_classes=n)
    rec = recalls(confusion=cm)
    return {
        "n": int(y_true.size),
        "uar": uar(y_true=y_true, y_pred=pred, n_classes=n),
        "recall": {
            name: None if np.isnan(r) else float(r) for name, r in zip(labels, rec, strict=True)
        },
        "angry_auc": roc_auc(
            y_true=y_true == labels.index("angry"),
            scores=np.asarray(probabilities)[:, labels.index("angry")],
        ),
        "confusion": cm.tolist(),
    }


def four_class_corpora(dataset: Dataset) -> list[str]:
    """Corpora whose emotion labels cover every label of the dataset (LOCO test sets)."""
    out = []
    for name in dataset.corpora:
        mine = dataset.y[(dataset.corpus == name) & (dataset.y != NO_LABEL)]
        if np.unique(mine).size == len(dataset.labels):
            out.append(name)
    return out


# ---------------------------------------------------------------------------------------
# late fusion (numpy only)

EQUAL_FUSION_WEIGHT = 0.5
FUSION_WEIGHT_GRID: tuple[float, ...] = tuple(k / 10 for k in range(11))
"""Temporal weights tried when the weight is chosen on the training corpora (0 = the
functionals model alone, 1 = the temporal network alone)."""


class FusionAlignmentError(ConfigError):
    """Two systems' clip probabilities do not describe the same clips, labels and label order."""


@dataclass(frozen=True, slots=True)
class ClipProbabilities:
    """One system's per-clip class probabilities on one test set.

    ``clip_ids``: n clip identifiers (the clips' file paths) in row order; ``y``: (n,) int64
    true labels; ``probabilities``: (n, len(labels)) float64, column ``k`` is ``labels[k]``.
    """

    clip_ids: tuple[str, ...]
    y: NDArray[np.int64]
    probabilities: NDArray[np.float64]
    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.clip_ids)
        if self.y.shape != (n,) or self.probabilities.shape != (n, len(self.labels)):
            raise ConfigError(
                f"{n} clip ids, y {self.y.shape} and probabilities {self.probabilities.shape} "
                f"for {len(self.labels)} labels do not match"
            )


def fuse_probabilities(
    *, temporal: ClipProbabilities, functionals: ClipProbabilities, temporal_weight: float
) -> ClipProbabilities:
    """Late fusion: ``temporal_weight * temporal + (1 - temporal_weight) * functionals``,
    clip by clip: two (n, n_classes) -> (n, n_classes).

    Raises :class:`FusionAlignmentError` unless both hold the same clips in the same
    order, with the same labels in the same column order: averaging row ``i`` of one
    with row ``i`` of the other is only meaningful then, and a silent misalignment would
    still give plausible-looking figures.
    """
    if not 0.0 <= temporal_weight <= 1.0:
        raise ConfigError(f"temporal_weight must be in [0, 1], got {temporal_weight}")
    if temporal.labels != functionals.labels:
        raise FusionAlignmentError(
            f"label order differs: {temporal.labels} vs {functionals.labels}"
        )
    if temporal.clip_ids != functionals.clip_ids:
        if sorted(temporal.clip_ids) == sorted(functionals.clip_ids):
            raise FusionAlignmentError("same clips in a different order")
        raise FusionAlignmentError(
            f"different clips ({len(temporal.clip_ids)} vs {len(functionals.clip_ids)})"
        )
    if not np.array_equal(temporal.y, functionals.y):
        raise FusionAlignmentError("same clips with different true labels")
    fused = (
        temporal_weight * temporal.probabilities
        + (1.0 - temporal_weight) * functionals.probabilities
    )
    return ClipProbabilities(
        clip_ids=temporal.clip_ids, y=temporal.y, probabilities=fused, labels=temporal.labels
    )


def probability_metrics(clips: ClipProbabilities) -> dict[str, Any]:
    """:func:`emotion_metrics` of one system's clip probabilities."""
    return emotion_metrics(y_true=clips.y, probabilities=clips.probabilities, labels=clips.labels)


def choose_fusion_weight(
    *,
    validation: Sequence[tuple[ClipProbabilities, ClipProbabilities]],
    grid: Sequence[float] = FUSION_WEIGHT_GRID,
) -> tuple[float, dict[str, float]]:
    """The temporal weight of ``grid`` with the best mean 4-class UAR over the validation
    sets, and that mean for every weight (keyed ``"0.3"`` etc.).

    ``validation``: (temporal, functionals) clip probabilities per validation set, which
    must come from the training corpora only. UAR is the figure the card ranks systems
    by. Ties go to the weight nearest :data:`EQUAL_FUSION_WEIGHT`, the choice made without
    looking at any data.
    """
    if not validation or not grid:
        raise ConfigError("choosing a fusion weight needs validation sets and a grid")
    scores: dict[str, float] = {}
    for w in grid:
        fused = [
            fuse_probabilities(temporal=t, functionals=f, temporal_weight=w) for t, f in validation
        ]
        scores[str(w)] = float(np.mean([probability_metrics(c)["uar"] for c in fused]))
    best = max(scores.values())
    # exact float comparison is fine here: equal UARs come from equal confusion matrices
    tied = [w for w in grid if scores[str(w)] == best]
    chosen = min(tied, key=lambda w: abs(w - EQUAL_FUSION_WEIGHT))
    return float(chosen), scores


def summarise_blocks(per_corpus: dict[str, Any]) -> dict[str, Any]:
    """Per-corpus metric blocks plus their mean UAR and angry AUC (the card's means)."""
    return {
        "per_corpus": per_corpus,
        "uar_mean": float(np.mean([b["uar"] for b in per_corpus.values()])),
        "angry_auc_mean": float(np.mean([b["angry_auc"] for b in per_corpus.values()])),
    }


def temporal_clip_probabilities(
    *,
    dataset: Dataset,
    test_seqs: LldSequences,
    train_seqs: LldSequences,
    config: TrainConfig,
    train_rows: NDArray[np.int64],
    test_rows: NDArray[np.int64],
    onnx_path: Path,
    progress: bool = True,
    desc: str = "train",
    gate_seqs: tuple[LldSequences, LldSequences] | None = None,
) -> tuple[ClipProbabilities, dict[str, Any]]:
    """Train on clips ``train_rows`` of ``dataset``, export ONNX to ``onnx_path`` and score
    clips ``test_rows`` through onnxruntime.

    ``test_seqs``/``train_seqs``: LLD sequences of every clip of ``dataset`` (mu-law /
    augmented); ``train_rows``, ``test_rows``: (n,) labelled clip indices; ``gate_seqs``:
    the raw (mu-law, augmented) sequences for the speech gate when those are normalised.
    Returns the clip probabilities and the split's bookkeeping (clip and window counts,
    ONNX vs torch difference, training time).
    """
    started = time.monotonic()
    train_set = TrainSet(
        sources=(test_seqs, train_seqs),
        rows=train_rows,
        y=dataset.y[train_rows],
        gates=gate_seqs,
    )
    net = train_net(train_set=train_set, config=config, progress=progress, desc=desc)
    train_s = time.monotonic() - started
    export_onnx(net=net, path=onnx_path, crop_frames=config.crop_frames)
    windows, owner = eval_windows(
        seqs=test_seqs,
        rows=test_rows,
        crop_frames=config.crop_frames,
        hop_frames=config.hop_frames,
        min_voiced_frames=config.min_voiced_frames,
        gate_seqs=None if gate_seqs is None else gate_seqs[0],
    )
    session = onnx_session(onnx_path)
    p_onnx = onnx_probabilities(session=session, windows=windows)
    p_torch = torch_probabilities(net=net, windows=windows)
    clip_p = average_windows(probabilities=p_onnx, clip_index=owner, n_clips=test_rows.size)
    clips = ClipProbabilities(
        clip_ids=tuple(str(dataset.clips[int(i)].path) for i in test_rows),
        y=dataset.y[test_rows].astype(np.int64),
        probabilities=clip_p,
        labels=tuple(dataset.labels),
    )
    info = {
        "train_clips": int(train_rows.size),
        "test_windows": int(windows.shape[0]),
        "onnx_vs_torch_max_abs_diff": float(np.max(np.abs(p_onnx - p_torch))),
        "train_s": round(train_s, 1),
    }
    return clips, info


def evaluate_temporal(
    *,
    dataset: Dataset,
    test_seqs: LldSequences,
    train_seqs: LldSequences,
    config: TrainConfig,
    work_dir: Path,
    progress: bool = True,
    gate_seqs: tuple[LldSequences, LldSequences] | None = None,
) -> tuple[dict[str, Any], dict[str, ClipProbabilities]]:
    """Leave-one-corpus-out: per held-out four-class corpus, train on the other corpora's
    labelled clips, export ONNX, score the held-out clips through onnxruntime.

    ``test_seqs``/``train_seqs``: LLD sequences of every clip of ``dataset`` (mu-law /
    augmented); ``gate_seqs``: their raw versions for the speech gate when normalised.
    Returns per-corpus metrics, the mean UAR and AUC, and timings; and the held-out
    clips' probabilities per corpus (for late fusion).
    """
    labelled = dataset.y != NO_LABEL
    per_corpus: dict[str, Any] = {}
    probabilities: dict[str, ClipProbabilities] = {}
    for name in four_class_corpora(dataset):
        clips, info = temporal_clip_probabilities(
            dataset=dataset,
            test_seqs=test_seqs,
            train_seqs=train_seqs,
            config=config,
            train_rows=np.flatnonzero(labelled & (dataset.corpus != name)).astype(np.int64),
            test_rows=np.flatnonzero(labelled & (dataset.corpus == name)).astype(np.int64),
            onnx_path=work_dir / f"temporal-{config.arch}-without-{name}.onnx",
            progress=progress,
            desc=f"train without {name}",
            gate_seqs=gate_seqs,
        )
        block = probability_metrics(clips)
        block.update(info)
        per_corpus[name] = block
        probabilities[name] = clips
        log.info(
            "held out %s: UAR %.1f %%, angry AUC %.1f %% (%.0f s)",
            name,
            100 * block["uar"],
            100 * block["angry_auc"],
            info["train_s"],
        )
    if not per_corpus:
        raise DatasetError("no corpus covers all four labels: nothing to hold out")
    return {
        **summarise_blocks(per_corpus),
        "train_s_total": round(sum(b["train_s"] for b in per_corpus.values()), 1),
    }, probabilities


def functionals_clip_probabilities(
    *,
    dataset: Dataset,
    feats: Features,
    excluded: Sequence[str],
    test_corpus: str,
    seed: int,
    candidate: str,
) -> ClipProbabilities:
    """The functionals recipe trained on every clip of the corpora not in ``excluded``
    (as :func:`emotion_engine.training.evaluate.make_splits` builds a LOCO split: all
    clips, so the arousal head also learns), scoring ``test_corpus``'s labelled clips.

    ``feats``: functionals of every clip of ``dataset`` (raw, normalisation none).
    """
    from emotion_engine.training.evaluate import training_rows
    from emotion_engine.training.train import fit_model

    train_rows = np.flatnonzero(~np.isin(dataset.corpus, list(excluded))).astype(np.int64)
    test_rows = np.flatnonzero((dataset.corpus == test_corpus) & (dataset.y != NO_LABEL))
    model = fit_model(
        **training_rows(dataset, feats, train_rows),
        labels=dataset.labels,
        candidate=candidate,
        seed=seed,
    )
    return ClipProbabilities(
        clip_ids=tuple(str(dataset.clips[int(i)].path) for i in test_rows),
        y=dataset.y[test_rows].astype(np.int64),
        probabilities=np.asarray(model.predict_proba(feats.test[test_rows]), dtype=np.float64),
        labels=tuple(dataset.labels),
    )


def functionals_loco(
    *, dataset: Dataset, feats: Features, seed: int, corpora: Sequence[str], progress: bool
) -> tuple[dict[str, Any], dict[str, ClipProbabilities]]:
    """The shipped functionals recipe under the same LOCO splits, in this run
    (:mod:`emotion_engine.training.evaluate`, raw functionals as the card's main table),
    and its held-out clip probabilities per corpus for late fusion.

    The probabilities come from a refit of the same split (same rows, candidate and
    seed); their metrics must equal ``evaluate``'s, or this raises, so the fused
    figures are known to fuse the model the functionals row reports.
    """
    from emotion_engine.training.evaluate import evaluate_features
    from emotion_engine.training.train import DEFAULT_CANDIDATE

    results = evaluate_features(
        dataset,
        feats,
        seed=seed,
        candidate=DEFAULT_CANDIDATE,
        compare_candidates=False,
        progress=progress,
        normalisation="none",
    )
    labels = list(dataset.labels)
    per_corpus = _loco_blocks(results, labels=labels, corpora=corpora)
    probabilities: dict[str, ClipProbabilities] = {}
    for name in corpora:
        clips = functionals_clip_probabilities(
            dataset=dataset,
            feats=feats,
            excluded=[name],
            test_corpus=name,
            seed=seed,
            candidate=DEFAULT_CANDIDATE,
        )
        mine = probability_metrics(clips)
        theirs = per_corpus[name]
        if mine["confusion"] != theirs["confusion"] or not np.isclose(
            mine["angry_auc"], theirs["angry_auc"], rtol=0.0, atol=1e-12
        ):
            raise DatasetError(
                f"functionals refit on held-out {name} does not reproduce evaluate's figures "
                f"(UAR {mine['uar']:.4f} vs {theirs['uar']:.4f}, "
                f"AUC {mine['angry_auc']:.4f} vs {theirs['angry_auc']:.4f})"
            )
        probabilities[name] = clips
    return {
        "source": "this run (emotion_engine.training.evaluate.evaluate_features, "
        f"candidate {results['candidate']}, normalisation none)",
        **summarise_blocks(per_corpus),
    }, probabilities


def training_corpora_fusion_weight(
    *,
    dataset: Dataset,
    emo: Dataset,
    feats: Features,
    test_seqs: LldSequences,
    train_seqs: LldSequences,
    config: TrainConfig,
    held_out: str,
    work_dir: Path,
    seed: int,
    candidate: str,
    progress: bool = True,
    gate_seqs: tuple[LldSequences, LldSequences] | None = None,
) -> dict[str, Any]:
    """The fusion weight for held-out ``held_out``, chosen on its training corpora only.

    Inner leave-one-corpus-out: for every other four-class corpus ``v``, both systems are
    trained without ``held_out`` and ``v`` and score ``v``; the weight of
    :data:`FUSION_WEIGHT_GRID` with the best mean UAR over those ``v`` is kept
    (:func:`choose_fusion_weight`). Cross-corpus rather than a speaker split, because
    the weight has to transfer to an unseen corpus. ``held_out`` is never scored here.

    ``dataset``: every clip (the functionals recipe also trains its arousal head on
    clips without an emotion label); ``emo``: its emotion-labelled clips, which
    ``test_seqs``/``train_seqs`` cover; ``feats``: the functionals of ``dataset``.
    """
    inner = [c for c in four_class_corpora(emo) if c != held_out]
    if not inner:
        raise DatasetError(
            f"no four-class training corpus left to choose a weight without {held_out}"
        )
    labelled = emo.y != NO_LABEL
    validation: list[tuple[ClipProbabilities, ClipProbabilities]] = []
    per_inner: dict[str, Any] = {}
    for name in inner:
        excluded = [held_out, name]
        temporal, info = temporal_clip_probabilities(
            dataset=emo,
            test_seqs=test_seqs,
            train_seqs=train_seqs,
            config=config,
            train_rows=np.flatnonzero(labelled & ~np.isin(emo.corpus, excluded)).astype(np.int64),
            test_rows=np.flatnonzero(labelled & (emo.corpus == name)).astype(np.int64),
            onnx_path=work_dir / f"temporal-{config.arch}-without-{held_out}-{name}.onnx",
            progress=progress,
            desc=f"inner: without {held_out}, {name}",
            gate_seqs=gate_seqs,
        )
        functionals = functionals_clip_probabilities(
            dataset=dataset,
            feats=feats,
            excluded=excluded,
            test_corpus=name,
            seed=seed,
            candidate=candidate,
        )
        validation.append((temporal, functionals))
        per_inner[name] = {
            "temporal": {k: probability_metrics(temporal)[k] for k in ("n", "uar", "angry_auc")},
            "functionals": {
                k: probability_metrics(functionals)[k] for k in ("n", "uar", "angry_auc")
            },
            "train_clips": info["train_clips"],
            "train_s": info["train_s"],
        }
    weight, scores = choose_fusion_weight(validation=validation)
    log.info("held out %s: fusion weight %.1f chosen on %s", held_out, weight, inner)
    return {
        "temporal_weight": weight,
        "validation_corpora": inner,
        "validation_uar_mean_by_weight": scores,
        "validation": per_inner,
    }


def fusion_loco(
    *,
    temporal: dict[str, ClipProbabilities],
    functionals: dict[str, ClipProbabilities],
    chosen: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Late fusion of one temporal network with the functionals model on every held-out
    corpus: the equal average and, when ``chosen`` (held-out corpus -> the output of
    :func:`training_corpora_fusion_weight`) is given, the weight chosen on the training
    corpora. Both dicts map held-out corpus -> clip probabilities, with the same keys."""
    if set(temporal) != set(functionals):
        raise FusionAlignmentError(
            f"held-out corpora differ: {sorted(temporal)} vs {sorted(functionals)}"
        )
    equal = {
        name: probability_metrics(
            fuse_probabilities(
                temporal=temporal[name],
                functionals=functionals[name],
                temporal_weight=EQUAL_FUSION_WEIGHT,
            )
        )
        for name in temporal
    }
    out: dict[str, Any] = {
        "equal_weight": {"temporal_weight": EQUAL_FUSION_WEIGHT, **summarise_blocks(equal)}
    }
    if chosen is not None:
        tuned: dict[str, Any] = {}
        for name in temporal:
            w = float(chosen[name]["temporal_weight"])
            block = probability_metrics(
                fuse_probabilities(
                    temporal=temporal[name], functionals=functionals[name], temporal_weight=w
                )
            )
            tuned[name] = {**block, "weight_choice": chosen[name]}
            tuned[name]["temporal_weight"] = w
        out["training_corpora_weight"] = summarise_blocks(tuned)
    return out


def _loco_blocks(
    results: dict[str, Any], *, labels: Sequence[str], corpora: Sequence[str]
) -> dict[str, Any]:
    """Per held-out corpus, the functionals model's figures from ``evaluate`` results."""
    per_corpus: dict[str, Any] = {}
    for name in corpora:
        block = results["protocols"]["loco"][name]["ours"]["emotion"]
        cm = np.array(block["confusion"], dtype=np.int64)
        per_corpus[name] = {
            "n": block["n"],
            "uar": block["uar"],
            "recall": {
                n: None if np.isnan(r) else float(r)
                for n, r in zip(labels, recalls(confusion=cm), strict=True)
            },
            "angry_auc": block["angry_auc"],
            "confusion": block["confusion"],
        }
    return per_corpus


def functionals_from_json(*, path: Path, corpora: Sequence[str]) -> dict[str, Any]:
    """The functionals model's LOCO numbers from an ``evaluate`` JSON (no per-class recall
    there beyond the confusion, which is converted)."""
    results = json.loads(path.read_text())
    labels = list(results["labels"])
    per_corpus = _loco_blocks(results, labels=labels, corpora=corpora)
    return {
        "source": f"{path} (normalisation {results.get('normalisation')})",
        "per_corpus": per_corpus,
        "uar_mean": float(np.mean([b["uar"] for b in per_corpus.values()])),
        "angry_auc_mean": float(np.mean([b["angry_auc"] for b in per_corpus.values()])),
    }


# ---------------------------------------------------------------------------------------
# latency


def _percentiles_ms(seconds: Sequence[float]) -> dict[str, float]:
    ms = 1000.0 * np.asarray(seconds)
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
    }


def _time_calls(fn: Any, *, repeats: int, warmup: int = 20) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return _percentiles_ms(times)


def measure_latency(
    *,
    onnx_paths: dict[str, Path],
    windows: NDArray[np.float32],
    shipped_model_dir: Path | None,
    repeats: int = 300,
) -> dict[str, Any]:
    """Per-call latency (p50/p99 ms, single thread) at batch 1 and 100.

    Temporal: each ONNX graph of ``onnx_paths`` (name -> file) on real test windows (its
    input is the LLD frames). Shipped: ``EmotionModel.predict`` on those windows'
    functionals and, since a temporal net replaces the functionals step too,
    ``compute_functionals`` + predict. Late fusion (``<name>_plus_functionals``): the
    temporal graph, then ``compute_functionals`` + predict on the same windows, then the
    average, timed as one call (the p50 of a sum is not the sum of p50s).
    ``windows``: (n, crop_frames, N_LLD).
    """
    from emotion_engine.features.functionals import compute_functionals

    if windows.shape[0] == 0:
        raise DatasetError("latency needs at least one window")
    # a small test set (quick runs) repeats its windows up to the batch of 100
    windows = windows[np.arange(max(100, windows.shape[0])) % windows.shape[0]]
    out: dict[str, Any] = {"repeats": repeats, "threads": 1}
    for name, path in onnx_paths.items():
        session = onnx_session(path)
        for batch in (1, 100):
            x = np.ascontiguousarray(windows[:batch])
            out[f"{name}_batch{batch}"] = _time_calls(
                lambda s=session, x=x: s.run([OUTPUT_NAME], {INPUT_NAME: x}), repeats=repeats
            )
    if shipped_model_dir is None:
        return out
    from emotion_engine.model.runtime import EmotionModel

    model = EmotionModel.load(shipped_model_dir)
    for batch in (1, 100):
        lld = np.ascontiguousarray(windows[:batch])
        feats = compute_functionals(lld=lld)
        out[f"functionals_onnx_batch{batch}"] = _time_calls(
            lambda f=feats: model.predict(f), repeats=repeats
        )
        out[f"functionals_extract_plus_onnx_batch{batch}"] = _time_calls(
            lambda w=lld: model.predict(compute_functionals(lld=w)), repeats=repeats
        )
        for name, path in onnx_paths.items():
            session = onnx_session(path)

            def fused(s: Any = session, w: NDArray[np.float32] = lld) -> NDArray[np.float64]:
                p_temporal = s.run([OUTPUT_NAME], {INPUT_NAME: w})[0]
                p_functionals = model.predict(compute_functionals(lld=w)).probabilities
                averaged: NDArray[np.float64] = EQUAL_FUSION_WEIGHT * p_temporal + (
                    1.0 - EQUAL_FUSION_WEIGHT
                ) * np.asarray(p_functionals)
                return averaged

            out[f"{name}_plus_functionals_batch{batch}"] = _time_calls(fused, repeats=repeats)
    out["shipped_model"] = str(shipped_model_dir)
    out["note"] = (
        "windows of the temporal crop length "
        f"({windows.shape[1]} frames) for every path; the engine's functionals windows "
        "are 200 frames (the model cost does not depend on it, compute_functionals does)"
    )
    return out


# ---------------------------------------------------------------------------------------
# report


def _pct(v: float | None) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{100 * v:.1f}"


def format_table(report: dict[str, Any]) -> str:
    """Markdown comparison: per held-out corpus UAR, angry AUC and per-class recall,
    then the per-window latency."""
    speaker = "input_normalisation" in report
    tag = ", per-speaker z-scored LLDs (transductive)" if speaker else ""
    systems: dict[str, Any] = {
        f"temporal {arch}{tag}": block for arch, block in report["temporal"].items()
    }
    raw = ", raw features" if speaker else ""
    systems[f"functionals (shipped recipe{raw})"] = report["functionals"]
    for arch, fusion in (report.get("fusion") or {}).get("per_arch", {}).items():
        systems[f"fused {arch}{tag} + functionals{raw}, w=0.5"] = fusion["equal_weight"]
        if "training_corpora_weight" in fusion:
            systems[f"fused {arch}{tag} + functionals{raw}, w from training corpora"] = fusion[
                "training_corpora_weight"
            ]
    corpora = list(report["functionals"]["per_corpus"])
    labels = report["labels"]
    lines = [
        "### Leave-one-corpus-out, 4-class (UAR % and angry-vs-rest AUC %, test audio "
        f"G.711 mu-law; functionals from {report['functionals']['source']})",
        "",
        "| system | "
        + " | ".join(f"UAR {c}" for c in corpora)
        + " | UAR mean | "
        + " | ".join(f"AUC {c}" for c in corpora)
        + " | AUC mean |",
        "|---|" + "---|" * (2 * len(corpora) + 2),
    ]
    for name, s in systems.items():
        pc = s["per_corpus"]
        lines.append(
            f"| {name} | "
            + " | ".join(_pct(pc[c]["uar"]) for c in corpora)
            + f" | {_pct(s['uar_mean'])} | "
            + " | ".join(_pct(pc[c]["angry_auc"]) for c in corpora)
            + f" | {_pct(s['angry_auc_mean'])} |"
        )
    lines += [
        "",
        "### Per-class recall % (held-out corpus)",
        "",
        "| system | corpus | " + " | ".join(labels) + " |",
        "|---|---|" + "---|" * len(labels),
    ]
    for name, s in systems.items():
        for c in corpora:
            rec = s["per_corpus"][c]["recall"]
            lines.append(f"| {name} | {c} | " + " | ".join(_pct(rec[k]) for k in labels) + " |")
    lat = report.get("latency") or {}
    rows = [
        (f"temporal_{arch}", f"temporal {arch} ONNX (input: LLD frames)")
        for arch in report["temporal"]
    ]
    rows += [
        ("functionals_onnx", "shipped emotion.onnx (input: functionals)"),
        ("functionals_extract_plus_onnx", "shipped: compute_functionals + emotion.onnx"),
    ]
    rows += [
        (
            f"temporal_{arch}_plus_functionals",
            f"fused: temporal {arch} ONNX + compute_functionals + emotion.onnx + average",
        )
        for arch in report["temporal"]
    ]
    lines += [
        "",
        f"### Per-call latency, single thread, ms ({lat.get('repeats')} calls each)",
        "",
        "| path | batch 1 p50 | batch 1 p99 | batch 100 p50 | batch 100 p99 |",
        "|---|---|---|---|---|",
    ]
    for key, title in rows:
        if f"{key}_batch1" not in lat:
            continue
        b1, b100 = lat[f"{key}_batch1"], lat[f"{key}_batch100"]
        lines.append(
            f"| {title} | {b1['p50_ms']:.3f} | {b1['p99_ms']:.3f} | "
            f"{b100['p50_ms']:.3f} | {b100['p99_ms']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _config_block(config: TrainConfig, *, n_parameters: int) -> dict[str, Any]:
    return {
        "arch": config.arch,
        "norm": config.norm,
        "crop_frames": config.crop_frames,
        "crop_s": config.crop_frames / 100.0,
        "test_hop_frames": config.hop_frames,
        "min_voiced_frames": config.min_voiced_frames,
        "channels": config.channels,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "weight_decay": config.weight_decay,
        "dropout": config.dropout,
        "torch_threads": config.threads,
        "parameters": n_parameters,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole comparison from parsed arguments; prints the table, writes ``args.out``."""
    th = require_torch()
    started = time.monotonic()
    if args.tune_fusion_weight and args.functionals_json is not None:
        raise ConfigError(
            "--tune-fusion-weight needs the functionals LOCO of this run, not --functionals-json"
        )
    unknown = sorted(set(args.arch) - set(ARCHITECTURES))
    if unknown or not args.arch:
        raise ConfigError(f"--arch takes names from {ARCHITECTURES}, got {args.arch}")
    configs = [
        TrainConfig(
            arch=arch,
            norm=args.norm,
            crop_frames=args.crop_frames,
            hop_frames=args.hop_frames,
            channels=args.channels or DEFAULT_CHANNELS[arch],
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            seed=args.seed,
            threads=args.threads,
        )
        for arch in args.arch
    ]
    dataset = load_dataset(
        Path(args.data), corpora=args.corpora, limit_per_corpus=args.limit_per_corpus, seed=0
    )
    progress = not args.no_progress
    # the temporal net has no arousal head: clips without an emotion label (BAVED) are
    # not needed; the functionals recipe below still gets the full dataset, as in evaluate
    emo = dataset.subset(np.flatnonzero(dataset.y != NO_LABEL))
    test_seqs = lld_sequences(clips=emo.clips, condition="test", progress=progress)
    train_seqs = lld_sequences(
        clips=emo.clips, condition="train", seed=args.seed, progress=progress
    )
    gate_seqs: tuple[LldSequences, LldSequences] | None = None
    input_normalisation: dict[str, Any] | None = None
    if args.speaker_norm:
        # transductive: every speaker's statistics from all of its clips, test speakers
        # included; the speech gate keeps reading the raw frames
        gate_seqs = (test_seqs, train_seqs)
        speakers = [c.speaker for c in emo.clips]
        test_seqs, test_stats = speaker_normalise(seqs=test_seqs, speaker=speakers)
        train_seqs, train_stats = speaker_normalise(seqs=train_seqs, speaker=speakers)
        input_normalisation = {
            "method": "per-speaker z-score of the network input (transductive upper bound)",
            "description": SPEAKER_NORM_DESCRIPTION,
            "std_shrink": SPEAKER_STD_SHRINK,
            "speakers": len(test_stats.mean),
            "unchanged_lld": [n for n, u in zip(LLD_NAMES, test_stats.unchanged, strict=True) if u],
            "unchanged_lld_augmented": [
                n for n, u in zip(LLD_NAMES, train_stats.unchanged, strict=True) if u
            ],
            "speech_frames_min_per_speaker": min(test_stats.speech_frames.values()),
            "functionals_row": "raw functionals (normalisation none), not speaker-normalised",
        }
    work_dir = Path(args.work_dir)
    temporal: dict[str, Any] = {}
    temporal_probabilities: dict[str, dict[str, ClipProbabilities]] = {}
    for config in configs:
        block, temporal_probabilities[config.arch] = evaluate_temporal(
            dataset=emo,
            test_seqs=test_seqs,
            train_seqs=train_seqs,
            config=config,
            work_dir=work_dir,
            progress=progress,
            gate_seqs=gate_seqs,
        )
        n_parameters = sum(
            int(p.numel())
            for p in build_net(
                config=config,
                mean=np.zeros(N_LLD, dtype=np.float32),
                std=np.ones(N_LLD, dtype=np.float32),
            ).parameters()
        )
        temporal[config.arch] = {
            "config": _config_block(config, n_parameters=n_parameters),
            **block,
        }
    corpora = list(next(iter(temporal.values()))["per_corpus"])
    fusion: dict[str, Any] | None = None
    if args.functionals_json is not None:
        # no clip probabilities in an evaluate JSON: nothing to fuse
        functionals = functionals_from_json(path=Path(args.functionals_json), corpora=corpora)
    else:
        from emotion_engine.training.evaluate import load_features
        from emotion_engine.training.train import DEFAULT_CANDIDATE

        feats = load_features(dataset, seed=args.seed, include_baseline=False, progress=progress)
        functionals, functionals_probabilities = functionals_loco(
            dataset=dataset, feats=feats, seed=args.seed, corpora=corpora, progress=progress
        )
        fusion = {
            "method": "late fusion: per held-out clip, temporal_weight * the temporal "
            "network's clip probabilities + (1 - temporal_weight) * the functionals "
            "model's, both from the same LOCO split of this run; clips, true labels and "
            "label order asserted identical; the fused arg-max gives the class, the fused "
            "angry probability the AUC",
            "per_arch": {},
        }
        if args.tune_fusion_weight:
            fusion["weight_choice"] = (
                "per held-out corpus, inner leave-one-corpus-out on its training corpora "
                f"only: the weight of {list(FUSION_WEIGHT_GRID)} with the best mean UAR "
                "over the other four-class corpora (each scored by both systems trained "
                "without it and without the held-out corpus); ties to the weight nearest 0.5"
            )
        for config in configs:
            chosen = (
                {
                    name: training_corpora_fusion_weight(
                        dataset=dataset,
                        emo=emo,
                        feats=feats,
                        test_seqs=test_seqs,
                        train_seqs=train_seqs,
                        config=config,
                        held_out=name,
                        work_dir=work_dir,
                        seed=args.seed,
                        candidate=DEFAULT_CANDIDATE,
                        progress=progress,
                        gate_seqs=gate_seqs,
                    )
                    for name in corpora
                }
                if args.tune_fusion_weight
                else None
            )
            per_arch = fusion_loco(
                temporal=temporal_probabilities[config.arch],
                functionals=functionals_probabilities,
                chosen=chosen,
            )
            per_arch["difference_vs_functionals"] = {
                variant: {
                    "uar_mean": per_arch[variant]["uar_mean"] - functionals["uar_mean"],
                    "angry_auc_mean": per_arch[variant]["angry_auc_mean"]
                    - functionals["angry_auc_mean"],
                }
                for variant in ("equal_weight", "training_corpora_weight")
                if variant in per_arch
            }
            fusion["per_arch"][config.arch] = per_arch
    # latency on real mu-law windows of the last held-out corpus, through the graphs
    # exported for that split
    last = corpora[-1]
    windows, _ = eval_windows(
        seqs=test_seqs,
        rows=np.flatnonzero(emo.corpus == last).astype(np.int64),
        crop_frames=args.crop_frames,
        hop_frames=args.hop_frames,
        min_voiced_frames=configs[0].min_voiced_frames,
        gate_seqs=None if gate_seqs is None else gate_seqs[0],
    )
    latency = measure_latency(
        onnx_paths={
            f"temporal_{c.arch}": work_dir / f"temporal-{c.arch}-without-{last}.onnx"
            for c in configs
        },
        windows=windows,
        shipped_model_dir=None if args.no_shipped_latency else Path(args.shipped_model),
    )
    report: dict[str, Any] = {
        "command": "python -m emotion_engine.training.temporal " + shlex.join(sys.argv[1:]),
        "labels": list(dataset.labels),
        "seed": args.seed,
        "protocol": "leave-one-corpus-out over the corpora whose labels cover all four "
        "classes; train on the other corpora's labelled clips (calm counted as neutral)",
        "recipe": {
            "architectures": build_net.__doc__,
            "loss": "cross-entropy, inverse class-frequency weights",
            "optimiser": "AdamW, one-cycle learning-rate schedule, fixed epochs "
            "(no early stopping, the held-out corpus is only scored)",
            "training_audio": "each clip twice: G.711 mu-law and seeded telephony augmentation; "
            "one speech-gated random crop per clip and epoch",
            "test_audio": "G.711 mu-law; windows every test_hop_frames, speech-gated, "
            "probabilities averaged per clip",
            "onnx_opset": ONNX_OPSET,
            "torch": str(th.__version__),
        },
        "metrics_from": "onnxruntime on each split's exported graph",
        **({} if input_normalisation is None else {"input_normalisation": input_normalisation}),
        "temporal": temporal,
        "functionals": functionals,
        "difference_vs_functionals": {
            arch: {
                "uar_mean": block["uar_mean"] - functionals["uar_mean"],
                "angry_auc_mean": block["angry_auc_mean"] - functionals["angry_auc_mean"],
            }
            for arch, block in temporal.items()
        },
        **({} if fusion is None else {"fusion": fusion}),
        "latency": latency,
        "data": {"root": str(args.data), "corpora": emo.summary()},
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    table = format_table(report)
    print(table)
    if args.out is not None:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        report["table_markdown"] = table
        out.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
        log.info("wrote %s", out)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m emotion_engine.training.temporal``."""
    d = TrainConfig()
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="DIR",
        help="corpora folder, e.g. ../shared/data",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="JSON",
        help="write every number here (e.g. models/temporal.json)",
    )
    parser.add_argument(
        "--arch",
        type=lambda s: [a for a in s.split(",") if a],
        default=[d.arch],
        metavar="A,B",
        help=f"networks to train and compare, from {', '.join(ARCHITECTURES)} (default {d.arch})",
    )
    parser.add_argument(
        "--norm",
        choices=NORMS,
        default=d.norm,
        help="input standardisation: training-frame statistics (global) or per window",
    )
    parser.add_argument(
        "--crop-frames",
        type=int,
        default=d.crop_frames,
        help=f"window length in 10 ms frames (default {d.crop_frames})",
    )
    parser.add_argument(
        "--hop-frames",
        type=int,
        default=d.hop_frames,
        help=f"test window hop in frames (default {d.hop_frames}, the engine's)",
    )
    parser.add_argument(
        "--channels",
        type=int,
        default=None,
        help=f"hidden width (default per network: {DEFAULT_CHANNELS})",
    )
    parser.add_argument("--epochs", type=int, default=d.epochs, help="training epochs")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.learning_rate, help="peak learning rate")
    parser.add_argument("--seed", type=int, default=d.seed, help="random seed (default 0)")
    parser.add_argument(
        "--threads", type=int, default=d.threads, choices=(1, 2), help="torch threads"
    )
    parser.add_argument(
        "--corpora",
        type=lambda s: [c for c in s.split(",") if c],
        default=None,
        metavar="A,B",
        help="only these corpus subfolders",
    )
    parser.add_argument("--limit-per-corpus", type=int, default=None, metavar="N")
    parser.add_argument(
        "--functionals-json",
        type=Path,
        default=None,
        metavar="FILE",
        help="take the functionals model's numbers from this evaluate JSON "
        "(e.g. models/evaluation.json) instead of re-running its LOCO here",
    )
    parser.add_argument(
        "--tune-fusion-weight",
        action="store_true",
        help="besides the equal average, choose the late-fusion weight per held-out corpus "
        "by an inner leave-one-corpus-out on its training corpora (trains each network "
        "twice more per split; needs the functionals LOCO of this run)",
    )
    parser.add_argument(
        "--shipped-model",
        type=Path,
        default=Path("models"),
        metavar="DIR",
        help="shipped model for the latency comparison (default models)",
    )
    parser.add_argument("--no-shipped-latency", action="store_true")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path(".cache/temporal"),
        metavar="DIR",
        help="exported per-split ONNX graphs go here (default .cache/temporal)",
    )
    parser.add_argument(
        "--speaker-norm",
        action="store_true",
        help="z-score every speaker's LLD frames with that speaker's speech-frame statistics "
        "over all its clips, test speakers included (transductive upper bound for per-call "
        "normalisation; the functionals row stays on raw features)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> int:
    run(args)
    return 0


if __name__ == "__main__":
    from emotion_engine.training._entry import run_module

    run_module(
        prog="python -m emotion_engine.training.temporal",
        doc=__doc__,
        add_arguments=add_arguments,
        main=main,
    )
