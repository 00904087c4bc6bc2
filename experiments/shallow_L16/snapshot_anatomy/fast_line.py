"""The fast line in evaluation reports: per model, the medians over the report's windows of the charge order mean's
RMS above the fast cut, the truth's and the model's, and of what the slow fit leaves (the `coherent` section of
`evaluate`'s report, `metrics.coherent_error`). Markdown on stdout.

  python experiments/shallow_L16/snapshot_anatomy/fast_line.py NAME=REPORT...
"""
from __future__ import annotations

import json
import sys

import numpy as np


def main() -> None:
    print("| model | truth's fast RMS | model's fast RMS | kept | slow fit's residual |")
    print("|---|---|---|---|---|")
    for spec in sys.argv[1:]:
        name, path = spec.split("=", 1)
        rows = [r for r in json.load(open(path))["coherent"]["charge"] if r.get("truth_fast") is not None]
        truth, model, residual = (float(np.median([r[key] for r in rows]))
                                  for key in ("truth_fast", "model_fast", "residual"))
        print(f"| {name} | {truth:.2e} | {model:.2e} | {model / truth:.0%} | {residual:.2e} |")


if __name__ == "__main__":
    main()
