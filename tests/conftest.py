"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    """The shared corpora: ``$EMOTION_ENGINE_DATA``, else ``<repo>/../shared/data``."""
    env = os.environ.get("EMOTION_ENGINE_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Root of the shared corpora (ravdess/, tess/, ...); skips the test when absent."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(
            f"shared corpora not found at {path} (set EMOTION_ENGINE_DATA to the data folder)"
        )
    return path
