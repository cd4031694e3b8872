"""G.711 mu-law and A-law codecs as lookup tables (the telephone network's 8-bit PCM).

Encoding indexes a 65,536-entry table with the int16 samples reinterpreted as uint16;
decoding indexes a 256-entry table with the codes. Both take any shape and return the
same shape, so a whole RTP payload (or a batch of them) is one fancy-index.

The tables are built once, at import, from the classic segment algorithm (Sun
Microsystems' public-domain ``g711.c``, the one CPython's ``audioop`` uses): 16-bit
input is reduced to 14 bits (mu-law) or 13 bits (A-law), then coded as sign, 3-bit
segment and 4-bit mantissa; A-law codes are stored with even bits inverted (XOR 0x55)
and mu-law codes fully inverted, as on the wire.

A-law is bit-exact with the ITU-T G.191 software tools (``g711.c``) for every input.
For mu-law the two references disagree on 508 negative inputs (-1..-4 and one value
at each decision threshold): G.191 takes the one's complement of a negative sample
before dropping two bits, ``audioop`` negates it; we follow ``audioop`` (the agreed
test oracle) and the codes differ by one step at most.

Decoded int16 goes next to :func:`emotion_engine.audio.pcm.int16_to_float32`.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.typing import NDArray

from emotion_engine.errors import AudioError

__all__ = ["alaw_decode", "alaw_encode", "ulaw_decode", "ulaw_encode"]

_ULAW_BIAS: Final = 0x84  # 132 on the 16-bit scale = 33 on the 14-bit scale
_ULAW_CLIP_14: Final = 8159  # largest 14-bit magnitude before the bias pushes it out of range
# Upper end (inclusive) of each segment, on the biased 14-bit (mu) / 13-bit (A) scale.
_ULAW_SEG_END: Final = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_ALAW_SEG_END: Final = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])


def _all_int16() -> NDArray[np.int32]:
    """Every int16 value, ordered by its uint16 bit pattern (the encode table's index)."""
    return np.arange(1 << 16, dtype=np.uint16).view(np.int16).astype(np.int32)


def _build_ulaw_encode() -> NDArray[np.uint8]:
    x = _all_int16() >> 2  # 14-bit, arithmetic shift as in the reference
    negative = x < 0
    mag = np.minimum(np.where(negative, -x, x), _ULAW_CLIP_14) + (_ULAW_BIAS >> 2)
    seg = np.searchsorted(_ULAW_SEG_END, mag, side="left")  # first end >= mag
    code = np.where(seg >= 8, 0x7F, (np.minimum(seg, 7) << 4) | ((mag >> (seg + 1)) & 0x0F))
    mask = np.where(negative, 0x7F, 0xFF)
    return (code ^ mask).astype(np.uint8)


def _build_ulaw_decode() -> NDArray[np.int16]:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    mantissa, seg = u & 0x0F, (u & 0x70) >> 4
    mag = (((mantissa << 3) + _ULAW_BIAS) << seg) - _ULAW_BIAS
    return np.where(u & 0x80, -mag, mag).astype(np.int16)


def _build_alaw_encode() -> NDArray[np.uint8]:
    x = _all_int16() >> 3  # 13-bit
    negative = x < 0
    # One's complement for negatives keeps the A-law table symmetric without a zero code.
    mag = np.where(negative, -x - 1, x)
    seg = np.searchsorted(_ALAW_SEG_END, mag, side="left")
    shift = np.maximum(seg, 1)
    code = np.where(seg >= 8, 0x7F, (np.minimum(seg, 7) << 4) | ((mag >> shift) & 0x0F))
    mask = np.where(negative, 0x55, 0xD5)
    return (code ^ mask).astype(np.uint8)


def _build_alaw_decode() -> NDArray[np.int16]:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    mantissa, seg = a & 0x0F, (a & 0x70) >> 4
    # Segment 0 has no implied leading bit; segments >= 1 do (0x100), each doubling the step.
    mag = np.where(
        seg == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(seg - 1, 0)
    )
    return np.where(a & 0x80, mag, -mag).astype(np.int16)


ULAW_ENCODE_TABLE: Final[NDArray[np.uint8]] = _build_ulaw_encode()
"""(65536,) uint8: mu-law code of every int16, indexed by ``pcm.view(np.uint16)``."""
ULAW_DECODE_TABLE: Final[NDArray[np.int16]] = _build_ulaw_decode()
"""(256,) int16: linear value of every mu-law code."""
ALAW_ENCODE_TABLE: Final[NDArray[np.uint8]] = _build_alaw_encode()
"""(65536,) uint8: A-law code of every int16, indexed by ``pcm.view(np.uint16)``."""
ALAW_DECODE_TABLE: Final[NDArray[np.int16]] = _build_alaw_decode()
"""(256,) int16: linear value of every A-law code."""
for _table in (ULAW_ENCODE_TABLE, ULAW_DECODE_TABLE, ALAW_ENCODE_TABLE, ALAW_DECODE_TABLE):
    _table.flags.writeable = False  # shared by every call leg: nobody may patch them


def _as_int16(pcm: NDArray[np.int16]) -> NDArray[np.int16]:
    arr = np.asarray(pcm)
    if arr.dtype != np.int16:
        raise AudioError(f"G.711 encode needs int16 samples, got dtype {arr.dtype}")
    return arr


def _as_uint8(codes: NDArray[np.uint8]) -> NDArray[np.uint8]:
    arr = np.asarray(codes)
    if arr.dtype != np.uint8:
        raise AudioError(f"G.711 decode needs uint8 codes, got dtype {arr.dtype}")
    return arr


def ulaw_encode(pcm: NDArray[np.int16]) -> NDArray[np.uint8]:
    """Encode int16 samples of any shape to mu-law codes of the same shape (uint8)."""
    arr = _as_int16(pcm)
    return ULAW_ENCODE_TABLE[arr.view(np.uint16)]


def ulaw_decode(codes: NDArray[np.uint8]) -> NDArray[np.int16]:
    """Decode mu-law codes (uint8, any shape; e.g. an RTP payload via ``np.frombuffer``)
    to int16 samples of the same shape."""
    return ULAW_DECODE_TABLE[_as_uint8(codes)]


def alaw_encode(pcm: NDArray[np.int16]) -> NDArray[np.uint8]:
    """Encode int16 samples of any shape to A-law codes of the same shape (uint8)."""
    arr = _as_int16(pcm)
    return ALAW_ENCODE_TABLE[arr.view(np.uint16)]


def alaw_decode(codes: NDArray[np.uint8]) -> NDArray[np.int16]:
    """Decode A-law codes (uint8, any shape) to int16 samples of the same shape."""
    return ALAW_DECODE_TABLE[_as_uint8(codes)]
