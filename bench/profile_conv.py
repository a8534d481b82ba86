"""Launch a few conv tactics once each on one problem, for a profiler (ncu) to capture.

Usage: ncu -k regex:fuser_conv ... python bench/profile_conv.py [N C H W M K] [tactic ...]
The pseudo-tactic ``cudnn`` runs PyTorch's conv2d (TF32 allowed) twice, for comparison (profile it without
the ``-k`` filter, or with one that matches cuDNN's kernel names).
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from fuser.kernels import conv
from fuser.kernels.backend import select_backend


def main() -> int:
    args = sys.argv[1:]
    dims = [int(a) for a in args[:6]] if len(args) >= 6 and args[0].isdigit() else [8, 64, 128, 128, 128, 3]
    tactics = [a for a in args if not a.isdigit()] or ["igemm_128x128", "winograd", "mma_tf32_128x128"]
    n, c, h, w, m, k = dims
    be = select_backend("cuda")
    x = torch.randn(n, c, h, w, device="cuda")
    y = torch.empty(n, m, h, w, device="cuda")
    wt = np.random.default_rng(0).standard_normal((m, c, k, k)).astype(np.float32)
    torch.backends.cudnn.allow_tf32 = True
    for t in tactics:
        if t == "cudnn":
            w_t = torch.from_numpy(wt).cuda()
            for _ in range(2):
                torch.nn.functional.conv2d(x, w_t, None, padding=k // 2)
            torch.cuda.synchronize()
            print(t, flush=True)
            continue
        r = conv.Runner(be, x.shape, np.float32, wt, None, activation="LeakyRelu", tactic=t, allow_tf32=True,
                        pads=[k // 2] * 4)
        r((x.data_ptr(),), y.data_ptr())
        torch.cuda.synchronize()
        print(t, r.tactic, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
