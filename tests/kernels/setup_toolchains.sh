#!/usr/bin/env bash
# Installs the compile-only GPU toolchains the kernel CI tests need (no GPU required), idempotently:
#   NVIDIA: cuda-bindings + nvidia-cuda-nvrtc from PyPI (NVRTC, compiles sm_80/sm_90 cubins)
#   AMD:    Debian's ROCm 5.2 HIP runtime (hiprtc lives inside libamdhip64 there) + hip-python, with the
#           library links hip-python looks for under $ROCM_PATH/lib (see shared gpu/README.md §3).
# Progress goes to stderr; stdout carries only the environment to export, so CI can do
#   eval "$(bash tests/kernels/setup_toolchains.sh)"
# Env: PYTHON (default python3), ONNX_FUSE_ROCM_DIR (default ~/.local/share/onnx-fuse/rocm).
set -euo pipefail

PY="${PYTHON:-python3}"
R="${ONNX_FUSE_ROCM_DIR:-$HOME/.local/share/onnx-fuse/rocm}"
log() { echo "[setup_toolchains] $*" >&2; }
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

# --- NVIDIA: NVRTC through cuda-python -------------------------------------------------------------
if "$PY" -c "from cuda.bindings import nvrtc; assert int(nvrtc.nvrtcVersion()[0]) == 0" >/dev/null 2>&1; then
    log "NVRTC: already usable ($("$PY" -c 'from cuda.bindings import nvrtc; print(nvrtc.nvrtcVersion()[1:])'))"
else
    log "NVRTC: pip install cuda-bindings nvidia-cuda-nvrtc"
    "$PY" -m pip install -q cuda-bindings nvidia-cuda-nvrtc >&2
fi

# --- AMD: ROCm 5.2 runtime libraries from Debian + hip-python ---------------------------------------
PKGS="libamdhip64-5 libhiprtc-builtins5 libamdhip64-dev"
if dpkg -s $PKGS >/dev/null 2>&1; then
    log "ROCm libs: already installed ($PKGS)"
else
    log "ROCm libs: apt-get update && apt-get install -y $PKGS"
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $PKGS >&2
fi
if "$PY" -m pip show hip-python >/dev/null 2>&1; then
    log "hip-python: already installed"
else
    log "hip-python: pip install hip-python"
    "$PY" -m pip install -q hip-python >&2
fi

LIB=""
for cand in /usr/lib/x86_64-linux-gnu/libamdhip64.so.5 /usr/lib/*/libamdhip64.so.5; do
    if [ -e "$cand" ]; then LIB="$cand"; break; fi
done
if [ -z "$LIB" ]; then
    log "ERROR: libamdhip64.so.5 not found after install"; exit 1
fi
mkdir -p "$R/lib"
# In ROCm 5.2 hiprtc is part of libamdhip64; hip-python dlopens libhiprtc.so and libamdhip64.so.
ln -sf "$LIB" "$R/lib/libhiprtc.so"
ln -sf "$LIB" "$R/lib/libamdhip64.so"
log "ROCm links: $R/lib -> $LIB"

if ROCM_PATH="$R" "$PY" -c "from hip import hiprtc; assert int(hiprtc.hiprtcVersion()[0]) == 0" >/dev/null 2>&1; then
    log "hiprtc: usable with ROCM_PATH=$R"
else
    log "ERROR: hiprtc still not usable with ROCM_PATH=$R"; exit 1
fi
echo "export ROCM_PATH=$R"
