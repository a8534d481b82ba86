"""flash_wgmma bring-up on a Hopper GPU, in one process: (1) a single-tile probe of the wgmma descriptors and
fragment layouts (one 64x64 S = Q·Kᵀ with both operands K-major from shared memory, one O = P·V with P from
registers and V MN-major through the transpose bit) against numpy; (2) every flash_wgmma variant against the
float64 reference on odd shapes (fp16/bf16, causal, GQA, batch-1 K/V), outputs NaN-poisoned; (3) timings of the
variants, flash_mma and PyTorch SDPA on the benchmark's two fp16 shapes (CUDA graphs as bench_attention.py).

Usage (device, repo root, project installed): python3 bench/wgmma_check.py [--no-time] [--variants 2n64,2n64p]
"""

from __future__ import annotations

import argparse
import ctypes
import math
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuser.kernels import attention as A  # noqa: E402
from fuser.kernels import attention_wgmma as W  # noqa: E402
from fuser.kernels import toolchain  # noqa: E402
from fuser.kernels.backend import select_backend  # noqa: E402

PROBE = r"""
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
extern "C" __global__ void __launch_bounds__(128) fuser_wg_probe(const unsigned short* q, const unsigned short* k,
        const unsigned short* v, const unsigned short* pm, float* s_out, float* o_out) {
    extern __shared__ __align__(1024) unsigned char sm[];
    const fuser_u32 s_q = (fuser_wg_smem_u32(sm) + 1023u) & ~1023u, s_k = s_q + 8192, s_v = s_k + 8192;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    fuser_wg_tile<64, 128>(s_q, q, q, 64, 64, true, tid);
    fuser_wg_tile<64, 128>(s_k, k, k, 64, 64, true, tid);
    fuser_wg_tile<64, 128>(s_v, v, v, 64, 64, true, tid);
    fuser_wg_cp_commit();
    fuser_wg_cp_wait_all();
    fuser_wg_proxy_fence();
    __syncthreads();
    float s[32];
    fuser_u32 qf[4][4];
    fuser_wg_fence();
    fuser_wg_qk<0, 0>(s, qf, fuser_wg_desc(s_q, 16, 1024), fuser_wg_desc(s_k, 16, 1024));
    fuser_wg_commit();
    fuser_wg_wait<0>();
    fuser_wg_keep(s);
    fuser_u32 pa[4][4];
    const int r0 = warp * 16 + g;
    for (int kk = 0; kk < 4; ++kk)
        for (int i = 0; i < 4; ++i) {
            const int row = r0 + 8 * (i & 1), col = 16 * kk + 8 * (i >> 1) + 2 * t;
            pa[kk][i] = (fuser_u32)pm[row * 64 + col] | ((fuser_u32)pm[row * 64 + col + 1] << 16);
        }
    float o[32];
    for (int i = 0; i < 32; ++i) o[i] = 0.0f;
    fuser_wg_keep(o);
    fuser_wg_keep(pa);
    fuser_wg_fence();
    fuser_wg_pv<0, 4>(o, pa, fuser_wg_desc(s_v, 8192, 1024));
    fuser_wg_commit();
    fuser_wg_wait<0>();
    fuser_wg_keep(o);
    for (int j = 0; j < 8; ++j)
        for (int i = 0; i < 4; ++i) {
            const int row = r0 + 8 * (i >> 1), col = 8 * j + 2 * t + (i & 1);
            s_out[row * 64 + col] = s[4 * j + i];
            o_out[row * 64 + col] = o[4 * j + i];
        }
}
#endif
"""


class PtrArgs:
    """A kernel parameter block of pointer arguments (cuLaunchKernel's void**)."""

    def __init__(self, ptrs: list[int]) -> None:
        self._vals = (ctypes.c_uint64 * len(ptrs))(*ptrs)
        base = ctypes.addressof(self._vals)
        self._ptrs = (ctypes.c_void_p * len(ptrs))(*[base + 8 * i for i in range(len(ptrs))])
        self.address = ctypes.addressof(self._ptrs)


