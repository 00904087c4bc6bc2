"""The README's first command: the embedded end-to-end demo runs and writes what it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
@pytest.mark.slow
def test_demo_generates_trains_and_evaluates(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "holstein_dist.demo", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    assert all(entry["status"] == "complete" for entry in manifest["shards"])
    assert any(manifest_run["backend"] == "dask" for manifest_run in manifest["runs"])
    assert (out / "run" / "checkpoints" / "best.pt").is_file()
    # The evaluated model is the run's, rate-calibrated on validation: one factor on its increments.
    factors = (out / "calibration.csv").read_text().splitlines()
    assert factors[0].startswith("factor,") and len(factors) > 10  # a header, a coarse and a fine grid
    assert (out / "model.pt").is_file() and (out / "eval_uncalibrated" / "report.json").is_file()
    assert list((out / "run").glob("events.out.tfevents.*"))
    report = json.loads((out / "eval" / "report.json").read_text())
    assert report["mode"] == "model" and report["data"]["rollouts"] == 8
    assert (out / "eval" / "autocorr.png").is_file()
    # The demo's model learns: the README promises an autocorrelation error <= 0.2 for both orders.
    errors = report["autocorr_max_abs_error"]
    assert report["divergent_fraction"] == 0.0 and max(errors.values()) <= 0.2, errors
    assert "demo finished" in proc.stdout
