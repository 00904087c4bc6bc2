#!/usr/bin/env bash
# Shallow quench (g 0.5 -> 0.8), L = 16: a small search around round 7's transient lever. Round 7 fine-tuned round 6's
# model with a quarter of its n_step-8 windows starting in the first 16 snapshots (early_fraction 0.25, early_window
# 16), one setting fixed before it ran. Here each VARIANT (FRACTION:WINDOW) reruns that fine-tune
# (../transient/train_transient_n8.yaml, same seed, steps and budget) with only those two settings changed:
#   1. per variant, in VARIANT/: the fine-tune, its calibration as rounds 4-7 (lib.sh shallow_finetune), and the
#      variant, round 7 and the original on the 32 validation trajectories of another seed (validation_32.md);
#   2. summary.md: each variant's checks met against the original and balanced score there, beside round 7's;
#   3. the best variant (most checks met, then the balanced score), only if it is ahead of round 7 on val32
#      (lib.sh ahead_on_target), on the test split (lib.sh shallow_candidate, in its VARIANT/).
#   bash experiments/shallow_L16/transient_search/run.sh   (~8 min a variant on this project's 2-core VM;
#   WORK=DIR for the large files; SHALLOW_DATA=DIR to reuse ../run.sh's data set, default its work/data;
#   VARIANTS="0.5:16 0.25:8" to choose)
SEARCH=$(cd "$(dirname "$0")" && pwd)
source "$SEARCH/../../lib.sh"
VARIANTS=${VARIANTS:-"0.5:16 0.25:8 0.5:8 0.125:16"}
search_start "$SEARCH" "$ROUND7_BASE"

variant_name() { echo "f${1%%:*}_w${1#*:}"; }
specs=()
for v in $VARIANTS; do
  label="early_fraction ${v%%:*}, early_window ${v#*:}"
  search_variant "$SEARCH" "$(variant_name "$v")" "$label" "$TRANSIENT_CONFIG" "$ROUND6_MODEL" \
    curriculum.early_fraction="${v%%:*}" curriculum.early_window="${v#*:}"
  specs+=("$(variant_name "$v"):$label")
done
search_summary "$SEARCH" "${specs[@]}"
search_candidate "$SEARCH" "round 8 candidate ($best)"
