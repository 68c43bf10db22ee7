#!/usr/bin/env bash
# Everything instfcn-d2 checks and measures on a GPU machine, in one run of at most 7.5 minutes.
#
# Run on the GPU machine from the repository root, after dev/gpu_check_prepare.sh on a machine
# with a package index: `bash dev/gpu_check.sh`, with the folders .whl and .gpu_images copied
# along with the tree, under a time limit of 480 s (dev/gpu_check_prepare.sh prints the steps).
#
# Stages, in order of priority (each under `timeout`, none past the run's deadline,
# GPU_CHECK_BUDGET_S = 450 s from the start; a stage that no longer fits is skipped and said so;
# GPU_CHECK_SKIP="bench_amp bench_ifcn" skips stages by name):
#   env          GPU, driver, Python, torch, nvcc
#   install      the wheels of .whl into $GPU_CHECK_SITE (/tmp/site), put on PYTHONPATH
#   build        a copy of the tree in $GPU_CHECK_WORK (/tmp/gpu_check_tree); the extension built
#                there against this torch with its CUDA kernels (FORCE_CUDA=1,
#                TORCH_CUDA_ARCH_LIST=9.0, MAX_JOBS=16, setup.py build_ext --inplace), timed
#   import       detectron2.engine / .evaluation, instfcn_d2 (+ .engine, .evaluation); _C has CUDA
#   tests        pytest tests/layers (the CUDA tests run) and tests/gpu/test_cuda_models.py (one
#                training step and DefaultPredictor of the four models, CUDA against the CPU)
#   bench_layers tools/benchmark_layers.py --device cuda, float32, then float16 (its own option)
#   bench_fcis   tools/benchmark_fcis.py --device cuda --with-fpn, shorter side 600, float32
#   train        BiSeg fused (7, 9) on the built-in shapes, tools/train_net.py --budget-minutes
#                GPU_CHECK_TRAIN_MINUTES (1.5; less if the deadline is near, none under 0.25);
#                its final COCO mask AP
#   bench_amp    the FCIS benchmark with float16 autocast around each forward
#                (dev/gpu_check/bench_amp.py; if that fails, again with float32 post-processing)
#   bench_ifcn   tools/benchmark_instance_fcn.py --device cuda, shorter side 600
# The benchmarks read the images of .gpu_images (--image-dir .gpu_images).
#
# Output: a stage table and the key numbers on stdout (also $OUT/summary.log); the full output of
# the stages in $OUT: build.log, tests.log, bench_layers.log, bench_fcis.log (float32 and AMP),
# bench_ifcn.log, train.log, extras.tgz (plots, the training's config and metrics). Without $OUT
# set they go to /tmp/gpu_check_out. Exit status 1 if a stage failed.
#
# GPU_CHECK_DRY_RUN=1: the same run on a CPU machine, to prove what can be proven without a GPU.
# No CUDA build (GPU_CHECK_DRY_RUN_CUDA_BUILD=1 compiles the CUDA kernels anyway, without running
# them); the CUDA tests skip; each benchmark is run with its GPU arguments (which must fail only
# for want of CUDA: proves their parsing) and then once on the CPU at a reduced size; the training
# runs on the CPU for 0.3 minutes. Time limits are multiplied by GPU_CHECK_LIMIT_SCALE (6) and the
# deadline is an hour. Put a Python like the GPU image's first on PATH (or set GPU_CHECK_PYTHON):
# dev/gpu_check/mimic_env.py makes one.
#
# Other settings: GPU_CHECK_PYTHON (python3), GPU_CHECK_WHEELS (.whl), GPU_CHECK_IMAGES
# (.gpu_images), GPU_CHECK_SITE, GPU_CHECK_WORK, GPU_CHECK_BUDGET_S, GPU_CHECK_TRAIN_MINUTES,
# GPU_CHECK_LIMIT_SCALE, GPU_CHECK_SKIP, MAX_JOBS, CUDA_HOME.
set -u -o pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

