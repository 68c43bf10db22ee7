#!/usr/bin/env bash
# The main job: set up (first time), train the project's flagship, BiSeg (fused (7, 9) maps and the
# semantic prior, R18 from scratch), on the built-in synthetic shapes dataset on the CPU for a fixed
# wall-clock budget, evaluate it (COCO mask / box AP, semantic mean IU), then show the results:
# the numbers next to detectron2's Mask R-CNN trained for the same budget, training curves,
# predicted instances and semantic maps over validation images, and the score maps inside the model.
#   tools/main_job.sh                                      # defaults below (about 10 minutes on 2 cores)
#   BUDGET_MINUTES=20 OUTPUT=... tools/main_job.sh [KEY VALUE ...]   # another budget / overrides
#   CONFIG=configs/shapes/fcis_R18_cpu.yaml tools/main_job.sh        # another model
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/dev/setup_env.sh"
PY=${INSTFCN_VENV:-$ROOT/.venv}/bin/python
cd "$ROOT"
CONFIG=${CONFIG:-configs/shapes/biseg_fused_7_9_R18_cpu.yaml}
OUTPUT=${OUTPUT:-output/main_job}
BUDGET_MINUTES=${BUDGET_MINUTES:-8}
# After a few minutes of training the scores are still low (the top ones near 0.5-0.75), so the
# pictures draw what scores 0.3 or more; the evaluation uses every prediction regardless.
SCORE_THRESH=${SCORE_THRESH:-0.3}
echo "[main_job] training $CONFIG for $BUDGET_MINUTES minutes -> $OUTPUT"
"$PY" tools/train_net.py --config-file "$CONFIG" --budget-minutes "$BUDGET_MINUTES" OUTPUT_DIR "$OUTPUT" "$@"
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
"$PY" tools/main_job_report.py "$OUTPUT" --config-file "$CONFIG" --budget-minutes "$BUDGET_MINUTES"
