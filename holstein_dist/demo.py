"""The embedded default run: generate -> train -> evaluate, small enough for a laptop CPU.

``python -m holstein_dist.demo [--out DIR] [--workers N]`` runs the three user commands exactly as a
person would type them (each in its own process), on a local Dask cluster, and prints where the
dataset, the run (checkpoints, TensorBoard) and the evaluation report landed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def _run(step: str, argv: list[str]) -> float:
    print(f"\n=== {step}: {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *argv], check=False)
    if result.returncode != 0:
        raise SystemExit(f"demo: the {step} step failed (exit {result.returncode}); see its output above")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="where everything is written")
    parser.add_argument("--workers", type=int, default=2, help="local Dask worker processes")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    data, run, report = out / "data", out / "run", out / "eval"
    timings = {
        "generate": _run("generate", [
            "-m", "holstein_dist.generate", "--config", str(CONFIGS / "data" / "tiny.yaml"),
            "--out", str(data), "--workers", str(args.workers), "--backend", "dask",
        ]),
        "train": _run("train", [
            "-m", "holstein_dist.train", "--config", str(CONFIGS / "train" / "tiny.yaml"),
            f"data={data}", f"run_dir={run}",
        ]),
        "evaluate": _run("evaluate", [
            "-m", "holstein_dist.evaluate", "--checkpoint", str(run), "--data", str(data),
            "--split", "test", "--out", str(report),
        ]),
    }
    summary = json.loads((report / "report.json").read_text())
    print("\n=== demo finished")
    for step, seconds in timings.items():
        print(f"  {step:<9} {seconds:6.1f} s")
    print(f"  dataset      {data}")
    print(f"  run          {run}   (tensorboard --logdir {run})")
    print(f"  report       {report / 'report.json'}")
    for key in ("charge", "lattice"):
        err = summary["autocorr_max_abs_error"][key]
        print(f"  autocorrelation max |model - truth| ({key} order): {err:.3f}")
    print(f"  divergent rollouts: {summary['divergent_fraction']:.1%}")


if __name__ == "__main__":
    main()
