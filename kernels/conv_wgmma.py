"""Convolution on Hopper's warpgroup MMA: ``wgmma_tf32``, the implicit GEMM of ``conv.py`` with
``wgmma.mma_async`` TF32 (fp32 tensors, only with ``--allow-tf32``; NVIDIA ``sm_90a`` only).

The GEMM is transposed with respect to ``mma_tf32_ms``: M = output pixels, N = output channels, K = Cin/G x KH x KW
(per group). TF32 ``wgmma`` takes both shared-memory operands K-major only, and NCHW lays pixels out contiguously,
so the im2col operand is A *from registers*:

- A (im2col, 64 pixel rows per warpgroup): the ``mma_tf32_ms`` cp.async gather (16-byte copies of 4 pixels for 1x1
  stride-1 convs, else 4-byte zero-filling copies through the channel walk or the k table) fills a pixel-contiguous
  [BK = 32][BM + 8] tile per stage; each warp loads its m16 x k8 fragment (``a0 = A[g][t], a1 = A[g+8][t],
  a2 = A[g][t+4], a3 = A[g+8][t+4]``, the ``mma.m16n8k8`` TF32 layout) with four ``ld.shared`` per k8 step —
  the row stride BM + 8 = 8 mod 32 words makes them conflict-free — and adds half a TF32 ulp (round to nearest,
  as ``cvt.rna``, once the tensor core drops the low 13 bits);
- B (weights, packed [G][Mpad][Kpad] k-contiguous and rounded to TF32 on the host): [BN][32 fp32 = 128 bytes]
  per stage in the 128-byte swizzle layout that a matrix descriptor reads (16-byte chunk c of row r at
  c ^ (r % 8), tiles 1024-byte aligned), copied by 16-byte ``cp.async``; a k8 step is +32 bytes on the
  descriptor's start address;
- ``wgmma.mma_async.sync.aligned.m64nBNk8.f32.tf32.tf32``: each warpgroup multiplies its 64 pixel rows by the
  block's BN channels, four k8 steps per 32-k stage, fp32 accumulators in registers;
- an S-stage cp.async ring (one barrier per stage; ``fence.proxy.async`` after each thread's copies land, since
  wgmma reads shared memory through the async proxy), S - 1 stages in flight while one is multiplied;
- epilogue: the accumulators go through shared memory (the pipeline's, free by then) as [channel][pixel], and
  every thread stores runs of 4 consecutive pixels with the shared conv epilogue (bias, every activation,
  residual before or after it, 16-byte vectors where aligned); split-K sums the same staged tile through the
  fp32 workspace of ``conv.py`` (the last split runs the epilogue).

Blocks: tile (channels BN, pixels BM) with BM = 64 x warpgroups: 128x128 and 64x128 (2 warpgroups), 128x64 and
64x64 (1 warpgroup). Groups are supported (grid z), as every stride/pad/dilation the gathers handle.

On anything but an ``sm_90a`` compile (plain sm_80/sm_90, AMD, the CPU emulator) the entry points are stubs (a
trap on NVIDIA, empty elsewhere): the family's SOURCE compiles for every target and :func:`conv.algo_ok` offers
the tactic only on NVIDIA compute capability 9.0, where the runner compiles its module for ``sm_90a``.
"""

from __future__ import annotations

import numpy as np

from . import conv_mma
from .backend import dtype_suffix
from .conv import (
    COMMON_SOURCE,
    _GemmTactic,
    reference,  # noqa: F401  (every family exposes its reference)
)

NAME = "conv_wgmma"
ALGO = "wgmma_tf32"


def _wgmma_wrappers() -> str:
    """``fuser_cwg_mma(d[N/2], a[4], desc_b)``: d += A·B, m64nNk8 TF32, A from registers, B K-major through a
    descriptor (generated: an m64nN accumulator is N/2 registers per thread)."""
    out = []
    for n in (64, 128):
        nr = n // 2
        dl = ", ".join(f"%{i}" for i in range(nr))
        douts = ", ".join(f'"+f"(d[{i}])' for i in range(nr))
        body = (f"wgmma.mma_async.sync.aligned.m64n{n}k8.f32.tf32.tf32 {{{dl}}}, "
                f"{{%{nr}, %{nr + 1}, %{nr + 2}, %{nr + 3}}}, %{nr + 4}, 1, 1, 1;\\n")
        out.append(f"FUSER_INLINE void fuser_cwg_mma(float (&d)[{nr}], const fuser_u32 (&a)[4], fuser_u64 db) {{\n"
                   f'    asm volatile("{body}"\n                 : {douts}\n'
                   f'                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));\n}}\n')
    return "".join(out)


