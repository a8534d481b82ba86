"""Probe: does a conv kernel's machine-code size set the time of short convs (instruction fetch)?

The same TF32 tactics built from the committed source ("base") and from source edits of the epilogue (EDITS),
timed on the seed's 1x1 problems and one 3x3 (CUDA graphs rotating over > 3x L2, as bench_conv.py),
with cuDNN TF32 in the same run. Only a probe: some edits are not correct for other activations or ragged tiles
(the problems here have none).

Usage (GPU): python bench/probe_codesize.py [--variants base,nosig,pwlonly] [--tactics mma_tf32_ms_64x32,...]
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
import timing  # noqa: E402

from fuser.kernels import conv, conv_mma, conv_wgmma  # noqa: E402
from fuser.kernels.backend import select_backend  # noqa: E402

PROBLEMS = [("resnet_block", 1, 64, 56, 56, 128, 1), ("very_wide_pointwise", 1, 128, 32, 320, 256, 1),
            ("1x1_heavy_channels", 1, 512, 16, 16, 512, 1), ("medium", 1, 32, 128, 128, 64, 3)]
# Edits of the epilogue dispatch (conv.py FUSER_CONV_EPILOGUE). The first probe run (BENCHMARKS.md) edited the
# source before it (commit 2b8644b's version of this file): "lean" fixed LeakyReLU and the vector path, "v4" added
# a 16-byte store; both are in the tree now as the interior-tile path and fuser_cvec's PTX store.
EDITS = {
    "base": [],
    # Sigmoid/SiLU through the general path: one interior-tile instantiation less
    "nosig": [("} else if ((full) && (act) != 7) {", "} else if (false) {")],
    # upper bound, LeakyReLU-only and interior tiles only (wrong elsewhere): no general path at all
    "pwlonly": [("if ((full) && (act) != 4 && (act) != 7 && (act) != 8) {", "if (true) {")],
    # the pipeline prologue rolled (one copy of the load code instead of S - 1)
    "pro1": [("#pragma unroll\n    for (int s = 0; s < S - 1; ++s) {",
              "#pragma unroll 1\n    for (int s = 0; s < S - 1; ++s) {")],
    # only the 1x1 gather compiled (wrong for other convs): what the other two gathers' code costs
    "kfix": [("if (kmaj == 2)", "if (true)"), ("} else if (kmaj == 1) {", "} else if (false) {")],
}


def edited(fn, edits):
    def src(*a):
        s = fn(*a)
        for old, new in edits:
            assert old in s, old[:60]
            s = s.replace(old, new)   # every occurrence
        return s
    return src


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="base,nosig,pwlonly")
    ap.add_argument("--tactics", default="mma_tf32_ms_64x32,mma_tf32_ms_64x64,wgmma_tf32_64x64")
    args = ap.parse_args()
    be = select_backend("cuda")
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    ms_src, wg_src = conv_mma.entry_source, conv_wgmma.entry_source
    rows = []
    for name, n, c, h, w, m, k in PROBLEMS:
        pad = k // 2
        torch.manual_seed(0)
        set_bytes = (n * c * h * w + 2 * n * m * h * w) * 4
        nsets = 1 if set_bytes >= 3 * l2 else min(16, math.ceil(3 * l2 / set_bytes))
        xs = [torch.randn(n, c, h, w, device="cuda") for _ in range(nsets)]
        ys = [torch.empty(n, m, h, w, device="cuda") for _ in range(nsets)]
        wt = torch.randn(m, c, k, k, device="cuda") / math.sqrt(c * k * k)
        b = 0.1 * torch.randn(m, device="cuda")
        ref = F.leaky_relu(F.conv2d(xs[0].double(), wt.double(), b.double(), padding=pad), 0.1)
        torch.backends.cudnn.allow_tf32 = True
        def cudnn_call(i, st, xs=xs, wt=wt, pad=pad):
            return F.conv2d(xs[i], wt, None, padding=pad)
        cud = timing.time_graph(cudnn_call, nsets, inner_min=10, reps=15, warmup=2)["median_ms"]
        row = {"case": name, "cudnn": cud}
        for var in args.variants.split(","):
            conv_mma.entry_source = edited(ms_src, EDITS[var])
            conv_wgmma.entry_source = edited(wg_src, EDITS[var])
            for t in args.tactics.split(","):
                if t.startswith("wgmma") and be.arch != "sm_90":
                    continue
                r = conv.Runner(be, (n, c, h, w), np.float32, wt.cpu().numpy(), b.cpu().numpy(),
                                activation="LeakyRelu", alpha=0.1, tactic=t, allow_tf32=True, pads=[pad] * 4)
                y = ys[0].fill_(float("nan"))
                r((xs[0].data_ptr(),), y.data_ptr())
                torch.cuda.synchronize()
                rel = (torch.linalg.vector_norm(y.double() - ref) / torch.linalg.vector_norm(ref)).item()
                def ours_call(j, st, r=r, xs=xs, ys=ys):
                    return r((xs[j].data_ptr(),), ys[j].data_ptr(), st)
                ms = timing.time_graph(ours_call, nsets, inner_min=10, reps=15, warmup=2)["median_ms"]
                row[f"{t}/{var}"] = ms
                print(f"{name} {t} {var}: {ms * 1e3:.2f} us (cuDNN {cud * 1e3:.2f}), rel {rel:.1e}", flush=True)
        rows.append(row)
    conv_mma.entry_source, conv_wgmma.entry_source = ms_src, wg_src
    keys = [k for k in rows[0] if "/" in k]
    print("\n| case | cuDNN TF32 | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for r in rows:
        print(f"| {r['case']} | {r['cudnn'] * 1e3:.2f} | " + " | ".join(f"{r[k] * 1e3:.2f}" for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
