"""G.711 tables against CPython's audioop (the Sun/ITU reference algorithm) and the
textbook segment formulas; int16 <-> float32 conversion."""

from __future__ import annotations

import math
import sys
import warnings

import numpy as np
import pytest

from emotion_engine.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from emotion_engine.audio.pcm import float32_to_int16, int16_to_float32
from emotion_engine.errors import AudioError

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    if sys.version_info >= (3, 13):
        audioop = pytest.importorskip("audioop", reason="pip install audioop-lts on Python >= 3.13")
    else:
        import audioop

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
ALL_CODES = np.arange(256, dtype=np.uint8)


def _ref_encode(fn_name: str, pcm: np.ndarray) -> np.ndarray:
    return np.frombuffer(getattr(audioop, fn_name)(pcm.tobytes(), 2), dtype=np.uint8)


def _ref_decode(fn_name: str, codes: np.ndarray) -> np.ndarray:
    return np.frombuffer(getattr(audioop, fn_name)(codes.tobytes(), 2), dtype=np.int16)


def test_ulaw_encode_matches_audioop_for_every_int16() -> None:
    np.testing.assert_array_equal(ulaw_encode(ALL_INT16), _ref_encode("lin2ulaw", ALL_INT16))


def test_alaw_encode_matches_audioop_for_every_int16() -> None:
    np.testing.assert_array_equal(alaw_encode(ALL_INT16), _ref_encode("lin2alaw", ALL_INT16))


def test_ulaw_decode_matches_audioop_for_every_code() -> None:
    np.testing.assert_array_equal(ulaw_decode(ALL_CODES), _ref_decode("ulaw2lin", ALL_CODES))


def test_alaw_decode_matches_audioop_for_every_code() -> None:
    np.testing.assert_array_equal(alaw_decode(ALL_CODES), _ref_decode("alaw2lin", ALL_CODES))


def _textbook_ulaw(code: int) -> int:
    """mu-law: wire byte inverted; sign, segment s, mantissa m; |x| = ((2m + 33) * 2**s - 33)
    in 14-bit units, times 4 on the 16-bit scale; sign bit of the inverted byte 1 = negative."""
    u = ~code & 0xFF
    s, m = (u >> 4) & 7, u & 15
    mag = (((2 * m + 33) << s) - 33) * 4
    return -mag if u & 0x80 else mag


def _textbook_alaw(code: int) -> int:
    """A-law: even bits inverted; |x| = 2m + 1 (s = 0) or (2m + 33) * 2**(s-1) in 13-bit
    units (half-step reconstruction), times 8 on the 16-bit scale; sign bit 1 = positive."""
    a = code ^ 0x55
    s, m = (a >> 4) & 7, a & 15
    mag = (2 * m + 1) * 8 if s == 0 else ((2 * m + 33) << (s - 1)) * 8
    return mag if a & 0x80 else -mag


@pytest.mark.parametrize("code", [0x00, 0x0F, 0x35, 0x7F, 0x80, 0x9A, 0xE3, 0xFF])
def test_ulaw_decode_matches_segment_formula(code: int) -> None:
    assert int(ulaw_decode(np.array([code], dtype=np.uint8))[0]) == _textbook_ulaw(code)


@pytest.mark.parametrize("code", [0x00, 0x2A, 0x55, 0x7F, 0x80, 0xAA, 0xD5, 0xFF])
def test_alaw_decode_matches_segment_formula(code: int) -> None:
    assert int(alaw_decode(np.array([code], dtype=np.uint8))[0]) == _textbook_alaw(code)


def _ulaw_step(mag: np.ndarray) -> np.ndarray:
    """mu-law step on the 16-bit scale: 8 * 2**s, segment s from the biased 14-bit magnitude."""
    s = np.clip(np.floor(np.log2((mag / 4 + 33) / 32)), 0, 7)
    step: np.ndarray = 8 * 2**s
    return step


