"""Per-party detection: spike detector (baseline, smoothing, hysteresis) and call summary.

``PartyTracker`` wires both and builds the events; see ``detect.spike`` and
``detect.summary`` for the exact rules and definitions.
"""

from emotion_engine.detect.spike import SpikeDetector, SpikeState
from emotion_engine.detect.summary import (
    VALENCE_WEIGHTS,
    CallSummarizer,
    CallSummary,
    EndState,
    PeakMoment,
    valence,
)
from emotion_engine.detect.tracker import PartyTracker

__all__ = [
    "VALENCE_WEIGHTS",
    "CallSummarizer",
    "CallSummary",
    "EndState",
    "PartyTracker",
    "PeakMoment",
    "SpikeDetector",
    "SpikeState",
    "valence",
]
