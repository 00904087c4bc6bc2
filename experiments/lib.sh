# Shared by the experiments' run.sh scripts: the project's python, stage timing, export and tables.
# Each script reruns its experiment from nothing: generate -> train -> export -> evaluate -> tables.
# Large outputs (dataset, run directory) go to $WORK (default: <experiment>/work, git-ignored); the
# small results (model.pt, reports, plots, curves, wall times) are written beside the script.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
REFERENCE=${HOLSTEIN_REFERENCE:-$ROOT/../shared/reference/pretrained}
DEEP=$ROOT/experiments/deep_L32
TIMES=()

# stage NAME COMMAND...: run one stage, record its wall time (seconds) for wall_times.json
stage() {
  local name=$1; shift
  echo "=== $name: $*"
  local t0=$SECONDS
  "$@"
  TIMES+=("\"$name\": $((SECONDS - t0))")
}

# capped SECONDS NAME COMMAND...: a stage with a hard time cap; at the cap a training gets SIGTERM, writes a
# checkpoint and stops (its preemption path), and the script goes on with the checkpoints it kept
capped() {
  local cap=$1 name=$2 rc=0 t0=$SECONDS
  shift 2
  echo "=== $name (cap ${cap} s): $*"
  timeout -s TERM -k 60 "$cap" "$@" || rc=$?
  TIMES+=("\"$name\": $((SECONDS - t0))")
  [ "$rc" -eq 124 ] && { echo "=== $name reached its ${cap} s cap: stopped by SIGTERM after a checkpoint"; rc=0; }
  return "$rc"
}

# in_background NAME COMMAND...: a stage started in the background (side-by-side trainings, one core each);
# wait_background waits for all of them, records each one's own wall time and fails if any failed
BG_PIDS=() BG_NAMES=() BG_DIR=
in_background() {
  local name=$1; shift
  [ -n "$BG_DIR" ] || BG_DIR=$(mktemp -d)
  echo "=== $name (background): $*"
  ( t0=$SECONDS; "$@"; echo $((SECONDS - t0)) > "$BG_DIR/$name" ) &
  BG_PIDS+=($!) BG_NAMES+=("$name")
}
wait_background() {
  local i rc=0
  for i in "${!BG_PIDS[@]}"; do
    wait "${BG_PIDS[$i]}" || rc=$?
    [ -f "$BG_DIR/${BG_NAMES[$i]}" ] && TIMES+=("\"${BG_NAMES[$i]}\": $(cat "$BG_DIR/${BG_NAMES[$i]}")")
  done
  BG_PIDS=() BG_NAMES=()
  return "$rc"
}

export_model() {  # export_model SOURCE OUT: a run dir's or checkpoint's weights-only model file
  "$PY" -c "from holstein_dist.checkpoints import export_model; export_model('$1', '$2')"
}

write_times() {  # write_times FILE
  (IFS=,; echo "{${TIMES[*]}}") | "$PY" -c 'import json,sys; print(json.dumps(json.load(sys.stdin), indent=1))' > "$1"
}

