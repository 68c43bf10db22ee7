#!/usr/bin/env bash
# Prepare the run of dev/gpu_check.sh on a GPU machine: run this first on a machine with a package
# index (the GPU machine has none), from anywhere.
#
#   dev/gpu_check_prepare.sh
#
# 1. .whl/: the wheels for the GPU machine's Python 3.12 that its image lacks (detectron2 v0.6
#    pure Python, built from the package index's sdist as dev/setup_env.py's v0.6 route gets
#    it and adapted by dev/patch_detectron2.py; fvcore, iopath, pycocotools, yacs, termcolor,
#    omegaconf, hydra-core, antlr4-python3-runtime). dev/gpu_check/build_wheels.py says which
#    and why, and checks that every requirement is on the GPU image or among the wheels.
# 2. .gpu_images/: the first GPU_CHECK_NUM_IMAGES (4) images of coco128's val2017, the ones the
#    CPU benchmarks of docs/benchmarks.md use first (1 warm-up + 3 timed).
# 3. Both folders are listed in .git/info/exclude (they are copied to the GPU machine beside the
#    tree, not committed).
# 4. Prints the sizes (the tree plus both folders must stay under 48 MiB, to keep the copy to
#    the GPU machine small) and the command to run there.
#
# Environment:
#   PYTHON                 a Python with torch (detectron2's setup.py imports it); default:
#                          ./.venv/bin/python, else python3
#   DETECTRON2_DATASETS    the folder holding coco128/ (default ./datasets),
#                          e.g. DETECTRON2_DATASETS=/data (holding /data/coco128)
#   GPU_CHECK_IMAGE_SRC    the image folder itself (default $DETECTRON2_DATASETS/coco128/val2017)
#   GPU_CHECK_NUM_IMAGES   how many images (default 4)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
say() { echo "[gpu_check_prepare] $*"; }

PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
"$PY" -c "import torch" 2>/dev/null || { say "error: $PY cannot import torch (set PYTHON)"; exit 1; }

exclude=$(git rev-parse --git-path info/exclude 2>/dev/null || echo .git/info/exclude)
mkdir -p "$(dirname "$exclude")"
touch "$exclude"
for entry in /.whl/ /.gpu_images/; do
    grep -qxF "$entry" "$exclude" || echo "$entry" >>"$exclude"
done

t0=$SECONDS
say "wheels for Python 3.12 into .whl/ (with $PY)"
"$PY" dev/gpu_check/build_wheels.py .whl
say "wheels ready in $((SECONDS - t0)) s"

src=${GPU_CHECK_IMAGE_SRC:-${DETECTRON2_DATASETS:-$ROOT/datasets}/coco128/val2017}
n=${GPU_CHECK_NUM_IMAGES:-4}
if [[ ! -d "$src" ]]; then
    say "error: no image folder $src (set DETECTRON2_DATASETS to the folder holding coco128/, or GPU_CHECK_IMAGE_SRC)"
    exit 1
fi
rm -rf .gpu_images
mkdir .gpu_images
mapfile -t images < <(find "$src" -maxdepth 1 -type f \( -iname '*.jpg' -o -iname '*.png' \) -printf '%f\n' | LC_ALL=C sort | head -n "$n")
if (( ${#images[@]} < n )); then
    say "error: $src holds ${#images[@]} images, $n are needed"
    exit 1
fi
for f in "${images[@]}"; do cp "$src/$f" .gpu_images/; done
say "${#images[@]} images of $src copied into .gpu_images/: ${images[*]}"

# What goes to the GPU machine: the tracked and untracked-not-ignored files, plus both folders.
tree_bytes=$(git ls-files -z -co --exclude-standard | "$PY" -c '
import os, sys
names = [n for n in sys.stdin.buffer.read().split(b"\0") if n]
print(sum(os.path.getsize(n) for n in names if os.path.isfile(n)))')
whl_bytes=$(du -sb .whl | cut -f1)
img_bytes=$(du -sb .gpu_images | cut -f1)
total=$((tree_bytes + whl_bytes + img_bytes))
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
say "sizes: working tree $(mib "$tree_bytes"), .whl $(mib "$whl_bytes"), .gpu_images $(mib "$img_bytes"); total $(mib "$total") (at most 48 MiB)"
if (( total > 48 * 1048576 )); then
    say "error: over 48 MiB: leave out what need not go to the GPU machine"
    exit 1
fi

cat <<'EOF'

Next, on the GPU machine, from the repository root of a copy of this tree with .whl/ and
.gpu_images/ beside it (about 8 minutes; the script stops its own stages at 7.5 minutes):

  timeout 480 bash dev/gpu_check.sh

Its summary ends its output (also $OUT/summary.log); the logs are in $OUT (default
/tmp/gpu_check_out).
EOF
