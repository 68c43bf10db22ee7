#!/usr/bin/env bash
# The main job: set up (first time), train a small model on the built-in synthetic dataset on the
# CPU for a few minutes, evaluate it with detectron2's COCOEvaluator, then show the results:
# mask/box AP, training curves and predicted masks over validation images (PNGs).
#   tools/main_job.sh                                  # defaults below
#   CONFIG=... OUTPUT=... tools/main_job.sh [KEY VALUE ...]   # other config / overrides
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/tools/setup_env.sh"
PY=${INSTFCN_VENV:-$ROOT/.venv}/bin/python
cd "$ROOT"
CONFIG=${CONFIG:-configs/shapes/mask_rcnn_R18_FPN_GN_cpu.yaml}
OUTPUT=${OUTPUT:-output/main_job}
echo "[main_job] training $CONFIG -> $OUTPUT"
"$PY" tools/train_net.py --config-file "$CONFIG" OUTPUT_DIR "$OUTPUT" "$@"
"$PY" tools/plot_training_curves.py "$OUTPUT"
"$PY" tools/visualize_predictions.py --config-file "$CONFIG" --output "$OUTPUT/vis" \
  OUTPUT_DIR "$OUTPUT" MODEL.WEIGHTS "$OUTPUT/model_final.pth" "$@"
"$PY" - "$OUTPUT" <<'PYEOF'
import json, sys, os
out = sys.argv[1]
last = {}
for line in open(os.path.join(out, "metrics.json")):
    row = json.loads(line)
    last.update({k: v for k, v in row.items() if "/" in k and k.split("/")[0] in ("segm", "bbox")})
print("\n[main_job] results (COCO AP x100, val split of the built-in dataset):")
for task in ("segm", "bbox"):
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    print(f"  {task:5s} " + "  ".join(f"{k}={last.get(f'{task}/{k}', float('nan')):.1f}" for k in keys))
print(f"[main_job] training curves: {out}/training_curves.png")
print(f"[main_job] predicted masks: {out}/vis/*_pred_vs_gt.png")
PYEOF