DRY=${GPU_CHECK_DRY_RUN:-0}
PY=${GPU_CHECK_PYTHON:-python3}
OUT=${OUT:-/tmp/gpu_check_out}
SITE=${GPU_CHECK_SITE:-/tmp/site}
WORK=${GPU_CHECK_WORK:-/tmp/gpu_check_tree}
WHEELS=$(cd "${GPU_CHECK_WHEELS:-.whl}" 2>/dev/null && pwd || echo "${GPU_CHECK_WHEELS:-.whl}")
IMAGES=$(cd "${GPU_CHECK_IMAGES:-.gpu_images}" 2>/dev/null && pwd || echo "${GPU_CHECK_IMAGES:-.gpu_images}")
BUDGET=${GPU_CHECK_BUDGET_S:-$([[ $DRY == 1 ]] && echo 3600 || echo 450)}
TRAIN_MINUTES=${GPU_CHECK_TRAIN_MINUTES:-1.5}
# stage time limits are sized for the GPU machine (16 cores); a dry run on a small CPU gets more
SCALE=${GPU_CHECK_LIMIT_SCALE:-$([[ $DRY == 1 ]] && echo 6 || echo 1)}
JOBS=${MAX_JOBS:-$([[ $DRY == 1 ]] && nproc || echo 16)}
PLOTS=$WORK/plots
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg

mkdir -p "$OUT"
SUMMARY=$OUT/summary.log
: >"$SUMMARY"
ROWS=()
BROKEN=""  # set when install or build failed: later stages are pointless
STATE=$(mktemp /tmp/gpu_check_state.XXXXXX)
trap 'rm -f "$STATE"' EXIT

note() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $((BUDGET - SECONDS)); }

# stage NAME LOG LIMIT_S RESERVE_S CMD...: run CMD (a program or one of the functions below) under
# `timeout`, appending to $OUT/LOG, for at most LIMIT_S seconds and never into the last RESERVE_S
# seconds before the deadline. The functions and settings reach the `bash` that `timeout` starts
# through $STATE.
stage() {
    local name=$1 log=$2 limit=$(($3 * SCALE)) reserve=$4
    shift 4
    if [[ " ${GPU_CHECK_SKIP:-} " == *" $name "* ]]; then
        ROWS+=("$name|skipped|0|GPU_CHECK_SKIP")
        echo "[gpu_check] $name: skipped (GPU_CHECK_SKIP)"
        return 99
    fi
    if [[ -n "$BROKEN" ]]; then
        ROWS+=("$name|skipped|0|$BROKEN")
        echo "[gpu_check] $name: skipped ($BROKEN)"
        return 99
    fi
    local room=$(($(left) - reserve))
    ((limit > room)) && limit=$room
    if ((limit < 10)); then
        ROWS+=("$name|skipped|0|no time left before the deadline")
        echo "[gpu_check] $name: skipped (no time left)"
        return 99
    fi
    echo "[gpu_check] $name: running (at most ${limit} s; log $log; $(left) s left of the run's ${BUDGET} s)"
    {
        echo
        echo "===== $name: $* (limit ${limit} s) ====="
    } >>"$OUT/$log"
    {
        declare -p ROOT DRY JOBS PY OUT SITE WORK WHEELS IMAGES PLOTS DEV BL BF BI TRAIN_OPTS PYTEST 2>/dev/null
        [[ -n "${CUDA_HOME:-}" ]] && declare -p CUDA_HOME
        declare -f
    } >"$STATE"
    local t0=$SECONDS rc
    timeout -k 10 "$limit" bash -c 'set -o pipefail; source "$0"; "$@"' "$STATE" "$@" >>"$OUT/$log" 2>&1
    rc=$?
    local dt=$((SECONDS - t0)) status
    case $rc in
        0) status=ok ;;
        124 | 137) status="TIMEOUT" ;;
        *) status="FAILED (rc $rc)" ;;
    esac
    ROWS+=("$name|$status|$dt|${STAGE_NOTE:-}")
    STAGE_NOTE=""
    echo "[gpu_check] $name: $status in ${dt} s"
    return $rc
}

