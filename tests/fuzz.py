"""Shared by the protocol fuzz tests: JSON messages with keys dropped and values
swapped for wrongly typed ones."""

from __future__ import annotations

from typing import Any

import numpy as np

WEIRD: list[Any] = [None, True, -1, 10**30, 1.5, "", "x", [], {}, [1], {"a": 1}, "PT-1S"]


def mutate(obj: Any, rng: np.random.Generator) -> Any:
    """Drop keys and swap values for wrongly typed ones, at every depth."""
    if isinstance(obj, dict):
        out = {k: mutate(v, rng) for k, v in obj.items() if rng.random() > 0.1}
        for key in out:
            if rng.random() < 0.15:
                out[key] = WEIRD[rng.integers(len(WEIRD))]
        return out
    if isinstance(obj, list):
        return [mutate(v, rng) for v in obj]
    return obj
