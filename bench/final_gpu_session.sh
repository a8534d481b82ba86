#!/usr/bin/env bash
# One device call (onnxruntime-gpu parts already in /tmp/ortw): every GPU test with onnxruntime-gpu present
# (kernels, conv, attention, the runtime end to end), then the transformer end-to-end benchmark.
source "$(dirname "$0")/device_env.sh"
cd /tmp
timeout 300 python3 -m pytest -q -p no:cacheprovider --import-mode=importlib --rootdir="$REPO" -c "$REPO/pyproject.toml" \
    -m gpu -x "$REPO/tests/gpu" 2>&1 | grep -v "^\[" | tee "$OUT/gpu_tests.log" | tail -6
timeout 260 python3 "$REPO/bench/e2e_transformers.py" --out "$OUT" 2>&1 | grep -v "^\[\|Warning\|warn(" | tee "$OUT/e2e_transformers.log" | tail -30
