#!/usr/bin/env bash
# Deep quench, L = 32: the chosen model on 256 test trajectories that nothing was chosen on. The 64-trajectory test
# split put ../long_unroll's model (the guard-trained model's increments x0.95) at 0.103 / 0.103 against the target
# <= 0.1, where a perfect model would score ~0.06 and the same model scored 0.136 / 0.135 on 64 validation
# trajectories: the split cannot say on which side of 0.1 the model is. Here 256 new test trajectories of another seed
# (data_test256.yaml) measure it and its unscaled parent (../guarded_training/model.pt) with the same command, two
# ranks sharing the rollouts; each report gives the noise floor at 256 rollouts and the bootstrap spread of the error.
#   bash experiments/deep_L32/test256/run.sh    (~1 h on 2 CPU cores: generation ~10 min, each evaluation ~20 min)
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../lib.sh"
WORK=${WORK:-$HERE/work}
DATA=${TEST256_DATA:-$WORK/data}
cd "$ROOT"
stage generate "$PY" -m holstein_dist.generate --config "$HERE/data_test256.yaml" --out "$DATA" --workers 2

declare -A MODELS=([chosen]=$HERE/../long_unroll/model.pt [parent]=$HERE/../guarded_training/model.pt)
for name in chosen parent; do
  # The exact simulator's timing on 100 steps (it is the same model-free figure in every report).
  [ -f "$WORK/test_$name/report.json" ] || OMP_NUM_THREADS=1 stage "test_$name" "$PY" -m torch.distributed.run \
    --standalone --nproc_per_node 2 -m holstein_dist.evaluate --checkpoint "${MODELS[$name]}" --data "$DATA" \
    --split test --conserve --baseline-steps 100 --out "$WORK/test_$name"
  keep_results "$WORK/test_$name" "$HERE/test_$name"
done
"$PY" -m holstein_dist.results table "$HERE"/test_{parent,chosen}/report.json \
  --names "guard-trained + --conserve" "the same, increments x0.95 (chosen)" --steps 1 10 100 1000 \
  | tee "$HERE/results.md"
write_times "$HERE/wall_times.json"