def probe(be) -> bool:
    src = A.COMMON + W.SOURCE + PROBE
    fn = be.function("attention_wgmma_probe", src, "fuser_wg_probe", arch="sm_90a")
    be.allow_dynamic_shared(fn, 4 * 8192)
    rng = np.random.default_rng(0)
    q, k, v, pm = (rng.standard_normal((64, 64)).astype(np.float16) for _ in range(4))
    dev = [torch.from_numpy(x).cuda() for x in (q, k, v, pm)]
    s_out = torch.full((64, 64), float("nan"), device="cuda")
    o_out = torch.full((64, 64), float("nan"), device="cuda")
    args = PtrArgs([t.data_ptr() for t in dev] + [s_out.data_ptr(), o_out.data_ptr()])
    be.launch(fn, (1, 1, 1), (128, 1, 1), args, 4 * 8192, 0)
    torch.cuda.synchronize()
    s_got, o_got = s_out.cpu().numpy(), o_out.cpu().numpy()
    s_want = q.astype(np.float64) @ k.astype(np.float64).T
    o_want = pm.astype(np.float64) @ v.astype(np.float64)
    ok = True
    for name, got, want, alts in (("S=QK^T", s_got, s_want, {"Q K": q.astype(np.float64) @ k.astype(np.float64),
                                                               "S^T": s_want.T}),
                                  ("O=PV", o_got, o_want, {"P V^T": pm.astype(np.float64) @ v.astype(np.float64).T,
                                                           "O^T": o_want.T})):
        err = float(np.nanmax(np.abs(got - want)) / np.abs(want).max())
        print(f"probe {name}: max rel err {err:.2e}, NaN {int(np.isnan(got).sum())}")
        if not err < 1e-2:
            ok = False
            for an, a in alts.items():
                print(f"   vs {an}: {float(np.nanmax(np.abs(got - a)) / np.abs(a).max()):.2e}")
            print("   got[0:2, 0:8]", np.round(got[:2, :8], 2), "\n   want[0:2, 0:8]", np.round(want[:2, :8], 2))
    return ok


def rounded(x: np.ndarray, dtype: str) -> np.ndarray:
    return torch.from_numpy(x).to(getattr(torch, dtype)).to(torch.float64).numpy()


def check(be, tactic, dtype, b, h, hkv, sq, skv, d, dv, causal, kv_b1=False, seed=0) -> tuple[bool, str]:
    rng = np.random.default_rng(seed)
    bk = 1 if kv_b1 else b
    q = rounded(rng.standard_normal((b, h, sq, d)).astype(np.float32), dtype)
    k = rounded(rng.standard_normal((bk, hkv, skv, d)).astype(np.float32), dtype)
    v = rounded(rng.standard_normal((bk, hkv, skv, dv)).astype(np.float32), dtype)
    scale = 1.3 / math.sqrt(d)
    want = A.reference(q, k, v, scale=scale, causal=causal)
    r = A.Runner(be, q.shape, k.shape, v.shape, dtype, scale, causal, (), False, tactic)
    if r.tactic != "flash_wgmma":
        return False, f"planned {r.tactic}"
    tq, tk, tv = (torch.from_numpy(x).to(getattr(torch, dtype)).cuda() for x in (q, k, v))
    n = b * h * sq * dv
    out = torch.full((n + 64,), float("nan"), dtype=getattr(torch, dtype), device="cuda")
    r([tq.data_ptr(), tk.data_ptr(), tv.data_ptr()], out.data_ptr())
    torch.cuda.synchronize()
    got = out.double().cpu().numpy()
    if not np.isnan(got[n:]).all():
        return False, "wrote past the output"
    got = got[:n].reshape(want.shape)
    nan = int(np.isnan(got).sum())
    if nan:
        return False, f"{nan} NaN"
    err = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    tol = 2e-3 if dtype == "float16" else 2e-2
    return err <= tol, f"rel-L2 {err:.2e}"


CASES = [  # b, h, hkv, sq, skv, d, dv, causal, kv_b1
    (1, 1, 1, 64, 64, 64, 64, False, False), (1, 1, 1, 64, 64, 64, 64, True, False),
    (2, 3, 3, 65, 130, 64, 64, False, False), (3, 4, 2, 7, 200, 64, 64, False, False),
    (2, 4, 1, 129, 129, 64, 64, True, False), (1, 2, 2, 300, 77, 64, 64, True, False),
    (2, 2, 2, 200, 64, 32, 48, False, True), (1, 3, 3, 1, 1, 64, 64, False, False),
    (1, 2, 2, 513, 513, 64, 64, True, False), (2, 8, 4, 257, 1000, 64, 64, False, False),
    (1, 2, 2, 130, 130, 16, 64, True, False),
]


