"""Audio files in (WAV, FLAC and anything else libsndfile reads), streamed in blocks.

``open_audio(path)`` reads only the header and returns an :class:`AudioSource`;
``source.blocks(block_samples=...)`` then streams float32 (n_channels, n) blocks, so a
10-hour recording never sits in memory whole. ``read_audio(path)`` loads a (short)
file at once. Channel 0 of a stereo call is the customer, channel 1 the agent. Blocks
go next to the engine, one :class:`~emotion_engine.audio.resample.StreamingResampler`
per channel.

How each kind of input is handled (every error is an :class:`AudioFileError` whose
one-line message starts with the path):

- format: detected from the content by libsndfile, never from the extension, so a
  WAV named ``call.mp3`` or ``call.txt`` is read as WAV; bytes that are not audio
  (or a headerless raw file) are an error.
- missing path, directory, unreadable, empty (0 bytes): error.
- 0 samples (header only): error. 1 sample or a few: read as is (the analyser
  decides whether it is long enough).
- truncated: if libsndfile can read the part that is there (WAV: the header's size
  is corrected to the data present), that part is the file; if decoding fails part
  way (FLAC: "lost sync"), the blocks before the failure are yielded and then an
  error says how many samples were read of how many announced.
- more than 2 channels: error naming the count (a call has customer and agent).
- sample rate outside ``SUPPORTED_INPUT_RATES_HZ``: error listing the supported rates.
- NaN or +/-inf samples (float files): replaced with 0 and counted in
  ``AudioSource.non_finite_samples`` as blocks are read.
- clipped audio, DC offset, values beyond +/-1.0 in float files: read unchanged
  (the features remove DC; clipping is the recording's own).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from numpy.typing import NDArray

from emotion_engine.config import SUPPORTED_INPUT_RATES_HZ
from emotion_engine.errors import AudioFileError

__all__ = ["MAX_CHANNELS", "AudioSource", "open_audio", "read_audio"]

MAX_CHANNELS = 2
"""A call recording is mono (one party) or stereo (customer, agent)."""

_READ_ALL_BLOCK = 1 << 16


def _libsndfile_message(exc: Exception) -> str:
    # LibsndfileError.error_string is libsndfile's own text, without soundfile's
    # "Error opening '<path>': " prefix that would repeat the path.
    return str(getattr(exc, "error_string", None) or exc).strip().rstrip(".")


@dataclass(slots=True)
class AudioSource:
    """An opened audio file: header facts plus a block reader.

    ``n_samples`` is per channel, as the header (corrected by libsndfile) states.
    ``non_finite_samples`` counts NaN/inf values replaced with 0 during the latest
    pass of :meth:`blocks` (it is 0 until a pass has read them).
    """

    path: Path
    sample_rate: int
    n_channels: int
    n_samples: int
    format: str
    subtype: str
    non_finite_samples: int = field(default=0)

    @property
    def duration_s(self) -> float:
        """Length in seconds (``n_samples / sample_rate``)."""
        return self.n_samples / self.sample_rate

    def blocks(self, *, block_samples: int) -> Generator[NDArray[np.float32], None, None]:
        """Stream the file: float32 (n_channels, n) blocks with ``n <= block_samples``
        (only the last one shorter), full scale 1.0. Reopens the file on each call."""
        if block_samples < 1:
            raise AudioFileError(f"{self.path}: block_samples must be >= 1, got {block_samples!r}")
        self.non_finite_samples = 0
        done = 0
        try:
            with sf.SoundFile(self.path) as f:
                while True:
                    data = f.read(block_samples, dtype="float32", always_2d=True)
                    if data.shape[0] == 0:
                        return
                    block = np.ascontiguousarray(data.T)
                    self.non_finite_samples += _zero_non_finite(block)
                    done += block.shape[1]
                    yield block
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise AudioFileError(
                f"{self.path}: truncated or corrupt: decoding failed after {done} of "
                f"{self.n_samples} samples ({_libsndfile_message(exc)})"
            ) from exc
        except OSError as exc:
            raise AudioFileError(f"{self.path}: cannot read: {exc.strerror or exc}") from exc


def _zero_non_finite(block: NDArray[np.float32]) -> int:
    """Replace NaN/inf with 0 in place; returns how many there were."""
    bad = ~np.isfinite(block)
    count = int(np.count_nonzero(bad))
    if count:
        block[bad] = 0.0
    return count


def _check_path(path: Path) -> None:
    if not path.exists():
        raise AudioFileError(f"{path}: no such file")
    if path.is_dir():
        raise AudioFileError(f"{path}: is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise AudioFileError(f"{path}: empty file (0 bytes)")


def open_audio(path: str | Path) -> AudioSource:
    """Open ``path`` and check it can be analysed, reading only its header.

    Raises :class:`AudioFileError` (see the module docstring for each case).
    """
    p = Path(path)
    _check_path(p)
    try:
        info = sf.info(str(p))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioFileError(
            f"{p}: not a readable audio file ({_libsndfile_message(exc)})"
        ) from exc
    except OSError as exc:
        raise AudioFileError(f"{p}: cannot read: {exc.strerror or exc}") from exc
    if info.channels > MAX_CHANNELS:
        raise AudioFileError(
            f"{p}: {info.channels} channels; a call has 1 (mono) or 2 "
            "(channel 0 customer, channel 1 agent)"
        )
    if info.samplerate not in SUPPORTED_INPUT_RATES_HZ:
        raise AudioFileError(
            f"{p}: unsupported sample rate {info.samplerate} Hz; supported: "
            f"{', '.join(str(r) for r in SUPPORTED_INPUT_RATES_HZ)}"
        )
    if info.frames <= 0:
        raise AudioFileError(f"{p}: no audio samples ({info.format} header only)")
    return AudioSource(
        path=p,
        sample_rate=int(info.samplerate),
        n_channels=int(info.channels),
        n_samples=int(info.frames),
        format=str(info.format),
        subtype=str(info.subtype),
    )


def read_audio(path: str | Path) -> tuple[NDArray[np.float32], int]:
    """Load a whole file: (float32 (n_channels, n_samples), sample_rate_hz).

    Same checks and handling as :func:`open_audio`; for long recordings stream
    :meth:`AudioSource.blocks` instead.
    """
    source = open_audio(path)
    blocks = list(source.blocks(block_samples=_READ_ALL_BLOCK))
    samples = (
        np.concatenate(blocks, axis=1)
        if len(blocks) > 1
        else blocks[0]
        if blocks
        else np.zeros((source.n_channels, 0), dtype=np.float32)
    )
    return samples, source.sample_rate
