"""The engine's core: call legs in, events out, batched across legs, no I/O.

A *leg* is one party of one call (``(call_id, party)``). Each leg owns a small
stateful chain::

    int16 pcm -> float32 -> StreamingResampler (to 8 kHz) -> frames (25 ms / 10 ms)
        -> LLD rows (kept for one window) -> due windows (2 s, every 0.5 s)

and :class:`Engine.process` runs the expensive steps once for every leg with
pending audio: one int16 conversion for all 8 kHz legs, their new samples laid end
to end in one buffer and one ``compute_lld_at`` call over every new frame in it, one
``compute_functionals`` call per window length, one ``EmotionModel.predict`` over
all due windows. The results go to each leg's :class:`PartyTracker`, which turns
them into events.

With a :class:`~emotion_engine.model.verifier.Verifier` (stage 2 of the cascade) each
leg also keeps its last window of 8 kHz audio; the speech windows stage 1 proposes
(P(angry) at or above the verifier's ``propose_threshold``) and every speech window of
a leg in a spike go through the verifier in one batch per tick, and its P(angry)
replaces stage 1's for those windows (the other labels rescaled to sum to 1), so
spikes rest on stage 2's verdict where it ran. ``emotion.update`` says which stage
decided (``stage``: 1 or 2). A leg whose audio or state breaks is ended with a ``call.end``
carrying ``reason: "error"``; the other legs go on.

Use::

    engine = Engine(model=EmotionModel.load(DEFAULT_MODEL_DIR))
    events = engine.open_leg(call_id="c1", party="customer", sample_rate=8000)
    engine.push(chunk)               # any number of AudioChunks, any sizes
    events += engine.process()       # when convenient (every chunk, or every tick)
    events += engine.close_leg(call_id="c1", party="customer")
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np
from numpy.typing import NDArray

from emotion_engine.audio.pcm import int16_to_float32
from emotion_engine.audio.resample import StreamingResampler
from emotion_engine.config import (
    DEFAULT_ENGINE_PARAMS,
    MODEL_SAMPLE_RATE_HZ,
    SUPPORTED_INPUT_RATES_HZ,
    EngineParams,
)
from emotion_engine.detect.tracker import PartyTracker
from emotion_engine.errors import AudioError, ConfigError, EngineError
from emotion_engine.features.functionals import FUNCTIONAL_NAMES, compute_functionals
from emotion_engine.features.lld import LLD_NAMES, compute_lld_at
from emotion_engine.frames import AudioChunk, EmotionScores
from emotion_engine.model.confidence import DomainCheck
from emotion_engine.model.normalise import CallNormaliser
from emotion_engine.model.runtime import EmotionModel, ModelOutput
from emotion_engine.model.verifier import Verifier
from emotion_engine.publish.events import Event

log = logging.getLogger(__name__)

LegKey = tuple[str, str]

_VOICED_RATIO = FUNCTIONAL_NAMES.index("voiced_ratio")

MIN_FIRST_WINDOW_FRAMES = 100
"""The first window of a leg is scored after 1 s of audio, not after a full 2 s window,
so a call gets its first reading quickly (emotion needs about 1 s of speech)."""

_AUDIO_SPARE = 2400
"""Samples (0.3 s) a leg's kept audio holds beyond one window: with 100 ms ticks the
oldest samples are dropped every third tick; ~74 KiB per leg with the verifier on."""

MIN_TAIL_WINDOW_FRAMES = 50
"""At hang-up, audio since the last window is scored if it holds at least 0.5 s."""


@dataclass(slots=True)
class _DueWindow:
    leg: _Leg
    lld: NDArray[np.float32]  # (n_frames, n_lld)
    t_start: float
    t_end: float
    end_frame: int = 0  # the window's last frame + 1, in the leg's frames


@dataclass(slots=True)
class _Leg:
    """State of one party of one call. Frame counts are at 8 kHz / 10 ms hop."""

    call_id: str
    party: str
    sample_rate: int
    tracker: PartyTracker
    resampler: StreamingResampler | None
    normaliser: CallNormaliser | None = None  # per-call feature statistics (model-dependent)
    # int16 chunks from push (converted for all legs at once per tick), float32 from
    # push_float (then `has_float` is set and the leg takes the per-leg path)
    pending: list[NDArray[Any]] = field(default_factory=list)
    has_float: bool = False
    # framing: samples at 8 kHz not yet in a whole frame (fewer than frame_length), and
    # samples still to drop before the next frame (only when hop > frame_length)
    tail: NDArray[np.float32] = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    skip: int = 0
    # LLD rows of frames [history_start, history_start + history_len) in the first
    # history_len rows of `history`, a buffer with spare rows: appending is a copy of
    # the new rows only, and the rows no window can reach are dropped when it fills
    history: NDArray[np.float32] | None = None
    history_start: int = 0
    history_len: int = 0
    frames_seen: int = 0
    last_window_end: int = 0  # frame index (exclusive) where the last scored window ended
    samples_in: int = 0  # input samples at the leg's own rate
    t0: float = 0.0  # call time of the leg's first sample
    # with a verifier: 8 kHz samples [audio_start, audio_start + audio_len) of the framed
    # stream in the first audio_len entries of `audio` (dropped as the LLD history is)
    audio: NDArray[np.float32] | None = None
    audio_start: int = 0
    audio_len: int = 0
    in_spike: bool = False  # between an emotion.spike start and its end
    hot: bool = False  # stage 2's last verdict on this leg was at or above the proposal

    @property
    def key(self) -> LegKey:
        return (self.call_id, self.party)

    @property
    def t_audio(self) -> float:
        """Seconds of this leg's audio received so far (call time)."""
        return self.t0 + self.samples_in / self.sample_rate


