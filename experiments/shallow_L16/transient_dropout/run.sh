#!/usr/bin/env bash
# Shallow quench (g 0.5 -> 0.8), L = 16: round 8's fine-tune with less dropout. Round 8 (../transient_search,
# f0.5_w16/seed1) still loses rho_diag at steps 100 and 1200, which sit on its one-step rho_diag error (4.2e-3
# against the original's 3.6e-3), and P at 600. Dropout 0.2 sets that floor: without dropout it falls to the
# original's, but the lag of the rollouts' mean oscillation came back (../transient_no_dropout, at round 7's
# transient weight). Here each DROPOUT reruns round 8's fine-tune (../transient/train_transient_n8.yaml from round 6's
# model, early_fraction 0.5, early_window 16, seed 1, the same 1,800 steps) with only model.dropout changed:
#   1. per variant, in dDROPOUT/: the fine-tune, its calibration as rounds 4-8 and the variant, round 8 and the
#      original on the 32 validation trajectories of another seed (lib.sh search_variant);
#   2. summary.md: each variant's checks met against the original and balanced score there, beside round 8's;
#   3. the best variant, only if it is ahead of round 8 on val32 (lib.sh ahead_on_target), on the test split.
#   bash experiments/shallow_L16/transient_dropout/run.sh   (~8 min a variant on this project's 2-core VM;
#   WORK=DIR for the large files; SHALLOW_DATA=DIR to reuse ../run.sh's data set; DROPOUTS="0.1" to choose)
SEARCH=$(cd "$(dirname "$0")" && pwd)
source "$SEARCH/../../lib.sh"
DROPOUTS=${DROPOUTS:-"0.1 0.05"}
search_start "$SEARCH" "$ROUND8_BASE"

specs=()
for d in $DROPOUTS; do
  search_variant "$SEARCH" "d$d" "dropout $d" "$TRANSIENT_CONFIG" "$ROUND6_MODEL" curriculum.early_fraction=0.5 \
    curriculum.early_window=16 seed=1 model.dropout="$d"
  specs+=("d$d:dropout $d")
done
search_summary "$SEARCH" "${specs[@]}"
search_candidate "$SEARCH" "round 9 candidate (dropout ${best#d})"
