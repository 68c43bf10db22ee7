#!/usr/bin/env bash
# Run the test suite (sets the environment up first, see dev/setup_env.sh).
#   dev/run_tests.sh                 # everything, slow end-to-end tests included (as CI does)
#   dev/run_tests.sh -m "not slow"   # quick loop; any pytest arguments pass through
# Tests on real data (coco128) need DETECTRON2_DATASETS pointing at the folder holding coco128/
# (datasets/README.md); without it they are skipped, with the reason.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/dev/setup_env.sh"
VENV=${INSTFCN_VENV:-$ROOT/.venv}
cd "$ROOT"
exec "$VENV/bin/python" -m pytest "$@"