def time_case(be, name: str, b: int, h: int, s: int, causal: bool, variants: list[str], out: list[str],
              dtype: str = "float16") -> None:
    import bench_attention as BA

    d = 64
    tdt = getattr(torch, dtype)
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    ns = BA.nsets_for(4 * b * h * s * d * 2, l2)
    qs = [torch.randn(b, h, s, d, dtype=tdt, device="cuda") for _ in range(ns)]
    ks = [torch.randn(b, h, s, d, dtype=tdt, device="cuda") for _ in range(ns)]
    vs = [torch.randn(b, h, s, d, dtype=tdt, device="cuda") for _ in range(ns)]
    os_ = [torch.empty(b, h, s, d, dtype=tdt, device="cuda") for _ in range(ns)]
    flops = 4.0 * b * h * s * s * d * (0.5 if causal else 1.0)
    scale = 1 / math.sqrt(d)

    def sdpa_call(i, st):
        return F.scaled_dot_product_attention(qs[i], ks[i], vs[i], scale=scale, is_causal=causal)

    sdpa = BA.time_graph(sdpa_call, ns)["median_ms"]
    out.append(f"{name} sdpa: {sdpa * 1e3:.1f} us {flops / sdpa / 1e9:.0f} TFLOP/s")
    print(out[-1], flush=True)
    ref = F.scaled_dot_product_attention(qs[0].double(), ks[0].double(), vs[0].double(), scale=scale,
                                         is_causal=causal)
    for tac in ["flash_wgmma"] + [f"flash_wgmma_{v}" for v in variants] + ["flash_mma_n128"]:
        try:
            r = A.Runner(be, qs[0].shape, ks[0].shape, vs[0].shape, dtype, scale, causal, (), False, tac)

            def ours(i, st, r=r):
                r([qs[i].data_ptr(), ks[i].data_ptr(), vs[i].data_ptr()], os_[i].data_ptr(), st)

            ms = BA.time_graph(ours, ns)["median_ms"]
            err = float((os_[0].double() - ref).norm() / ref.norm())
            out.append(f"{name} {tac} ({r.plan.get('family', '')}): {ms * 1e3:.1f} us {flops / ms / 1e9:.0f} TFLOP/s "
                       f"x{ms / sdpa:.2f} SDPA, rel-L2 {err:.1e}")
        except Exception as e:  # noqa: BLE001
            out.append(f"{name} {tac}: {type(e).__name__}: {str(e)[:300]}")
        print(out[-1], flush=True)


def timing(be, variants: list[str], out: list[str]) -> None:
    for name, b, h, s in (("B8 H12 S512 D64", 8, 12, 512), ("B1 H12 S4096 D64", 1, 12, 4096),
                          ("B8 H12 S512 D64 causal", 8, 12, 512), ("B1 H12 S4096 D64 causal", 1, 12, 4096)):
        time_case(be, name, b, h, s, "causal" in name, variants, out)
    time_case(be, "B8 H12 S512 D64 bf16", 8, 12, 512, False, [], out, "bfloat16")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-time", action="store_true")
    ap.add_argument("--variants", default=",".join(W.WG_VARIANTS))
    args = ap.parse_args()
    variants = args.variants.split(",")
    be = select_backend("cuda")
    print(f"device {be.device_name} {be.arch}, {toolchain.compiler_version('cuda')}", flush=True)
    t0 = time.time()
    for sfx in ("f16", "bf16"):
        c = toolchain.compile_family("cuda", "sm_90a", A.wgmma_source_for(sfx), f"attention_wgmma_{sfx}",
                                     warp_size=32, extra_options=["--ptxas-options=-v"], use_cache=False)
        print(f"compiled {sfx} in {c.seconds:.1f} s")
        print("\n".join(ln for ln in c.log.splitlines() if "Loss" in ln or "Used" in ln or "spill" in ln))
    try:
        ok = probe(be)
        print("probe", "OK" if ok else "FAILED", flush=True)
    except Exception:  # noqa: BLE001
        traceback.print_exc()
    fails = 0
    for v in variants:
        for dtype in ("float16", "bfloat16"):
            for i, c in enumerate(CASES):
                if dtype == "bfloat16" and i % 3:
                    continue
                try:
                    good, msg = check(be, f"flash_wgmma_{v}", dtype, *c, seed=i)
                except Exception as e:  # noqa: BLE001
                    good, msg = False, f"{type(e).__name__}: {str(e)[:300]}"
                if not good:
                    fails += 1
                    print(f"FAIL {v} {dtype} {c}: {msg}", flush=True)
                elif i < 2:
                    print(f"ok {v} {dtype} {c}: {msg}", flush=True)
    print(f"correctness: {fails} failures, {time.time() - t0:.0f} s", flush=True)
    if not args.no_time:
        lines: list[str] = []
        timing(be, variants, lines)
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
