#!/usr/bin/env bash
# Ensembles with calibrated uncertainty (docs/ensembles.md): K = 5 tiny CNNs on the shallow L = 16 set and
# K = 5 small PARCs on the deep L = 32 set, each trained as `ensemble.members=5` (members differ by seed).
# Each ensemble is evaluated on the validation split first, which fits one spread scale per component
# (temperature scaling), then on the test split with those scales. The shallow test report is compared with the original
# published tiny model on the same 64 test trajectories x 1200 steps.
#   bash experiments/ensembles/run.sh            (~2.5 h on 2 CPU cores; WORK=DIR for the large files)
# A third ensemble uses the round-2 shallow recipe: 5 fine-tunes (seeds 0-4) of experiments/shallow_L16's chosen
# single-step model (run that experiment first; CHOSEN_N1=FILE points elsewhere); a fourth is the third with
# every member rate-calibrated on validation (results calibrate).
# The data sets are those of experiments/shallow_L16 and experiments/deep_L32 (same configs and seeds, so the
# same trajectories); pass SHALLOW_DATA=DIR / DEEP_DATA=DIR to reuse them (generate resumes, i.e. checks them).
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../lib.sh"
WORK=${WORK:-$HERE/work}
SHALLOW_DATA=${SHALLOW_DATA:-$WORK/shallow_data}
DEEP_DATA=${DEEP_DATA:-$WORK/deep_data}
CHOSEN_N1=${CHOSEN_N1:-$HERE/../shallow_L16/work/chosen_n1.pt}
cd "$ROOT"
if [ ! -f "$CHOSEN_N1" ]; then
  echo "run.sh: no $CHOSEN_N1; run experiments/shallow_L16/run.sh first (or pass CHOSEN_N1=FILE)" >&2; exit 2
fi

stage generate_shallow "$PY" -m holstein_dist.generate --config configs/data/shallow_L16.yaml --out "$SHALLOW_DATA" \
  --workers 2
stage generate_deep "$PY" -m holstein_dist.generate --config "$HERE/../deep_L32/data.yaml" --out "$DEEP_DATA" --workers 2
stage train_shallow "$PY" -m holstein_dist.train --config "$HERE/shallow_train.yaml" data="$SHALLOW_DATA" \
  run_dir="$WORK/shallow" ensemble.parallel=2
stage train_shallow_finetune "$PY" -m holstein_dist.train --config "$HERE/shallow_finetune_train.yaml" \
  data="$SHALLOW_DATA" run_dir="$WORK/shallow_finetune" init_from="$CHOSEN_N1"
stage train_deep "$PY" -m holstein_dist.train --config "$HERE/deep_train.yaml" data="$DEEP_DATA" \
  run_dir="$WORK/deep" ensemble.parallel=2

# The round-2 ensemble with every member rate-calibrated on validation (results calibrate on an ensemble
# directory: a coarse grid of +-1.2 %, then +-0.05 % around each member's best), evaluated like the others.
CAL=$HERE/shallow_finetune_calibrated
mkdir -p "$CAL"
stage calibrate_coarse "$PY" -m holstein_dist.results calibrate "$WORK/shallow_finetune" --data "$SHALLOW_DATA" \
  --split val --steps 1200 --span 0.012 --points 13 --out "$CAL/calibration_coarse.csv" \
  --export "$WORK/shallow_finetune_coarse"
stage calibrate_fine "$PY" -m holstein_dist.results calibrate "$WORK/shallow_finetune_coarse" --data "$SHALLOW_DATA" \
  --split val --steps 1200 --span 0.0005 --points 11 --out "$CAL/calibration_fine.csv" \
  --export "$WORK/shallow_finetune_calibrated"

for kind in shallow shallow_finetune shallow_finetune_calibrated deep; do
  if [ $kind != deep ]; then data=$SHALLOW_DATA; val=(--steps 1200); test=(--steps 1200); steps=(1 100 600 1200)
  else data=$DEEP_DATA; val=(--steps 500); test=(--rollouts 32 --steps 500); steps=(1 100 250 500); fi
  stage "evaluate_${kind}_val" "$PY" -m holstein_dist.evaluate --checkpoint "$WORK/$kind" --data "$data" --split val \
    "${val[@]}" --batch-size 16 --baseline-steps 0 --out "$WORK/${kind}_eval_val"
  # Temperature scaling: one spread scale per component, fitted on the validation rollouts.
  stage "evaluate_${kind}_test" "$PY" -m holstein_dist.evaluate --checkpoint "$WORK/$kind" --data "$data" --split test \
    "${test[@]}" --batch-size 16 --baseline-steps 0 --spread-scale-from "$WORK/${kind}_eval_val/report.json" \
    --out "$WORK/${kind}_eval"
  keep_results "$WORK/${kind}_eval" "$HERE/$kind"
  cp "$WORK/${kind}_eval_val/report.json" "$HERE/$kind/report_val.json"
  cp "$WORK/$kind/ensemble.json" "$HERE/$kind/ensemble.json"
  "$PY" -m holstein_dist.results ensemble "$HERE/$kind/report.json" --steps "${steps[@]}" | tee "$HERE/$kind/results.md"
done
# The shallow ensembles' means against the original model (experiments/shallow_L16's reference report: same test set).
for kind in shallow shallow_finetune shallow_finetune_calibrated; do
  "$PY" -m holstein_dist.results table "$HERE/$kind/report.json" "$HERE/../shallow_L16/reference_report.json" \
    --names "ensemble mean" original --steps 1 100 600 1200 | tee "$HERE/$kind/results_vs_original.md"
done
# The shallow members themselves (weights only, ~25 KB each) as loadable ensemble directories.
for kind in shallow shallow_finetune shallow_finetune_calibrated; do
"$PY" - "$WORK/$kind" "$HERE/$kind/ensemble" <<'PY'
import shutil, sys
from pathlib import Path
from holstein_dist.checkpoints import export_model, find_in_run
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
dst.mkdir(parents=True, exist_ok=True)
for name in ("ensemble.json", "config.yaml"):
    shutil.copy(src / name, dst / name)
for member in sorted(src.glob("member-*/")):
    export_model(find_in_run(member), dst / member.name / "checkpoints" / "best.pt")
PY
done
write_times "$HERE/wall_times.json"
