#!/usr/bin/env bash
# The project's test command (README "Quick start", and what CI runs): installs onnx-fuse with the CPU
# onnxruntime and the test tools, the compile-only GPU toolchains (NVRTC; ROCm 5.2 hiprtc from Debian),
# then runs the whole suite. GPU tests (marked `gpu`) skip themselves where no GPU is present.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" -m pip install -q -e ".[cpu,test]"
# PyTorch (CPU) + onnxscript for the tests that export models with both PyTorch exporters; optional
"$PY" -m pip install -q "torch==2.13.0" onnxscript || echo "torch not installable: export tests will skip" >&2
eval "$(PYTHON="$PY" bash tests/kernels/setup_toolchains.sh)"
export ROCM_PATH
"$PY" -m ruff check .
"$PY" -m pytest -q -p no:cacheprovider "$@"