_WG_SOURCE = r"""
// ---- conv: warpgroup-MMA implicit GEMM (TF32, NVIDIA sm_90a) ----
#if defined(FUSER_CUDA) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
""" + _wgmma_wrappers() + r"""
FUSER_INLINE void fuser_cwg_proxy_fence() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }
FUSER_INLINE void fuser_cwg_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
FUSER_INLINE void fuser_cwg_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N> FUSER_INLINE void fuser_cwg_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;" :: "n"(N) : "memory");
}
// pins the compiler's own reads and writes of the accumulators outside the wgmma pipeline (see attention_wgmma.py)
template <int N> FUSER_INLINE void fuser_cwg_keep(float (&r)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i]) :: "memory");
}
// K-major operand, 128-byte swizzle: rows of 128 bytes, SBO = 1024 bytes between 8-row groups (LBO unused).
FUSER_INLINE fuser_u64 fuser_cwg_desc(fuser_u32 addr) {
    return (fuser_u64)((addr & 0x3ffffu) >> 4) | ((fuser_u64)(16 >> 4) << 16) | ((fuser_u64)(1024 >> 4) << 32) |
           (1ull << 62);
}

// The staged tile's outputs: chunk i = threadIdx.x + it THR of the tile's [channel][pixel] runs of 4 in shared
// memory (channel row i / CPR, pixels 4 (i % CPR) ..; row stride LDC words), read as they are stored.
template <int NCH, int THR, int CPR, int LDC, bool VEC, class Epi>
FUSER_INLINE void fuser_cwg_epilogue(const float* cs, float* __restrict__ y, const float* __restrict__ r,
                                     const float* __restrict__ bias, int g, int m0, int nb, int Mg, int npix, int OHW,
                                     fuser_i64 img_out, int vec, const Epi& epi) {
#pragma unroll
    for (int it = 0; it < NCH; ++it) {
        const int i = threadIdx.x + it * THR, row = i / CPR, c4 = i % CPR;
        const int m = m0 + row, n = nb + 4 * c4;
        if (m < Mg && n < npix) {
            const int co = g * Mg + m, b = n / OHW;
            const float4 t = *reinterpret_cast<const float4*>(cs + row * LDC + 4 * c4);
            const float v[4] = {t.x, t.y, t.z, t.w};
            fuser_conv_out<float, 4, VEC>(y, r, co, b, n - b * OHW, npix - n, v, bias[co], OHW, img_out, vec, epi);
        }
    }
}

// Block tile: BN output channels x BM = 64 NWG pixels; NWG warpgroups, each 64 pixel rows x BN channels.
// Shared memory (dynamic, aligned up to 1024 bytes here): S weight tiles [BN][32] (128-byte swizzle), then S
// im2col tiles [32][BM + 8] words; the epilogue reuses it as [BN][BM + 4] words.
// PIPE = 0: per stage, wait for its copies, barrier, issue the copies of stage + S - 1, load the A fragments, run the
// wgmmas and wait for them. PIPE = 1: the wgmmas of a stage are issued first and run while the warpgroup waits for the
// next stage's copies, passes the barrier and issues the copies S - 1 stages ahead (ptxas serialises wgmmas when
// their input registers, the A fragments and descriptors, are written while any wgmma is in flight, so the next
// fragments load only after the wait).
template <int BN, int NWG, int STAGES, int PIPE>
FUSER_INLINE void fuser_conv_wgmma(FUSER_CONV_GEMM_PARAMS(float, float)) {
    constexpr int S = STAGES, THR = 128 * NWG, BM = 64 * NWG, BK = 32;
    constexpr int LDA = BM + 8, LDC = BM + 4;
    constexpr int BW = BN * BK, AW = BK * LDA;               // words: a weight tile, an im2col tile
    constexpr int NR = BN / 2;                               // accumulator registers per thread
    constexpr int LW = BN * 8 / THR, WRS = THR / 8;          // weight chunks per thread, rows apart
    constexpr int KG = THR / BM, LB = BK / KG;               // 4-byte gather: k groups per column, k per thread
    constexpr int CPR = BM / 4, RPP = THR / CPR;             // 16-byte gather: chunks per k row, rows per pass
    static_assert((BN == 64 || BN == 128) && (BN * 8) % THR == 0 && WRS % 8 == 0 && THR % BM == 0
                  && BK % KG == 0 && THR % CPR == 0 && BK % RPP == 0 && BN * LDC <= S * (BW + AW), "tile shape");
    extern __shared__ __align__(1024) unsigned char fuser_cwg_smem[];
    __shared__ int s_last;
    const fuser_u32 sraw = fuser_ms_saddr(fuser_cwg_smem);
    const fuser_u32 ss = (sraw + 1023u) & ~1023u;
    fuser_u32* const sm = reinterpret_cast<fuser_u32*>(fuser_cwg_smem + (ss - sraw));

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = blockIdx.z / splits, m0 = blockIdx.y * BN, nb = blockIdx.x * BM;
    const int kt0 = (blockIdx.z - g * splits) * kt_per;
    const int kt1 = kt0 + kt_per < ktiles ? kt0 + kt_per : ktiles;
    const int HWi = H * W;
    const float* __restrict__ xg = x + (fuser_i64)g * Cg * HWi;

    // weight copies: rows wr0 + i * WRS, 16-byte chunk tid % 8 (WRS % 8 == 0: one swizzle term for all i)
    const int wr0 = tid >> 3, wc0 = tid & 7;
    const float* __restrict__ wsrc = wp + ((fuser_i64)g * Mpad + m0 + wr0) * Kpad + wc0 * 4;
    const int wdst = wr0 * BK + ((wc0 ^ (wr0 & 7)) << 2);
    // im2col gather state (as mma_tf32_ms): 32-bit offsets from one 64-bit base
    const float* __restrict__ xb = xg;
    int ih0 = FUSER_CONV_BIG, iw0 = 0, pix = 0, kw0, adst;
    int wci = 0, wkh = 0, wkw = 0;
    if (kmaj == 2) {
        const int pc = tid % CPR, n = nb + pc * 4;
        kw0 = tid / CPR;
        adst = kw0 * LDA + pc * 4;
        if (n < npix) {
            const int b = n / OHW;
            xb = xg + (fuser_i64)b * img_in + (n - b * OHW) + (fuser_i64)kw0 * HWi;
            ih0 = 0;
        }
    } else {
        const int col = tid % BM, n = nb + col;
        kw0 = (tid / BM) * LB;
        adst = kw0 * LDA + col;
        if (n < npix) {
            const int b = n / OHW, q = n - b * OHW, oh = q / OW, ow = q - oh * OW;
            xb = xg + (fuser_i64)b * img_in;
            ih0 = oh * sh - ph; iw0 = ow * sw - pw;
            pix = ih0 * W + iw0;
        }
        if (kmaj == 1) {
            const int k0 = kt0 * BK, rs = k0 / Cg;
            wci = k0 - rs * Cg; wkh = rs / KW; wkw = rs - wkh * KW;
        }
    }

    auto load = [&](int st, int kt) {
        const int k0 = kt * BK;
#pragma unroll
        for (int i = 0; i < LW; ++i)
            fuser_ms_cp16(sm, ss, st * BW + wdst + i * WRS * BK, wsrc + (fuser_i64)i * WRS * Kpad + k0, true);
        const int sa = S * BW + st * AW + adst;
        if (kmaj == 2) {
#pragma unroll
            for (int p = 0; p < BK / RPP; ++p) {
                const int k = k0 + p * RPP;
                const bool ok = ih0 == 0 && k + kw0 < K;
                fuser_ms_cp16(sm, ss, sa + p * RPP * LDA, xb + k * HWi, ok);
            }
        } else if (kmaj == 1) {
            const int ih = ih0 + wkh * dh, iw = iw0 + wkw * dw;
            const bool ok = (unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W;
            const int off = (wci + kw0) * HWi + ih * W + iw;
            wci += BK;
            if (wci == Cg) {
                wci = 0;
                if (++wkw == KW) { wkw = 0; ++wkh; }
            }
#pragma unroll
            for (int i = 0; i < LB; ++i) fuser_ms_cp4(sm, ss, sa + i * LDA, xb + off + i * HWi, ok);
        } else {
#pragma unroll 2
            for (int i = 0; i < LB; ++i) {
                const int4 e = ktab[k0 + kw0 + i];
                const int ih = ih0 + e.y, iw = iw0 + e.z;
                const bool ok = (unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W;
                fuser_ms_cp4(sm, ss, sa + i * LDA, xb + pix + e.x, ok);
            }
        }
    };

    float acc[NR];
#pragma unroll
    for (int i = 0; i < NR; ++i) acc[i] = 0.0f;

#pragma unroll
    for (int s = 0; s < S - 1; ++s) {
        if (kt0 + s < kt1) load(s, kt0 + s);
        fuser_ms_commit();
    }
    // this thread's A-fragment words: pixel row wg 64 + warp 16 + g (+8), k row t (+4)
    const int gq = lane >> 2, tq = lane & 3;
    const int aoff = S * BW + tq * LDA + (warp >> 2) * 64 + (warp & 3) * 16 + gq;
    const fuser_u64 db0 = fuser_cwg_desc(ss);
    int rs = 0, ws_ = S - 1;
    static_assert(!PIPE || S >= 3, "PIPE needs 3 stages: the copies of stage kt + 1 are waited for inside stage kt");
    if (PIPE) {
        fuser_ms_wait<S - 2>();      // stage kt0 landed
        fuser_cwg_proxy_fence();
        __syncthreads();
        for (int kt = kt0; kt < kt1; ++kt) {
            const fuser_u32* ap = sm + aoff + rs * AW;
            fuser_u32 a[BK / 8][4];
#pragma unroll
            for (int ks = 0; ks < BK / 8; ++ks) {
                a[ks][0] = ap[(ks * 8) * LDA] + 0x1000u;
                a[ks][1] = ap[(ks * 8) * LDA + 8] + 0x1000u;
                a[ks][2] = ap[(ks * 8 + 4) * LDA] + 0x1000u;
                a[ks][3] = ap[(ks * 8 + 4) * LDA + 8] + 0x1000u;
            }
            const fuser_u64 db = db0 + (fuser_u64)((rs * BW * 4) >> 4);
            fuser_cwg_keep(acc);
            fuser_cwg_fence();
#pragma unroll
            for (int ks = 0; ks < BK / 8; ++ks) fuser_cwg_mma(acc, a[ks], db + (fuser_u64)(2 * ks));
            fuser_cwg_commit();
            // while they run: stage kt + 1 landed (S - 3 groups may stay in flight), everyone is past stage kt - 1's
            // wgmmas (each waited for them before issuing stage kt's), refill its stage with tile kt + S - 1
            fuser_ms_wait<(S >= 3 ? S - 3 : 0)>();
            fuser_cwg_proxy_fence();
            __syncthreads();
            if (kt + S - 1 < kt1) load(ws_, kt + S - 1);
            fuser_ms_commit();
            fuser_cwg_wait<0>();
            fuser_cwg_keep(acc);
            rs = rs + 1 == S ? 0 : rs + 1;
            ws_ = ws_ + 1 == S ? 0 : ws_ + 1;
        }
    }
    for (int kt = kt0; !PIPE && kt < kt1; ++kt) {
        fuser_ms_wait<S - 2>();      // this thread's copies of stage rs have landed
        fuser_cwg_proxy_fence();     // ... and are visible to the async proxy (wgmma's weight reads)
        __syncthreads();             // everyone's; and every warpgroup is done with the stage refilled next
        if (kt + S - 1 < kt1) load(ws_, kt + S - 1);
        fuser_ms_commit();
        const fuser_u32* ap = sm + aoff + rs * AW;
        fuser_u32 a[BK / 8][4];
#pragma unroll
        for (int ks = 0; ks < BK / 8; ++ks) {
            a[ks][0] = ap[(ks * 8) * LDA] + 0x1000u;
            a[ks][1] = ap[(ks * 8) * LDA + 8] + 0x1000u;
            a[ks][2] = ap[(ks * 8 + 4) * LDA] + 0x1000u;
            a[ks][3] = ap[(ks * 8 + 4) * LDA + 8] + 0x1000u;
        }
        const fuser_u64 db = db0 + (fuser_u64)((rs * BW * 4) >> 4);
        fuser_cwg_keep(acc);
        fuser_cwg_fence();
#pragma unroll
        for (int ks = 0; ks < BK / 8; ++ks) fuser_cwg_mma(acc, a[ks], db + (fuser_u64)(2 * ks));
        fuser_cwg_commit();
        fuser_cwg_wait<0>();
        fuser_cwg_keep(acc);
        rs = rs + 1 == S ? 0 : rs + 1;
        ws_ = ws_ + 1 == S ? 0 : ws_ + 1;
    }
    fuser_ms_wait<0>();              // only empty groups are left; none outlives the block
    __syncthreads();                 // every warpgroup is done with the pipeline's shared memory

    // stage the accumulators as [channel][pixel]: element 4j + e is pixel row g + 8 (e >> 1), channel 8j + 2t + (e & 1)
    float* const cs = reinterpret_cast<float*>(sm);
    const int prow = (warp >> 2) * 64 + (warp & 3) * 16 + gq;
#pragma unroll
    for (int j = 0; j < BN / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) cs[(8 * j + 2 * tq + (e & 1)) * LDC + prow + 8 * (e >> 1)] = acc[4 * j + e];
    __syncthreads();

    // runs of 4 pixels: chunk i = tid + it THR of BN x BM / 4 (channel row i / CPR, pixels 4 (i % CPR) ..)
    constexpr int NCH = BN * CPR / THR;
    static_assert((BN * CPR) % THR == 0, "epilogue chunks");
    if (splits > 1) {   // split-K: each thread sums its own chunks through the workspace, back into the staging
        const fuser_i64 tile = ((fuser_i64)blockIdx.z / splits * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
        float* __restrict__ wt = ws + tile * (BM * BN);
#pragma unroll
        for (int it = 0; it < NCH; ++it) {
            const int i = tid + it * THR;
            const float* c = cs + (i / CPR) * LDC + 4 * (i % CPR);
#pragma unroll
            for (int j = 0; j < 4; ++j) atomicAdd(wt + i * 4 + j, c[j]);
        }
        if (!fuser_splitk_last(cnt + tile, splits, &s_last)) return;
#pragma unroll
        for (int it = 0; it < NCH; ++it) {
            const int i = tid + it * THR;
            float* c = cs + (i / CPR) * LDC + 4 * (i % CPR);
#pragma unroll
            for (int j = 0; j < 4; ++j) c[j] = atomicExch(wt + i * 4 + j, 0.0f);
        }
    }
    FUSER_CONV_EPILOGUE(act, vec && nb + BM <= npix,
        fuser_cwg_epilogue<NCH, THR, CPR, LDC, VEC>(cs, y, r, bias, g, m0, nb, Mg, npix, OHW, img_out, vec,
                                                    fuser_conv_make_epi<ACT>(act, res_mode, p0, p1)))
}

#define FUSER_CWG_ENTRY(NAME, BN, NWG, STAGES, MINB, PIPE)                                              \
    FUSER_GLOBAL void __launch_bounds__(128 * NWG, MINB) NAME(FUSER_CONV_GEMM_PARAMS(float, float)) {      \
        fuser_conv_wgmma<BN, NWG, STAGES, PIPE>(FUSER_CONV_GEMM_ARGS);                                   \
    }
#elif defined(FUSER_CUDA)
// not an sm_90a compile: wgmma does not exist here; algo_ok never offers these entries
#define FUSER_CWG_ENTRY(NAME, BN, NWG, STAGES, MINB, PIPE)                                              \
    FUSER_GLOBAL void NAME(FUSER_CONV_GEMM_PARAMS(float, float)) { asm volatile("trap;"); }
#else
#define FUSER_CWG_ENTRY(NAME, BN, NWG, STAGES, MINB, PIPE)                                              \
    FUSER_GLOBAL void NAME(FUSER_CONV_GEMM_PARAMS(float, float)) {}
#endif
"""

