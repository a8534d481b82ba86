"""Launch each attention kernel of the benchmark's headline cases a few times, for ``ncu`` to profile
(bench/attention_session.sh --ncu): the seed fp32 shape on flash_simt, B8 H12 S512 D64 fp16 on both
flash_mma row tilings, and the BERT padding-mask case; with the argument ``fp32``: the CUDA-core kernels
(flash_simt_kv and flash_simt) on the seed shape and B8 H12 S128."""

from __future__ import annotations

import math
import sys

import torch

from fuser.kernels import attention as A
from fuser.kernels.backend import select_backend


def launch(be, b, h, s, d, dtype, tactic, pad=False, reps=2):
    q, k, v, o = (torch.randn(b, h, s, d, dtype=dtype, device="cuda") for _ in range(4))
    specs, extra = [], []
    if pad:
        bias = torch.zeros(b, 1, 1, s, dtype=dtype, device="cuda")
        bias[1::2, ..., 3 * s // 4:] = torch.finfo(dtype).min
        specs, extra = [A.TermSpec("bias", str(dtype).replace("torch.", ""), tuple(bias.shape))], [bias.data_ptr()]
    r = A.Runner(be, q.shape, k.shape, v.shape, str(dtype).replace("torch.", ""), 1 / math.sqrt(d), terms=specs,
                 tactic=tactic)
    for _ in range(reps):
        r([q.data_ptr(), k.data_ptr(), v.data_ptr(), *extra], o.data_ptr())
    torch.cuda.synchronize()


if __name__ == "__main__":
    be = select_backend("cuda")
    if sys.argv[1:] == ["fp32"]:  # the CUDA-core kernels on the seed shape and B8 H12 S128, one launch each
        launch(be, 256, 1, 128, 64, torch.float32, "flash_simt_kv_r64", reps=1)
        launch(be, 256, 1, 128, 64, torch.float32, "flash_simt", reps=1)
        launch(be, 8, 12, 128, 64, torch.float32, "flash_simt_kv_r32", reps=1)
        launch(be, 8, 12, 128, 64, torch.float32, "flash_simt_kv_r64", reps=1)
        sys.exit(0)
    launch(be, 256, 1, 128, 64, torch.float32, "flash_simt")
    launch(be, 8, 12, 512, 64, torch.float16, "flash_mma_n64")
    launch(be, 8, 12, 512, 64, torch.float16, "flash_mma_pp")
