#!/usr/bin/env bash
# One device call: onnxruntime-gpu (parts already in /tmp/ortw), wheels, the project; then the end-to-end
# CNN benchmark (bench/e2e_cnn.py). Logs and JSON in $OUT; the table prints last.
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
timeout "${E2E_TIMEOUT:-540}" python3 "$REPO/bench/e2e_cnn.py" --out "$OUT" "$@" 2>&1 | grep -v "^\[\|Warning\|warn(" | tee "$OUT/e2e.log" | tail -60
