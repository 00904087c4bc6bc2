"""The shallow rounds' cost of accuracy: training time and windows against the test split's target checks.

One row per round (README "Results"): how long its training ran and on how many cores, how many windows it saw
at n_step 1 and at longer unrolls, how many of the target's 14 checks its model meets against the original model
(``results target``) and its balanced score, both on the 64 test trajectories x 1200 steps. Writes
cost_curve.csv beside this file and prints it as a Markdown table.

    .venv/bin/python experiments/shallow_L16/cost_curve.py
"""

from __future__ import annotations

import csv
from pathlib import Path

from holstein_dist.results import TARGET_STEPS, balanced_score, checks_met, read_report, target_checks

HERE = Path(__file__).resolve().parent

ROUNDS = [
    # (round, report, original's report on the same copy of the test split, training minutes, cores,
    #  n_step-1 windows, longer-unroll windows, what changed); minutes and windows from each round's wall_times.json
    # and configs. Rounds 1-4 trained on 1 thread while another job shared the 2 cores (upper bounds).
    ("1", "round1/report.json", "reference_report.json", 117.8, 1, 192_000, 768_000,
     "curriculum n_step 1/8/16, each stage restarting at lr 1e-3"),
    ("2", "round2/report.json", "reference_report.json", 47.2, 1, 1_536_000, 102_400,
     "long single-step stage, best of it on 1200-step validation, 1,600-step n_step-8 fine-tune (step 400 chosen)"),
    ("3", "round3/report.json", "reference_report.json", 72.9, 1, 1_536_000, 512_000,
     "8,000-step fine-tune, rate calibrated on validation"),
    ("4", "report.json", "reference_report.json", 72.9, 1, 1_536_000, 512_000,
     "round 3's model group-averaged, calibrated by the balanced score"),
    ("5", "budget/eval/report.json", "budget/eval_reference/report.json", 71.0, 2, 3_072_000, 921_600,
     "round 4's recipe with twice the windows on 2 ranks"),
    ("6", "continued/eval/report.json", "continued/eval_reference/report.json", 114.1, 2, 3_072_000, 1_843_200,
     "round 5 + 7,200 more n_step-8 steps, recalibrated"),
    ("7", "transient/eval/report.json", "transient/eval_reference/report.json", 126.4, 2, 3_072_000, 2_073_600,
     "round 6 + 1,800 n_step-8 steps, a quarter of the windows from the 16 snapshots after the quench"),
    # round 8 trained round 7's steps (its 1,800 took 4.3 min on session 19's faster VM; minutes kept comparable)
    ("8", "transient_search/f0.5_w16/seed1/eval/report.json",
     "transient_search/f0.5_w16/seed1/eval_reference/report.json", 126.4, 2, 3_072_000, 2_073_600,
     "round 6 + 1,800 n_step-8 steps, half the windows from the 16 snapshots after the quench (seed 1)"),
]
ORIGINAL_WINDOWS = (10_485_760, 20_971_520)  # 163,840 steps at n_step 1 and 327,680 at n_step 8, batch 64


def rows() -> list[dict[str, object]]:
    out = []
    for name, report_path, reference_path, minutes, cores, single, unrolled, what in ROUNDS:
        if not (HERE / report_path).exists():
            continue  # a round whose script has not run here yet
        report, reference = read_report(HERE / report_path), read_report(HERE / reference_path)
        out.append({"round": name, "training_min": minutes, "cores": cores, "core_min": round(minutes * cores, 1),
                    "windows_n1": single, "windows_unrolled": unrolled,
                    "checks_met_of_14": checks_met(target_checks(report, reference)),
                    "balanced_score_test": round(balanced_score(report, TARGET_STEPS), 4),
                    "original_balanced_score_test": round(balanced_score(reference, TARGET_STEPS), 4),
                    "what": what})
    return out


def main() -> None:
    table = rows()
    with open(HERE / "cost_curve.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    print("| " + " | ".join(table[0]) + " |")
    print("|" + "---|" * len(table[0]))
    for row in table:
        print("| " + " | ".join(str(v) for v in row.values()) + " |")
    print(f"\nthe original: {sum(ORIGINAL_WINDOWS):,} windows ({ORIGINAL_WINDOWS[0]:,} at n_step 1, "
          f"{ORIGINAL_WINDOWS[1]:,} at n_step 8), hours on a GPU")


if __name__ == "__main__":
    main()
