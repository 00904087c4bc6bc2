#!/usr/bin/env bash
# Shallow quench (g 0.5 -> 0.8), L = 16, round 7 candidate: a lever aimed at the post-quench transient. Round 6's
# four lost checks follow the phase of the rollouts' mean oscillation, whose lag is made in the first periods after
# the quench (../no_dropout/notes.md); this fine-tunes round 6's model with a quarter of the windows drawn there
# (train_transient_n8.yaml says how). The recipe then costs round 6's 114 min of training plus ~13 min.
#   1. train_transient_n8.yaml: 1,800 n_step-8 steps on 2 ranks x 64 from ../continued/model.pt (~13 min);
#   2. its last checkpoint group-averaged and rate-calibrated exactly as rounds 4-6 (lib.sh shallow_finetune);
#   3. it, round 6 and the original on the 32 validation trajectories of another seed; only if it is ahead of round 6
#      there (lib.sh ahead_on_target), all three on the test split (lib.sh shallow_candidate, BASE = round 6).
#   bash experiments/shallow_L16/transient/run.sh   (~22 min on 2 CPU cores; WORK=DIR for the large files;
#   SHALLOW_DATA=DIR to reuse ../run.sh's data set, default its work/data)
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../lib.sh"
WORK=${WORK:-$HERE/work}
SHALLOW_DATA=${SHALLOW_DATA:-$HERE/../work/data}
ROUND6=$ROOT/experiments/shallow_L16/continued/model.pt
cd "$ROOT"

shallow_round transient train_transient_n8.yaml "$ROUND6" transient "round 7 candidate (transient)" \
  "round6:$ROUND6:round 6 (continued)"
