"""The fast line in evaluation reports: per model, the medians over the report's windows of the charge order mean's
RMS above the fast cut, the truth's and the model's, and of what the slow fit leaves (the `coherent` section of
`evaluate`'s report, `metrics.coherent_error`). Markdown on stdout.

  python experiments/shallow_L16/snapshot_anatomy/fast_line.py NAME=REPORT...
"""
from __future__ import annotations

import json
import sys

from holstein_dist.evaluate import fast_oscillation_medians


def main() -> None:
    print("| model | truth's fast RMS | model's fast RMS | kept | slow fit's residual |")
    print("|---|---|---|---|---|")
    for spec in sys.argv[1:]:
        name, path = spec.split("=", 1)
        m = fast_oscillation_medians(json.load(open(path))["coherent"]["charge"])
        print(f"| {name} | {m['truth_fast']:.2e} | {m['model_fast']:.2e} | {m['model_fast'] / m['truth_fast']:.0%} | "
              f"{m['residual']:.2e} |")


if __name__ == "__main__":
    main()
