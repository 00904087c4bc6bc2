#!/usr/bin/env bash
# Deep quench, L = 32: the chosen model on 256 test trajectories that nothing was chosen on. The 64-trajectory test
# split put ../long_unroll's model (the guard-trained model's increments x0.95) at 0.103 / 0.103 against the target
# <= 0.1, where a perfect model would score ~0.06 and the same model scored 0.136 / 0.135 on 64 validation
# trajectories: the split cannot say on which side of 0.1 the model is. Here 256 new test trajectories of another seed
# (data_test256.yaml) measure it and its unscaled parent (../guarded_training/model.pt) with the same command, two
# ranks sharing the rollouts; each report gives the noise floor at 256 rollouts and the bootstrap spread of the error.
# The script then checks the reports' noise floor against four disjoint sets of 64 truth trajectories (noise_floor.md).
#   bash experiments/deep_L32/test256/run.sh    (~45 min on 2 CPU cores: generation 5 min, each evaluation 17 min)
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../lib.sh"
deep_data  # the deep set and the extra validation set: two of the floor check's four truth sets (below)
deep_val64
TEST256=${TEST256_DATA:-$WORK/data}
stage generate_test256 "$PY" -m holstein_dist.generate --config "$HERE/data_test256.yaml" --out "$TEST256" \
  --workers 2

declare -A MODELS=([chosen]=$HERE/../long_unroll/model.pt [parent]=$HERE/../guarded_training/model.pt)
for name in chosen parent; do
  # The exact simulator's timing on 100 steps (it is the same model-free figure in every report).
  evaluate_2ranks "test_$name" "$WORK/test_$name" --checkpoint "${MODELS[$name]}" --data "$TEST256" --split test \
    --conserve --baseline-steps 100
  keep_results "$WORK/test_$name" "$HERE/test_$name"
done
"$PY" -m holstein_dist.results table "$HERE"/test_{parent,chosen}/report.json \
  --names "guard-trained + --conserve" "the same, increments x0.95 (chosen)" --steps 1 10 100 1000 \
  | tee "$HERE/results.md"

# The floor checked on the data: four disjoint sets of 64 truth trajectories (this set's first 64, ../data.yaml's test
# split and first 64 training trajectories, ../long_unroll's 64 extra validation ones); every pair of them is what a
# perfect model's 64 rollouts against 64 truths would differ by.
SETS=("test256_first64=$TEST256:test" "test=$DATA:test" "train_first64=$DATA:train" "val64=$VAL64_DATA:val")
checks=()
for entry in "${SETS[@]}"; do
  name=${entry%%=*} where=${entry#*=}
  stage "truth_$name" "$PY" -m holstein_dist.evaluate --truth-only --data "${where%:*}" --split "${where##*:}" \
    --rollouts 64 --steps 1000 --baseline-steps 0 --no-plots --out "$WORK/truth_$name"
  checks+=("$name=$WORK/truth_$name")
done
"$PY" "$HERE/floor_check.py" "${checks[@]}" | tee "$HERE/noise_floor.md"
write_times "$HERE/wall_times.json"