# keep_results EVAL_DIR DEST_DIR: the report and its plots (not the TensorBoard copy)
keep_results() {
  mkdir -p "$2"
  cp "$1"/report.json "$1"/*.png "$2"/
}

# shallow_vs_original DATA: evaluate $HERE/model.pt and the original tiny shallow-quench model on the same test
# split (1200 steps), keep both reports and plots beside the script, and write the comparison table results.md.
shallow_vs_original() {
  local data=$1
  stage evaluate "$PY" -m holstein_dist.evaluate --checkpoint "$HERE/model.pt" --data "$data" --split test \
    --steps 1200 --out "$WORK/eval"
  stage evaluate_reference "$PY" -m holstein_dist.evaluate --checkpoint "$REFERENCE/tiny-quench_0p5_0p8-L_16" \
    --data "$data" --split test --steps 1200 --out "$WORK/eval_reference"
  keep_results "$WORK/eval" "$HERE/eval"
  keep_results "$WORK/eval_reference" "$HERE/eval_reference"
  cp "$WORK/eval/report.json" "$HERE/report.json"
  cp "$WORK/eval_reference/report.json" "$HERE/reference_report.json"
  "$PY" -m holstein_dist.results table "$HERE/report.json" "$HERE/reference_report.json" --names ours original \
    --steps 1 100 600 1200 | tee "$HERE/results.md"
}

# calibrate_twice MODEL OUT SPAN POINTS ARGS...: results calibrate ARGS on a coarse grid (1 +- SPAN, POINTS factors),
# then on a fine one (1 +- 0.05 %, 11 factors) around the best; the grids' CSVs beside the script, the model in OUT
# (CALIBRATION=NAME names the CSVs NAME_coarse.csv / NAME_fine.csv, for a script that calibrates several models)
calibrate_twice() {
  local model=$1 out=$2 span=$3 points=$4 name=${CALIBRATION:-calibration} p=${CALIBRATION:+${CALIBRATION}_}
  shift 4
  stage "${p}calibrate_coarse" "$PY" -m holstein_dist.results calibrate "$model" "$@" --span "$span" \
    --points "$points" --work "$WORK/${p}calibrate_coarse" --out "$HERE/${name}_coarse.csv" \
    --export "$WORK/${p}calibrated_coarse.pt"
  stage "${p}calibrate_fine" "$PY" -m holstein_dist.results calibrate "$WORK/${p}calibrated_coarse.pt" "$@" \
    --span 0.0005 --points 11 --work "$WORK/${p}calibrate_fine" --out "$HERE/${name}_fine.csv" --export "$out"
}

# shallow_candidate NAME LABEL MODEL DATA: a shallow model against round 4 (experiments/shallow_L16/model.pt; see
# BASE) and the original: first the 32 validation trajectories of another seed (shallow_val32_vs_base); then, only
# where it is ahead of round 4 there (ahead_on_target), the test split of DATA: MODEL copied to $HERE/model.pt, all
# three evaluated there ($HERE/eval*), table in results.md.
# The model to beat is round 4 unless BASE=NAME:MODEL:LABEL says otherwise (e.g. round5:<path>:"round 5").
shallow_candidate() {
  local name=$1 label=$2 model=$3 data=$4 n b base_model base_label original
  base_parts
  shallow_val32_vs_base "$name" "$label" "$model" || { echo "$label: not tested"; return 0; }
  cp "$model" "$HERE/model.pt"
  shallow_test "$data" "eval:$HERE/model.pt:$label" "eval_$b:$base_model:$base_label" "eval_reference:$original:original"
}

# shallow_test DATA NAME:MODEL:LABEL...: each MODEL on the test split of DATA x 1200 steps, its report and plots in
# $HERE/NAME, and all of them side by side in $HERE/results.md. All on this machine's copy of the test split: a copy
# regenerated elsewhere may differ in its last bits.
shallow_test() {
  local data=$1 spec name rest reports=() labels=()
  shift
  for spec in "$@"; do
    name=${spec%%:*} rest=${spec#*:}
    stage "$name" "$PY" -m holstein_dist.evaluate --checkpoint "${rest%%:*}" --data "$data" --split test \
      --steps 1200 --out "$WORK/$name"
    keep_results "$WORK/$name" "$HERE/$name"
    reports+=("$HERE/$name/report.json") labels+=("${rest#*:}")
  done
  "$PY" -m holstein_dist.results table "${reports[@]}" --names "${labels[@]}" --steps 1 100 600 1200 --window 100 \
    | tee "$HERE/results.md"
}

# base_parts: BASE (NAME:MODEL:LABEL, default round 4) split into the caller's locals b, base_model and base_label, and
# the original tiny model in its local original (bash functions see their caller's locals)
base_parts() {
  local base=${BASE:-round4:$ROOT/experiments/shallow_L16/model.pt:round 4}
  local rest=${base#*:}
  b=${base%%:*} base_model=${rest%%:*} base_label=${rest#*:} original=$REFERENCE/tiny-quench_0p5_0p8-L_16
}

# shallow_val32_vs_base NAME LABEL MODEL: MODEL, the base (BASE, as for shallow_candidate) and the original on the 32
# validation trajectories of another seed (shallow_val32): reports in $HERE/val32/, the table, balanced scores and
# each model's target checks against the original in $HERE/validation_32.md; true where MODEL is ahead of the base
# there (ahead_on_target).
shallow_val32_vs_base() {
  local name=$1 label=$2 model=$3 n b base_model base_label original
  base_parts
  shallow_val32 "$name:$model" "$b:$base_model" original:"$original"
  for n in "$name" "$b" original; do
    mkdir -p "$HERE/val32/$n" && cp "$WORK/val32_$n/report.json" "$HERE/val32/$n/"
  done
  "$PY" -m holstein_dist.results table "$HERE"/val32/{"$name","$b",original}/report.json \
    --names "$label" "$base_label" original --steps 1 100 600 1200 --window 100 | tee "$HERE/validation_32.md"
  "$PY" -m holstein_dist.results score "$HERE"/val32/{"$name","$b",original}/report.json --score balanced \
    | tee -a "$HERE/validation_32.md"
  against_original "$HERE/val32/original/report.json" "$name:$HERE/val32/$name/report.json" \
    "$b:$HERE/val32/$b/report.json" | tee -a "$HERE/validation_32.md"
  if ! ahead_on_target "$HERE/val32/$name/report.json" "$HERE/val32/$b/report.json" "$HERE/val32/original/report.json"
  then
    echo "$label is not ahead of $base_label on the 32 validation trajectories"
    return 1
  fi
}

# against_original ORIGINAL NAME:REPORT...: each REPORT's target checks against the original's report (results target)
against_original() {
  local original=$1 spec
  shift
  for spec in "$@"; do
    printf '\n%s against the original (results target)\n\n' "${spec%%:*}"
    "$PY" -m holstein_dist.results target "${spec#*:}" --reference "$original"
  done
}

# ahead_on_target REPORT BASE ORIGINAL: REPORT meets more of the shallow target's checks against ORIGINAL (results target:
# each component's RMSE at steps 100, 600 and 1200, both autocorrelation errors) than BASE does, or as many with a
# lower balanced score. The rule since 2026-12-02; before it the balanced score alone decided, and it sent a model
# that met 7 checks past one that met 9 (budget_interpolation/notes.md).
ahead_on_target() {
  local ours theirs
  ours=$(met_checks "$1" "$3") theirs=$(met_checks "$2" "$3")
  [ "$ours" -gt "$theirs" ] || { [ "$ours" -eq "$theirs" ] && beats "$1" "$2" balanced; }
}
met_checks() {  # met_checks REPORT REFERENCE: how many target checks REPORT meets against REFERENCE
  "$PY" -m holstein_dist.results target "$1" --reference "$2" | tail -1 | cut -d/ -f1
}

# shallow_val32 NAME:CHECKPOINT...: the shallow set's 32 extra validation trajectories of another seed (none of the 4
# that checkpoints and rates are chosen on; $WORK/data_val32, generated here) x 1200 steps, each model's report in
# $WORK/val32_NAME (kept when there)
shallow_val32() {
  stage generate_val32 "$PY" -m holstein_dist.generate --config "$ROOT/configs/data/shallow_L16.yaml" \
    --out "$WORK/data_val32" --workers 2 splits.train=0 splits.val=32 splits.test=0 seed=20261201
  local spec
  for spec in "$@"; do
    [ -f "$WORK/val32_${spec%%:*}/report.json" ] || stage "val32_${spec%%:*}" "$PY" -m holstein_dist.evaluate \
      --checkpoint "${spec#*:}" --data "$WORK/data_val32" --split val --steps 1200 --baseline-steps 0 --no-plots \
      --out "$WORK/val32_${spec%%:*}"
  done
}

# TRAIN: how a training is launched (one process; an experiment on both cores sets a torchrun line instead)
TRAIN=("$PY" -m holstein_dist.train)
TRAIN_2RANKS=("$PY" -m torch.distributed.run --standalone --nproc_per_node 2 -m holstein_dist.train)

# shallow_generate: the shallow L=16 set (configs/data/shallow_L16.yaml) into $SHALLOW_DATA; a finished set is kept
shallow_generate() {
  stage generate "$PY" -m holstein_dist.generate --config configs/data/shallow_L16.yaml --out "$SHALLOW_DATA" \
    --workers 2
}

# shallow_single_step DIR [CONFIG [CURVE_DIR [KEY=VALUE...]]]: stage 1 of the shallow rounds (DIR holds CONFIG,
# default train_n1_long.yaml; CURVE_DIR, default DIR, gets its curve; the overrides go to the training): the shallow
# set into $SHALLOW_DATA (default $WORK/data), the long annealed single-step stage launched by $TRAIN, and its
# checkpoint with the best long-rollout score on validation exported to $WORK/chosen_n1.pt.
shallow_single_step() {
  local dir=$1 config=${2:-train_n1_long.yaml} curve_dir=${3:-$1}
  SHALLOW_DATA=${SHALLOW_DATA:-$WORK/data}
  shallow_generate
  stage train_n1 "${TRAIN[@]}" --config "$dir/$config" data="$SHALLOW_DATA" run_dir="$WORK/run_n1" "${@:4}"
  stage select_n1 "$PY" -m holstein_dist.results rollout-curve "$WORK/run_n1" --data "$SHALLOW_DATA" --split val \
    --steps 1200 --work "$WORK/curve_n1" --out "$curve_dir/rollout_curve_val_n1.csv" --export "$WORK/chosen_n1.pt"
}

# config_path CONFIG: CONFIG as given when absolute, else $HERE/CONFIG (an experiment's own configs sit beside it)
config_path() { [[ $1 = /* ]] && echo "$1" || echo "$HERE/$1"; }

# ROUND7_BASE, ROUND8_BASE: the chosen shallow models later candidates were judged against (BASE for shallow_candidate)
ROUND7_BASE="round7:$ROOT/experiments/shallow_L16/transient/model.pt:round 7 (transient)"
ROUND8_BASE="round8:$ROOT/experiments/shallow_L16/transient_search/f0.5_w16/seed1/model.pt:round 8 (transient 0.5/16, seed 1)"

# ROUND6_MODEL, TRANSIENT_CONFIG: the model and config rounds 7 and 8 fine-tuned, which their searches vary around
ROUND6_MODEL=$ROOT/experiments/shallow_L16/continued/model.pt
TRANSIENT_CONFIG=$ROOT/experiments/shallow_L16/transient/train_transient_n8.yaml

# search_start SEARCH BASE: how a search around a shallow round starts, from its directory SEARCH: large files under
# $WORK_ROOT (WORK, default SEARCH/work), the shallow set in $SHALLOW_DATA (default ../run.sh's work/data, generated
# here when missing), trainings on both cores, candidates judged against BASE (NAME:MODEL:LABEL).
search_start() {
  WORK_ROOT=${WORK:-$1/work}
  SHALLOW_DATA=${SHALLOW_DATA:-$1/../work/data}
  export BASE=$2
  TRAIN=("${TRAIN_2RANKS[@]}")
  cd "$ROOT"
  shallow_generate
}

# search_variant DIR NAME LABEL CONFIG INIT [KEY=VALUE...]: one variant of a search around a shallow round, in DIR/NAME
# (large files in $WORK_ROOT/NAME): shallow_finetune NAME CONFIG INIT with the overrides, then the calibrated model
# against the base (BASE) and the original on val32 (shallow_val32_vs_base); wall times in DIR/NAME/wall_times.json.
# A variant whose calibrated model and wall times exist from an earlier run of the search is not trained again
# (a rerun with more variants, or after a failure): only its val32 comparison is redone.
search_variant() {
  local dir=$1 name=$2 label=$3 fresh=1
  HERE=$dir/$name WORK=$WORK_ROOT/$name TIMES=()
  mkdir -p "$HERE"
  if [ -f "$WORK/calibrated.pt" ] && [ -f "$HERE/wall_times.json" ]; then
    echo "=== $name: trained and calibrated by an earlier run ($WORK/calibrated.pt); not again"
    fresh=
  else
    shallow_finetune "$name" "$4" "$5" "${@:6}"
  fi
  shallow_val32_vs_base "$name" "$label" "$WORK/calibrated.pt" || true
  [ -z "$fresh" ] || write_times "$HERE/wall_times.json"
}

# search_candidate DIR LABEL: the search's $best (search_summary) as a candidate against BASE (shallow_candidate: the
# test split only where it is ahead on val32), in DIR/$best; wall times in DIR/$best/wall_times_test.json.
search_candidate() {
  HERE=$1/$best WORK=$WORK_ROOT/$best TIMES=()
  shallow_candidate "$best" "$2" "$WORK/calibrated.pt" "$SHALLOW_DATA"
  write_times "$HERE/wall_times_test.json"
}

# search_summary DIR NAME:LABEL...: a search's variants (their val32 reports in DIR/NAME/val32, as shallow_val32_vs_base
# writes them) in DIR/summary.md: each one's target checks met against the original and balanced score on val32, and
# the base's (BASE) beside them; sets the caller's $best to the variant ahead of the others by ahead_on_target.
search_summary() {
  local dir=$1 spec name val32 b base_model base_label original
  shift
  base_parts
  best=
  {
    echo "| variant | checks met on val32 (of 14) | balanced score on val32 |"
    echo "|---|---|---|"
    for spec in "$@"; do
      name=${spec%%:*} val32=$dir/${spec%%:*}/val32
      echo "| ${spec#*:} | $(met_checks "$val32/$name/report.json" "$val32/original/report.json") |" \
        "$(score_of "$val32/$name/report.json" balanced) |"
      if [ -z "$best" ] || ahead_on_target "$val32/$name/report.json" "$dir/$best/val32/$best/report.json" \
           "$val32/original/report.json"; then best=$name; fi
    done
    val32=$dir/$best/val32
    echo "| $base_label | $(met_checks "$val32/$b/report.json" "$val32/original/report.json") |" \
      "$(score_of "$val32/$b/report.json" balanced) |"
    echo
    echo "best variant on val32: $best"
  } > "$dir/summary.md"  # not piped to tee: a pipeline's subshell would lose $best
  cat "$dir/summary.md"
}

# shallow_finetune RUN CONFIG INIT [KEY=VALUE...]: a shallow n_step-8 stage and its calibration, as rounds 5 to 7 ran
# them: CONFIG ($HERE/CONFIG unless absolute) with the overrides given, trained by $TRAIN from INIT into
# $WORK/run_RUN on $SHALLOW_DATA; every kept checkpoint's 1200-step validation errors in
# $HERE/rollout_curve_val_RUN.csv; the last checkpoint group-averaged and rate-calibrated (calibrate_twice,
# --symmetrize --score balanced) into $WORK/calibrated.pt; the training curve in $HERE/training_curve_RUN.csv.
shallow_finetune() {
  local run=$1 config=$2 init=$3 last
  local long_val=(--data "$SHALLOW_DATA" --split val --steps 1200)
  config=$(config_path "$config")
  stage "train_$run" "${TRAIN[@]}" --config "$config" data="$SHALLOW_DATA" run_dir="$WORK/run_$run" \
    init_from="$init" "${@:4}"
  stage "curve_$run" "$PY" -m holstein_dist.results rollout-curve "$WORK/run_$run" "${long_val[@]}" \
    --work "$WORK/curve_$run" --out "$HERE/rollout_curve_val_$run.csv"
  last=$(ls "$WORK/run_$run/checkpoints"/step-*.pt | sort | tail -1)
  calibrate_twice "$last" "$WORK/calibrated.pt" 0.012 13 "${long_val[@]}" --symmetrize --score balanced
  "$PY" -m holstein_dist.results curve "$WORK/run_$run" --out "$HERE/training_curve_$run.csv"
}

# round8_recipe SCALE: the chosen shallow model's recipe (round 8) from nothing, on both cores, with its first three
# stages SCALE times as long (each stage's batches_per_epoch x SCALE, so its cosine schedule stretches with it):
#   1. the shallow set into $SHALLOW_DATA; round 5's single-step stage (budget/train_n1.yaml: 24,000 steps x SCALE on
#      2 ranks x 64) and its checkpoint with the best 1200-step score on the 4 validation trajectories;
#   2. round 5's n_step-8 fine-tune from it (budget/train_finetune_n8.yaml: 7,200 steps x SCALE), its last checkpoint
#      group-averaged and rate-calibrated on validation (shallow_finetune);
#   3. round 6's continuation from that (continued/train_continue_n8.yaml: 7,200 steps x SCALE), calibrated the same;
#   4. round 8's transient fine-tune from that (transient/train_transient_n8.yaml with early_fraction 0.5, early_window
#      16, seed 1: 1,800 steps at every SCALE: it sets the rollouts' phase, not the error floor), calibrated the same.
# Each stage's model in $WORK/NAME.pt (chosen_n1, round5, round6, round8), its curves and calibration grids in $HERE
# named by the round it reproduces. Every choice is made on validation; the test split is not read.
round8_recipe() {
  local scale=$1 spec name config init per_epoch overrides shallow=$ROOT/experiments/shallow_L16
  TRAIN=("${TRAIN_2RANKS[@]}")
  shallow_single_step "$shallow/budget" train_n1.yaml "$HERE" curriculum.batches_per_epoch=$((1000 * scale))
  "$PY" -m holstein_dist.results curve "$WORK/run_n1" --out "$HERE/training_curve_n1.csv"
  for spec in round5:budget/train_finetune_n8.yaml:chosen_n1:$((720 * scale)) \
              round6:continued/train_continue_n8.yaml:round5:$((720 * scale)) \
              round8:transient/train_transient_n8.yaml:round6:600; do
    IFS=: read -r name config init per_epoch <<< "$spec"
    overrides=(curriculum.batches_per_epoch="$per_epoch")
    [ "$name" = round8 ] && overrides+=(curriculum.early_fraction=0.5 curriculum.early_window=16 seed=1)
    CALIBRATION=$name shallow_finetune "$name" "$shallow/$config" "$WORK/$init.pt" "${overrides[@]}"
    cp "$WORK/calibrated.pt" "$WORK/$name.pt"
  done
}

# shallow_round RUN CONFIG INIT NAME LABEL BASE: one shallow fine-tune round on both cores, as rounds 6 and 7 ran:
# the shallow set into $SHALLOW_DATA, shallow_finetune RUN CONFIG INIT, shallow_candidate NAME LABEL against BASE
# (NAME:MODEL:LABEL), and the stages' wall times in $HERE/wall_times.json.
shallow_round() {
  local run=$1 config=$2 init=$3 name=$4 label=$5 base=$6
  TRAIN=("${TRAIN_2RANKS[@]}")
  shallow_generate
  shallow_finetune "$run" "$config" "$init"
  BASE=$base shallow_candidate "$name" "$label" "$WORK/calibrated.pt" "$SHALLOW_DATA"
  write_times "$HERE/wall_times.json"
}

# shallow_seed_check RUN CONFIG INIT SEED [KEY=VALUE...]: a shallow_round's fine-tune (CONFIG and overrides as for
# shallow_finetune) again with another SEED, calibrated the same way and scored on its 32 validation trajectories
# against the original; outputs in $HERE/seedSEED/ (the round's own val32 reports, $HERE/val32/RUN and
# $HERE/val32/original, must exist).
shallow_seed_check() {
  local run=$1 config=$2 init=$3 seed=$4 last
  local out=$HERE/seed$seed name=${run}_seed$seed long_val=(--data "$SHALLOW_DATA" --split val --steps 1200)
  mkdir -p "$out/val32"
  config=$(config_path "$config")
  stage "train_$name" "${TRAIN[@]}" --config "$config" data="$SHALLOW_DATA" run_dir="$WORK/run_$name" \
    init_from="$init" seed="$seed" "${@:5}"
  last=$(ls "$WORK/run_$name/checkpoints"/step-*.pt | sort | tail -1)
  HERE=$out CALIBRATION=seed$seed calibrate_twice "$last" "$WORK/calibrated_seed$seed.pt" 0.012 13 "${long_val[@]}" \
    --symmetrize --score balanced
  "$PY" -m holstein_dist.results curve "$WORK/run_$name" --out "$out/training_curve.csv"
  shallow_val32 "seed$seed:$WORK/calibrated_seed$seed.pt"
  cp "$WORK/val32_seed$seed/report.json" "$out/val32/"
  {
    "$PY" -m holstein_dist.results score "$out/val32/report.json" "$HERE/val32/$run/report.json" --score balanced
    "$PY" -m holstein_dist.results target "$out/val32/report.json" --reference "$HERE/val32/original/report.json"
  } | tee "$out/validation_32.md"
}

# needs_lattice_motion: for the deep L = 32 experiments built on experiments/deep_L32/lattice_motion's continuations.
# Sets DATA (the deep set of ../run.sh) and MOTION_WORK (lattice_motion's work directory), and runs lattice_motion's
# run.sh first when its last training (the noise-5e-3 run, so all three) has not finished there.
needs_lattice_motion() {
  PARENT_WORK=${PARENT_WORK:-$DEEP/work}
  MOTION_WORK=${MOTION_WORK:-$DEEP/lattice_motion/work}
  DATA=$PARENT_WORK/data
  [ -f "$MOTION_WORK/run_continue_noise5e-3/checkpoints/step-00006000.pt" ] || \
    WORK=$MOTION_WORK PARENT_WORK=$PARENT_WORK bash "$DEEP/lattice_motion/run.sh"
}

# deep_data: the deep L = 32 experiments' common start on ../run.sh's data set (experiments/deep_L32/work/data unless
# PARENT_WORK says otherwise): sets WORK, DATA and VAL (16 validation trajectories x 500 steps), and generates the
# set, which is quick when its shards exist (the generator skips complete ones).
deep_data() {
  WORK=${WORK:-$HERE/work}
  PARENT_WORK=${PARENT_WORK:-$ROOT/experiments/deep_L32/work}
  DATA=$PARENT_WORK/data
  VAL=(--data "$DATA" --split val --steps 500)
  GUARD=(--conserve)  # the rollout guard every deep validation uses (an experiment may add --energy-split work)
  cd "$ROOT"
  stage generate "$PY" -m holstein_dist.generate --config experiments/deep_L32/data.yaml --out "$DATA" --workers 2
}

# deep_val64: the 64 extra deep validation trajectories x 1000 steps of another seed (long_unroll/data_val64.yaml),
# the set close deep candidates are ranked on; sets VAL64_DATA (beside the deep set) and generates it.
deep_val64() {
  VAL64_DATA=$PARENT_WORK/data_val64
  stage generate_val64 "$PY" -m holstein_dist.generate --config experiments/deep_L32/long_unroll/data_val64.yaml \
    --out "$VAL64_DATA" --workers 2
}

# deep_val256: the 256 deep validation trajectories x 1000 steps of ../rates (rates/data_val256.yaml), the set a
# candidate that beats the chosen model on val64 is ranked on next; sets VAL256_DATA (beside the deep set unless
# given) and generates it once per script.
deep_val256() {
  VAL256_DATA=${VAL256_DATA:-$PARENT_WORK/data_val256}
  [ -n "${VAL256_GENERATED:-}" ] && return 0
  stage generate_val256 "$PY" -m holstein_dist.generate --config "$DEEP/rates/data_val256.yaml" \
    --out "$VAL256_DATA" --workers 2
  VAL256_GENERATED=1
}

# evaluate_2ranks NAME OUT ARGS...: stage NAME, evaluate's ARGS with --out OUT run by two ranks that share the
# rollouts (one thread each, so the two cores are not oversubscribed); rank 0 writes the report. Skipped when OUT
# has a report already.
evaluate_2ranks() {
  local name=$1 out=$2; shift 2
  [ -f "$out/report.json" ] && return 0
  OMP_NUM_THREADS=1 stage "$name" "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 \
    -m holstein_dist.evaluate "$@" --out "$out"
}

# validate_2ranks SET NAME CHECKPOINT DATA ARGS...: CHECKPOINT on DATA's validation split (all stored steps, no baseline
# timing, no plots) by evaluate_2ranks, its report kept in $HERE/SET/NAME for ranked, best_of and val_table.
validate_2ranks() {
  local set=$1 name=$2 checkpoint=$3 data=$4; shift 4
  evaluate_2ranks "${set}_$name" "$WORK/${set}_$name" --checkpoint "$checkpoint" --data "$data" --split val \
    --baseline-steps 0 --no-plots "$@"
  mkdir -p "$HERE/$set/$name" && cp "$WORK/${set}_$name/report.json" "$HERE/$set/$name/"
}

# Rounds of guarded deep training (experiments/deep_L32/guarded_training, long_unroll). They read HERE (the
# experiment), WORK, DATA and VAL (the validation flags: --data, --split, --steps): each run's checkpoints are read
# with the guard (GUARD, --conserve) on validation, each run keeps its best by the climate score, and reports land
# in $HERE/val/NAME.
validate() {  # validate NAME CHECKPOINT: a guarded validation report, kept in val/NAME
  stage "val_$1" "$PY" -m holstein_dist.evaluate --checkpoint "$2" "${VAL[@]}" --baseline-steps 0 --no-plots \
    "${GUARD[@]}" --out "$WORK/val_$1"
  mkdir -p "$HERE/val/$1" && cp "$WORK/val_$1/report.json" "$HERE/val/$1/"
}
select_run() {  # select_run RUN: the run's checkpoints read under the guard on validation; its best kept and validated
  local run=$1
  stage "curve_$run" "$PY" -m holstein_dist.results rollout-curve "$WORK/run_$run" "${VAL[@]}" --at 1 10 100 \
    --score climate "${GUARD[@]}" --out "$HERE/rollout_curve_${run}_conserve.csv" --work "$WORK/curve_$run" \
    --export "$WORK/${run}_best.pt"
  "$PY" -m holstein_dist.results curve "$WORK/run_$run" --out "$HERE/training_curve_$run.csv"
  validate "$run" "$WORK/${run}_best.pt"
}
# train_side_by_side RUN:CONFIG:INIT... [KEY=VALUE...]: the runs side by side (one core each), all with the overrides
train_side_by_side() {
  local arg run config init specs=() overrides=()
  for arg in "$@"; do if [[ $arg == *=* ]]; then overrides+=("$arg"); else specs+=("$arg"); fi; done
  for arg in "${specs[@]}"; do
    IFS=: read -r run config init <<< "$arg"
    OMP_NUM_THREADS=1 in_background "train_$run" "$PY" -m holstein_dist.train --config "$config" \
      data="$DATA" run_dir="$WORK/run_$run" init_from="$init" "${overrides[@]}"
  done
  wait_background
}
train_beside() {  # train_beside RUN:CONFIG:INIT...: the runs side by side (one core each), then each one's best checkpoint
  train_side_by_side "$@"
  local spec
  for spec in "$@"; do select_run "${spec%%:*}"; done
}
train_round() {  # train_round INIT RUN...: the runs ($HERE/RUN.yaml) side by side from INIT, then each one's best
  local init=$1 run specs=(); shift
  for run in "$@"; do specs+=("$run:$HERE/$run.yaml:$init"); done
  train_beside "${specs[@]}"
}
# best_of and val_table read the reports in $HERE/${REPORTS:-val}/NAME; val_table's last step is ${LAST_STEP:-500}.
ranked() {  # ranked NAME...: the names, lowest climate score of their validation reports first
  local reports=() name
  for name in "$@"; do reports+=("$HERE/${REPORTS:-val}/$name/report.json"); done
  "$PY" -m holstein_dist.results score --score climate "${reports[@]}" | sort -g | awk '{print $2}' \
    | while read -r name; do basename "$(dirname "$name")"; done
}
best_of() {  # best_of NAME...: the name whose validation report has the lowest climate score
  ranked "$@" | sed -n 1p  # sed reads to the end: head would close the pipe early and fail it (pipefail)
}
val_table() {  # val_table OUT NAME...: the validation reports side by side
  local out=$1 reports=() name; shift
  for name in "$@"; do reports+=("$HERE/${REPORTS:-val}/$name/report.json"); done
  "$PY" -m holstein_dist.results table "${reports[@]}" --names "$@" --steps 1 "${LAST_STEP:-500}" | tee "$out"
}

test_beside_parent() {  # test_beside_parent NAME: NAME's best exported as model.pt, tested with --conserve beside PARENT
  export_model "$WORK/${1}_best.pt" "$HERE/model.pt"
  local name ckpt
  for name in parent chosen; do
    ckpt=$PARENT && [ "$name" = chosen ] && ckpt=$HERE/model.pt
    stage "test_$name" "$PY" -m holstein_dist.evaluate --checkpoint "$ckpt" --data "$DATA" --split test --conserve \
      --out "$WORK/test_$name"
    keep_results "$WORK/test_$name" "$HERE/test_$name"
  done
  "$PY" -m holstein_dist.results table "$HERE"/test_{parent,chosen}/report.json \
    --names "parent + --conserve" "$1 + --conserve" --steps 1 10 100 1000 | tee "$HERE/results.md"
}

# Promoting a deep candidate past the chosen deep model, one larger set at a time, each only where the candidate's
# climate score beats the chosen model's on the set before: the 64 extra validation trajectories (val64/), the 256
# validation trajectories of rates/ (val256/) and the 256 test trajectories of test256/, whose report and model.pt are
# kept beside the script. The chosen deep model is interpolation/model.pt (session 15); the experiments that ran
# before it set CHOSEN_BY=long_unroll, the chosen model when they ran (long_unroll/model.pt), so that their reruns
# compare as they did.
CHOSEN_BY=${CHOSEN_BY:-interpolation}
case $CHOSEN_BY in
  interpolation)
    CHOSEN_VAL64=$DEEP/interpolation/val64/mix0.5/report.json
    CHOSEN_VAL256=$DEEP/interpolation/val256/mix0.5/report.json
    CHOSEN_TEST256=$DEEP/interpolation/test_chosen/report.json ;;
  long_unroll)
    CHOSEN_VAL64=$DEEP/long_unroll/val64/parent_x0.95/report.json
    CHOSEN_VAL256=$DEEP/rates/val256/electrons0.95_lattice0.95/report.json
    CHOSEN_TEST256=$DEEP/test256/test_chosen/report.json ;;
  *) echo "lib.sh: CHOSEN_BY=$CHOSEN_BY; use interpolation (the chosen deep model) or long_unroll (the one before)" >&2
     exit 2 ;;
esac
lower() {  # lower A B: number A is strictly below number B
  "$PY" -c 'import sys; sys.exit(not float(sys.argv[1]) < float(sys.argv[2]))' "$1" "$2"
}
best_calibrated_score() {  # best_calibrated_score CSV: the lowest score of a results calibrate grid
  awk -F, 'NR > 1 {print $NF}' "$1" | sort -g | head -1
}
beats() {  # beats REPORT OTHER [SCORE]: REPORT's score (default climate; lower is better) is below OTHER's, not tied
  lower "$(score_of "$1" "${3:-climate}")" "$(score_of "$2" "${3:-climate}")"
}
score_of() {  # score_of REPORT [SCORE]: REPORT's score by results score (default climate; lower is better)
  "$PY" -m holstein_dist.results score --score "${2:-climate}" "$1" | awk '{print $1}'
}
# beside_chosen_val64 NAME...: the val64/NAME reports beside the chosen model's (results_val64.md); sets BEST, the name
# with the lowest climate score there
beside_chosen_val64() {
  local reports=() name
  for name in "$@"; do reports+=("$HERE/val64/$name/report.json"); done
  "$PY" -m holstein_dist.results table "$CHOSEN_VAL64" "${reports[@]}" \
    --names "chosen deep model ($CHOSEN_BY)" "$@" --steps 1 1000 | tee "$HERE/results_val64.md"
  BEST=$(REPORTS=val64 best_of "$@")
  echo "chosen on the 64 validation trajectories: $BEST"
}
promote() {  # promote NAME LABEL GUARD...: $WORK/${NAME}_best.pt, with its val64/NAME report, on to val256 and test256
  local name=$1 label=$2; shift 2
  beats "$HERE/val64/$name/report.json" "$CHOSEN_VAL64" || { echo "$name does not beat the chosen model on val64"; return 0; }
  deep_val256
  validate_2ranks val256 "$name" "$WORK/${name}_best.pt" "$VAL256_DATA" "$@"
  "$PY" -m holstein_dist.results table "$CHOSEN_VAL256" "$HERE/val256/$name/report.json" \
    --names "chosen deep model ($CHOSEN_BY)" "$name ($label)" --steps 1 1000 | tee "$HERE/results_val256.md"
  beats "$HERE/val256/$name/report.json" "$CHOSEN_VAL256" || { echo "$name does not beat the chosen model on val256"; return 0; }
  local test256=${TEST256_DATA:-$WORK/data_test256}
  stage generate_test256 "$PY" -m holstein_dist.generate --config "$DEEP/test256/data_test256.yaml" \
    --out "$test256" --workers 2
  export_model "$WORK/${name}_best.pt" "$HERE/model.pt"
  evaluate_2ranks test_chosen "$WORK/test_chosen" --checkpoint "$HERE/model.pt" --data "$test256" --split test \
    "$@" --baseline-steps 100
  keep_results "$WORK/test_chosen" "$HERE/test_chosen"
  "$PY" -m holstein_dist.results table "$CHOSEN_TEST256" "$HERE/test_chosen/report.json" \
    --names "chosen deep model ($CHOSEN_BY)" "$name ($label)" --steps 1 10 100 1000 | tee "$HERE/results.md"
}
