#!/usr/bin/env bash
# One device call (onnxruntime-gpu parts already in /tmp/ortw): every GPU test with onnxruntime-gpu present
# (kernels, conv, attention, the runtime end to end), then the transformer end-to-end benchmark.
set -uo pipefail
export PYTHONUNBUFFERED=1
REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
cd "$REPO"
[ -d /tmp/ortsite/onnxruntime ] || bash .ortgpu/install.sh 2>&1 | tail -1
python3 -m pip install -q --upgrade --no-index --no-deps --no-build-isolation --target /tmp/proj . 2>&1 | grep -v WARN | tail -1
python3 -m pip install -q --upgrade --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | grep -v WARN | tail -1
export PYTHONPATH=/tmp/proj:/tmp/site:/tmp/ortsite ONNX_FUSE_CACHE_DIR=/tmp/onnx-fuse-cache
cd /tmp
timeout 300 python3 -m pytest -q -p no:cacheprovider --import-mode=importlib --rootdir="$REPO" -c "$REPO/pyproject.toml" \
    -m gpu -x "$REPO/tests/gpu" 2>&1 | grep -v "^\[" | tee "$OUT/gpu_tests.log" | tail -6
timeout 260 python3 "$REPO/bench/e2e_transformers.py" --out "$OUT" 2>&1 | grep -v "^\[\|Warning\|warn(" | tee "$OUT/e2e_transformers.log" | tail -30
