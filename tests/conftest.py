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

TINY_DATA_CONFIG = ROOT / "configs" / "data" / "tiny.yaml"


def generate_dataset(out: Path, config: Path = TINY_DATA_CONFIG, *overrides: str) -> Path:
    """Make a dataset with the real CLI entry point (serial backend, in this process); return its directory."""
    from holstein_dist.generate import main

    assert main(["--config", str(config), "--out", str(out), "--backend", "serial", *overrides]) == 0
    return out


@pytest.fixture(scope="session")
def make_dataset():
    """``make_dataset(out, config, *overrides)``: generate a dataset in a test's own directory."""
    return generate_dataset


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """configs/data/tiny.yaml (L=16 deep quench, seconds), generated once per session by the real command."""
    return generate_dataset(tmp_path_factory.mktemp("tiny-data") / "tiny")


@pytest.fixture(scope="session")
def reference_model(pretrained_dir: Path) -> Path:
    """The original tiny shallow-quench L=16 model (original checkpoint format)."""
    path = pretrained_dir / "tiny-quench_0p5_0p8-L_16"
    if not path.is_dir():
        pytest.skip(f"reference model {path} not found")
    return path
