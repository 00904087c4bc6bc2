#!/usr/bin/env bash
# Ensembles with calibrated uncertainty (docs/ensembles.md): K = 5 tiny CNNs on the shallow L = 16 set and
# K = 5 small PARCs on the deep L = 32 set, each trained as `ensemble.members=5` (members differ by seed).
# Each ensemble is evaluated on the validation split first, which fits one spread scale per component
# (temperature scaling), then on the test split with those scales. The shallow test report is compared with the original
# published tiny model on the same 64 test trajectories x 1200 steps.
#   bash experiments/ensembles/run.sh            (~2 h on 2 CPU cores; WORK=DIR for the large files)
# The data sets are those of experiments/shallow_L16 and experiments/deep_L32 (same configs and seeds, so the
# same trajectories); pass SHALLOW_DATA=DIR / DEEP_DATA=DIR to reuse them (generate resumes, i.e. checks them).
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../lib.sh"
WORK=${WORK:-$HERE/work}
SHALLOW_DATA=${SHALLOW_DATA:-$WORK/shallow_data}
DEEP_DATA=${DEEP_DATA:-$WORK/deep_data}
cd "$ROOT"

stage generate_shallow "$PY" -m holstein_dist.generate --config configs/data/shallow_L16.yaml --out "$SHALLOW_DATA" \
  --workers 2
stage generate_deep "$PY" -m holstein_dist.generate --config "$HERE/../deep_L32/data.yaml" --out "$DEEP_DATA" --workers 2
stage train_shallow "$PY" -m holstein_dist.train --config "$HERE/shallow_train.yaml" data="$SHALLOW_DATA" \
  run_dir="$WORK/shallow" ensemble.parallel=2
stage train_deep "$PY" -m holstein_dist.train --config "$HERE/deep_train.yaml" data="$DEEP_DATA" \
  run_dir="$WORK/deep" ensemble.parallel=2

for kind in shallow deep; do
  if [ $kind = shallow ]; then data=$SHALLOW_DATA; val=(--steps 1200); test=(--steps 1200); steps=(1 100 600 1200)
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
# The shallow ensemble's mean against the original model (experiments/shallow_L16's reference report: same test set).
"$PY" -m holstein_dist.results table "$HERE/shallow/report.json" "$HERE/../shallow_L16/reference_report.json" \
  --names "ensemble mean" original --steps 1 100 600 1200 | tee "$HERE/shallow/results_vs_original.md"
# The shallow members themselves (weights only, ~25 KB each) as a loadable ensemble directory.
"$PY" - "$WORK/shallow" "$HERE/shallow/ensemble" <<'PY'
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
write_times "$HERE/wall_times.json"