def _alaw_step(mag: np.ndarray) -> np.ndarray:
    """A-law step on the 16-bit scale: 16 in segments 0 and 1, then doubling."""
    s = np.clip(np.floor(np.log2(np.maximum(mag / 8, 1) / 16)), 0, 7)
    step: np.ndarray = 8 * 2 ** np.maximum(s, 1)
    return step


def test_alaw_round_trip_error_is_at_most_half_a_step() -> None:
    x = ALL_INT16.astype(np.int64)
    y = alaw_decode(alaw_encode(ALL_INT16)).astype(np.int64)
    assert np.all(np.abs(y - x) <= _alaw_step(np.abs(x)) / 2)


def test_ulaw_round_trip_error_is_at_most_half_a_step_below_clipping() -> None:
    """Positive side: the half-step bound of the segment law. The negative side shows
    audioop's (and this table's) known asymmetry: negating before dropping two bits
    rounds negative samples away from zero, and at 21 values just past a decision
    threshold the code lands one step further out (G.191's one's complement does not)."""
    x = np.arange(0, 32125, dtype=np.int64)  # 32124: largest mu-law level; above it clips
    y = ulaw_decode(ulaw_encode(x.astype(np.int16))).astype(np.int64)
    assert np.all(np.abs(y - x) <= _ulaw_step(x) / 2)
    y_neg = ulaw_decode(ulaw_encode((-x).astype(np.int16))).astype(np.int64)
    err_neg = np.abs(y_neg + x)
    # Two's-complement truncation costs up to 3 LSB; beyond that only the 21 values.
    assert np.count_nonzero(err_neg > _ulaw_step(x) / 2 + 3) == 21
    assert np.all(err_neg <= _ulaw_step(x) / 2 + _ulaw_step(x + 512) / 2)


def test_ulaw_codes_follow_the_continuous_mu_law_curve() -> None:
    """The 8-bit segment code approximates 127 * ln(1 + 255|x|) / ln(256) within 2 levels."""
    x = ALL_INT16[::7].astype(np.float64) / 32768.0
    level = 127 - (ulaw_encode(ALL_INT16[::7]) & 0x7F).astype(np.float64)
    curve = 127 * np.log1p(255 * np.abs(x)) / math.log(256)
    assert np.max(np.abs(level - curve)) <= 2.0


def test_any_shape_in_same_shape_out() -> None:
    pcm = ALL_INT16[:600].reshape(2, 3, 100)
    assert ulaw_encode(pcm).shape == (2, 3, 100)
    assert alaw_decode(alaw_encode(pcm)).shape == (2, 3, 100)
    strided = ALL_INT16[::3]  # a non-contiguous view is coded like its copy
    np.testing.assert_array_equal(ulaw_encode(strided), ulaw_encode(strided.copy()))


def test_wrong_dtype_is_rejected_with_the_dtype_in_the_message() -> None:
    with pytest.raises(AudioError, match="float64"):
        ulaw_encode(np.zeros(4))  # type: ignore[arg-type]
    with pytest.raises(AudioError, match="int16"):
        alaw_decode(np.zeros(4, dtype=np.int16))


def test_int16_to_float32_is_division_by_32768() -> None:
    got = int16_to_float32(ALL_INT16)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.astype(np.float64), ALL_INT16.astype(np.float64) / 32768.0)


def test_float32_to_int16_inverts_int16_to_float32_exactly() -> None:
    np.testing.assert_array_equal(float32_to_int16(int16_to_float32(ALL_INT16)), ALL_INT16)


def test_float32_to_int16_rounds_and_clips() -> None:
    values = [0.3 / 32768, 0.5 / 32768, 1.5 / 32768, -2.5 / 32768, 1.0, -1.0, 7.0, -7.0]
    expected = [max(-32768, min(32767, round(v * 32768))) for v in values]  # banker's rounding
    np.testing.assert_array_equal(float32_to_int16(np.array(values)), expected)
    special = float32_to_int16(np.array([np.nan, np.inf, -np.inf], dtype=np.float32))
    np.testing.assert_array_equal(special, [0, 32767, -32768])
