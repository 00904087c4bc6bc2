"""Shared test fixtures: paths to the reference material beside the project root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HOLSTEIN_SHARED", ROOT.parent / "shared"))
GOLDEN = SHARED / "reference" / "golden"
PRETRAINED = SHARED / "reference" / "pretrained"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not GOLDEN.is_dir():
        pytest.skip(f"golden reference data not found at {GOLDEN} (set HOLSTEIN_SHARED)")
    return GOLDEN


@pytest.fixture(scope="session")
def pretrained_dir() -> Path:
    if not PRETRAINED.is_dir():
        pytest.skip(f"pretrained reference models not found at {PRETRAINED} (set HOLSTEIN_SHARED)")
    return PRETRAINED