def _take_pending(leg: _Leg) -> NDArray[np.float32]:
    """Empty a leg's ``pending`` into one (n,) float32 array (the per-leg path: legs
    fed by ``push_float`` or resampled; plain int16 legs are converted together)."""
    pending = leg.pending
    if not pending:
        return np.zeros(0, dtype=np.float32)
    parts = [int16_to_float32(p) if p.dtype == np.int16 else p for p in pending]
    pending.clear()
    leg.has_float = False
    return parts[0] if len(parts) == 1 else np.concatenate(parts, dtype=np.float32)


def _is_plain(leg: _Leg) -> bool:
    """8 kHz int16 input only: the batched conversion path."""
    return leg.resampler is None and not leg.has_float


def _convert_pending(legs: list[_Leg]) -> list[NDArray[np.float32]]:
    """Empty the int16 ``pending`` of every leg (none fed floats) and convert it all in
    one call: returns each leg's (n,) float32 samples, views of one array, leg order.
    Per leg, the join and the conversion were ~4 us of numpy call overhead a tick."""
    chunks: list[NDArray[np.int16]] = []
    bounds = [0]
    for leg in legs:
        size = bounds[-1]
        for part in leg.pending:
            size += part.size
        chunks += leg.pending
        leg.pending.clear()
        bounds.append(size)
    if not chunks:
        return [np.zeros(0, dtype=np.float32) for _ in legs]
    samples = int16_to_float32(np.concatenate(chunks))
    return [samples[a:b] for a, b in pairwise(bounds)]