# (channels BN, pixels BM) -> (warpgroups, pipeline stages, blocks per SM for __launch_bounds__, wgmmas kept in
# flight across stages: PIPE of the kernel)
WG_TILES: dict[tuple[int, int], tuple[int, int, int, int]] = {
    (128, 128): (2, 3, 2, 1), (64, 128): (2, 4, 2, 1), (128, 64): (1, 4, 2, 1), (64, 64): (1, 4, 3, 1)}
BK = 32


def wg_entry(tile: tuple[int, int]) -> str:
    return f"fuser_conv_{ALGO}_{tile[0]}x{tile[1]}_{dtype_suffix(np.float32)}"


def wg_threads(tile: tuple[int, int]) -> int:
    return 128 * WG_TILES[tile][0]


def smem_bytes(tile: tuple[int, int]) -> int:
    """Dynamic shared memory: stages x (weights [BN][32] + im2col [32][BM + 8]) fp32, + 1024 for the alignment."""
    bn, bm = tile
    return WG_TILES[tile][1] * (bn * BK + BK * (bm + 8)) * 4 + 1024


def _entry_line(tile: tuple[int, int]) -> str:
    nwg, stages, minb, pipe = WG_TILES[tile]
    return f"FUSER_CWG_ENTRY({wg_entry(tile)}, {tile[0]}, {nwg}, {stages}, {minb}, {pipe})\n"


