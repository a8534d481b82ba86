#!/usr/bin/env bash
# One device call for the GPU runtime: install onnxruntime-gpu (parts already in /tmp/ortw, the last one
# carried), the carried wheels and the project; run the GPU tests; `onnx-fuse bench` on real models;
# optionally the CNN export corpus (CPU work). Logs in $OUT; a short table prints last.
# Usage: bash bench/gpu_runtime_session.sh [--corpus]
source "$(dirname "$0")/device_env.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
cd /tmp
timeout 300 python3 -m pytest -q -p no:cacheprovider --import-mode=importlib --rootdir="$REPO" \
    -c "$REPO/pyproject.toml" -m gpu "$REPO/tests/gpu" 2>&1 | tee "$OUT/gpu_tests.log" | tail -15
L=$(python3 -c "import onnx,os;print(os.path.dirname(onnx.__file__))")/backend/test/data/light
mkdir -p /tmp/m
for m in $L/light_densenet121.onnx $L/light_resnet50.onnx $L/light_inception_v2.onnx $REPO/examples/darknet_tiny.onnx $REPO/examples/resnet_block.onnx; do
    n=$(basename $m .onnx)
    python3 -m fuser.cli.main $m -o /tmp/m/$n.fused.onnx -q --no-verify
    python3 -m fuser.cli.main bench $m /tmp/m/$n.fused.onnx --device cuda --warmup 20 --iters 100 \
        --json "$OUT/bench_$n.json" 2>&1 | tee -a "$OUT/bench.log"
done
if [ "${1:-}" = "--corpus" ]; then
    timeout 400 python3 "$REPO/bench/corpus_cnn.py" --out "$OUT" --jobs 12 2>&1 | tail -40 | tee "$OUT/corpus.log"
fi
grep -E "^\[|latency|speedup|accuracy" "$OUT/bench.log"
