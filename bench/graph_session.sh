#!/usr/bin/env bash
# One device call: onnxruntime-gpu (parts already in /tmp/ortw), the project; the GPU runtime tests (CUDA-graph
# replay included), then the end-to-end CNN benchmark for the models given (default darknet53). Table last.
# Usage: bash bench/graph_session.sh [--no-tests] [--models a,b] [--batches 1,8]
source "$(dirname "$0")/device_env.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
TESTS=1; if [ "${1:-}" = "--no-tests" ]; then TESTS=0; shift; fi
cd /tmp
if [ "$TESTS" = 1 ]; then
    timeout 240 python3 -m pytest -q -p no:cacheprovider --import-mode=importlib --rootdir="$REPO" \
        -c "$REPO/pyproject.toml" -m gpu "$REPO/tests/gpu/test_runtime_gpu.py" 2>&1 | tee "$OUT/gpu_tests.log" | tail -15
fi
timeout "${E2E_TIMEOUT:-500}" python3 "$REPO/bench/e2e_cnn.py" --out "$OUT" "${@:---models=darknet53}" 2>&1 \
    | grep -v "^\[W\|Warning\|warn(" | tee "$OUT/e2e.log" | tail -45
