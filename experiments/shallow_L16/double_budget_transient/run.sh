#!/usr/bin/env bash
# Shallow quench (g 0.5 -> 0.8), L = 16: round 8's transient fine-tune searched again at twice the budget. The 2x
# model (../double_budget) has a better one-step error than round 8 but lost its phase (lattice lag 0.055 against
# 0.037 steps) with round 8's transient setting, which had been searched on round 6's model. Each VARIANT
# (FRACTION:WINDOW:BATCHES) reruns that fine-tune (../transient/train_transient_n8.yaml, seed 1, 3 epochs of BATCHES
# steps) from the 2x model's stage before it (../double_budget/round6_stage.pt, calibrated), with only those settings
# changed; each is calibrated and judged on val32 against round 8, and the best goes to the test split only where it
# is ahead of round 8 there (lib.sh search_variant / search_summary / search_candidate).
#   bash experiments/shallow_L16/double_budget_transient/run.sh   (~6 min a 1,800-step variant on the 2-core VM;
#   WORK=DIR for the large files; SHALLOW_DATA=DIR to reuse ../run.sh's data set; VARIANTS="0.5:8:600" to choose)
SEARCH=$(cd "$(dirname "$0")" && pwd)
source "$SEARCH/../../lib.sh"
VARIANTS=${VARIANTS:-"0.5:8:600 0.75:16:600 0.5:16:1200"}
search_start "$SEARCH" "$ROUND8_BASE"

specs=()
for v in $VARIANTS; do
  IFS=: read -r fraction window batches <<< "$v"
  name=f${fraction}_w${window}_s$((3 * batches))
  label="2x + transient $fraction/$window, $((3 * batches)) steps"
  search_variant "$SEARCH" "$name" "$label" "$TRANSIENT_CONFIG" "$SEARCH/../double_budget/round6_stage.pt" \
    curriculum.early_fraction="$fraction" curriculum.early_window="$window" curriculum.batches_per_epoch="$batches" \
    seed=1
  specs+=("$name:$label")
done
search_summary "$SEARCH" "${specs[@]}"
search_candidate "$SEARCH" "round 9 candidate ($best)"
