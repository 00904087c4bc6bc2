#!/usr/bin/env bash
# Shallow quench (g 0.5 -> 0.8), L = 16, round 5: is training budget the lever? Round 4's recipe (../run.sh) and
# every variant around it (../exploration/variants_round4.csv) stay behind the original tiny model at the same
# checkpoints; the original trained on ~15x the windows. With the training split read into memory (train
# preload_gib) a step of the tiny model is ~5x cheaper than when round 4 was trained, so the same recipe gets about
# twice the windows here, on 2 ranks (gloo, one core each, global batch 128) in about the wall time round 4 took on
# one core:
#   1. train_n1.yaml: 24,000 single-step steps (3.1 M windows; round 4: 1.5 M); the checkpoint with the best
#      1200-step score on the 4 validation trajectories;
#   2. train_finetune_n8.yaml: 7,200 steps of n_step 8 at lr 1e-4 from it (0.92 M windows; round 4: 0.51 M);
#   3. its last checkpoint, group-averaged and rate-calibrated exactly as round 4 (--symmetrize --score balanced);
#   4. it, round 4 and the original on the 32 validation trajectories of another seed; only if it is ahead of round 4
#      there (lib.sh ahead_on_target; when this ran, the balanced score alone: both rules pass it, 9 checks to 7),
#      all three on the test split (lib.sh shallow_candidate).
#   bash experiments/shallow_L16/budget/run.sh   (~80 min on 2 CPU cores; WORK=DIR for the large files;
#   SHALLOW_DATA=DIR to reuse ../run.sh's data set, default its work/data)
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../lib.sh"
WORK=${WORK:-$HERE/work}
SHALLOW_DATA=${SHALLOW_DATA:-$HERE/../work/data}
TRAIN=("${TRAIN_2RANKS[@]}")
cd "$ROOT"

shallow_single_step "$HERE" train_n1.yaml
shallow_finetune finetune train_finetune_n8.yaml "$WORK/chosen_n1.pt"
"$PY" -m holstein_dist.results curve "$WORK/run_n1" --out "$HERE/training_curve_n1.csv"
shallow_candidate budget "round 5 (budget)" "$WORK/calibrated.pt" "$SHALLOW_DATA"
write_times "$HERE/wall_times.json"
