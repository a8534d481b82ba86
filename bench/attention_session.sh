#!/usr/bin/env bash
# One device call for the attention kernels: install the project (onnx-graphsurgeon from the carried .whl),
# compile the three dtype sources in parallel processes into the disk cache, run the GPU tests, then the
# benchmark. Logs in $OUT (gpu_tests.log, bench.log, bench_attention.json, device.txt); the table prints last.
# Usage (device tool, from the repo root, carry [".whl"]): bash bench/attention_session.sh [--quick] [--no-tests]
# [--ncu | --ncu-fp32] (ncu on bench/profile_attention.py's kernels, after the benchmark; --ncu-fp32: its fp32 set)
# [--tests-k EXPR] (pytest -k: a subset of the GPU tests) [--cases REGEX] (bench_attention.py --cases)
# [--no-bench] [--trace] (profile_attention.py trace: flash_wgmma's block timeline, after the benchmark)
set -uo pipefail
export PYTHONUNBUFFERED=1
REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
QUICK=""; TESTS=1; BENCH=1; TRACE=0; NCU=0; NCU_SET=""; TESTS_K=(); CASES=()
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK="--quick" ;; --no-tests) TESTS=0 ;; --no-bench) BENCH=0 ;; --trace) TRACE=1 ;;
        --ncu) NCU=1 ;; --ncu-fp32) NCU=1; NCU_SET=fp32 ;;
        --tests-k) TESTS_K=(-k "$2"); shift ;; --cases) CASES=(--cases "$2"); shift ;;
    esac
    shift
done
cd "$REPO"
rm -rf /tmp/proj
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/proj . 2>&1 | tail -2
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/proj:/tmp/site ONNX_FUSE_CACHE_DIR=/tmp/onnx-fuse-cache
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee "$OUT/device.txt"
cd /tmp
t0=$(date +%s)
python3 - <<'PY' 2>&1 | tee "$OUT/compile.log"
import concurrent.futures as cf, time
from fuser.kernels import attention as A, toolchain
from fuser.kernels.backend import select_backend
be = select_backend("cuda")
def build(sfx):
    t = time.time()
    c = toolchain.compile_family("cuda", be.arch, A.source_for(sfx), f"{A.NAME}_{sfx}", warp_size=be.warp_size,
                                 extra_options=[])
    return sfx, round(time.time() - t, 1), c.cached
with cf.ProcessPoolExecutor(3) as ex:
    for r in ex.map(build, ["f32", "f16", "bf16"]):
        print("compiled", *r)
PY
echo "compile wall: $(( $(date +%s) - t0 )) s"
rc=0
if [ "$TESTS" = 1 ]; then
    timeout 240 python3 -m pytest -q -p no:cacheprovider --import-mode=importlib --rootdir="$REPO" \
        -c "$REPO/pyproject.toml" -m gpu "${TESTS_K[@]}" "$REPO/tests/gpu/test_attention_gpu.py" 2>&1 | tee "$OUT/gpu_tests.log" | tail -25
    rc=${PIPESTATUS[0]}
    echo "gpu tests exit code: $rc"
fi
if [ "$BENCH" = 1 ]; then
    timeout 300 python3 "$REPO/bench/bench_attention.py" --out "$OUT" $QUICK "${CASES[@]}" 2>&1 | tee "$OUT/bench.log" \
        | grep -v "^$" | tail -70
fi
if [ "$TRACE" = 1 ]; then
    OUT="$OUT" timeout 120 python3 "$REPO/bench/profile_attention.py" trace 2>&1 | tee "$OUT/trace.log"
fi
if [ "$NCU" = 1 ]; then
    NCU_BIN=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
    timeout 120 "$NCU_BIN" --clock-control none -k regex:fuser_attn --launch-skip-before-match 0 -c 8 \
        --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
        --section ComputeWorkloadAnalysis python3 "$REPO/bench/profile_attention.py" $NCU_SET > "$OUT/ncu.txt" 2>&1
    grep -E "fuser_attn_|Duration|Achieved Occupancy|Theoretical Occupancy|Registers Per|Compute \(SM\) Throughput|Memory Throughput|Block Limit|Stall|Issue Slots Busy|Dynamic Shared" "$OUT/ncu.txt" | head -90
fi
exit $rc
