"""The audio layer: codecs, sample conversion, resampling, framing and file reading.

Live path: G.711 codes -> :mod:`~emotion_engine.audio.g711` decode -> int16 ->
:func:`~emotion_engine.audio.pcm.int16_to_float32` -> :class:`StreamingResampler`
(to 8 kHz) -> :class:`Framer` (25 ms / 10 ms) -> features. Files enter through
:func:`open_audio` and its ``blocks()``.
"""

from emotion_engine.audio.framing import Framer, frame_signal, n_frames
from emotion_engine.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from emotion_engine.audio.io import AudioSource, open_audio, read_audio
from emotion_engine.audio.pcm import float32_to_int16, int16_to_float32
from emotion_engine.audio.resample import StreamingResampler, resample

__all__ = [
    "AudioSource",
    "Framer",
    "StreamingResampler",
    "alaw_decode",
    "alaw_encode",
    "float32_to_int16",
    "frame_signal",
    "int16_to_float32",
    "n_frames",
    "open_audio",
    "read_audio",
    "resample",
    "ulaw_decode",
    "ulaw_encode",
]
