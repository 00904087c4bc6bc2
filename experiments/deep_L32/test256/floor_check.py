"""The report's noise floor checked against independent samples of the deep quench's truth.

Given truth-only reports of disjoint sets of N trajectories each (other seeds, other splits), prints a Markdown table:
each set's estimated floor (``autocorr_noise_floor``, from half-splits of that set alone) and what every pair of sets
actually differs by (the max over lags 1..max_lag of the gap between their truth autocorrelations). For a perfect
model, a set of N rollouts against N truths is such a pair.

    python experiments/deep_L32/test256/floor_check.py NAME=REPORT_DIR [NAME=REPORT_DIR ...]
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np

from holstein_dist.metrics import ORDER_KEYS
from holstein_dist.sampling import max_gap


def main(argv: list[str]) -> int:
    if len(argv) < 2 or any("=" not in arg for arg in argv):
        print("usage: floor_check.py NAME=REPORT_DIR NAME=REPORT_DIR [...]", file=sys.stderr)
        return 2
    reports = {name: json.loads((Path(path) / "report.json").read_text())
               for name, path in (arg.split("=", 1) for arg in argv)}
    shapes = {(r["data"]["rollouts"], r["settings"]["steps"], r["settings"]["max_lag"]) for r in reports.values()}
    if len(shapes) != 1:
        print(f"error: the reports differ in (rollouts, steps, max_lag): {sorted(shapes)}; evaluate every set with "
              "the same --rollouts/--steps/--max-lag", file=sys.stderr)
        return 2
    n, steps, max_lag = shapes.pop()
    print(f"Truth autocorrelations of {len(reports)} independent sets of {n} trajectories x {steps} steps, "
          f"lags 1..{max_lag}.\n")
    print("| | " + " | ".join(ORDER_KEYS) + " |\n|---|" + "---|" * len(ORDER_KEYS))
    for name, report in reports.items():
        print(f"| estimated floor from {name} alone | "
              + " | ".join(f"{report['autocorr_noise_floor'][key]:.3f}" for key in ORDER_KEYS) + " |")
    gaps = {key: [] for key in ORDER_KEYS}
    for (a, ra), (b, rb) in itertools.combinations(reports.items(), 2):
        row = []
        for key in ORDER_KEYS:
            gap = float(max_gap(np.asarray(ra["autocorr"][key]["truth"]), np.asarray(rb["autocorr"][key]["truth"])))
            gaps[key].append(gap)
            row.append(f"{gap:.3f}")
        print(f"| measured gap, {a} vs {b} | " + " | ".join(row) + " |")
    print("| measured gap, median over pairs | " + " | ".join(f"{np.median(gaps[k]):.3f}" for k in ORDER_KEYS) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
