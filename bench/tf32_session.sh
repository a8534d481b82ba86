#!/usr/bin/env bash
# One device call for flash_tf32 (fp32 attention on TF32 tensor cores): install the project (onnx-graphsurgeon from
# the carried .whl), compile the attention modules (f32, f16, bf16 and the TF32 one) in parallel processes into the
# disk cache, run tests/gpu/test_attention_gpu.py (all of it: the TF32 tests are test_tf32_*), the TF32 rows of
# bench_attention.py, compute-sanitizer (memcheck, racecheck) on small TF32 launches, then ncu on the TF32 kernels at
# B=8, 12 heads, S=512, D=64. Logs in $OUT (device.txt, compile.log, gpu_tests.log, bench.log, bench_attention.json,
# sanitizer.txt, ncu.txt).
# Usage (device tool, from the repo root, carry [".whl"]): bash bench/tf32_session.sh [--no-tests] [--no-ncu]
set -uo pipefail
export PYTHONUNBUFFERED=1
REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
TESTS=1; NCU=1
for a in "$@"; do case "$a" in --no-tests) TESTS=0 ;; --no-ncu) NCU=0 ;; esac; done
cd "$REPO"
python3 -m pip install -q --upgrade --no-index --no-deps --no-build-isolation --target /tmp/proj . 2>&1 | tail -2
python3 -m pip install -q --upgrade --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/proj:/tmp/site ONNX_FUSE_CACHE_DIR=/tmp/onnx-fuse-cache
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee "$OUT/device.txt"
cd /tmp
t0=$(date +%s)
timeout 120 python3 - <<'PY' 2>&1 | tee "$OUT/compile.log"
import concurrent.futures as cf, time
from fuser.kernels import attention as A, toolchain
from fuser.kernels import attention_tf32 as T
from fuser.kernels.backend import select_backend
be = select_backend("cuda")
JOBS = {"f32": (A.source_for("f32"), f"{A.NAME}_f32"), "f16": (A.source_for("f16"), f"{A.NAME}_f16"),
        "bf16": (A.source_for("bf16"), f"{A.NAME}_bf16"), "tf32": (T.source_for(A.COMMON), f"{A.NAME}_tf32")}
def build(key):
    src, name = JOBS[key]
    t = time.time()
    c = toolchain.compile_family("cuda", be.arch, src, name, warp_size=be.warp_size)
    return key, round(time.time() - t, 1), c.cached
with cf.ProcessPoolExecutor(4) as ex:
    for r in ex.map(build, ["tf32", "f16", "bf16", "f32"]):
        print("compiled", *r)
PY
echo "compile wall: $(( $(date +%s) - t0 )) s"
rc=0
if [ "$TESTS" = 1 ]; then
    timeout 100 python3 -m pytest -q -rf -p no:cacheprovider --import-mode=importlib --rootdir="$REPO" \
        -c "$REPO/pyproject.toml" -m gpu "$REPO/tests/gpu/test_attention_gpu.py" 2>&1 | tee "$OUT/gpu_tests.log" | tail -30
    rc=${PIPESTATUS[0]}
    echo "gpu tests exit code: $rc"
fi
timeout 100 python3 "$REPO/bench/bench_attention.py" --out "$OUT" --tf32 2>&1 | tee "$OUT/bench.log" | grep "^|"
# compute-sanitizer (memcheck, then racecheck on shared memory) over small TF32 launches: every kernel of the tactic
cat > /tmp/san_tf32.py <<'PY'
import numpy as np
from fuser.kernels import attention as A
from fuser.kernels.backend import select_backend
be = select_backend("cuda")
rng = np.random.default_rng(0)
for tac, (b, h, sq, skv, d), causal, pad in [("flash_tf32", (1, 2, 70, 90, 64), False, True),
                                              ("flash_tf32_m2", (1, 2, 130, 70, 64), True, False),
                                              ("flash_tf32", (1, 2, 40, 70, 128), True, True)]:
    q, k, v = (rng.standard_normal((b, h, n, d)).astype(np.float32) for n in (sq, skv, skv))
    terms = [("bias", np.where(rng.random((b, 1, 1, skv)) > 0.2, 0, -1e9).astype(np.float32))] if pad else []
    got = A.run(be, q, k, v, causal=causal, terms=terms, tactic=tac)
    want = A.reference(q.astype(np.float64), k, v, causal=causal, terms=terms)
    print(tac, "rel-L2", np.linalg.norm(got - want) / np.linalg.norm(want))
PY
SAN=$(command -v compute-sanitizer || ls /opt/nvidia/*/compute-sanitizer /usr/local/cuda/bin/compute-sanitizer 2>/dev/null | head -1)
for tool in memcheck racecheck; do
    echo "== $tool" >> "$OUT/sanitizer.txt"
    timeout 40 "$SAN" --tool "$tool" python3 /tmp/san_tf32.py >> "$OUT/sanitizer.txt" 2>&1
    echo "exit $?" >> "$OUT/sanitizer.txt"
done
grep -E "^==|rel-L2|ERROR SUMMARY|RACECHECK SUMMARY|exit" "$OUT/sanitizer.txt" | head -20
if [ "$NCU" = 1 ]; then
    cat > /tmp/prof_tf32.py <<'PY'
import torch
from fuser.kernels import attention as A
from fuser.kernels.backend import select_backend
be = select_backend("cuda")
q, k, v = (torch.randn(8, 12, 512, 64, device="cuda") for _ in range(3))
o = torch.empty_like(q)
for tac in ("flash_tf32", "flash_tf32_m2", "flash_tf32_trunc"):
    A.Runner(be, q.shape, k.shape, v.shape, "float32", tactic=tac)([q.data_ptr(), k.data_ptr(), v.data_ptr()],
                                                                   o.data_ptr())
torch.cuda.synchronize()
PY
    NCU_BIN=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
    timeout 45 "$NCU_BIN" --clock-control none -k regex:fuser_attn_tf -c 3 --section SpeedOfLight --section Occupancy \
        --section LaunchStats --section WarpStateStats --section ComputeWorkloadAnalysis \
        --section MemoryWorkloadAnalysis python3 /tmp/prof_tf32.py > "$OUT/ncu.txt" 2>&1
    grep -E "fuser_attn_|Duration|Achieved Occupancy|Theoretical Occupancy|Registers Per|Compute \(SM\) Throughput|Memory Throughput|Block Limit|Stall|Issue Slots Busy|Dynamic Shared|Bank|Pipe" "$OUT/ncu.txt" | head -80
fi
exit $rc
