#!/usr/bin/env bash
# Set up everything instfcn-d2 needs (see dev/setup_env.py for the steps and the variables).
#   dev/setup_env.sh            # idempotent: a second run only checks, in seconds
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# A folder of vendored dependency sources beside the checkout, for machines without GitHub.
if [ -z "${INSTFCN_VENDOR_DIR:-}" ] && [ -d "$ROOT/../shared/vendor" ]; then
  export INSTFCN_VENDOR_DIR="$ROOT/../shared/vendor"
fi
for py in python3 python; do
  if command -v "$py" >/dev/null 2>&1; then exec "$py" "$ROOT/dev/setup_env.py" "$@"; fi
done
echo "[setup_env] error: no python3 on PATH" >&2
exit 1
