"""Launch each attention kernel of the benchmark's headline cases a few times, for ``ncu`` to profile
(bench/attention_session.sh --ncu): the seed fp32 shape on flash_simt, B8 H12 S512 D64 fp16 on both
flash_mma row tilings, and the BERT padding-mask case; with the argument ``fp32``: the CUDA-core kernels
(flash_simt_kv and flash_simt) on the seed shape and B8 H12 S128.

``trace [VARIANT ...]`` (no ncu): flash_wgmma's block timeline at B8 H12 S512 D64 fp16 (and, for the first two
variants, one whole wave of 128-row tiles: B11 H6 S512): the module rebuilt with FUSER_WG_TRACE, each block's SM,
start and end (%globaltimer) written to a buffer; prints per variant the kernel's span, the first wave's blocks (those
that started before any block ended) and the rest (start, end, duration), how many blocks each SM ran; raw records
go to $OUT/trace_<case>_<variant>.json. One input set, launched 30 times: L2-warm, so shorter than the benchmark.

``phases [VARIANT ...]`` (no ncu): where a flash_wgmma block's time goes at B8 H12 S512 D64 fp16: the trace build
with three more stamps from thread 0 (Q and the first K/V tile landed, the first tile's softmax done, the last P·V
drained) besides start and end; prints the median of each, from the block's start, for the first wave and the rest."""

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


def traced_records(be, src: str, module: str, var: str, qkvo, words: int):
    """Launch variant ``var`` of the traced build ``src`` 30 times (warm, then the last launch's records) on
    ``qkvo`` (B, H, S, D fp16 tensors) and return its per-block records ([blocks, words] int64) and the plan."""
    import numpy as np

    from fuser.kernels import toolchain
    q, k, v, o = qkvo
    r = A.Runner(be, q.shape, k.shape, v.shape, "float16", 1 / math.sqrt(q.shape[-1]), tactic=var)
    fn = be.function(module, src, f"fuser_attn_{r.plan['family']}_f16", arch=toolchain.arch_specific(be.name, be.arch))
    be.allow_dynamic_shared(fn, r.plan["smem"])
    r.fn = fn
    grid = r.plan.get("grid", r.grid)
    nblk = grid[0] * grid[1] * grid[2]
    ws = torch.zeros(words * nblk + 64, dtype=torch.int64, device="cuda")
    r.args.params.ws = ws.data_ptr()
    for _ in range(30):
        r([q.data_ptr(), k.data_ptr(), v.data_ptr()], o.data_ptr())
    torch.cuda.synchronize()
    return ws[:words * nblk].view(nblk, words).cpu().numpy().astype(np.int64), r.plan, grid


def trace(be, variants, b=8, h=12, s=512, d=64, name="s512"):
    """The block timeline of each variant (see the module docstring)."""
    import json
    import os

    import numpy as np

    src = "#define FUSER_WG_TRACE 1\n" + A.wgmma_source_for("f16")
    qkvo = [torch.randn(b, h, s, d, dtype=torch.float16, device="cuda") for _ in range(4)]
    for var in variants:
        rec, plan, grid = traced_records(be, src, "attention_wgmma_trace_f16", var, qkvo, 4)
        fam, nblk = plan["family"], len(rec)
        t0 = rec[:, 1].min()
        st, e0, e1 = rec[:, 1] - t0, rec[:, 2] - t0, rec[:, 3] - t0
        end = np.where(rec[:, 3] > 0, np.maximum(e0, e1), e0)
        sm = rec[:, 0]
        nsm = len(np.unique(sm))
        first = st < (end.min())  # blocks that started before any block ended: the first wave
        print(f"[trace {name}] {var} ({fam}, grid {grid}, {plan['threads']} threads): span {end.max() / 1e3:.2f} us, "
              f"{nblk} blocks on {nsm} SMs, first wave {int(first.sum())} blocks")
        for lab, m in (("first wave", first), ("later", ~first)):
            if m.any():
                dur = end[m] - st[m]
                print(f"  {lab}: start {st[m].min() / 1e3:.2f}-{st[m].max() / 1e3:.2f} us, end "
                      f"{end[m].min() / 1e3:.2f}-{end[m].max() / 1e3:.2f} us, duration median "
                      f"{np.median(dur) / 1e3:.2f} (min {dur.min() / 1e3:.2f}, max {dur.max() / 1e3:.2f}) us")
        per_sm = np.bincount(sm, minlength=int(sm.max()) + 1)
        print(f"  blocks per SM: {np.bincount(per_sm[per_sm > 0]).tolist()} (index: blocks, value: SMs)")
        later = np.where(~first)[0]
        if len(later):  # how many later blocks share an SM with another later block
            lsm = np.bincount(sm[later], minlength=int(sm.max()) + 1)
            print(f"  later blocks per SM: {np.bincount(lsm[lsm > 0]).tolist()}")
        out = os.environ.get("OUT")
        if out:
            with open(os.path.join(out, f"trace_{name}_{var}.json"), "w") as f:
                json.dump({"variant": var, "family": fam, "grid": grid, "sm": sm.tolist(), "start_ns": st.tolist(),
                           "end0_ns": e0.tolist(), "end1_ns": e1.tolist()}, f)


