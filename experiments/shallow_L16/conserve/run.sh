#!/usr/bin/env bash
# Shallow quench, L = 16: the rollout guard evaluate --conserve (rho's initial spectrum and the total energy
# restored after every step) on round 4's model (../model.pt) and the original tiny model, 32 validation
# trajectories of another seed (../validation_32.md's set) x 1200 steps, with and without the guard.
# Needs that data set ($VAL32; generated here if absent, 2 workers).
#   bash experiments/shallow_L16/conserve/run.sh    (~5 min on 2 CPU cores)
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../lib.sh"
WORK=${WORK:-$HERE/work}
VAL32=${VAL32:-$HERE/../work/data_val32}
cd "$ROOT"
[ -f "$VAL32/manifest.json" ] || stage generate "$PY" -m holstein_dist.generate \
  --config configs/data/shallow_L16.yaml --out "$VAL32" --workers 2 splits.train=0 splits.val=32 splits.test=0 \
  seed=20261201
for model in ours orig; do
  checkpoint=$HERE/../model.pt && [ "$model" = orig ] && checkpoint=$REFERENCE/tiny-quench_0p5_0p8-L_16
  for mode in plain conserve; do
    flags=() && [ "$mode" = conserve ] && flags=(--conserve)
    stage "evaluate_${model}_$mode" "$PY" -m holstein_dist.evaluate --checkpoint "$checkpoint" --data "$VAL32" \
      --split val --steps 1200 --baseline-steps 0 --no-plots "${flags[@]}" --out "$WORK/${model}_$mode"
    mkdir -p "$HERE/${model}_$mode" && cp "$WORK/${model}_$mode/report.json" "$HERE/${model}_$mode/"
  done
done
"$PY" -m holstein_dist.results table "$HERE"/{ours_plain,ours_conserve,orig_plain,orig_conserve}/report.json \
  --names ours "ours + --conserve" original "original + --conserve" --steps 1 100 600 1200 | tee "$HERE/results.md"
