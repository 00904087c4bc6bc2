"""The rate grid as one Markdown table: rows electrons' factor, columns lattice's factor, each cell the
autocorrelation max abs error (charge / lattice) of that candidate's validation report and its divergent fraction.

    python experiments/deep_L32/rates/grid.py experiments/deep_L32/rates/val64
"""
import re
import sys
from pathlib import Path

from holstein_dist.results import read_report

NAME = re.compile(r"electrons(?P<electrons>[0-9.]+)_lattice(?P<lattice>[0-9.]+)")


def main(reports_dir: str) -> None:
    cells = {}
    for path in sorted(Path(reports_dir).glob("electrons*_lattice*/report.json")):
        match = NAME.fullmatch(path.parent.name)
        report = read_report(path)
        errors = report["autocorr_max_abs_error"]
        cells[(match["electrons"], match["lattice"])] = (
            f"{errors['charge']:.3f} / {errors['lattice']:.3f}, {100 * report['divergent_fraction']:.1f} %")
    electrons = sorted({e for e, _ in cells}, key=float)
    lattice = sorted({q for _, q in cells}, key=float)
    print("| electrons \\ lattice | " + " | ".join(f"x{q}" for q in lattice) + " |")
    print("|---" * (len(lattice) + 1) + "|")
    for e in electrons:
        print(f"| x{e} | " + " | ".join(cells.get((e, q), "") for q in lattice) + " |")
    print("\nEach cell: autocorrelation max abs error of the charge / lattice order over lags 0..200, divergent"
          " rollouts (64 validation rollouts x 1000 steps, evaluate --conserve).")


if __name__ == "__main__":
    main(sys.argv[1])
