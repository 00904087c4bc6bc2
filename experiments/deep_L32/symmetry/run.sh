#!/usr/bin/env bash
# Deep quench, L = 32: what exact equivariance under the ring's reflection and particle-hole symmetries does
# (model.symmetrize, docs/physics.md section 4), at rollout time and in training, at equal compute.
#   1. the CPU experiment's PARC (../model.pt) evaluated as is, with --symmetrize and with --project;
#   2. two fine-tunes of it, run side by side on one core each for the same wall time (TIME_S, default 45 min,
#      capped by SIGTERM: the preemption path writes the last checkpoint): finetune_symmetric.yaml (group
#      averaging inside every unrolled training step, 4x the network cost per step) and finetune_plain.yaml
#      (its control: no averaging, so ~4x the steps);
#   3. the last checkpoint of each evaluated with and without --symmetrize.
# All on the first 32 test trajectories x 500 steps, like ../results_projection.md (CPU time: a symmetrized
# rollout costs 4x). Needs ../run.sh's data ($PARENT_WORK/data, generated here if absent) and ../model.pt.
#   bash experiments/deep_L32/symmetry/run.sh    (~1.5 h on 2 CPU cores; WORK=DIR for the large files)
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../lib.sh"
WORK=${WORK:-$HERE/work}
PARENT_WORK=${PARENT_WORK:-$HERE/../work}
TIME_S=${TIME_S:-2700}
cd "$ROOT"
DATA=$PARENT_WORK/data
SMALL=(--data "$DATA" --split test --rollouts 32 --steps 500 --baseline-steps 0)
last_checkpoint() { ls "$1"/checkpoints/step-*.pt | sort | tail -1; }

[ -f "$DATA/manifest.json" ] || stage generate "$PY" -m holstein_dist.generate --config "$HERE/../data.yaml" \
  --out "$DATA" --workers 2

t0=$SECONDS
pids=()
for variant in symmetric plain; do  # side by side, one thread each (the configs say threads: 1)
  OMP_NUM_THREADS=1 capped "$TIME_S" "train_$variant" "$PY" -m holstein_dist.train \
    --config "$HERE/finetune_$variant.yaml" data="$DATA" run_dir="$WORK/run_$variant" init_from="$HERE/../model.pt" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done  # a failed training stops the script (set -e)
TIMES+=("\"train_side_by_side\": $((SECONDS - t0))")
for variant in symmetric plain; do
  export_model "$(last_checkpoint "$WORK/run_$variant")" "$HERE/model_finetune_$variant.pt"
  "$PY" -m holstein_dist.results curve "$WORK/run_$variant" --out "$HERE/training_curve_$variant.csv"
done

evaluate() {  # evaluate NAME MODEL [FLAGS...]
  local name=$1 model=$2
  shift 2
  stage "evaluate_$name" "$PY" -m holstein_dist.evaluate --checkpoint "$model" "${SMALL[@]}" "$@" \
    --out "$WORK/eval_$name"
  keep_results "$WORK/eval_$name" "$HERE/eval_$name"
}
evaluate parent_symmetrized "$HERE/../model.pt" --symmetrize
evaluate finetune_plain "$HERE/model_finetune_plain.pt"
evaluate finetune_plain_symmetrized "$HERE/model_finetune_plain.pt" --symmetrize
evaluate finetune_symmetric "$HERE/model_finetune_symmetric.pt"  # symmetrize is in the model's config

"$PY" -m holstein_dist.results table "$HERE/../eval_parc_500/report.json" \
  "$HERE/../eval_parc_500_projected/report.json" "$HERE/eval_parent_symmetrized/report.json" \
  "$HERE"/eval_finetune_{plain,plain_symmetrized,symmetric}/report.json \
  --names "PARC" "PARC + --project" "PARC + --symmetrize" "fine-tuned plain" "fine-tuned plain + --symmetrize" \
  "fine-tuned symmetric" --steps 1 10 100 500 | tee "$HERE/results.md"
write_times "$HERE/wall_times.json"
