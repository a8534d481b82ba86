# Sourced by the device-session scripts (bench/*_session.sh): installs, without network, onnxruntime-gpu (its
# parts already copied to /tmp/ortw by earlier calls, see shared gpu/README §2), the carried wheels (.whl/) and
# the project, then exports PYTHONPATH. Sets REPO and OUT; leaves the shell in the repo root.
set -uo pipefail
export PYTHONUNBUFFERED=1
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
cd "$REPO"
[ -d /tmp/ortsite/onnxruntime ] || bash .ortgpu/install.sh 2>&1 | tail -1
python3 -m pip install -q --upgrade --no-index --no-deps --no-build-isolation --target /tmp/proj . 2>&1 | grep -v WARN | tail -1
python3 -m pip install -q --upgrade --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | grep -v WARN | tail -1
export PYTHONPATH=/tmp/proj:/tmp/site:/tmp/ortsite ONNX_FUSE_CACHE_DIR=/tmp/onnx-fuse-cache