class Engine:
    """Call legs in, events out; batched across every leg with pending audio."""

    def __init__(
        self,
        *,
        model: EmotionModel,
        params: EngineParams = DEFAULT_ENGINE_PARAMS,
        domain: DomainCheck | None = None,
        verifier: Verifier | None = None,
    ) -> None:
        self.model = model
        self.params = params
        self.verifier = verifier
        self._verify_label = self._verified_label(model, verifier)
        self.windows_scored = 0  # windows through stage 1 (all of them)
        self.windows_verified = 0  # ... and through stage 2
        self.verifier_cpu_s = 0.0  # process CPU seconds while stage 2 ran
        # low-confidence check of speech windows: statistics beside the model, if any
        self.domain = (
            domain
            if domain is not None
            else DomainCheck.load(
                model.onnx_path.parent, feature_names=model.feature_names, params=params.confidence
            )
        )
        self._legs: dict[LegKey, _Leg] = {}
        self._n_lld = len(LLD_NAMES)
        # history buffer rows per leg: one window plus ~5 ticks of new frames, so the
        # rows that fall out of reach are dropped every ~5th tick, not on every tick
        self._history_rows = params.window.window_frames + 56
        # (counts, bounds, starts) of the last _frame_starts call
        self._starts_cache: tuple[list[int], list[int], NDArray[np.int64]] | None = None

    @staticmethod
    def _verified_label(model: EmotionModel, verifier: Verifier | None) -> int:
        if verifier is None:
            return -1
        if "angry" not in model.labels:
            raise ConfigError(
                f"the verifier checks 'angry' but the model's labels are {model.labels}"
            )
        return model.labels.index("angry")

    # -- leg lifecycle -------------------------------------------------------------

    @property
    def legs(self) -> Mapping[LegKey, _Leg]:
        return self._legs

    def open_leg(
        self,
        *,
        call_id: str,
        party: str,
        sample_rate: int,
        t0: float = 0.0,
        info: Mapping[str, Any] | None = None,
    ) -> list[Event]:
        """Start a leg; returns its ``call.start`` event. Raises ConfigError on a bad rate
        or a leg that is already open."""
        key = (call_id, party)
        if key in self._legs:
            raise ConfigError(f"leg already open: call_id={call_id!r} party={party!r}")
        if sample_rate not in SUPPORTED_INPUT_RATES_HZ:
            raise ConfigError(
                f"unsupported sample rate {sample_rate} Hz for call {call_id!r}; "
                f"supported: {', '.join(str(r) for r in SUPPORTED_INPUT_RATES_HZ)}"
            )
        resampler = (
            None
            if sample_rate == MODEL_SAMPLE_RATE_HZ
            else StreamingResampler(rate_in_hz=sample_rate, rate_out_hz=MODEL_SAMPLE_RATE_HZ)
        )
        tracker = PartyTracker(
            call_id=call_id,
            party=party,
            labels=self.model.labels,
            params=self.params.detector,
        )
        leg = _Leg(
            call_id=call_id,
            party=party,
            sample_rate=sample_rate,
            tracker=tracker,
            resampler=resampler,
            normaliser=self.model.new_call_normaliser(),
            t0=t0,
        )
        self._legs[key] = leg
        start_info = {"sample_rate": sample_rate, **(info or {})}
        return tracker.start(t=t0, info=start_info)

    def push(self, chunk: AudioChunk) -> None:
        """Queue a chunk of a leg's audio. Raises AudioError for an unusable chunk
        (unknown leg, wrong dtype or rate); the leg itself stays healthy.

        ``chunk.pcm`` is kept by reference until the next ``process``: do not write to it.
        """
        leg = self._legs.get((chunk.call_id, chunk.party))
        if leg is None:
            raise AudioError(f"no open leg for call_id={chunk.call_id!r} party={chunk.party!r}")
        if chunk.sample_rate != leg.sample_rate:
            raise AudioError(
                f"chunk at {chunk.sample_rate} Hz for leg opened at {leg.sample_rate} Hz "
                f"(call_id={chunk.call_id!r} party={chunk.party!r})"
            )
        pcm = np.asarray(chunk.pcm)
        if pcm.dtype != np.int16 or pcm.ndim != 1:
            raise AudioError(
                f"pcm must be 1-D int16, got {pcm.dtype} with shape {pcm.shape} "
                f"(call_id={chunk.call_id!r})"
            )
        if pcm.size == 0:
            return
        leg.pending.append(pcm)
        leg.samples_in += pcm.size

    def push_float(self, *, call_id: str, party: str, samples: NDArray[np.float32]) -> None:
        """Queue float32 samples in [-1, 1] at the leg's rate (file and microphone paths)."""
        leg = self._legs.get((call_id, party))
        if leg is None:
            raise AudioError(f"no open leg for call_id={call_id!r} party={party!r}")
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise AudioError(f"samples must be 1-D, got shape {samples.shape}")
        if samples.size == 0:
            return
        leg.pending.append(samples)
        leg.has_float = True
        leg.samples_in += samples.size

    def close_leg(self, *, call_id: str, party: str, reason: str = "hangup") -> list[Event]:
        """Score what is left of the leg, end it, and return its final events
        (last updates, an open spike's end, ``call.end`` with the summary)."""
        leg = self._legs.get((call_id, party))
        if leg is None:
            return []
        events: list[Event] = []
        try:
            events += self._run([leg], final=True)
        except EngineError as exc:  # the leg still gets its call.end
            log.warning("leg %s/%s: %s", call_id, party, exc)
            reason = "error"
        if self._legs.pop(leg.key, None) is None:  # already ended by a failure
            return events
        events += leg.tracker.finish(t=leg.t_audio, reason=reason)
        return events

    def close_all(self, *, reason: str = "shutdown") -> list[Event]:
        events: list[Event] = []
        for call_id, party in list(self._legs):
            events += self.close_leg(call_id=call_id, party=party, reason=reason)
        return events

    # -- processing ----------------------------------------------------------------

    def process(self) -> list[Event]:
        """Run every leg with pending audio through features, model and detector."""
        legs = [leg for leg in self._legs.values() if leg.pending]
        if not legs:
            return []
        return self._run(legs, final=False)

    def _run(self, legs: list[_Leg], *, final: bool) -> list[Event]:
        events: list[Event] = []
        plain = [leg for leg in legs if _is_plain(leg)]
        framed: list[_Leg]
        new_samples: list[NDArray[np.float32]]
        if len(plain) == len(legs):  # the usual tick: every leg 8 kHz int16, no per-leg path
            framed, new_samples = plain, _convert_pending(plain)
        else:
            framed, new_samples = [], []
            converted = iter(_convert_pending(plain))
            for leg in legs:
                if _is_plain(leg):
                    samples = next(converted)
                else:
                    try:
                        samples = _take_pending(leg)
                        if leg.resampler is not None:
                            samples = leg.resampler.process(samples)
                            if final:
                                samples = np.concatenate([samples, leg.resampler.flush()])
                    except Exception as exc:
                        events += self._fail(leg, exc)
                        continue
                framed.append(leg)
                new_samples.append(samples)
        self._frame_and_lld(framed, new_samples)
        due: list[_DueWindow] = []
        hop_frames = self.params.window.hop_frames
        first_end = max(MIN_FIRST_WINDOW_FRAMES, hop_frames)
        for leg in framed:
            # no window is due for most legs on most ticks: test here, without the
            # call and its lookups (~1 us per leg a tick)
            end = leg.last_window_end + hop_frames if leg.last_window_end else first_end
            if final or end <= leg.frames_seen:
                due += self._due_windows(leg, next_end=end, final=final)
        if due:
            events += self._score(due)
        return events

    def _frame_and_lld(self, legs: list[_Leg], new_samples: list[NDArray[np.float32]]) -> None:
        """Frame each leg's new 8 kHz samples (after its carried tail) and append the
        LLD rows of the new frames to its history: all legs' audio laid end to end in
        one buffer, one ``compute_lld_at`` call over every new frame."""
        fp = self.params.features
        length, hop = fp.frame_length, fp.hop_length
        pieces: list[NDArray[np.float32]] = []
        counts: list[int] = []
        bounds = [0]  # leg i's tail + new samples are joint[bounds[i] : bounds[i + 1]]
        offset = 0
        keep_audio = self.verifier is not None
        for leg, x in zip(legs, new_samples, strict=True):
            if leg.skip:
                dropped = min(leg.skip, x.size)
                x, leg.skip = x[dropped:], leg.skip - dropped
            if keep_audio:
                self._append_audio(leg, x)
            tail = leg.tail
            size = tail.size + x.size
            # n_frames(), inlined: a keyword call per leg a tick costs more than the sum
            count = 1 + (size - length) // hop if size >= length else 0
            if count:  # else a skip still pending from an earlier push stands
                leg.skip = max(0, count * hop - size)
            pieces += (tail, x)
            counts.append(count)
            offset += size
            bounds.append(offset)
        if not pieces:
            return
        joint = np.concatenate(pieces)
        total = sum(counts)
        lld: NDArray[np.float32] | None = None
        if total:
            lld = compute_lld_at(signal=joint, starts=self._frame_starts(counts, bounds), params=fp)
        row = 0
        for leg, count, (start, stop) in zip(legs, counts, pairwise(bounds), strict=True):
            # a copy, so the carried samples do not pin the joint buffer
            leg.tail = joint[min(start + count * hop, stop) : stop].copy()
            if count:
                assert lld is not None
                # _append_history's usual case inlined (a call per leg a tick): room left
                used, history = leg.history_len, leg.history
                if history is not None and used + count <= history.shape[0]:
                    history[used : used + count] = lld[row : row + count]
                    leg.history_len = used + count
                    leg.frames_seen += count
                else:
                    self._append_history(leg, lld[row : row + count])
                row += count

    def _append_audio(self, leg: _Leg, x: NDArray[np.float32]) -> None:
        """Append (n,) framed-stream samples to the leg's audio, first dropping what no
        window due from now on can reach (it starts after the last window's worth of
        samples already held)."""
        fp = self.params.features
        reach = self.params.window.window_frames * fp.hop_length + fp.frame_length
        audio, used = leg.audio, leg.audio_len
        if audio is None or used + x.size > audio.shape[0]:
            drop = max(0, used - reach)
            kept = used - drop
            size = max(reach + _AUDIO_SPARE, kept + x.size)
            grown = (
                np.empty(size, dtype=np.float32)
                if audio is None or size > audio.shape[0]
                else audio
            )
            if audio is not None:
                grown[:kept] = audio[drop:used]
            leg.audio, leg.audio_start, used = grown, leg.audio_start + drop, kept
            audio = grown
        audio[used : used + x.size] = x
        leg.audio_len = used + x.size

    def _window_audio(self, w: _DueWindow) -> NDArray[np.float32]:
        """(n,) 8 kHz samples of a due window (a copy), from its leg's audio."""
        leg, fp = w.leg, self.params.features
        assert leg.audio is not None
        stop = (w.end_frame - 1) * fp.hop_length + fp.frame_length - leg.audio_start
        start = max(0, w.end_frame - len(w.lld)) * fp.hop_length - leg.audio_start
        return leg.audio[max(0, start) : max(0, stop)].copy()

    def _frame_starts(self, counts: list[int], bounds: list[int]) -> NDArray[np.int64]:
        """(sum(counts),) start of every new frame in the joint buffer: leg i's frame k at
        ``bounds[i] + k * hop``. The last tick's array when the legs' sizes repeat, as
        they do tick after tick in a steady stream (six numpy calls saved a tick)."""
        cached = self._starts_cache
        if cached is not None and cached[0] == counts and cached[1] == bounds:
            return cached[2]
        hop = self.params.features.hop_length
        counts_arr = np.array(counts, dtype=np.int64)
        first_row = np.cumsum(counts_arr) - counts_arr
        # (bounds[i] - first_row[i] * hop) + row * hop, row the frame's row in the output
        shift = np.array(bounds[:-1], dtype=np.int64) - first_row * hop
        total = int(counts_arr.sum())
        starts = np.repeat(shift, counts_arr) + np.arange(0, total * hop, hop, dtype=np.int64)
        # shared with later ticks: compute_lld_at only reads it (a read-only flag would
        # make numba compile its kernels a second time, for read-only arrays)
        self._starts_cache = (counts, bounds, starts)
        return starts

    def _append_history(self, leg: _Leg, rows: NDArray[np.float32]) -> None:
        """Append (n, n_lld) LLD rows to the leg's history, dropping the rows no window
        can reach any more when the buffer is full: every window still due ends after
        ``frames_seen``, so starts after ``frames_seen - window_frames``."""
        n = rows.shape[0]
        history, used = leg.history, leg.history_len  # locals: this runs per leg a tick
        if history is None:
            history = leg.history = np.empty(
                (max(self._history_rows, n), self._n_lld), dtype=np.float32
            )
        elif used + n > history.shape[0]:
            keep_from = max(leg.history_start, leg.frames_seen - self.params.window.window_frames)
            drop = keep_from - leg.history_start
            kept = used - drop
            if kept + n > history.shape[0]:  # a long push: a bigger buffer
                grown = np.empty((kept + n, self._n_lld), dtype=np.float32)
                grown[:kept] = history[drop:used]
                history = leg.history = grown
            else:  # overlapping copy: numpy buffers it
                history[:kept] = history[drop:used]
            leg.history_start = keep_from
            used = kept
        history[used : used + n] = rows
        leg.history_len = used + n
        leg.frames_seen += n

    def _due_windows(self, leg: _Leg, *, next_end: int, final: bool) -> list[_DueWindow]:
        """The leg's windows due now: the one ending at ``next_end`` (the leg's next
        window end, from :meth:`_run`) and every hop after it up to ``frames_seen``;
        with ``final`` also a last, shorter one over the tail."""
        wp = self.params.window
        fp = self.params.features
        end = next_end
        ends: list[int] = []
        while end <= leg.frames_seen:
            ends.append(end)
            end += wp.hop_frames
        tail = leg.frames_seen - (ends[-1] if ends else leg.last_window_end)
        if final and tail >= MIN_TAIL_WINDOW_FRAMES:
            ends.append(leg.frames_seen)
        windows: list[_DueWindow] = []
        history = leg.history
        hop_s = fp.hop_length / fp.sample_rate_hz
        for end in ends:
            assert history is not None
            start = max(0, end - wp.window_frames)
            # a view: consumed (stacked) by _score in this same tick, before the
            # history buffer is written again
            rows = history[start - leg.history_start : end - leg.history_start]
            windows.append(
                _DueWindow(
                    leg=leg,
                    lld=rows,
                    t_start=leg.t0 + start * hop_s,
                    t_end=leg.t0
                    + ((end - 1) * fp.hop_length + fp.frame_length) / fp.sample_rate_hz,
                    end_frame=end,
                )
            )
        if ends:
            leg.last_window_end = ends[-1]
        return windows

    def _score(self, due: list[_DueWindow]) -> list[Event]:
        """Functionals (batched per window length) -> one model run -> trackers."""
        features = np.empty((len(due), len(self.model.feature_names)), dtype=np.float32)
        ratios = np.empty(len(due), dtype=np.float32)
        by_length: dict[int, list[int]] = {}
        for i, w in enumerate(due):
            by_length.setdefault(len(w.lld), []).append(i)
        for idx in by_length.values():
            functionals = compute_functionals(lld=np.stack([due[i].lld for i in idx]))
            features[idx] = functionals
            # the functional is voiced_ratio()'s share (LLDs are finite), one pass fewer
            ratios[idx] = functionals[:, _VOICED_RATIO]
        min_voiced = self.params.window.min_voiced_frames
        lengths = np.fromiter((len(w.lld) for w in due), dtype=np.float64, count=len(due))
        speech = ratios.astype(np.float64) * lengths >= min_voiced  # voiced frames >= gate
        verdict = self.domain.check(features, is_speech=speech)
        if self.model.call_norm is not None:
            output = self._predict_per_call(due, features, speech & ~verdict.low)
        else:
            output = self.model.predict(features)
        self.windows_scored += len(due)
        events: list[Event] = []
        labels = self.model.labels
        stage = [1] * len(due)
        probs = output.probabilities
        if self.verifier is not None:
            # low-confidence windows move no detector: not worth stage 2's time
            probs = self._verify(due, probs, features, speech & ~verdict.low, stage)
        # Python floats for all windows at once (tolist gives the same values as
        # float() of each element, without a numpy scalar per value)
        probabilities = probs.tolist()
        arousal = output.arousal.tolist()
        ratio_list = ratios.tolist()
        speech_list = speech.tolist()
        low_list = verdict.low.tolist()
        distance_list = verdict.distance.tolist()
        for i, w in enumerate(due):
            if w.leg.key not in self._legs:  # the leg failed earlier in this batch
                continue
            scores = EmotionScores(
                call_id=w.leg.call_id,
                party=w.leg.party,
                t=round(w.t_end, 4),
                probabilities=dict(zip(labels, probabilities[i], strict=True)),
                arousal=arousal[i],
                voiced_ratio=ratio_list[i],
                is_speech=speech_list[i],
                low_confidence=low_list[i],
                low_confidence_reason=verdict.reason(i) if low_list[i] else None,
                ood_distance=(
                    round(distance_list[i], 2)
                    if speech_list[i] and distance_list[i] == distance_list[i]  # not NaN
                    else None
                ),
                stage=stage[i],
            )
            try:
                produced = w.leg.tracker.update(scores)
            except Exception as exc:
                events += self._fail(w.leg, exc)
                continue
            if len(produced) > 1:  # spike events follow the update
                for e in produced[1:]:
                    if e.type == "emotion.spike":
                        w.leg.in_spike = e.payload.get("phase") == "start"
            events += produced
        return events

    def _predict_per_call(
        self, due: list[_DueWindow], features: NDArray[np.float32], trusted: NDArray[np.bool_]
    ) -> ModelOutput:
        """A per-call normalised model: each leg's windows in time order, each normalised
        by the statistics of that leg's earlier windows judged calm (trusted speech whose
        spike-emotion scores stay at or below the detector's ``calm_max_score``), so a caller
        angry from the start, or for long, is not normalised into their own "normal".
        ``trusted``: (n,) speech windows not flagged low confidence. One model run per
        round of the legs' k-th due windows (one round a tick when live)."""
        by_leg: dict[LegKey, list[int]] = {}
        for i, w in enumerate(due):
            by_leg.setdefault(w.leg.key, []).append(i)
        labels = self.model.labels
        watch = [labels.index(e) for e in self.params.detector.spike_emotions if e in labels]
        calm_max = self.params.detector.calm_max_score
        probabilities = np.empty((len(due), len(labels)), dtype=np.float32)
        arousal = np.empty(len(due), dtype=np.float32)
        rounds = max(len(idx) for idx in by_leg.values())
        for k in range(rounds):
            rows = [idx[k] for idx in by_leg.values() if len(idx) > k]
            z = np.empty((len(rows), features.shape[1]), dtype=np.float32)
            for j, i in enumerate(rows):
                norm = due[i].leg.normaliser
                assert norm is not None
                z[j] = norm.normalise(features[i : i + 1])[0]
            out = self.model.predict(z, normalised=True)
            probabilities[rows] = out.probabilities
            arousal[rows] = out.arousal
            calm = trusted[rows]
            if watch:
                calm &= out.probabilities[:, watch].max(axis=1) <= calm_max
            for j, i in enumerate(rows):
                if calm[j]:
                    norm = due[i].leg.normaliser
                    assert norm is not None
                    norm.learn(features[i : i + 1])
        return ModelOutput(probabilities=probabilities, arousal=arousal)

    def _verify(
        self,
        due: list[_DueWindow],
        probs: NDArray[np.float32],
        stage1: NDArray[np.float32],
        speech: NDArray[np.bool_],
        stage: list[int],
    ) -> NDArray[np.float32]:
        """Stage 2 on the proposed windows: (n_windows, n_labels) probabilities with
        P(angry) replaced by the verifier's where it ran (``stage`` set to 2 there)."""
        verifier = self.verifier
        assert verifier is not None
        k = self._verify_label
        proposed = (probs[:, k] >= verifier.propose_threshold) & speech
        for i, w in enumerate(due):
            if speech[i] and (w.leg.in_spike or w.leg.hot):
                proposed[i] = True
        idx = np.flatnonzero(proposed)
        if idx.size == 0:
            return probs
        started = time.process_time()  # CTranslate2 encodes on its own thread
        p2 = verifier.verify(
            windows=[self._window_audio(due[i]) for i in idx],
            stage1=stage1[idx] if verifier.head.stage1_features else None,
        )
        self.verifier_cpu_s += time.process_time() - started
        self.windows_verified += idx.size
        out = probs.astype(np.float64)  # a copy
        rows = out[idx]
        p1 = rows[:, k]
        rest = np.where(p1 < 1.0, (1.0 - p2) / np.maximum(1.0 - p1, 1e-12), 0.0)
        rows *= rest[:, None]
        n_labels = rows.shape[1]
        rows[p1 >= 1.0] = (1.0 - p2[p1 >= 1.0])[:, None] / max(1, n_labels - 1)
        rows[:, k] = p2
        out[idx] = rows
        threshold = verifier.propose_threshold
        for i, p in zip(idx.tolist(), p2.tolist(), strict=True):
            stage[i] = 2
            due[i].leg.hot = p >= threshold
        return out.astype(np.float32)

    def _fail(self, leg: _Leg, exc: BaseException) -> list[Event]:
        """End one leg after an unexpected error; the others go on."""
        log.error("leg %s/%s failed and is closed: %r", leg.call_id, leg.party, exc)
        self._legs.pop(leg.key, None)
        return leg.tracker.finish(t=leg.t_audio, reason="error")
