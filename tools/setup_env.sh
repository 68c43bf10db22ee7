#!/usr/bin/env bash
# Set up everything instfcn-d2 needs, from nothing, into a virtual environment (default ./.venv).
#
#   tools/setup_env.sh            # idempotent: a second run only checks, in a few seconds
#
# Steps (each skipped when already done):
#   1. venv                      python3 -m venv $INSTFCN_VENV
#   2. torch + torchvision       pinned, from the package index
#   3. other dependencies        pinned in tools/requirements-env.txt
#   4. detectron2 v0.6           from GitHub (tag v0.6, with its compiled _C) when github.com is
#                                reachable; otherwise from the index's sdist pb1-detectron2==0.6
#                                (sha256-checked), pure Python. Both are adapted to current
#                                torch/numpy/Pillow by tools/patch_detectron2_v06.py.
#   5. instfcn_d2                pip install -e . (builds instfcn_d2._C; CUDA too when a GPU is
#                                visible or FORCE_CUDA=1), rebuilt when layers/csrc changes.
#
# Environment: INSTFCN_VENV (venv path), PYTHON (interpreter making the venv, default python3),
# FORCE_CUDA=1 (build the CUDA kernels without a GPU), CUDA_HOME, TORCH_CUDA_ARCH_LIST,
# INSTFCN_D2_NO_GITHUB=1 (skip the GitHub probe).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${INSTFCN_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.15.0
TORCHVISION_VERSION=0.29.2
D2_VERSION=0.6
D2_SDIST=pb1-detectron2==${D2_VERSION}
D2_SDIST_SHA256=5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29
D2_GIT=https://github.com/facebookresearch/detectron2.git
D2_GIT_REF=v${D2_VERSION}

say() { printf '[setup_env] %s\n' "$*"; }
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

# 1. venv
if [ ! -x "$PY" ]; then
  say "creating venv $VENV with $($PYTHON --version 2>&1)"
  "$PYTHON" -m venv "$VENV"
else
  say "venv $VENV exists"
fi

# 2. torch + torchvision: the index's CUDA build also runs on CPU-only machines; a CPU-only torch
# does not work with the index's torchvision (see ../shared/ENVIRONMENT.md).
have_torch=$("$PY" -c "import torch, torchvision; print(torch.__version__.split('+')[0], torchvision.__version__.split('+')[0])" 2>/dev/null || true)
if [ "$have_torch" != "$TORCH_VERSION $TORCHVISION_VERSION" ]; then
  say "installing torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION (about 2.6 GB; a few minutes)"
  "${PIP[@]}" install -q "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
else
  say "torch $TORCH_VERSION, torchvision $TORCHVISION_VERSION present"
fi

# 3. pinned dependencies (detectron2's, the project's and the test tools)
REQ="$ROOT/tools/requirements-env.txt"
REQ_STAMP="$VENV/.instfcn_requirements.sha256"
req_sum=$(sha256sum "$REQ" | cut -d' ' -f1)
if [ "$(cat "$REQ_STAMP" 2>/dev/null)" != "$req_sum" ]; then
  say "installing pinned dependencies from tools/requirements-env.txt"
  "${PIP[@]}" install -q -r "$REQ"
  echo "$req_sum" >"$REQ_STAMP"
else
  say "pinned dependencies present"
fi

# 4. detectron2
d2_have=$("$PY" -c "import detectron2; print(detectron2.__version__)" 2>/dev/null || true)
if [ "$d2_have" != "$D2_VERSION" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  if [ "${INSTFCN_D2_NO_GITHUB:-0}" != 1 ] && timeout 20 git ls-remote --exit-code "$D2_GIT" "$D2_GIT_REF" >/dev/null 2>&1; then
    say "github.com reachable: building detectron2 $D2_GIT_REF from $D2_GIT (with its C++/CUDA ops)"
    git clone -q --depth 1 --branch "$D2_GIT_REF" "$D2_GIT" "$work/detectron2"
    src="$work/detectron2"
  else
    say "github.com not reachable: detectron2 from the index's sdist $D2_SDIST (pure Python, no detectron2._C)"
    "${PIP[@]}" download -q --no-deps --no-build-isolation --no-binary :all: "$D2_SDIST" -d "$work"
    tarball=$(ls "$work"/pb1-detectron2-*.tar.gz)
    echo "$D2_SDIST_SHA256  $tarball" | sha256sum -c --quiet - || { say "sha256 mismatch for $tarball"; exit 1; }
    tar xzf "$tarball" -C "$work"
    src=$(ls -d "$work"/pb1-detectron2-*/)
  fi
  say "adapting detectron2 sources to torch $TORCH_VERSION / numpy 2 / Pillow >= 10"
  "$PY" "$ROOT/tools/patch_detectron2_v06.py" "$src"
  say "installing detectron2 (setup.py imports torch: no build isolation; dependencies pinned in step 3)"
  (cd "$src" && "${PIP[@]}" install -q --no-deps --no-build-isolation .)
  "$PY" -c "import detectron2; print('[setup_env] detectron2', detectron2.__version__, 'from', detectron2.__path__[0])"
else
  say "detectron2 $D2_VERSION present"
fi

# 5. the project and its native extension
BUILD_STAMP="$VENV/.instfcn_build"
# An existing CUDA build also runs on CPU: keep that flavour rather than rebuild a CPU-only one.
if [ "${FORCE_CUDA:-0}" = 1 ] || [ "$(cat "$BUILD_STAMP" 2>/dev/null)" = cuda ] ||
  "$PY" -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  flavor=cuda
  export FORCE_CUDA=1
  if [ -z "${CUDA_HOME:-}" ]; then
    # /usr/local/bin/nvcc may be a wrapper script: find the toolkit root that has lib64/libcudart.
    for cand in /usr/local/cuda /usr/local/cuda-*; do
      if [ -x "$cand/bin/nvcc" ]; then CUDA_HOME=$cand; fi
    done
    export CUDA_HOME
  fi
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0"}
  say "native build: C++ + CUDA (CUDA_HOME=${CUDA_HOME:-?}, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
else
  flavor=cpu
fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
so=$(ls "$ROOT"/instfcn_d2/_C*.so 2>/dev/null | head -n1 || true)
newer=""
if [ -n "$so" ]; then
  newer=$(find "$ROOT/layers" "$ROOT/setup.py" -newer "$so" -type f | head -n1)
fi
if ! "$PY" -c "import instfcn_d2" 2>/dev/null || [ "$(cat "$BUILD_STAMP" 2>/dev/null)" != "$flavor" ] || [ -z "$so" ] || [ -n "$newer" ]; then
  say "installing instfcn_d2 (editable) and building instfcn_d2._C [$flavor]${newer:+ (changed: ${newer#$ROOT/})}"
  rm -f "$ROOT"/instfcn_d2/_C*.so
  (cd "$ROOT" && "${PIP[@]}" install -q --no-deps --no-build-isolation -e .)
  echo "$flavor" >"$BUILD_STAMP"
else
  say "instfcn_d2 installed, instfcn_d2._C [$flavor] up to date"
fi
"$PY" -W ignore::FutureWarning -c "import instfcn_d2, instfcn_d2._C, detectron2, torch; print('[setup_env] ready: torch', torch.__version__, '| detectron2', detectron2.__version__, '| instfcn_d2', instfcn_d2.__version__)"