def phases(be, variants, b=8, h=12, s=512, d=64):
    """Phase stamps inside each block (see the module docstring): the trace build's records widened to 8 words,
    stamps 4-6 inserted at fixed places of the source (asserted present, so a change of the loop fails loudly)."""
    import numpy as np

    src = ("#define FUSER_WG_TRACE 1\n" + A.wgmma_source_for("f16")).replace("4ull * blk", "8ull * blk")
    marks = [("fuser_wg_cp_wait<PF - 1>();  // Q and tile kb landed", "__syncthreads();", 4),
             ("fuser_wg_softmax<NN>(s, m_r, l_r, alpha, full, sl, p.causal, p.Skv, row0, kbase, t);",
              "fuser_wg_pack<BF16, NN>(pa, s);", 5),
             ("fuser_wg_pv<BF16, KS>(oacc, pa, dv0 + (fuser_u64)(sp * (TILE >> 4)));\n        fuser_wg_commit();",
              "fuser_wg_keep(oacc);", 6)]
    for anchor, then, slot in marks:
        i = src.index(anchor)
        j = src.index(then, i) + len(then)
        src = src[:j] + f"\n    FUSER_WG_TRACE_AT(threadIdx.x == 0, {slot});" + src[j:]
    qkvo = [torch.randn(b, h, s, d, dtype=torch.float16, device="cuda") for _ in range(4)]
    for var in variants:
        rec, _, _ = traced_records(be, src, "attention_wgmma_phases_f16", var, qkvo, 8)
        st = rec[:, 1]
        stamps = {"landed": rec[:, 4], "first softmax": rec[:, 5], "loop drained": rec[:, 6], "end": rec[:, 2]}
        first = st - st.min() < (rec[:, 2] - st.min()).min()
        for lab, m in (("first wave", first), ("later", ~first)):
            if m.any():
                print(f"[phases] {var} {lab} ({int(m.sum())} blocks), median us from the block's start: " +
                      ", ".join(f"{kk} {np.median(vv[m] - st[m]) / 1e3:.2f}" for kk, vv in stamps.items()))


if __name__ == "__main__":
    be = select_backend("cuda")
    if sys.argv[1:2] == ["phases"]:
        phases(be, sys.argv[2:] or ["flash_wgmma_2n64q", "flash_wgmma_1n64q3"])
        sys.exit(0)
    if sys.argv[1:2] == ["trace"]:
        vs = sys.argv[2:] or ["flash_wgmma_2n64q", "flash_wgmma_2n64qs", "flash_wgmma_1n64q3"]
        trace(be, vs)
        trace(be, vs[:2], 11, 6, 512, 64, "wave_s512")
        sys.exit(0)
    if sys.argv[1:] == ["fp32"]:  # the CUDA-core kernels on the seed shape and B8 H12 S128, one launch each
        launch(be, 256, 1, 128, 64, torch.float32, "flash_simt_kv_r64", reps=1)
        launch(be, 256, 1, 128, 64, torch.float32, "flash_simt", reps=1)
        launch(be, 8, 12, 128, 64, torch.float32, "flash_simt_kv_r32", reps=1)
        launch(be, 8, 12, 128, 64, torch.float32, "flash_simt_kv_r64", reps=1)
        sys.exit(0)
    launch(be, 256, 1, 128, 64, torch.float32, "flash_simt")
    launch(be, 8, 12, 512, 64, torch.float16, "flash_mma_n64")
    launch(be, 8, 12, 512, 64, torch.float16, "flash_mma_pp")
