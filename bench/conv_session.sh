#!/usr/bin/env bash
# One device call for the conv kernels: install the project (no network), compile every conv tactic in
# parallel into the disk cache, run the conv GPU tests, then the conv benchmark (table printed last).
# Logs in $OUT. Usage (device tool, carry .whl): bash bench/conv_session.sh [--no-tests] [bench_conv.py args]
# Options by environment: PROFILE="N C H W M K tactic..." (ncu, after the bench), NOBENCH=1,
# NCU_K (ncu kernel filter, default regex:fuser_conv), TUNE_CNN="resnet50 darknet53 ...", TESTK (pytest -k expression for the GPU tests), BENCH_TIMEOUT / PROFILE_TIMEOUT (seconds; default 400 / 240)
set -uo pipefail
export PYTHONUNBUFFERED=1
REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
TESTS=1
if [ "${1:-}" = "--no-tests" ]; then TESTS=0; shift; fi
cd "$REPO"
rm -rf /tmp/proj; python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/proj . 2>&1 | tail -2
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/proj:/tmp/site ONNX_FUSE_CACHE_DIR=/tmp/onnx-fuse-cache
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee "$OUT/device.txt"
cd /tmp
python3 "$REPO/bench/warm_conv_cache.py" 2>&1 | tail -3
if [ "$TESTS" = 1 ]; then
    timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -q -p no:cacheprovider --import-mode=importlib --rootdir="$REPO" \
        -c "$REPO/pyproject.toml" -m gpu ${TESTK:+-k "$TESTK"} "$REPO/tests/gpu/test_conv_gpu.py" 2>&1 | tee "$OUT/conv_gpu_tests.log" \
        | grep -E "passed|failed|Error|error|assert" | tail -25
fi
if [ -z "${NOBENCH:-}" ]; then
    timeout "${BENCH_TIMEOUT:-400}" python3 "$REPO/bench/bench_conv.py" --out "$OUT" "$@" 2>&1 | tee "$OUT/bench_conv.log" | tail -40
fi
if [ -n "${PROFILE:-}" ]; then   # PROFILE="N C H W M K tactic ...[; N C H W M K tactic ...]": ncu per tactic
    IFS=';' read -ra PROFS <<< "$PROFILE"
    for prof in "${PROFS[@]}"; do   # NCU_EXTRA: more ncu arguments (sections, --metrics ...)
        # shellcheck disable=SC2086  # word splitting intended
        timeout "${PROFILE_TIMEOUT:-240}" ncu --clock-control none -k "${NCU_K:-regex:fuser_conv}" --section SpeedOfLight \
            --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats \
            ${NCU_EXTRA:-} python3 "$REPO/bench/profile_conv.py" $prof >> "$OUT/ncu.txt" 2>&1
    done
    grep -E "fuser_conv|[a-z_]+conv[a-z_0-9]*|gemm|xmma|Duration|Compute \(SM\) Throughput|Registers Per|Achieved Occupancy|Warp Cycles Per Issued|Issued Warp Per|Block Limit Reg|Block Limit Shared|stalled|L2 Cache Throughput|DRAM Throughput" "$OUT/ncu.txt" | head -90
fi
if [ -n "${TUNE_CNN:-}" ]; then   # TUNE_CNN="resnet50 darknet53 ...": --tune on real exports, fp32 then TF32
    timeout 400 python3 "$REPO/bench/tune_cnn.py" --out "$OUT" $TUNE_CNN 2>&1 | tee "$OUT/tune_cnn.log" | tail -8
    timeout 200 python3 "$REPO/bench/tune_cnn.py" --out "$OUT" --allow-tf32 resnet50 2>&1 | tee -a "$OUT/tune_cnn.log" | tail -5
fi