# A command that must fail only because CUDA is missing (dry run): proves that its arguments parse.
expect_no_cuda() {
    local log rc
    log=$(mktemp)
    "$@" >"$log" 2>&1
    rc=$?
    cat "$log"
    if ((rc == 2)) && grep -q "CUDA" "$log" && ! grep -q "unrecognized arguments" "$log"; then
        echo "dry run: the arguments parse; it stopped only for want of CUDA (as expected here)"
        rm -f "$log"
        return 0
    fi
    echo "dry run: expected a 'CUDA is not available' usage error (exit 2), got exit $rc"
    rm -f "$log"
    return 1
}

# ---- env ----------------------------------------------------------------------------------------
note "== gpu_check $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $([[ $DRY == 1 ]] && echo 'DRY RUN on the CPU' || echo 'GPU run'); budget ${BUDGET} s"
{
    command -v nvidia-smi >/dev/null &&
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader 2>&1 |
        sed 's/^/gpu: /'
    echo "cpus: $(nproc); python: $(command -v "$PY")"
    timeout 60 "$PY" -c 'import sys, torch, torchvision; print("python", sys.version.split()[0], "| torch", torch.__version__,
"| torchvision", torchvision.__version__, "| CUDA", torch.version.cuda, "| cuda available", torch.cuda.is_available(),
"|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")' 2>&1
} | tee -a "$SUMMARY"

# CUDA toolkit root: $CUDA_HOME, else /usr/local/cuda*, else the root of the nvcc on PATH (a
# wrapper script in /usr/local/bin would give a wrong root, hence the folders first).
if [[ -z "${CUDA_HOME:-}" ]]; then
    for cand in /usr/local/cuda /usr/local/cuda-13* /usr/local/cuda-*; do
        if [[ -x $cand/bin/nvcc ]] && compgen -G "$cand/lib64/libcudart.so*" >/dev/null; then
            CUDA_HOME=$(readlink -f "$cand")
            break
        fi
    done
    if [[ -z "${CUDA_HOME:-}" ]] && command -v nvcc >/dev/null; then
        CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
    fi
fi
note "nvcc: ${CUDA_HOME:-none found}${CUDA_HOME:+ ($("${CUDA_HOME}/bin/nvcc" --version 2>/dev/null | grep -o 'release [0-9.]*'))}"

