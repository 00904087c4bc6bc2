"""The GPU readiness check's CPU rehearsal (``benchmarks/gpu_check.py --dry-run``) runs every section end to end.

On a machine without a GPU this is the only proof that the script the GPU run depends on still works:
golden trajectories, the device integrator against numba, a 2-rank gloo DDP step under torchrun, the
precision variants, the physics sweep and projection, the training ladder and the rollout comparison.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def test_dry_run_covers_every_section(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("OUT", None)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(tmp_path),
           "--budget-s", "900"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["correctness_ok"] and report["meta"]["dry_run"]
    for section in ("correctness", "physics", "training", "evaluation"):
        rows = report[section]
        assert rows, f"{section} produced no rows"
        errors = [r["result"] for r in rows if r["result"].startswith("error")]
        assert not errors, f"{section}: {errors}"
    checks = " | ".join(r["check"] for r in report["correctness"])
    assert "DDP step, gloo, torchrun --nproc_per_node 2" in checks
    assert "integrator vs numba" in checks
    statuses = {r["status"] for r in report["correctness"]}
    assert statuses <= {"PASS", "SKIP"}, statuses
    assert any(r.get("backend") == "fused" for r in report["physics"])
    assert any("GPU-minutes" in r["result"] for r in report["physics"])
    assert any(r.get("samples_per_s") for r in report["training"])
    verdicts = [r for r in report["evaluation"] if "ratio_vs_device_exact" in r]
    assert {r["model"] for r in verdicts} == {"tiny", "medium"}
    assert "| section | check | result | target | status |" in proc.stdout
