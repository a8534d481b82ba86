#!/usr/bin/env bash
# One device call: ncu stall breakdown (per issued instruction, by reason) of flash_wgmma 2n64q against PyTorch
# SDPA at B8 H12 S512 D64 fp16, and of the seed's two hardest 1x1 TF32 convs (resnet_block: mma_tf32_ms_64x32,
# very_wide_pointwise: wgmma_tf32_64x64) against cuDNN. Writes $OUT/ncu_{attn,conv1,conv2}.txt, prints the
# nonzero stall reasons. Usage (device tool, carry .whl): bash bench/ncu_probe.sh
set -uo pipefail
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
rm -rf /tmp/proj; python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/proj . 2>&1 | tail -1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -1
export PYTHONPATH=/tmp/proj:/tmp/site ONNX_FUSE_CACHE_DIR=/tmp/onnx-fuse-cache
R=$PWD; cd /tmp
cat > /tmp/pa.py <<'PY'
import sys, torch, torch.nn.functional as F
sys.path.insert(0, sys.argv[1] + "/bench")
from profile_attention import launch
from fuser.kernels.backend import select_backend
be = select_backend("cuda")
launch(be, 8, 12, 512, 64, torch.float16, "flash_wgmma_2n64q", reps=2)
q, k, v = (torch.randn(8, 12, 512, 64, dtype=torch.float16, device="cuda") for _ in range(3))
for _ in range(2): F.scaled_dot_product_attention(q, k, v)
torch.cuda.synchronize()
PY
M="gpu__time_duration.sum,sm__warps_active.avg.pct_of_peak_sustained_active,smsp__issue_active.avg.pct_of_peak_sustained_active,regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio"
timeout 200 ncu --clock-control none -k "regex:fuser_attn|flash|fmha|attn" --metrics "$M" python3 /tmp/pa.py $R > $OUT/ncu_attn.txt 2>&1
timeout 200 ncu --clock-control none -k "regex:." --metrics "$M" python3 $R/bench/profile_conv.py 1 64 56 56 128 1 cudnn mma_tf32_ms_64x32 > $OUT/ncu_conv1.txt 2>&1
timeout 200 ncu --clock-control none -k "regex:." --metrics "$M" python3 $R/bench/profile_conv.py 1 128 32 320 256 1 cudnn wgmma_tf32_64x64 > $OUT/ncu_conv2.txt 2>&1
for f in $OUT/ncu_*.txt; do echo "== $f"; grep -vE "distribution|normal_kernel" $f | grep -E "^  [a-zA-Z_].*\(|duration|issue_active|warps_active|stalled" | awk '$NF+0 > 0.05 || /\(/ || /duration/' | grep -v "^==" | head -60; done
