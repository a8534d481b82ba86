#!/usr/bin/env bash
# The closing device calls (onnxruntime-gpu parts already in /tmp/ortw; the first call installs it). One call per
# argument, back to back while the machine is warm:
#   tests-a   GPU tests: kernels, conv, runtime (CUDA-graph replay included)      -> gpu_tests_a.log
#   tests-b   GPU tests: attention (every tactic), then bench_attention.py        -> gpu_tests_b.log, bench_attention.*
#   cnn       bench/e2e_cnn.py, all models, batch 1 and 8, fp32 and TF32          -> e2e.log, e2e_cnn.json
#   tr        bench/e2e_transformers.py, fp32 and TF32 [--cases …]               -> e2e_transformers.log/.json
#   linear    GPU tests: the linear family + runtime linear steps, then e2e_transformers [--cases …] -> *_linear.log
#   views     GPU tests: layout views (strided attention I/O) and the runtime     -> gpu_tests_views.log
source "$(dirname "$0")/device_env.sh"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee "$OUT/device.txt"
cd /tmp
PYT=(python3 -m pytest -q -p no:cacheprovider --import-mode=importlib --rootdir="$REPO" -c "$REPO/pyproject.toml" -m gpu)
case "${1:-}" in
tests-a)
    timeout 540 "${PYT[@]}" "$REPO/tests/gpu/test_kernels_gpu.py" "$REPO/tests/gpu/test_conv_gpu.py" \
        "$REPO/tests/gpu/test_runtime_gpu.py" 2>&1 | grep -v "^\[" | tee "$OUT/gpu_tests_a.log" | tail -8 ;;
tests-b)
    timeout 330 "${PYT[@]}" "$REPO/tests/gpu/test_attention_gpu.py" 2>&1 | grep -v "^\[" | tee "$OUT/gpu_tests_b.log" | tail -8
    timeout 220 python3 "$REPO/bench/bench_attention.py" --out "$OUT" 2>&1 | tee "$OUT/bench_attention.log" | tail -40 ;;
cnn)
    timeout 560 python3 "$REPO/bench/e2e_cnn.py" --out "$OUT" 2>&1 | grep -v "^\[W\|Warning\|warn(" \
        | tee "$OUT/e2e.log" | tail -16 ;;
tr)
    shift
    timeout 560 python3 "$REPO/bench/e2e_transformers.py" --out "$OUT" "$@" 2>&1 | grep -v "^\[W\|Warning\|warn(" \
        | tee "$OUT/e2e_transformers.log" | tail -9 ;;
linear)
    shift
    timeout 200 "${PYT[@]}" "$REPO/tests/gpu/test_linear_gpu.py" 2>&1 | grep -v "^\[" | tee "$OUT/gpu_tests_linear.log" \
        | tail -5
    timeout 380 python3 "$REPO/bench/e2e_transformers.py" --out "$OUT" "$@" 2>&1 | grep -v "^\[W\|Warning\|warn(" \
        | tee "$OUT/e2e_transformers.log" | tail -9 ;;
views)
    timeout 400 "${PYT[@]}" "$REPO/tests/gpu/test_layout_views_gpu.py" "$REPO/tests/gpu/test_runtime_gpu.py" 2>&1 \
        | grep -v "^\[" | tee "$OUT/gpu_tests_views.log" | tail -8 ;;
*) echo "usage: $0 tests-a|tests-b|cnn|tr [--cases …]|linear [--cases …]|views"; exit 2 ;;
esac
