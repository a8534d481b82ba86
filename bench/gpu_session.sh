#!/usr/bin/env bash
# One device-machine session: install the project without network, GPU tests, then benchmarks.
# Logs land in $OUT (gpu_tests.log, bench.log, bench.json, device.txt); the short table prints last.
# Usage (device tool, from the repo root): bash bench/gpu_session.sh [--quick] [--no-tests] [--no-bench]
set -uo pipefail
export PYTHONUNBUFFERED=1
REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
QUICK=""; TESTS=1; BENCH=1
for a in "$@"; do
    case "$a" in
        --quick) QUICK="--quick" ;;
        --no-tests) TESTS=0 ;;
        --no-bench) BENCH=0 ;;
    esac
done
cd "$REPO"
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/proj . 2>&1 | tail -2
export PYTHONPATH=/tmp/proj
# fuser/__init__ imports onnx-graphsurgeon, which the GPU machine lacks: carry its wheel in .whl/
# (python3 -m pip download --no-deps -d .whl onnx-graphsurgeon==0.6.1) and name .whl in carry.
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
    export PYTHONPATH=/tmp/proj:/tmp/site
fi
export ONNX_FUSE_CACHE_DIR=/tmp/onnx-fuse-cache
{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem --format=csv
    python3 -c "import cuda.bindings, torch; from cuda.bindings import nvrtc; print('cuda-bindings', cuda.bindings.__version__, 'nvrtc', nvrtc.nvrtcVersion()[1:], 'torch', torch.__version__)"
} 2>&1 | tee "$OUT/device.txt"
# Run from /tmp so the repo's source dirs cannot shadow the installed fuser namespace.
cd /tmp
rc=0
if [ "$TESTS" = 1 ]; then
    timeout 420 python3 -m pytest -q -p no:cacheprovider --import-mode=importlib --rootdir="$REPO" \
        -c "$REPO/pyproject.toml" -m gpu "$REPO/tests/gpu" 2>&1 | tee "$OUT/gpu_tests.log" | tail -40
    rc=${PIPESTATUS[0]}
    echo "gpu tests exit code: $rc"
fi
if [ "$BENCH" = 1 ]; then
    timeout 400 python3 "$REPO/bench/bench_kernels.py" --out "$OUT" $QUICK 2>&1 | tee "$OUT/bench.log" | grep -v "^$" | tail -120
fi
exit $rc
