#!/usr/bin/env bash
# Deep quench, L = 32: a blend of the two energy splits in guarded training. The chosen deep model (../long_unroll/
# model.pt) scores 0.112 / 0.111 on 256 test trajectories against the target <= 0.1; trained with the momenta split
# its order parameters swing ~10 % too slowly (autocorrelation minimum at lag 58, truth 52), trained with the work
# split (../work_split) ~10 % too fast (lag 44-48), and the period is learned, not set by the rollout's guard. Here
# the lattice's energy after each guarded step is a share of the work split's plus the rest of the momenta split's
# (evaluate --work-share, a stage's work_share):
#   1. two 800-step runs of the work split's recipe from the chosen model, shares 0.5 and 0.3 (share0.5.yaml,
#      share0.3.yaml), side by side, one core each; every checkpoint read on 16 validation trajectories x 500 steps
#      under the guard it trained with, and each run's best kept;
#   2. both bests on the 64 extra validation trajectories x 1000 steps (2 ranks) beside the chosen model's report
#      there; the better on to the 256 validation and then the 256 test trajectories, each only where it beats the
#      chosen model on the set before (lib.sh promote).
#   bash experiments/deep_L32/work_share/run.sh    (~1 h 10 min on 2 CPU cores once the deep data sets exist)
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../lib.sh"
deep_data
deep_val64
SHARES=(0.5 0.3)
share_guard() { GUARD=(--conserve --energy-split work --work-share "$1"); }

for share in "${SHARES[@]}"; do
  OMP_NUM_THREADS=1 in_background "train_share$share" "$PY" -m holstein_dist.train --config "$HERE/share$share.yaml" \
    data="$DATA" run_dir="$WORK/run_share$share" init_from="$DEEP/long_unroll/model.pt"
done
wait_background
RUNS=()
for share in "${SHARES[@]}"; do
  share_guard "$share"
  select_run "share$share"
  validate_2ranks val64 "share$share" "$WORK/share${share}_best.pt" "$VAL64_DATA" "${GUARD[@]}"
  RUNS+=("share$share")
done
val_table "$HERE/results_val.md" "${RUNS[@]}"
REPORTS64=()
for name in "${RUNS[@]}"; do REPORTS64+=("$HERE/val64/$name/report.json"); done
"$PY" -m holstein_dist.results table "$CHOSEN_VAL64" "${REPORTS64[@]}" \
  --names "chosen deep model (momenta split)" "${RUNS[@]}" --steps 1 1000 | tee "$HERE/results_val64.md"
BEST=$(REPORTS=val64 best_of "${RUNS[@]}")
echo "chosen on the 64 validation trajectories: $BEST"
share_guard "${BEST#share}"
promote "$BEST" "work share ${BEST#share}" "${GUARD[@]}"
write_times "$HERE/wall_times.json"
