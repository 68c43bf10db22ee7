#!/usr/bin/env bash
# The main job: set up (first time), train the project's flagship, BiSeg (fused (7, 9) maps and the
# semantic prior, R18 from scratch), and detectron2's Mask R-CNN (R18-FPN-GN) side by side on this
# machine on the built-in synthetic shapes dataset for the same wall-clock budget, each on half the
# cores (one thread each on 2 cores), evaluate both (COCO mask / box AP, BiSeg's semantic mean IU),
# then show the results: both models' numbers and iteration counts, training curves, predicted
# instances and semantic maps over validation images, and the score maps inside the model.
#   tools/main_job.sh                                      # defaults below (about 11 minutes on 2 cores)
#   BUDGET_MINUTES=20 OUTPUT=... tools/main_job.sh [KEY VALUE ...]   # another budget / overrides of CONFIG
#   CONFIG=configs/shapes/fcis_R18_cpu.yaml tools/main_job.sh        # another model
#   BASELINE_CONFIG= tools/main_job.sh                               # no baseline trained next to it
# Run again, it moves the previous runs aside (OUTPUT.<date>-<time>) and starts afresh.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/dev/setup_env.sh"
PY=${INSTFCN_VENV:-$ROOT/.venv}/bin/python
cd "$ROOT"
CONFIG=${CONFIG:-configs/shapes/biseg_fused_7_9_R18_cpu.yaml}
OUTPUT=${OUTPUT:-output/main_job}
BASELINE_CONFIG=${BASELINE_CONFIG-configs/shapes/mask_rcnn_R18_FPN_GN_cpu.yaml}
BASELINE_OUTPUT=${BASELINE_OUTPUT:-${OUTPUT%/}_mask_rcnn}
BUDGET_MINUTES=${BUDGET_MINUTES:-8}
if [ "$BASELINE_CONFIG" = "$CONFIG" ]; then BASELINE_CONFIG=""; fi
# Side by side, each training gets half the cores (torch's threads), so neither is favoured by
# the other's load: the same wall-clock budget on the same machine at the same time.
NPROC=$(nproc 2>/dev/null || echo 2)
THREADS=${THREADS:-$(( NPROC / 2 > 0 ? NPROC / 2 : 1 ))}
if [ -z "$BASELINE_CONFIG" ]; then THREADS=${THREADS_ALONE:-$NPROC}; fi
# After a few minutes of training the scores are still low (the top ones near 0.5-0.75), so the
# pictures draw what scores 0.3 or more; the evaluation uses every prediction regardless.
SCORE_THRESH=${SCORE_THRESH:-0.3}

# A folder a previous run trained in is moved aside (train_net refuses to train into it again;
# detectron2 alone would append to its metrics.json and mix the two runs in the report).
stamp=$(date +%Y%m%d-%H%M%S)
move_aside() {
  local dir=$1
  if [ -e "$dir/metrics.json" ] || [ -e "$dir/last_checkpoint" ] || compgen -G "$dir/model_*.pth" >/dev/null; then
    local to="$dir.$stamp" n=1
    while [ -e "$to" ]; do to="$dir.$stamp-$n"; n=$((n + 1)); done
    echo "[main_job] moving the previous run in $dir aside to $to"
    mv "$dir" "$to"
  fi
}
# and train_net told to do the same if it finds one anyway (its --output-exists, where it has it)
TRAIN_FLAGS=()
if "$PY" tools/train_net.py --help 2>/dev/null | grep -q -- "--output-exists"; then
  TRAIN_FLAGS=(--output-exists move)
fi

move_aside "$OUTPUT"
baseline_pid=""
stop_baseline() { if [ -n "$baseline_pid" ] && kill -0 "$baseline_pid" 2>/dev/null; then kill "$baseline_pid"; fi; }
trap stop_baseline EXIT
if [ -n "$BASELINE_CONFIG" ]; then
  move_aside "$BASELINE_OUTPUT"
  mkdir -p "$BASELINE_OUTPUT"
  echo "[main_job] training $BASELINE_CONFIG for $BUDGET_MINUTES minutes, $THREADS thread(s), in the background" \
    "-> $BASELINE_OUTPUT (console: $BASELINE_OUTPUT/console.log)"
  OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS "$PY" tools/train_net.py --config-file "$BASELINE_CONFIG" \
    --budget-minutes "$BUDGET_MINUTES" ${TRAIN_FLAGS[@]+"${TRAIN_FLAGS[@]}"} OUTPUT_DIR "$BASELINE_OUTPUT" \
    >"$BASELINE_OUTPUT/console.log" 2>&1 &
  baseline_pid=$!
fi
echo "[main_job] training $CONFIG for $BUDGET_MINUTES minutes, $THREADS thread(s) -> $OUTPUT"
OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS "$PY" tools/train_net.py --config-file "$CONFIG" \
  --budget-minutes "$BUDGET_MINUTES" ${TRAIN_FLAGS[@]+"${TRAIN_FLAGS[@]}"} OUTPUT_DIR "$OUTPUT" "$@"
BASELINE_ARGS=()
if [ -n "$baseline_pid" ]; then
  echo "[main_job] waiting for $BASELINE_CONFIG to finish its training and evaluation"
  status=0
  wait "$baseline_pid" || status=$?
  baseline_pid=""
  if [ "$status" -ne 0 ]; then
    tail -n 30 "$BASELINE_OUTPUT/console.log" >&2
    echo "[main_job] error: the training of $BASELINE_CONFIG failed (exit $status); its output: $BASELINE_OUTPUT/console.log" >&2
    exit "$status"
  fi
  BASELINE_ARGS=(--baseline "$BASELINE_OUTPUT" --baseline-config "$BASELINE_CONFIG" --threads "$THREADS")
fi
WEIGHTS=(OUTPUT_DIR "$OUTPUT" MODEL.WEIGHTS "$OUTPUT/model_final.pth")
echo "[main_job] pictures"
"$PY" tools/plot_training_curves.py "$OUTPUT"
"$PY" tools/visualize_predictions.py --config-file "$CONFIG" --output "$OUTPUT/vis" \
  --score-thresh "$SCORE_THRESH" "$@" "${WEIGHTS[@]}"
mapfile -t VAL_IMAGES < <("$PY" -c "
import instfcn_d2
from detectron2.data import DatasetCatalog
from instfcn_d2.config import get_instfcn_cfg
cfg = get_instfcn_cfg('$CONFIG')
print('\n'.join(r['file_name'] for r in DatasetCatalog.get(cfg.DATASETS.TEST[0])[:3]))" 2>/dev/null)
"$PY" tools/visualize_score_maps.py --config-file "$CONFIG" --input "${VAL_IMAGES[@]}" --output "$OUTPUT/score_maps" \
  "$@" "${WEIGHTS[@]}"
"$PY" tools/main_job_report.py "$OUTPUT" --config-file "$CONFIG" --budget-minutes "$BUDGET_MINUTES" ${BASELINE_ARGS[@]+"${BASELINE_ARGS[@]}"}
