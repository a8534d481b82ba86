#!/usr/bin/env bash
# The project's test command (README "Quick start", and what CI runs): installs onnx-fuse with the CPU
# onnxruntime and the test tools, the compile-only GPU toolchains (NVRTC; ROCm 5.2 hiprtc from Debian),
# Graphviz and Chromium (Debian) for the visual diff, then runs the whole suite. GPU tests (marked `gpu`)
# skip themselves where no GPU is present.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" -m pip install -q -e ".[cpu,test]"
# PyTorch (CPU) + onnxscript for the tests that export models with both PyTorch exporters, and transformers for
# the attention families built from its configs (random weights, no downloads); optional
"$PY" -m pip install -q "torch==2.13.0" onnxscript || echo "torch not installable: export tests will skip" >&2
"$PY" -m pip install -q "transformers==5.23.0" || echo "transformers not installable: its export tests will skip" >&2
eval "$(PYTHON="$PY" bash tests/kernels/setup_toolchains.sh)"
export ROCM_PATH
# The visual diff: Graphviz `dot` lays out `onnx-fuse diff` pages; Chromium renders them in the tests
# (headless). Debian packages, installed only where missing (needs root or sudo, like the ROCm libs).
VISUAL_PKGS=""
command -v dot >/dev/null 2>&1 || VISUAL_PKGS="graphviz"
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
  || VISUAL_PKGS="$VISUAL_PKGS chromium fonts-dejavu-core"
if [ -n "$VISUAL_PKGS" ]; then
  SUDO=""
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
  echo "visual diff tools: apt-get install$VISUAL_PKGS" >&2
  $SUDO apt-get update -qq >&2
  # shellcheck disable=SC2086  # a list of package names
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $VISUAL_PKGS >&2
fi
export ONNX_FUSE_REQUIRE_VISUAL=1  # the diff/view tests fail, not skip, without dot, Chromium or Netron
"$PY" -m ruff check .
"$PY" -m pytest -q -p no:cacheprovider "$@"