# ---- install ------------------------------------------------------------------------------------
install_wheels() {
    ls "$WHEELS"/*.whl || return 1
    rm -rf "$SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
}
stage install build.log 60 300 install_wheels || BROKEN="the wheels did not install"
export PYTHONPATH=$SITE:$WORK

# ---- a copy of the tree, and the extension built in it --------------------------------------------
copy_tree() {
    rm -rf "$WORK"
    mkdir -p "$WORK"
    if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        # the tree as git sees it: tracked and untracked-not-ignored files (that still exist)
        git -C "$ROOT" ls-files -z -co --exclude-standard | (cd "$ROOT" && "$PY" -c '
import os, sys
names = [n for n in sys.stdin.buffer.read().split(b"\0") if n and os.path.isfile(n)]
sys.stdout.buffer.write(b"\0".join(names))') | tar -C "$ROOT" --null -T - -cf - | tar -C "$WORK" -xf -
    else
        # a copy without .git (as on the GPU machine): everything but the copied folders and build outputs
        tar -C "$ROOT" --exclude=./.git --exclude=./.whl --exclude=./.gpu_images --exclude='*.so' \
            --exclude=./build --exclude=./output -cf - . | tar -C "$WORK" -xf -
    fi
    rm -f "$WORK"/instfcn_d2/_C*.so
    echo "tree copied to $WORK: $(find "$WORK" -type f | wc -l) files"
}

build_ext() {
    copy_tree || return 1
    cd "$WORK" || return 1
    local cuda=1
    [[ $DRY == 1 && ${GPU_CHECK_DRY_RUN_CUDA_BUILD:-0} != 1 ]] && cuda=0
    if ((cuda)) && [[ -z "${CUDA_HOME:-}" ]]; then
        echo "no CUDA toolkit found (no nvcc): cannot build the CUDA kernels"
        return 1
    fi
    echo "building instfcn_d2._C: FORCE_CUDA=$cuda TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=$JOBS CUDA_HOME=${CUDA_HOME:-}"
    local t0=$SECONDS
    env FORCE_CUDA=$cuda TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=$JOBS ${CUDA_HOME:+CUDA_HOME=$CUDA_HOME} \
        "$PY" setup.py build_ext --inplace || return 1
    echo "BUILD_SECONDS $((SECONDS - t0))"
    ls -la instfcn_d2/_C*.so
}
stage build build.log 300 140 build_ext || BROKEN="${BROKEN:-the extension did not build}"
build_s=$(grep -o 'BUILD_SECONDS [0-9]*' "$OUT/build.log" | tail -1 | cut -d' ' -f2)
cd "$WORK" 2>/dev/null || cd "$ROOT"

check_import() {
    "$PY" - <<'PYEOF'
import warnings
warnings.simplefilter("ignore")
import torch
import detectron2, detectron2.engine, detectron2.evaluation
import instfcn_d2, instfcn_d2.engine, instfcn_d2.evaluation
from instfcn_d2.layers import has_cuda
print("detectron2", detectron2.__version__, "from", detectron2.__file__)
print("instfcn_d2 from", instfcn_d2.__file__, "| _C CUDA kernels:", has_cuda())
if torch.cuda.is_available() and not has_cuda():
    raise SystemExit("a GPU is visible but instfcn_d2._C has no CUDA kernels")
PYEOF
}
stage import build.log 45 120 check_import || BROKEN="${BROKEN:-instfcn_d2 does not import}"

# ---- tests --------------------------------------------------------------------------------------
PYTEST=("$PY" -m pytest -q -rsfE -p no:cacheprovider --durations=5)
stage tests tests.log 200 150 "${PYTEST[@]}" -s tests/layers tests/gpu/test_cuda_models.py

# ---- benchmarks and the training ----------------------------------------------------------------
mkdir -p "$PLOTS"
DEV=cuda
BL=(tools/benchmark_layers.py --device cuda --repeat 10)
BF=(tools/benchmark_fcis.py --device cuda --with-fpn --images 3 --short-side 600 --max-size 1000 --image-dir "$IMAGES")
BI=(tools/benchmark_instance_fcn.py --device cuda --images 3 --short-side 600 --max-size 1000 --image-dir "$IMAGES")
TRAIN_OPTS=(DATALOADER.NUM_WORKERS 4)

if [[ $DRY == 1 ]]; then
    DEV=cpu
    bench() {  # the GPU arguments must parse; then a reduced run on the CPU
        local tool=$1
        shift
        expect_no_cuda "$PY" "$@" || return 1
        local cpu=()
        for a in "$@"; do [[ $a == cuda ]] && cpu+=(cpu) || cpu+=("$a"); done
        case $tool in
            layers) cpu+=(--repeat 1 --naive-groups 1 --skip-reference) ;;
            # bfloat16 on this CPU is emulated (~20x slower): a small image, no Mask R-CNN
            amp) cpu+=(--images 1 --short-side 128 --max-size 192 --models FCIS,BiSeg) ;;
            *) cpu+=(--images 1 --short-side 320 --max-size 480) ;;
        esac
        echo "dry run: reduced CPU run: ${cpu[*]}"
        "$PY" "${cpu[@]}"
    }
    TRAIN_OPTS=(DATALOADER.NUM_WORKERS 1)
else
    bench() {
        shift
        "$PY" "$@"
    }
fi

bench_layers() {
    bench layers "${BL[@]}" --out "$PLOTS/benchmark_layers.png"
    local rc=$?
    if [[ $DRY == 1 ]]; then
        expect_no_cuda "$PY" "${BL[@]}" --dtype float16 --skip-reference --out "$PLOTS/benchmark_layers_fp16.png" || return 1
    else
        "$PY" "${BL[@]}" --dtype float16 --skip-reference --out "$PLOTS/benchmark_layers_fp16.png" || rc=$?
    fi
    return $rc
}
stage bench_layers bench_layers.log 70 130 bench_layers
stage bench_fcis bench_fcis.log 80 110 bench fcis "${BF[@]}" --out "$PLOTS/benchmark_fcis.png"

train() {
    local minutes=$1
    "$PY" tools/train_net.py --config-file configs/shapes/biseg_fused_7_9_R18_cpu.yaml --budget-minutes "$minutes" \
        MODEL.DEVICE "$DEV" "${TRAIN_OPTS[@]}" OUTPUT_DIR "$WORK/output/gpu_check_biseg"
}
# Minutes of training: what is asked, or what fits before the deadline after the stages that
# follow (80 s) and the run's own overhead (start, data, measurement, final evaluation: ~75 s).
train_minutes=$(awk -v want="$TRAIN_MINUTES" -v room="$(($(left) - 80 - 75))" \
    'BEGIN { m = room / 60; if (m > want) m = want; printf "%.2f", (m > 0 ? m : 0) }')
[[ $DRY == 1 ]] && train_minutes=0.3
if awk -v m="$train_minutes" 'BEGIN { exit !(m >= 0.25) }'; then
    limit=$(awk -v m="$train_minutes" 'BEGIN { printf "%d", m * 60 + 120 }')
    STAGE_NOTE="--budget-minutes $train_minutes"
    stage train train.log "$limit" 60 train "$train_minutes"
else
    ROWS+=("train|skipped|0|no time left for 0.25 min of training")
fi

bench_amp() {  # plain autocast; if that fails, again with the post-processing in float32
    bench amp dev/gpu_check/bench_amp.py fcis "${BF[@]:1}" --out "$PLOTS/benchmark_fcis_amp.png" && return 0
    echo "AMP run failed; again with --fp32-postprocess"
    bench amp dev/gpu_check/bench_amp.py fcis --fp32-postprocess "${BF[@]:1}" --out "$PLOTS/benchmark_fcis_amp.png"
}
stage bench_amp bench_fcis.log 70 35 bench_amp
stage bench_ifcn bench_ifcn.log 60 0 bench ifcn "${BI[@]}" --out "$PLOTS/benchmark_instance_fcn.png"

# ---- extras and the summary ---------------------------------------------------------------------
(
    cd "$WORK" 2>/dev/null || exit 0
    files=()
    for f in plots output/gpu_check_biseg/config.yaml output/gpu_check_biseg/metrics.json; do [[ -e $f ]] && files+=("$f"); done
    ((${#files[@]})) && tar -czf "$OUT/extras.tgz" "${files[@]}"
)

{
    echo
    echo "== stages (deadline ${BUDGET} s; total ${SECONDS} s)"
    printf '%-13s %-16s %6s  %s\n' stage status seconds note
    for row in "${ROWS[@]}"; do
        IFS='|' read -r n s t x <<<"$row"
        printf '%-13s %-16s %6s  %s\n' "$n" "$s" "$t" "$x"
    done
    echo "extension build: ${build_s:-?} s"
    echo
    echo "== tests"
    grep -E '^(=+ )?[0-9]+ (passed|failed|skipped|error)|^(FAILED|ERROR) |^SKIPPED' "$OUT/tests.log" 2>/dev/null | cut -c1-220
    grep -E '^(fcis|biseg|instance_fcn|mask_rcnn): ' "$OUT/tests.log" 2>/dev/null | cut -c1-220
    echo
    echo "== benchmark_layers (float32, then float16)"
    grep -E '^(device:|\||PASS|FAIL|info:)' "$OUT/bench_layers.log" 2>/dev/null | cut -c1-220
    echo
    echo "== benchmark_fcis (float32, then AMP float16)"
    grep -E '^(device:|mixed precision:|\||- )' "$OUT/bench_fcis.log" 2>/dev/null | cut -c1-260
    echo
    echo "== benchmark_instance_fcn"
    grep -E '^(device:|\||- )' "$OUT/bench_ifcn.log" 2>/dev/null | cut -c1-260
    echo
    echo "== training: BiSeg fused (7, 9) on instfcn_shapes"
    grep -E 'Measured .* s per training iteration|--budget-minutes|Time budget|Overall training speed|Total training time|copypaste:' \
        "$OUT/train.log" 2>/dev/null | sed 's/^\[[^]]*\] //' | cut -c1-220
    echo
    echo "files: $(cd "$OUT" && ls | tr '\n' ' ')"
} | tee -a "$SUMMARY"
failed=0
for row in "${ROWS[@]}"; do [[ $row == *"|FAILED"* || $row == *"|TIMEOUT"* ]] && failed=1; done
exit $failed
