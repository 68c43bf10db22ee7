#!/usr/bin/env bash
# Run the test suite (sets the environment up first, see tools/setup_env.sh).
#   tools/run_tests.sh                 # everything, slow end-to-end tests included (as CI does)
#   tools/run_tests.sh -m "not slow"   # quick loop; any pytest arguments pass through
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/tools/setup_env.sh"
VENV=${INSTFCN_VENV:-$ROOT/.venv}
cd "$ROOT"
# Real data for the coco128 tests: ../shared/data beside the checkout unless the caller chose.
if [ -z "${DETECTRON2_DATASETS:-}" ] && [ -d "$ROOT/../shared/data/coco128" ]; then
  export DETECTRON2_DATASETS="$ROOT/../shared/data"
fi
exec "$VENV/bin/python" -m pytest "$@"
