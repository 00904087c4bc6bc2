#!/usr/bin/env bash
# Weight-soup probes (session 18): two continuations of round 5's model averaged weight by weight into ONE tiny CNN
# (results average, w = 0.5 / 0.5, fixed before anything was read), group-averaged and rate-calibrated exactly as
# round 6 was, then judged on the 32 validation trajectories against round 6 (lib.sh shallow_val32_vs_base). The
# test split is never read: each soup costs two 43-min continuations (71 + 2 x 43 min of training in all), over the
# ~2 h budget; a probe only asks whether the average helps at all before a recipe within the budget is spent on it.
#   seeds:   round 6 (../continued/run.sh, seed 0) and its seed check (../continued/seed_check.sh, seed 1);
#   dropout: round 6 and the no-dropout continuation (../no_dropout/run.sh), which won the one-step errors and lost
#            the phase (notes.md).
#   bash experiments/shallow_L16/soup/probe.sh seeds|dropout   (~7 min on 2 CPU cores after those runs;
#   CONTINUED_WORK=DIR / NO_DROPOUT_WORK=DIR their work directories, default their work/; SHALLOW_DATA=DIR as for them)
SOUP=$(cd "$(dirname "$0")" && pwd)
source "$SOUP/../../lib.sh"
WORK_ROOT=${WORK:-$SOUP/work}
CONTINUED_WORK=${CONTINUED_WORK:-$SOUP/../continued/work}
NO_DROPOUT_WORK=${NO_DROPOUT_WORK:-$SOUP/../no_dropout/work}
SHALLOW_DATA=${SHALLOW_DATA:-$SOUP/../work/data}
LAST=checkpoints/step-00007200.pt
cd "$ROOT"

# probe NAME LABEL CHECKPOINT...: the soup of the checkpoints against round 6 on val32; small outputs in $SOUP/NAME
probe() {
  local name=$1 label=$2; shift 2
  HERE=$SOUP/$name WORK=$WORK_ROOT/$name
  mkdir -p "$HERE" "$WORK"
  stage average "$PY" -m holstein_dist.results average "$@" --out "$WORK/soup.pt"
  calibrate_twice "$WORK/soup.pt" "$WORK/calibrated.pt" 0.012 13 --data "$SHALLOW_DATA" --split val --steps 1200 \
    --symmetrize --score balanced
  BASE="round6:$ROOT/experiments/shallow_L16/continued/model.pt:round 6 (continued)" \
    shallow_val32_vs_base "$name" "$label" "$WORK/calibrated.pt" || true
  write_times "$HERE/wall_times.json"
}

case ${1:-} in
  seeds) probe probe "soup of two seeds" "$CONTINUED_WORK"/run_continue{,_seed1}/$LAST ;;
  dropout) probe dropout_mix "round 6 + no dropout" "$CONTINUED_WORK/run_continue/$LAST" \
    "$NO_DROPOUT_WORK/run_no_dropout/$LAST" ;;
  *) echo "usage: probe.sh seeds|dropout" >&2; exit 2 ;;
esac
