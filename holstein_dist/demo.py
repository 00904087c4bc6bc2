"""The embedded default run: generate -> train -> evaluate, small enough for a laptop CPU.

``python -m holstein_dist.demo [--out DIR] [--workers N]`` runs the user commands exactly as a person would
type them (each in its own process): generate on a local Dask cluster, train, calibrate the model's rate on
validation, evaluate; and prints where the dataset, the run (checkpoints, TensorBoard), the model and the
evaluation reports landed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from holstein_dist.config import shipped
from hpc.cli import ArgumentParser, UserError, report_error

# The original tiny shallow-quench model, when the reference material sits beside a source checkout: the
# demo data (shallow quench, L=16, snapshot interval 0.64) is what it was trained on.
REFERENCE_MODEL = (Path(__file__).resolve().parents[2] / "shared" / "reference" / "pretrained"
                   / "tiny-quench_0p5_0p8-L_16")


def _run(step: str, argv: list[str]) -> float:
    print(f"\n=== {step}: {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *argv], check=False)
    if result.returncode != 0:
        raise SystemExit(f"error: the demo's {step} step failed (exit {result.returncode}); see its output above")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m holstein_dist.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="where everything is written")
    parser.add_argument("--workers", type=int, default=2, help="local Dask worker processes")
    try:
        args = parser.parse(argv)
    except UserError as exc:
        raise SystemExit(report_error(exc)) from None
    out = args.out.resolve()
    data, run, report, model = out / "data", out / "run", out / "eval", out / "model.pt"
    steps = yaml.safe_load(shipped("data", "demo").read_text())["n_steps"]  # calibrate on whole trajectories
    timings = {
        "generate": _run("generate", [
            "-m", "holstein_dist.generate", "--config", str(shipped("data", "demo")),
            "--out", str(data), "--workers", str(args.workers), "--backend", "dask",
        ]),
        "train": _run("train", [
            "-m", "holstein_dist.train", "--config", str(shipped("train", "demo")),
            "--data", str(data), "--run-dir", str(run),
        ]),
        # One factor on the model's increments (its rate), fitted on the validation rollouts: what a short
        # training leaves of a long-rollout error is mostly a phase drift (docs/training.md).
        "calibrate": _run("calibrate", [
            "-m", "holstein_dist.results", "calibrate", str(run), "--data", str(data), "--split", "val",
            "--steps", str(steps), "--at", "10", str(steps // 2), str(steps), "--span", "0.02", "--points", "9",
            "--work", str(out / "calibration"), "--out", str(out / "calibration.csv"), "--export", str(model),
        ]),
        "evaluate": _run("evaluate", [
            "-m", "holstein_dist.evaluate", "--checkpoint", str(model), "--data", str(data),
            "--split", "test", "--out", str(report),
        ]),
        "evaluate uncalibrated": _run("evaluate uncalibrated", [
            "-m", "holstein_dist.evaluate", "--checkpoint", str(run), "--data", str(data),
            "--split", "test", "--out", str(out / "eval_uncalibrated"), "--no-plots",  # its numbers are the point
        ]),
    }
    reports = {"demo model": report, "demo model before calibration": out / "eval_uncalibrated"}
    if REFERENCE_MODEL.is_dir():
        reports["reference model"] = out / "eval_reference"
        timings["evaluate reference"] = _run("evaluate reference", [
            "-m", "holstein_dist.evaluate", "--checkpoint", str(REFERENCE_MODEL), "--data", str(data),
            "--split", "test", "--out", str(reports["reference model"]),
        ])
    print("\n=== demo finished")
    for step, seconds in timings.items():
        print(f"  {step:<22} {seconds:6.1f} s")
    print(f"  dataset   {data}")
    print(f"  run       {run}   (tensorboard --logdir {run})")
    print(f"  model     {model}   (the run's best checkpoint, rate-calibrated on validation)")
    for name, where in reports.items():
        _summarize(name, where / "report.json")
    print("  The demo trains for ~2.5 minutes on a small data set; experiments/ holds the full CPU-scale recipes and "
          "README 'Scaling up' the paper-scale commands.")


def _summarize(name: str, path: Path) -> None:
    summary = json.loads(path.read_text())
    errors = []
    for key in ("charge", "lattice"):
        err = summary["autocorr_max_abs_error"][key]
        errors.append(f"{key} {'n/a' if err is None else f'{err:.3f}'}")
    print(f"  {name}: {path}")
    print(f"    autocorrelation max |model - truth|: {', '.join(errors)}; "
          f"divergent rollouts {summary['divergent_fraction']:.0%}")


if __name__ == "__main__":
    main()