_BASE = COMMON_SOURCE + conv_mma._MMA_SOURCE + conv_mma._MS_SOURCE + _WG_SOURCE
# the whole family (compile coverage: stubs off sm_90a)
SOURCE = _BASE + "".join(_entry_line(t) for t in WG_TILES)
VARIANTS: list[str] = [wg_entry(t) for t in WG_TILES]


def entry_source(tile: tuple[int, int]) -> str:
    """The module a runner compiles (for sm_90a): one tile's entry."""
    return _BASE + _entry_line(tile)


class WgmmaTactic(_GemmTactic):
    """``wgmma_tf32``: the warpgroup-MMA TF32 kernel (fp32 tensors, NVIDIA sm_90a)."""

    family_name = NAME
    algo = ALGO
    vec_width = 4
    bk = BK

    def __init__(self, backend, g, dtype, w, bias, tile, epi, splits: int | None = None) -> None:
        if np.dtype(dtype) != np.float32:
            raise ValueError(f"{ALGO} runs float32 tensors, not {np.dtype(dtype).name}")
        from .toolchain import arch_specific

        self.target = arch_specific(backend.name, backend.arch)
        if self.target is None:
            raise ValueError(f"{ALGO} needs NVIDIA sm_90 (wgmma), not {backend.name} {backend.arch}")
        self.nthreads = wg_threads(tile)
        super().__init__(backend, g, np.dtype(dtype), w, bias, tile, epi, splits)
        self.walk = self.kmaj or (g.kh * g.kw == 1 and g.cg % self.bk == 0)
        self.smem = smem_bytes(tile)
        backend.allow_dynamic_shared(self.fn, self.smem)

    def load_function(self):
        return self.backend.function(self.family_name, self.source(), self.entry, arch=self.target)

    def pack(self, w: np.ndarray):
        p = conv_mma.round_tf32(conv_mma.pack_weights_mk(w, self.g, self.kmaj, np.float32))
        return self.backend.upload(p), p.shape[2], p.shape[1]

    def kmode(self, x: int) -> int:
        g = self.g
        if g.pointwise and g.ohw % 4 == 0 and x % 16 == 0:
            return 2
        return 1 if self.walk else 0

    def entry_name(self) -> str:
        return wg_entry(self.tile)

    def source(self) -> str:
        return entry_source(self.tile)

    def threads(self) -> int:
        return self.nthreads
