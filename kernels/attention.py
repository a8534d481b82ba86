"""Attention family: ``Y = softmax(scale · Q Kᵀ + terms) V`` as one FlashAttention-style kernel.

Shapes (the fused node's contract): Q [B, H, Sq, D], K [B, Hkv, Skv, D], V [B, Hkv, Skv, Dv], Y [B, H, Sq, Dv];
query head h reads kv head h // (H / Hkv) (grouped-query; Hkv = 1 is multi-query; a batch of 1 broadcasts).
Score terms, in the model's order, up to two: additive (``bias``: padding masks, relative-position
biases, ALiBi; f32/f16/bf16, broadcast through element strides; ``winbias``: Swin's [1, nW, ·, ·, ·] window
mask, batch b reading window b % nW) and boolean (``mask``: keep where True, else the model's fill value);
``causal`` keeps keys j <= i (top-left). Fully masked rows give NaN like the original softmax, or 0 with
``nan_zero`` (the SDPA decomposition's IsNaN guard). fp32, fp16 and bf16 tensors; all accumulation and the
softmax in fp32.

Tactics (the node's ``tactic`` attribute, else :func:`plan`):

- ``flash_mma`` (fp16/bf16, NVIDIA sm_80+, D and Dv multiples of 8 up to 128, 16-byte aligned rows):
  FlashAttention-2's forward on tensor cores. A block is 4 warps and 128 (D <= 64) or 64 query rows; Q
  lives in registers as mma A-fragments; K and V tiles of 64 keys stream through shared memory with
  ``cp.async`` in two stages (16-byte chunks XOR-swizzled by row, so ``ldmatrix`` is conflict-free);
  S = Q·Kᵀ with ``mma.sync.m16n8k16`` (fp32 accumulators), the online softmax on the accumulators
  (exp2 with log2(e) folded into the scale, quad shuffles for row max/sum, -inf-safe), P re-packed from the
  accumulator layout straight into A-fragments (no shared memory round trip) and O += P·V with
  ``ldmatrix.trans`` for V. No S×S matrix exists anywhere: it lives one 64-key tile at a time in registers.
  Causal blocks stop at the diagonal; full tiles skip the per-element bounds/causal test.
- ``flash_simt`` (every dtype and backend; the fallback, and fp32's kernel): the same online-softmax
  algorithm on CUDA cores. 128 threads as 16 × 8, a 64 (D <= 64) or 32 query-row tile, register blocking
  of 4 (or 2) rows × 8 keys for S and 4 (or 2) rows × D/8 columns for O, float4 shared-memory reads
  (Q and K row-major padded by 4 floats, P staged through shared memory): 128 FMAs per 12 vector loads.
  At D <= 64 K and V tiles have buffers of their own (P over the key tile it came from), and fp32 tiles are
  copied with ``cp.async``: V(kt) lands while S(kt) and the softmax run. ``flash_simt_r128``: 128 query rows,
  256 threads. fp32 stays fp32 (no TF32: the fp32 verification tolerance is 1e-5).
- ``flash_simt_kv`` (every dtype and backend, D and Dv up to 64, up to 128 keys): all keys resident. Every score
  of a row in registers at once (4 rows × 16 keys per thread), so the softmax is exact in one pass (no running
  max, no rescaling of O); Q, both key tiles, then both value tiles (fp32: ``cp.async``, the values landing
  during the softmax) in three 64 × 68 float buffers, P over Q. 64- or 32-row blocks (``_r64`` / ``_r32``;
  unpinned: 64 from 3 blocks per SM on).
- ``flash_wgmma`` (fp16/bf16, NVIDIA compute capability 9.0 only, D and Dv multiples of 8 up to 64, no score
  terms; causal is fine): the same algorithm on Hopper's warpgroup MMA (``wgmma``, compiled as its own module for
  ``sm_90a``), 64 query rows per warpgroup, Q/K/V through shared-memory matrix descriptors (128-byte swizzle),
  P from registers; source and launch rule in :mod:`attention_wgmma`. ``auto`` takes it where it applies and query
  and key lengths reach 256 (measured faster than flash_mma there). Any other case falls back to ``flash_mma``.
- ``flash_tf32`` (fp32 on NVIDIA, only for models fused with ``--allow-tf32``; D and Dv multiples of 8 up to 128,
  16-byte aligned rows, every term kind and causal): flash_mma's algorithm on TF32 tensor cores
  (``mma.sync.m16n8k8``, operands rounded to TF32, fp32 accumulation and softmax); source and launch rule in
  :mod:`attention_tf32`. Any other case takes the default rule.
- ``gemm_softmax`` (the seed report's tactic, for short sequences): S = scale·Q Kᵀ + terms into an fp32
  workspace (a 64×64-tiled SIMT GEMM), one warp per row for the softmax (shuffle max/sum, in place), then
  O = P V (the same GEMM). Three launches and S×S floats of workspace.

``auto``: flash_mma where it applies; else, at head dims <= 64 and up to 128 keys, flash_simt_kv_r32 on
small grids (fewer than 3 blocks of 64 rows per SM) and flash_simt_r128 otherwise (H200, BENCHMARKS.md run 6);
else flash_simt, and gemm_softmax past head dim 128.

On AMD (hiprtc) the tensor-core entry points compile to the SIMT implementation (same launch contract is
not assumed: the runner picks ``flash_simt`` there), so every entry compiles for both vendors; ``cp.async``
is a plain 16-byte copy there (and in the CPU emulator).

The numpy reference (:func:`reference`) is what the CPU backend runs and what the GPU tests compare with.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import attention_tf32 as _tf
from . import attention_wgmma as _wg
from . import toolchain
from .backend import Backend, DeviceBackend, DeviceBuffer, as_ptr, ceil_div

NAME = "attention"

COMMON = r"""
// ---- attention family ----
#define FUSER_NEG_INF __int_as_float(0xff800000)
#define FUSER_QNAN __int_as_float(0x7fc00000)
#define FUSER_LOG2E 1.4426950408889634f

struct fuser_bf16 { unsigned short bits; };

// 2^x on the special-function unit (relative error ~2^-22, exp2(-inf) = 0): the softmax's one exponential
#if defined(FUSER_CUDA)
FUSER_INLINE float fuser_exp2(float x) { float y; asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x)); return y; }
#else
FUSER_INLINE float fuser_exp2(float x) { return exp2f(x); }
#endif
FUSER_INLINE float fuser_bf2f(unsigned short b) { return __uint_as_float(((unsigned int)b) << 16); }
FUSER_INLINE unsigned short fuser_f2bf(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

template <typename T> struct fuser_attn_io;
template <> struct fuser_attn_io<float> {
    static FUSER_INLINE float ld(const float* p, fuser_i64 i) { return p[i]; }
    static FUSER_INLINE void st(float* p, fuser_i64 i, float v) { p[i] = v; }
};
template <> struct fuser_attn_io<fuser_half> {
    static FUSER_INLINE float ld(const fuser_half* p, fuser_i64 i) { return fuser_h2f(p[i].bits); }
    static FUSER_INLINE void st(fuser_half* p, fuser_i64 i, float v) { p[i].bits = fuser_f2h(v); }
};
template <> struct fuser_attn_io<fuser_bf16> {
    static FUSER_INLINE float ld(const fuser_bf16* p, fuser_i64 i) { return fuser_bf2f(p[i].bits); }
    static FUSER_INLINE void st(fuser_bf16* p, fuser_i64 i, float v) { p[i].bits = fuser_f2bf(v); }
};

// 16-byte vector I/O for bf16, the prelude's fuser_io covering float and half
template <> struct fuser_io<fuser_bf16> {
    enum { VEC = 8 };
    static FUSER_INLINE void ldv(const fuser_bf16* p, fuser_i64 i, float (&v)[8]) {
        uint4 t = reinterpret_cast<const uint4*>(p)[i];
        const unsigned int w[4] = {t.x, t.y, t.z, t.w};
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            v[2 * u] = fuser_bf2f((unsigned short)(w[u] & 0xffffu));
            v[2 * u + 1] = fuser_bf2f((unsigned short)(w[u] >> 16));
        }
    }
};
template <typename T> struct fuser_attn_vec { enum { V = fuser_io<T>::VEC }; };

// A score term: element (b, h, i, j) of the scores reads ptr[(b % mod_b) * sb + h * sh + i * si + j * sj]
// (stride 0 broadcasts). kind 1: add (dtype 0 f32, 1 f16, 2 bf16); kind 2: keep where != 0 (u8), else fill.
struct fuser_attn_term {
    fuser_u64 ptr;
    fuser_i64 sb, sh, si, sj;
    int kind, dtype, mod_b;
    float fill;
};
#define FUSER_ATTN_TERMS 2
struct fuser_attn_params {
    fuser_u64 q, k, v, o, ws;
    fuser_i64 q_sb, q_sh, q_ss, k_sb, k_sh, k_ss, v_sb, v_sh, v_ss, o_sb, o_sh, o_ss;
    int B, H, Hkv, Sq, Skv, D, Dv, causal, nan_zero, nterms;
    float scale;
    int ws_ld;
    fuser_attn_term term[FUSER_ATTN_TERMS];
};

// A row's term offsets (everything but the key index), computed once per row rather than per score.
FUSER_INLINE void fuser_attn_row(const fuser_attn_params& p, int b, int h, int i, fuser_i64 (&off)[FUSER_ATTN_TERMS]) {
    const int ic = i < p.Sq ? i : p.Sq - 1;  // padding rows of a tile read a real row (their result is dropped)
#pragma unroll
    for (int t = 0; t < FUSER_ATTN_TERMS; ++t) {
        const fuser_attn_term& tm = p.term[t];
        const int bb = tm.mod_b > 0 ? b % tm.mod_b : b;
        off[t] = t < p.nterms ? (fuser_i64)bb * tm.sb + (fuser_i64)h * tm.sh + (fuser_i64)ic * tm.si : 0;
    }
}

FUSER_INLINE float fuser_attn_terms(const fuser_attn_params& p, const fuser_i64 (&off)[FUSER_ATTN_TERMS], int j,
                                    float x) {
#pragma unroll
    for (int t = 0; t < FUSER_ATTN_TERMS; ++t) {
        if (t >= p.nterms) break;
        const fuser_attn_term& tm = p.term[t];
        const fuser_i64 o = off[t] + (fuser_i64)j * tm.sj;
        if (tm.kind == 2) {
            x = ((const unsigned char*)tm.ptr)[o] ? x : tm.fill;
        } else if (tm.dtype == 0) {
            x += ((const float*)tm.ptr)[o];
        } else if (tm.dtype == 1) {
            x += fuser_h2f(((const unsigned short*)tm.ptr)[o]);
        } else {
            x += fuser_bf2f(((const unsigned short*)tm.ptr)[o]);
        }
    }
    return x;
}

// The score of (row i, key j) from the raw dot product: bounds, causal, scale, terms (natural units).
FUSER_INLINE float fuser_attn_score(const fuser_attn_params& p, const fuser_i64 (&off)[FUSER_ATTN_TERMS], int i,
                                    int j, float dot) {
    if (j >= p.Skv || (p.causal && j > i)) return FUSER_NEG_INF;
    return fuser_attn_terms(p, off, j, dot * p.scale);
}

FUSER_INLINE float fuser_dot4(const float4& a, const float4& b, float c) {
    return fmaf(a.w, b.w, fmaf(a.z, b.z, fmaf(a.y, b.y, fmaf(a.x, b.x, c))));
}

// 1 / l for a row's outputs (acc · (1/l): one division per row, not per output), 0 or NaN for a row of no weight
FUSER_INLINE float fuser_attn_inv(float l, int nan_zero) {
    return l > 0.0f ? 1.0f / l : (nan_zero ? 0.0f : FUSER_QNAN);
}

// Asynchronous 16-byte global -> shared copies (cp.async, sm_80+): the copy lands while the block computes, and
// is complete for this thread after fuser_cp_wait<N> (all but the N most recent committed groups), for the
// block after a barrier. Elsewhere (AMD, the CPU emulator) the copy is a plain 16-byte load and store, done
// when it returns, and commit/wait are no-ops: the same barriers then order it.
#if defined(FUSER_CUDA)
FUSER_INLINE fuser_u32 fuser_smem_u32(const void* ptr) {
    fuser_u32 r;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(ptr));
    return r;
}
FUSER_INLINE void fuser_cp_async16(fuser_u32 dst, const void* src, int bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(dst), "l"(src), "r"(bytes));
}
FUSER_INLINE void fuser_cp_commit() { asm volatile("cp.async.commit_group;"); }
template <int N> FUSER_INLINE void fuser_cp_wait() { asm volatile("cp.async.wait_group %0;" :: "n"(N)); }
// 16 bytes from src, or zeros when !ok (src is then not read)
FUSER_INLINE void fuser_cp16(float* dst, const float* src, bool ok) {
    fuser_cp_async16(fuser_smem_u32(dst), src, ok ? 16 : 0);
}
#else
FUSER_INLINE void fuser_cp_commit() {}
template <int N> FUSER_INLINE void fuser_cp_wait() {}
FUSER_INLINE void fuser_cp16(float* dst, const float* src, bool ok) {
    float4 z; z.x = z.y = z.z = z.w = 0.0f;
    *reinterpret_cast<float4*>(dst) = ok ? *reinterpret_cast<const float4*>(src) : z;
}
#endif

// The kernels' dynamic shared memory (the host opts in above 48 KiB). The CPU emulator runs one block at a
// time: a static array stands in there.
#if defined(FUSER_EMU)
#define FUSER_ATTN_SMEM(name) static __align__(16) float name[96 * 256]
#else
#define FUSER_ATTN_SMEM(name) extern __shared__ float name[]
#endif

// ============================== flash_simt: CUDA cores, any dtype ==============================
// rows x DM floats of a [.., width] tensor into shared memory (row stride LD), zero outside; 16-byte global
// loads when ``vec`` (rows and base 16-byte aligned, width a multiple of the vector), else scalars.
template <typename T, int ROWS, int DM, int LD, int NT>
FUSER_INLINE void fuser_attn_fill(float* dst, const T* src, fuser_i64 ld, int row0, int nrows, int width, bool vec) {
    typedef fuser_io<T> vio;
    enum { V = vio::VEC, NV = DM / vio::VEC };
    if (vec) {
        for (int e = threadIdx.x; e < ROWS * NV; e += NT) {
            const int r = e / NV, c = (e - r * NV) * V;
            float x[V];
            if (row0 + r < nrows && c < width) {
                vio::ldv(src + (fuser_i64)(row0 + r) * ld + c, 0, x);
            } else {
#pragma unroll
                for (int u = 0; u < V; ++u) x[u] = 0.0f;
            }
#pragma unroll
            for (int u = 0; u < V; u += 4)
                *reinterpret_cast<float4*>(&dst[r * LD + c + u]) = make_float4(x[u], x[u + 1], x[u + 2], x[u + 3]);
        }
        return;
    }
    for (int e = threadIdx.x; e < ROWS * DM; e += NT) {
        const int r = e / DM, d = e - r * DM;
        float x = 0.0f;
        if (row0 + r < nrows && d < width) x = fuser_attn_io<T>::ld(src, (fuser_i64)(row0 + r) * ld + d);
        dst[r * LD + d] = x;
    }
}
// rows x DM floats of an fp32 [.., width] tensor into shared memory (row stride LD), zero outside, by 16-byte
// fuser_cp16 (asynchronous on NVIDIA): rows and base 16-byte aligned, width a multiple of 4.
template <int ROWS, int DM, int LD, int NT>
FUSER_INLINE void fuser_attn_copy(float* dst, const float* src, fuser_i64 ld, int row0, int nrows, int width) {
    enum { NV = DM / 4, RPP = NT / NV };  // a thread keeps one 16-byte column, every RPP-th row
    const int c = (threadIdx.x % NV) * 4, r0 = threadIdx.x / NV;
    const bool cok = c < width;
#pragma unroll
    for (int i = 0; i < ROWS / RPP; ++i) {
        const int r = r0 + i * RPP;
        const bool ok = cok && row0 + r < nrows;
        fuser_cp16(dst + r * LD + c, ok ? src + (fuser_i64)(row0 + r) * ld + c : src, ok);
    }
}

// S += Q·Kᵀ for one 64-key tile of flash_simt: this thread's RM rows (ty + TY·i) x 8 key columns (tx + 8j); GUARD
// computes only the columns with j < jn (a short last tile), without it the loop has no branch.
template <int RM, int TY, int LD, bool GUARD>
FUSER_INLINE void fuser_attn_simt_qk(float (&s)[RM][8], const float* Qs, const float* KV, int Dp, int ty, int tx,
                                     int jn) {
    for (int d = 0; d < Dp; d += 4) {
        float4 qa[RM];
#pragma unroll
        for (int i = 0; i < RM; ++i) qa[i] = *reinterpret_cast<const float4*>(&Qs[(ty + TY * i) * LD + d]);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            if (GUARD && j >= jn) continue;
            const float4 kb = *reinterpret_cast<const float4*>(&KV[(tx + 8 * j) * LD + d]);
#pragma unroll
            for (int i = 0; i < RM; ++i) s[i][j] = fuser_dot4(qa[i], kb, s[i][j]);
        }
    }
}

// NT threads = NT/8 (ty) x 8 (tx). Rows ty + (NT/8)*i (a warp's four ty rows land in different banks);
// S columns tx + 8j; O columns tx*4 + 32c + u (a warp's V reads are 128 contiguous bytes).
// Head dims <= 64 (PF): K and V tiles have buffers of their own and P takes the key tile's place once S is
// computed (the same shared memory as one K/V buffer plus a P buffer), so V(kt) is copied (cp.async, fp32)
// while S(kt) is computed and the softmax runs; K(kt+1) is issued once P·V(kt) is done. DM = 128 keeps one
// K/V buffer and a P buffer (a second 64 x 132 buffer would cost a block per SM) and loads synchronously.
template <typename T, int DM, int BR, int NT>
FUSER_INLINE void fuser_attn_simt(const fuser_attn_params& p) {
    enum { BC = 64, TY = NT / 8, RM = BR / TY, LD = DM + 4, PLD = BC + 4, OC = DM / 8, PF = DM == 64 };
    enum { KP = PF ? (BC * LD > BR * PLD ? BC * LD : BR * PLD) : BC * LD };
    FUSER_ATTN_SMEM(fuser_attn_smem);
    float* Qs = fuser_attn_smem;       // [BR][LD]  Q
    float* KV = Qs + BR * LD;          // [BC][LD]  K (then V; PF: then P, [BR][PLD])
    float* Ps = PF ? KV : KV + KP;     // [BR][PLD] probabilities of this tile
    float* Vs = PF ? KV + KP : KV;     // [BC][LD]  V
    typedef fuser_attn_io<T> io;
    const int tid = threadIdx.x, tx = tid & 7, ty = tid >> 3;
    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * BR;
    const int hk = h / (p.H / p.Hkv);
    const T* q = (const T*)p.q + (fuser_i64)b * p.q_sb + (fuser_i64)h * p.q_sh;
    const T* k = (const T*)p.k + (fuser_i64)b * p.k_sb + (fuser_i64)hk * p.k_sh;
    const T* v = (const T*)p.v + (fuser_i64)b * p.v_sb + (fuser_i64)hk * p.v_sh;
    T* o = (T*)p.o + (fuser_i64)b * p.o_sb + (fuser_i64)h * p.o_sh;
    const int Dp = (p.D + 3) & ~3;
    enum { VE = fuser_attn_vec<T>::V };
    const bool vec = ((p.q | p.k | p.v) & 15) == 0 && p.D % VE == 0 && p.Dv % VE == 0;
    const bool async = PF && vec && VE == 4;
    if (async) fuser_attn_copy<BR, DM, LD, NT>(Qs, (const float*)q, p.q_ss, q0, p.Sq, p.D);
    else fuser_attn_fill<T, BR, DM, LD, NT>(Qs, q, p.q_ss, q0, p.Sq, p.D, vec);
    float m_i[RM], l_i[RM], acc[RM][OC];
#pragma unroll
    for (int i = 0; i < RM; ++i) {
        m_i[i] = FUSER_NEG_INF; l_i[i] = 0.0f;
#pragma unroll
        for (int c = 0; c < OC; ++c) acc[i][c] = 0.0f;
    }
    int ntiles = (p.Skv + BC - 1) / BC;
    if (p.causal) {
        const int last = (q0 + BR < p.Sq ? q0 + BR : p.Sq) - 1;
        const int lim = last / BC + 1;
        ntiles = ntiles < lim ? ntiles : lim;
    }
    if (async && ntiles > 0) {  // {Q, K0}, {V0}
        fuser_attn_copy<BC, DM, LD, NT>(KV, (const float*)k, p.k_ss, 0, p.Skv, p.D);
        fuser_cp_commit();
        fuser_attn_copy<BC, DM, LD, NT>(Vs, (const float*)v, p.v_ss, 0, p.Skv, p.Dv);
        fuser_cp_commit();
    }
    for (int kt = 0; kt < ntiles; ++kt) {
        const int k0 = kt * BC;
        __syncthreads();  // the previous tile's P and V are read
        if (async) {
            if (kt > 0) {
                fuser_attn_copy<BC, DM, LD, NT>(KV, (const float*)k, p.k_ss, k0, p.Skv, p.D);
                fuser_cp_commit();
                fuser_attn_copy<BC, DM, LD, NT>(Vs, (const float*)v, p.v_ss, k0, p.Skv, p.Dv);
                fuser_cp_commit();
            }
            fuser_cp_wait<1>();  // K(kt); V(kt) lands while S(kt) is computed
        } else {
            fuser_attn_fill<T, BC, DM, LD, NT>(KV, k, p.k_ss, k0, p.Skv, p.D, vec);
        }
        __syncthreads();
        float s[RM][8];
#pragma unroll
        for (int i = 0; i < RM; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j) s[i][j] = 0.0f;
        // keys of this tile that exist: the last tile of a length off the tiles (ViT's 197 = 3 x 64 + 5) computes
        // only its key columns 8j + tx with 8j below them, and P·V only its first keys rounded up to 4 (the
        // rest of P is 0, the rest of V zero-filled); full tiles keep the unguarded loop
        const int kin = p.Skv - k0 < BC ? p.Skv - k0 : BC;
        if (kin == BC) fuser_attn_simt_qk<RM, TY, LD, false>(s, Qs, KV, Dp, ty, tx, 8);
        else fuser_attn_simt_qk<RM, TY, LD, true>(s, Qs, KV, Dp, ty, tx, (kin + 7) >> 3);
        if (PF) __syncthreads();  // the key tile is read: P takes its place
        // scores in natural units; the term branch is taken once per tile, outside the unrolled loops (a
        // per-score branch lays the term code between the hot instructions, and the instruction fetch stalls)
        if (p.nterms == 0) {
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const int kj = k0 + tx + 8 * j;
#pragma unroll
                for (int i = 0; i < RM; ++i) {
                    const bool ok = kj < p.Skv && !(p.causal && kj > q0 + ty + TY * i);
                    s[i][j] = ok ? s[i][j] * p.scale : FUSER_NEG_INF;
                }
            }
        } else {
#pragma unroll
            for (int i = 0; i < RM; ++i) {
                const int qi = q0 + ty + TY * i;
                fuser_i64 off[FUSER_ATTN_TERMS];
                fuser_attn_row(p, b, h, qi, off);
#pragma unroll
                for (int j = 0; j < 8; ++j) s[i][j] = fuser_attn_score(p, off, qi, k0 + tx + 8 * j, s[i][j]);
            }
        }
#pragma unroll
        for (int i = 0; i < RM; ++i) {
            float mx = FUSER_NEG_INF;
#pragma unroll
            for (int j = 0; j < 8; ++j) mx = fmaxf(mx, s[i][j]);
            mx = fmaxf(mx, fuser_shfl_xor(mx, 1));
            mx = fmaxf(mx, fuser_shfl_xor(mx, 2));
            mx = fmaxf(mx, fuser_shfl_xor(mx, 4));
            const float mn = fmaxf(m_i[i], mx);
            const float mu = mn == FUSER_NEG_INF ? 0.0f : mn;
            const float alpha = fuser_exp2((m_i[i] - mu) * FUSER_LOG2E);
            float rs = 0.0f;
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const float e = fuser_exp2((s[i][j] - mu) * FUSER_LOG2E);
                s[i][j] = e;
                rs += e;
            }
            rs += fuser_shfl_xor(rs, 1);
            rs += fuser_shfl_xor(rs, 2);
            rs += fuser_shfl_xor(rs, 4);
            l_i[i] = l_i[i] * alpha + rs;
            m_i[i] = mn;
#pragma unroll
            for (int c = 0; c < OC; ++c) acc[i][c] *= alpha;
#pragma unroll
            for (int j = 0; j < 8; ++j) Ps[(ty + TY * i) * PLD + tx + 8 * j] = s[i][j];
        }
        if (async) fuser_cp_wait<0>();
        else {
            if (!PF) __syncthreads();  // (one K/V buffer: the key tile is read)
            fuser_attn_fill<T, BC, DM, LD, NT>(Vs, v, p.v_ss, k0, p.Skv, p.Dv, vec);
        }
        __syncthreads();
        const int jend = (kin + 3) & ~3;
        for (int jj = 0; jj < jend; jj += 4) {
            float4 pa[RM];
#pragma unroll
            for (int i = 0; i < RM; ++i) pa[i] = *reinterpret_cast<const float4*>(&Ps[(ty + TY * i) * PLD + jj]);
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const float* vrow = &Vs[(jj + r) * LD + tx * 4];
#pragma unroll
                for (int c4 = 0; c4 < OC / 4; ++c4) {  // columns tx*4 + 32*c4: a warp reads 128 contiguous bytes
                    const float4 vb = *reinterpret_cast<const float4*>(&vrow[32 * c4]);
#pragma unroll
                    for (int i = 0; i < RM; ++i) {
                        const float pv = r == 0 ? pa[i].x : r == 1 ? pa[i].y : r == 2 ? pa[i].z : pa[i].w;
                        acc[i][4 * c4 + 0] = fmaf(pv, vb.x, acc[i][4 * c4 + 0]);
                        acc[i][4 * c4 + 1] = fmaf(pv, vb.y, acc[i][4 * c4 + 1]);
                        acc[i][4 * c4 + 2] = fmaf(pv, vb.z, acc[i][4 * c4 + 2]);
                        acc[i][4 * c4 + 3] = fmaf(pv, vb.w, acc[i][4 * c4 + 3]);
                    }
                }
            }
        }
    }
#pragma unroll
    for (int i = 0; i < RM; ++i) {
        const int qi = q0 + ty + TY * i;
        if (qi >= p.Sq) continue;
        const float inv = fuser_attn_inv(l_i[i], p.nan_zero);
#pragma unroll
        for (int c = 0; c < OC; ++c) {
            const int col = tx * 4 + 32 * (c >> 2) + (c & 3);
            if (col < p.Dv) io::st(o, (fuser_i64)qi * p.o_ss + col, acc[i][c] * inv);
        }
    }
}

// ============================== flash_simt_kv: all keys resident (Skv <= 128) ==============================
// For short key sequences (Skv <= 64 * NK, NK = 1 or 2 tiles of 64 keys) and head dims <= 64: every score of a
// row lives in registers at once, so the softmax is exact in one pass (no running max, no rescaling of O).
// 128 threads as 16 x 8 over 16 * RM query rows (64 or 32), register blocking as flash_simt (RM rows x 8 keys
// of S per tile, RM rows x 8 columns of O). Shared memory is three 68-float-wide tiles, 52 KiB at 64 rows (four
// blocks per SM, like flash_simt): Q then each tile's P in the first (16 * RM rows), the key tiles then the value
// tiles in the other two (64 rows; NK = 1: K in one, V in the other). fp32 copies are cp.async, issued as soon
// as their tile is free, so only Q and the first key tile are waited for with nothing to compute: K1 lands
// during S0, V0 during S1, V1 during the softmax and P·V0. Columns past D (or Dv) are zero-filled up to 64,
// so the inner loops have fixed trip counts.
template <typename T, int NK, int RM, int NT>
FUSER_INLINE void fuser_attn_simt_kv(const fuser_attn_params& p) {
    enum { TY = NT / 8, BR = TY * RM, BC = 64, DM = 64, LD = DM + 4, OC = 8, TILE = BC * LD, NS = NK * 8 };
    FUSER_ATTN_SMEM(fuser_attn_smem);
    float* Qs = fuser_attn_smem;   // [BR][LD]: Q, then P of one key tile
    float* Ts = Qs + BR * LD;      // [2][BC][LD]: key tiles, then value tiles
    typedef fuser_attn_io<T> io;
    const int tid = threadIdx.x, tx = tid & 7, ty = tid >> 3;
    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * BR;
    const int hk = h / (p.H / p.Hkv);
    const T* q = (const T*)p.q + (fuser_i64)b * p.q_sb + (fuser_i64)h * p.q_sh;
    const T* k = (const T*)p.k + (fuser_i64)b * p.k_sb + (fuser_i64)hk * p.k_sh;
    const T* v = (const T*)p.v + (fuser_i64)b * p.v_sb + (fuser_i64)hk * p.v_sh;
    T* o = (T*)p.o + (fuser_i64)b * p.o_sb + (fuser_i64)h * p.o_sh;
    enum { VE = fuser_attn_vec<T>::V };
    const bool vec = ((p.q | p.k | p.v) & 15) == 0 && p.D % VE == 0 && p.Dv % VE == 0;
    const bool async = vec && VE == 4;  // fp32 rows move as they are; other dtypes are widened on the way
    // Key tile kt goes to buffer kt, its values to buffer (NK == 1 ? 1 : kt). NK = 1: V is copied from the
    // start, into the buffer no key tile uses.
    if (async) {
        fuser_attn_copy<BR, DM, LD, NT>(Qs, (const float*)q, p.q_ss, q0, p.Sq, p.D);
#pragma unroll
        for (int kt = 0; kt < NK; ++kt)
            fuser_attn_copy<BC, DM, LD, NT>(Ts + kt * TILE, (const float*)k, p.k_ss, kt * BC, p.Skv, p.D);
        fuser_cp_commit();
        if (NK == 1) fuser_attn_copy<BC, DM, LD, NT>(Ts + TILE, (const float*)v, p.v_ss, 0, p.Skv, p.Dv);
        fuser_cp_commit();
        fuser_cp_wait<1>();
    } else {
        fuser_attn_fill<T, BR, DM, LD, NT>(Qs, q, p.q_ss, q0, p.Sq, p.D, vec);
#pragma unroll
        for (int kt = 0; kt < NK; ++kt)
            fuser_attn_fill<T, BC, DM, LD, NT>(Ts + kt * TILE, k, p.k_ss, kt * BC, p.Skv, p.D, vec);
    }
    __syncthreads();
    // S = Q·Kᵀ for every key at once: one Q read serves both key tiles (4 + 8·NK 16-byte reads per 32·NK FMAs)
    float s[RM][NS];
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
        for (int j = 0; j < NS; ++j) s[i][j] = 0.0f;
#pragma unroll 2
    for (int d = 0; d < DM; d += 4) {
        float4 qa[RM];
#pragma unroll
        for (int i = 0; i < RM; ++i) qa[i] = *reinterpret_cast<const float4*>(&Qs[(ty + TY * i) * LD + d]);
#pragma unroll
        for (int j = 0; j < NS; ++j) {  // key (j / 8) * 64 + tx + 8 * (j % 8), row tx + 8 * j of the buffers
            const float4 kb = *reinterpret_cast<const float4*>(&Ts[(tx + 8 * j) * LD + d]);
#pragma unroll
            for (int i = 0; i < RM; ++i) s[i][j] = fuser_dot4(qa[i], kb, s[i][j]);
        }
    }
    __syncthreads();  // Q and the keys are read: P and the values take their place
    if (NK > 1) {
        if (async) {
#pragma unroll
            for (int kt = 0; kt < NK; ++kt) {
                fuser_attn_copy<BC, DM, LD, NT>(Ts + kt * TILE, (const float*)v, p.v_ss, kt * BC, p.Skv, p.Dv);
                fuser_cp_commit();
            }
        } else {
#pragma unroll
            for (int kt = 0; kt < NK; ++kt)
                fuser_attn_fill<T, BC, DM, LD, NT>(Ts + kt * TILE, v, p.v_ss, kt * BC, p.Skv, p.Dv, vec);
        }
    } else if (!async) {
        fuser_attn_fill<T, BC, DM, LD, NT>(Ts + TILE, v, p.v_ss, 0, p.Skv, p.Dv, vec);
    }
    // The exact softmax of each row over its 64·NK scores (8 lanes hold a row). Plain (no terms, no causal,
    // a positive scale): the max on the raw dot products, the scale inside the exponent. The branch is taken
    // once, outside the unrolled loops: a per-score branch interleaves the term code with the hot path, and
    // the instruction fetch stalls on it.
    const bool plain = p.nterms == 0 && !p.causal && p.scale > 0.0f;
    if (plain) {
#pragma unroll
        for (int j = 0; j < NS; ++j) {
            const bool ok = (j / 8) * BC + tx + 8 * (j % 8) < p.Skv;
#pragma unroll
            for (int i = 0; i < RM; ++i) s[i][j] = ok ? s[i][j] : FUSER_NEG_INF;
        }
    } else {
#pragma unroll
        for (int i = 0; i < RM; ++i) {
            const int qi = q0 + ty + TY * i;
            fuser_i64 off[FUSER_ATTN_TERMS];
            fuser_attn_row(p, b, h, qi, off);
#pragma unroll
            for (int j = 0; j < NS; ++j)
                s[i][j] = fuser_attn_score(p, off, qi, (j / 8) * BC + tx + 8 * (j % 8), s[i][j]);
        }
    }
    const float sl = plain ? p.scale * FUSER_LOG2E : FUSER_LOG2E;
    float inv[RM];
#pragma unroll
    for (int i = 0; i < RM; ++i) {
        float mx = FUSER_NEG_INF;
#pragma unroll
        for (int j = 0; j < NS; ++j) mx = fmaxf(mx, s[i][j]);
        mx = fmaxf(mx, fuser_shfl_xor(mx, 1));
        mx = fmaxf(mx, fuser_shfl_xor(mx, 2));
        mx = fmaxf(mx, fuser_shfl_xor(mx, 4));
        const float mu = mx == FUSER_NEG_INF ? 0.0f : mx;
        float rs = 0.0f;
#pragma unroll
        for (int j = 0; j < NS; ++j) {
            const float e = fuser_exp2((s[i][j] - mu) * sl);
            s[i][j] = e;
            rs += e;
        }
        rs += fuser_shfl_xor(rs, 1);
        rs += fuser_shfl_xor(rs, 2);
        rs += fuser_shfl_xor(rs, 4);
        inv[i] = fuser_attn_inv(rs, p.nan_zero);
    }
    float acc[RM][OC];
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
        for (int c = 0; c < OC; ++c) acc[i][c] = 0.0f;
#pragma unroll
    for (int kt = 0; kt < NK; ++kt) {
        if (kt > 0) __syncthreads();  // P of the previous tile is read
#pragma unroll
        for (int i = 0; i < RM; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j) Qs[(ty + TY * i) * LD + tx + 8 * j] = s[i][kt * 8 + j];
        if (kt == NK - 1) fuser_cp_wait<0>();
        else fuser_cp_wait<1>();
        __syncthreads();
        const float* Vs = Ts + (NK == 1 ? TILE : kt * TILE);
#pragma unroll 2
        for (int jj = 0; jj < BC; jj += 4) {
            float4 pa[RM];
#pragma unroll
            for (int i = 0; i < RM; ++i) pa[i] = *reinterpret_cast<const float4*>(&Qs[(ty + TY * i) * LD + jj]);
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const float* vrow = &Vs[(jj + r) * LD + tx * 4];
#pragma unroll
                for (int c4 = 0; c4 < OC / 4; ++c4) {
                    const float4 vb = *reinterpret_cast<const float4*>(&vrow[32 * c4]);
#pragma unroll
                    for (int i = 0; i < RM; ++i) {
                        const float pv = r == 0 ? pa[i].x : r == 1 ? pa[i].y : r == 2 ? pa[i].z : pa[i].w;
                        acc[i][4 * c4 + 0] = fmaf(pv, vb.x, acc[i][4 * c4 + 0]);
                        acc[i][4 * c4 + 1] = fmaf(pv, vb.y, acc[i][4 * c4 + 1]);
                        acc[i][4 * c4 + 2] = fmaf(pv, vb.z, acc[i][4 * c4 + 2]);
                        acc[i][4 * c4 + 3] = fmaf(pv, vb.w, acc[i][4 * c4 + 3]);
                    }
                }
            }
        }
    }
    const bool ovec = VE == 4 && ((p.o & 15) == 0) && p.Dv % 4 == 0;
#pragma unroll
    for (int i = 0; i < RM; ++i) {
        const int qi = q0 + ty + TY * i;
        if (qi >= p.Sq) continue;
        T* orow = o + (fuser_i64)qi * p.o_ss;
#pragma unroll
        for (int c4 = 0; c4 < OC / 4; ++c4) {
            const int col = tx * 4 + 32 * c4;
            float r4[4];
#pragma unroll
            for (int u = 0; u < 4; ++u) r4[u] = acc[i][4 * c4 + u] * inv[i];
            if (ovec && col < p.Dv) {
                *reinterpret_cast<float4*>(orow + col) = make_float4(r4[0], r4[1], r4[2], r4[3]);
            } else {
#pragma unroll
                for (int u = 0; u < 4; ++u)
                    if (col + u < p.Dv) io::st(orow, col + u, r4[u]);
            }
        }
    }
}

// ============================== flash_mma: tensor cores (NVIDIA sm_80+) ==============================
#if defined(FUSER_CUDA)
FUSER_INLINE void fuser_ldsm_x4(fuser_u32 (&r)[4], fuser_u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
FUSER_INLINE void fuser_ldsm_x4_t(fuser_u32 (&r)[4], fuser_u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
template <int BF16>
FUSER_INLINE void fuser_mma16816(float (&d)[4], const fuser_u32 (&a)[4], fuser_u32 b0, fuser_u32 b1) {
    if (BF16)
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                     "{%8, %9}, {%0, %1, %2, %3};"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    else
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                     "{%8, %9}, {%0, %1, %2, %3};"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <int BF16> FUSER_INLINE fuser_u32 fuser_pack2(float lo, float hi) {
    fuser_u32 r;
    if (BF16) asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    else asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// Tiles of ROWS x HD halves in shared memory as 16-byte chunks, chunk c of row r stored at c ^ (r & 7):
// ldmatrix's 8 row addresses of one 8x8 matrix then hit 8 different bank groups. A 128-thread block moves
// a tile with each thread on a fixed chunk column (tid % CH) and every (128 / CH)-th row: the global offsets
// and shared destinations are a per-thread base plus compile-time steps, so a tile costs a few adds.
template <int HD, int ROWS>
FUSER_INLINE void fuser_attn_tile(fuser_u32 dst, const unsigned short* src, const unsigned short* any, fuser_i64 ld,
                                  int rows_left, bool col_ok) {
    enum { CH = HD / 8, RPP = 128 / CH };
    const int lr = threadIdx.x / CH, lc = threadIdx.x % CH;
    const fuser_u32 d0 = dst + (lr * CH + (lc ^ (lr & 7))) * 16;
    const unsigned short* s0 = src + (fuser_i64)lr * ld + lc * 8;
#pragma unroll
    for (int i = 0; i < ROWS / RPP; ++i) {
        const bool ok = col_ok && lr + i * RPP < rows_left;
        fuser_cp_async16(d0 + i * RPP * CH * 16, ok ? s0 + (fuser_i64)(i * RPP) * ld : any, ok ? 16 : 0);
    }
}

// max of 2*NN accumulator values of one row half (a balanced tree: short dependency chains)
template <int NN>
FUSER_INLINE float fuser_attn_rowmax(const float (&sacc)[NN][4], int hr) {
    float m[NN];
#pragma unroll
    for (int n = 0; n < NN; ++n) m[n] = fmaxf(sacc[n][2 * hr], sacc[n][2 * hr + 1]);
#pragma unroll
    for (int w = 1; w < NN; w *= 2)
#pragma unroll
        for (int n = 0; n + w < NN; n += 2 * w) m[n] = fmaxf(m[n], m[n + w]);
    return m[0];
}

// One tile of the online softmax on mma accumulators (rows g and g+8 of this warp's 16): raw dot products in
// sacc become probabilities (unnormalised, against the running max), O is rescaled. A full tile with a
// positive scale folds the scale into the exponent: exp2(s * scale*log2e - m) with the max taken on the raw
// dot products (one FFMA per score); other tiles go through fuser_attn_score (bounds, causal, terms).
template <int NN, int NO, int CB>
FUSER_INLINE void fuser_attn_online(const fuser_attn_params& p, float (&sacc)[NN][4], float (&oacc)[NO][4],
                                    float (&m_r)[2], float (&l_r)[2], bool full, int b, int h, int rbase, int k0,
                                    int t) {
    const float sl = p.scale * FUSER_LOG2E;
    const bool fold = full && sl > 0.0f;
    // CB (a kernel compiled for it): one additive term that does not vary along the query axis (a key-padding
    // mask), read once per key for both of this thread's rows instead of once per score
    const bool colbias = CB && !fold;
    if (colbias) {
        fuser_i64 off[FUSER_ATTN_TERMS];
        fuser_attn_row(p, b, h, rbase, off);
#pragma unroll
        for (int n = 0; n < NN; ++n)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int j = k0 + n * 8 + 2 * t + e;
                const float bv = j < p.Skv ? fuser_attn_terms(p, off, j, 0.0f) : 0.0f;
#pragma unroll
                for (int hr = 0; hr < 2; ++hr) {
                    const float x = fmaf(sacc[n][2 * hr + e], p.scale, bv) * FUSER_LOG2E;
                    sacc[n][2 * hr + e] = (j >= p.Skv || (p.causal && j > rbase + 8 * hr)) ? FUSER_NEG_INF : x;
                }
            }
    }
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
        const int row = rbase + 8 * hr;
        if (!fold && !colbias) {
            fuser_i64 off[FUSER_ATTN_TERMS];
            if (!full) fuser_attn_row(p, b, h, row, off);
#pragma unroll
            for (int n = 0; n < NN; ++n)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const float x = sacc[n][2 * hr + e];
                    sacc[n][2 * hr + e] = full ? x * sl
                                               : fuser_attn_score(p, off, row, k0 + n * 8 + 2 * t + e, x) * FUSER_LOG2E;
                }
        }
        float mx = fuser_attn_rowmax<NN>(sacc, hr);
        mx = fmaxf(mx, fuser_shfl_xor(mx, 1));
        mx = fmaxf(mx, fuser_shfl_xor(mx, 2));
        if (fold) mx *= sl;
        const float mn = fmaxf(m_r[hr], mx);
        const float mu = mn == FUSER_NEG_INF ? 0.0f : mn;
        const float alpha = fuser_exp2(m_r[hr] - mu);
        float rs0 = 0.0f, rs1 = 0.0f;
#pragma unroll
        for (int n = 0; n < NN; ++n) {
            const float x0 = sacc[n][2 * hr], x1 = sacc[n][2 * hr + 1];
            const float p0 = fuser_exp2(fold ? fmaf(x0, sl, -mu) : x0 - mu);
            const float p1 = fuser_exp2(fold ? fmaf(x1, sl, -mu) : x1 - mu);
            sacc[n][2 * hr] = p0;
            sacc[n][2 * hr + 1] = p1;
            rs0 += p0;
            rs1 += p1;
        }
        float rs = rs0 + rs1;
        rs += fuser_shfl_xor(rs, 1);
        rs += fuser_shfl_xor(rs, 2);
        l_r[hr] = l_r[hr] * alpha + rs;
        m_r[hr] = mn;
#pragma unroll
        for (int n = 0; n < NO; ++n) {
            oacc[n][2 * hr] *= alpha;
            oacc[n][2 * hr + 1] *= alpha;
        }
    }
}

// O += P·V for one tile: P's A-fragments re-packed from the probability accumulators, 16 keys at a time.
template <int BF16, int HD, int BC, int CH>
FUSER_INLINE void fuser_attn_pv_mma(const float (&sacc)[BC / 8][4], float (&oacc)[HD / 8][4], fuser_u32 vb_base,
                                    int vx) {
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) {
        fuser_u32 pa[4];
        pa[0] = fuser_pack2<BF16>(sacc[2 * kk][0], sacc[2 * kk][1]);
        pa[1] = fuser_pack2<BF16>(sacc[2 * kk][2], sacc[2 * kk][3]);
        pa[2] = fuser_pack2<BF16>(sacc[2 * kk + 1][0], sacc[2 * kk + 1][1]);
        pa[3] = fuser_pack2<BF16>(sacc[2 * kk + 1][2], sacc[2 * kk + 1][3]);
        fuser_u32 vb[HD / 16][4];
#pragma unroll
        for (int dp = 0; dp < HD / 16; ++dp)
            fuser_ldsm_x4_t(vb[dp], vb_base + kk * 16 * CH * 16 + (((2 * dp) ^ vx) << 4));
#pragma unroll
        for (int dp = 0; dp < HD / 16; ++dp) {
            fuser_mma16816<BF16>(oacc[2 * dp], pa, vb[dp][0], vb[dp][1]);
            fuser_mma16816<BF16>(oacc[2 * dp + 1], pa, vb[dp][2], vb[dp][3]);
        }
    }
}

// S = Q·Kᵀ for one tile of BC keys (raw dot products).
template <int BF16, int HD, int BC, int CH>
FUSER_INLINE void fuser_attn_qk_mma(float (&sacc)[BC / 8][4], const fuser_u32 (&qf)[HD / 16][4], fuser_u32 kb_base,
                                    int kx) {
#pragma unroll
    for (int n = 0; n < BC / 8; ++n) sacc[n][0] = sacc[n][1] = sacc[n][2] = sacc[n][3] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < HD / 16; ++ks) {
        const fuser_u32 kcol = ((2 * ks) ^ kx) << 4;
#pragma unroll
        for (int nb = 0; nb < BC / 16; nb += 4) {  // four 16-key fragments in flight, then their mmas
            fuser_u32 kb[4][4];
#pragma unroll
            for (int u = 0; u < 4; ++u) fuser_ldsm_x4(kb[u], kb_base + (nb + u) * 16 * CH * 16 + kcol);
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                fuser_mma16816<BF16>(sacc[2 * (nb + u)], qf[ks], kb[u][0], kb[u][1]);
                fuser_mma16816<BF16>(sacc[2 * (nb + u) + 1], qf[ks], kb[u][2], kb[u][3]);
            }
        }
    }
}

template <int BF16, int HD, int BC, int CB>
FUSER_INLINE void fuser_attn_mma(const fuser_attn_params& p) {
    enum { BR = 64, KS = HD / 16, NO = HD / 8, NN = BC / 8, CH = HD / 8 };
    FUSER_ATTN_SMEM(fuser_attn_smem);
    unsigned short* sm = reinterpret_cast<unsigned short*>(fuser_attn_smem);
    const fuser_u32 s_q = fuser_smem_u32(sm);
    const fuser_u32 s_k = s_q + BR * HD * 2;
    const fuser_u32 s_v = s_k + 2 * BC * HD * 2;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * BR;
    const int hk = h / (p.H / p.Hkv);
    const unsigned short* q = (const unsigned short*)p.q + (fuser_i64)b * p.q_sb + (fuser_i64)h * p.q_sh;
    const unsigned short* k = (const unsigned short*)p.k + (fuser_i64)b * p.k_sb + (fuser_i64)hk * p.k_sh;
    const unsigned short* v = (const unsigned short*)p.v + (fuser_i64)b * p.v_sb + (fuser_i64)hk * p.v_sh;
    unsigned short* o = (unsigned short*)p.o + (fuser_i64)b * p.o_sb + (fuser_i64)h * p.o_sh;
    const bool dok = (threadIdx.x % CH) * 8 < p.D, vok = (threadIdx.x % CH) * 8 < p.Dv;
    int ntiles = (p.Skv + BC - 1) / BC;
    if (p.causal) {
        const int last = (q0 + BR < p.Sq ? q0 + BR : p.Sq) - 1;
        const int lim = last / BC + 1;
        ntiles = ntiles < lim ? ntiles : lim;
    }
    fuser_attn_tile<HD, BR>(s_q, q + (fuser_i64)q0 * p.q_ss, q, p.q_ss, p.Sq - q0, dok);
    fuser_cp_commit();
    if (ntiles > 0) {
        fuser_attn_tile<HD, BC>(s_k, k, k, p.k_ss, p.Skv, dok);
        fuser_attn_tile<HD, BC>(s_v, v, v, p.v_ss, p.Skv, vok);
    }
    fuser_cp_commit();
    fuser_cp_wait<1>();
    __syncthreads();
    // per-lane fragment addressing, hoisted: a fragment is row_off + ((2 * step) ^ x) * 16 (see fuser_swz)
    const int l7 = lane & 7;
    const fuser_u32 q_off = s_q + (warp * 16 + (lane & 15)) * CH * 16;
    const int qx = (lane >> 4) ^ l7;
    const fuser_u32 k_off = (l7 + ((lane >> 4) << 3)) * CH * 16;
    const int kx = ((lane >> 3) & 1) ^ l7;
    const fuser_u32 v_off = (l7 + (((lane >> 3) & 1) << 3)) * CH * 16;
    const int vx = (lane >> 4) ^ l7;
    fuser_u32 qf[KS][4];
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) fuser_ldsm_x4(qf[ks], q_off + (((2 * ks) ^ qx) << 4));
    float oacc[NO][4];
    float m_r[2], l_r[2];
#pragma unroll
    for (int n = 0; n < NO; ++n) oacc[n][0] = oacc[n][1] = oacc[n][2] = oacc[n][3] = 0.0f;
    m_r[0] = m_r[1] = FUSER_NEG_INF;
    l_r[0] = l_r[1] = 0.0f;
    const int rbase = q0 + warp * 16 + g;
    for (int kt = 0; kt < ntiles; ++kt) {
        const int st = kt & 1, k0 = kt * BC;
        if (kt + 1 < ntiles) {
            const int n0 = k0 + BC;
            fuser_attn_tile<HD, BC>(s_k + (st ^ 1) * BC * HD * 2, k + (fuser_i64)n0 * p.k_ss, k, p.k_ss, p.Skv - n0,
                                    dok);
            fuser_attn_tile<HD, BC>(s_v + (st ^ 1) * BC * HD * 2, v + (fuser_i64)n0 * p.v_ss, v, p.v_ss, p.Skv - n0,
                                    vok);
            fuser_cp_commit();
            fuser_cp_wait<1>();
        } else {
            fuser_cp_wait<0>();
        }
        __syncthreads();
        const fuser_u32 kb_base = s_k + st * BC * HD * 2 + k_off, vb_base = s_v + st * BC * HD * 2 + v_off;
        float sacc[NN][4];
        fuser_attn_qk_mma<BF16, HD, BC, CH>(sacc, qf, kb_base, kx);
        const bool full = p.nterms == 0 && k0 + BC <= p.Skv && (!p.causal || k0 + BC - 1 <= q0);
        fuser_attn_online<NN, NO, CB>(p, sacc, oacc, m_r, l_r, full, b, h, rbase, k0, t);
        fuser_attn_pv_mma<BF16, HD, BC, CH>(sacc, oacc, vb_base, vx);
        __syncthreads();
    }
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
        const int row = rbase + 8 * hr;
        if (row >= p.Sq) continue;
        unsigned short* orow = o + (fuser_i64)row * p.o_ss;
        const float inv = fuser_attn_inv(l_r[hr], p.nan_zero);  // one reciprocal per row, not a division per output
#pragma unroll
        for (int n = 0; n < NO; ++n) {
            const int col = n * 8 + 2 * t;
            if (col < p.Dv) {
                *reinterpret_cast<fuser_u32*>(orow + col) = fuser_pack2<BF16>(oacc[n][2 * hr] * inv,
                                                                             oacc[n][2 * hr + 1] * inv);
            }
        }
    }
}

// flash_mma_pp (head dims up to 64, 64-key tiles): the same algorithm software-pipelined across tiles.
// Iteration kt issues tile kt+1's Q·Kᵀ mmas first and only then runs tile kt's softmax (special-function
// unit, shuffles) and P·V, so the tensor cores work while the softmax does: the two phases of one warp
// overlap instead of alternating. K and V tiles stream two stages deep: the loads of K(kt+2) and V(kt+1)
// are issued at the top of iteration kt and consumed one iteration later.
template <int BF16, int SLOT>
FUSER_INLINE void fuser_attn_pp_step(const fuser_attn_params& p, float (&cur)[8][4], float (&nxt)[8][4],
                                     float (&oacc)[8][4], float (&m_r)[2], float (&l_r)[2],
                                     const fuser_u32 (&qf)[4][4], int kt, int ntiles, fuser_u32 s_k, fuser_u32 s_v,
                                     fuser_u32 k_off, fuser_u32 v_off, int kx, int vx, const unsigned short* k,
                                     const unsigned short* v, bool dok, bool vok, int b, int h, int q0, int rbase,
                                     int t) {
    enum { HD = 64, BC = 64, CH = 8, TILE = BC * HD * 2 };
    fuser_cp_wait<0>();   // V(kt) and K(kt+1), issued one iteration ago
    __syncthreads();
    if (kt + 2 < ntiles)
        fuser_attn_tile<HD, BC>(s_k + (kt & 1) * TILE, k + (fuser_i64)(kt + 2) * BC * p.k_ss, k, p.k_ss,
                                p.Skv - (kt + 2) * BC, dok);
    if (kt + 1 < ntiles)
        fuser_attn_tile<HD, BC>(s_v + ((kt + 1) & 1) * TILE, v + (fuser_i64)(kt + 1) * BC * p.v_ss, v, p.v_ss,
                                p.Skv - (kt + 1) * BC, vok);
    fuser_cp_commit();
    if (kt + 1 < ntiles) fuser_attn_qk_mma<BF16, HD, BC, CH>(nxt, qf, s_k + ((kt + 1) & 1) * TILE + k_off, kx);
    const int k0 = kt * BC;
    const bool full = p.nterms == 0 && k0 + BC <= p.Skv && (!p.causal || k0 + BC - 1 <= q0);
    fuser_attn_online<8, 8, 0>(p, cur, oacc, m_r, l_r, full, b, h, rbase, k0, t);
    fuser_attn_pv_mma<BF16, HD, BC, CH>(cur, oacc, s_v + (kt & 1) * TILE + v_off, vx);
}

template <int BF16>
FUSER_INLINE void fuser_attn_mma_pp(const fuser_attn_params& p) {
    enum { HD = 64, BC = 64, BR = 64, CH = 8, TILE = BC * HD * 2 };
    FUSER_ATTN_SMEM(fuser_attn_smem);
    unsigned short* sm = reinterpret_cast<unsigned short*>(fuser_attn_smem);
    const fuser_u32 s_q = fuser_smem_u32(sm);
    const fuser_u32 s_k = s_q + BR * HD * 2;
    const fuser_u32 s_v = s_k + 2 * TILE;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * BR;
    const int hk = h / (p.H / p.Hkv);
    const unsigned short* q = (const unsigned short*)p.q + (fuser_i64)b * p.q_sb + (fuser_i64)h * p.q_sh;
    const unsigned short* k = (const unsigned short*)p.k + (fuser_i64)b * p.k_sb + (fuser_i64)hk * p.k_sh;
    const unsigned short* v = (const unsigned short*)p.v + (fuser_i64)b * p.v_sb + (fuser_i64)hk * p.v_sh;
    unsigned short* o = (unsigned short*)p.o + (fuser_i64)b * p.o_sb + (fuser_i64)h * p.o_sh;
    const bool dok = (threadIdx.x % CH) * 8 < p.D, vok = (threadIdx.x % CH) * 8 < p.Dv;
    int ntiles = (p.Skv + BC - 1) / BC;
    if (p.causal) {
        const int last = (q0 + BR < p.Sq ? q0 + BR : p.Sq) - 1;
        const int lim = last / BC + 1;
        ntiles = ntiles < lim ? ntiles : lim;
    }
    // prologue: {Q, K0}, then {V0, K1}; S(0) before the loop
    fuser_attn_tile<HD, BR>(s_q, q + (fuser_i64)q0 * p.q_ss, q, p.q_ss, p.Sq - q0, dok);
    if (ntiles > 0) fuser_attn_tile<HD, BC>(s_k, k, k, p.k_ss, p.Skv, dok);
    fuser_cp_commit();
    if (ntiles > 0) fuser_attn_tile<HD, BC>(s_v, v, v, p.v_ss, p.Skv, vok);
    if (ntiles > 1) fuser_attn_tile<HD, BC>(s_k + TILE, k + (fuser_i64)BC * p.k_ss, k, p.k_ss, p.Skv - BC, dok);
    fuser_cp_commit();
    fuser_cp_wait<1>();
    __syncthreads();
    const int l7 = lane & 7;
    const fuser_u32 q_off = s_q + (warp * 16 + (lane & 15)) * CH * 16;
    const int qx = (lane >> 4) ^ l7;
    const fuser_u32 k_off = (l7 + ((lane >> 4) << 3)) * CH * 16;
    const int kx = ((lane >> 3) & 1) ^ l7;
    const fuser_u32 v_off = (l7 + (((lane >> 3) & 1) << 3)) * CH * 16;
    const int vx = (lane >> 4) ^ l7;
    fuser_u32 qf[4][4];
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) fuser_ldsm_x4(qf[ks], q_off + (((2 * ks) ^ qx) << 4));
    float oacc[8][4], sa[8][4], sb[8][4];
#pragma unroll
    for (int n = 0; n < 8; ++n) oacc[n][0] = oacc[n][1] = oacc[n][2] = oacc[n][3] = 0.0f;
    float m_r[2] = {FUSER_NEG_INF, FUSER_NEG_INF}, l_r[2] = {0.0f, 0.0f};
    const int rbase = q0 + warp * 16 + g;
    if (ntiles > 0) fuser_attn_qk_mma<BF16, HD, BC, CH>(sa, qf, s_k + k_off, kx);
    for (int kt = 0; kt < ntiles; kt += 2) {  // unrolled by two: the score buffers swap roles
        fuser_attn_pp_step<BF16, 0>(p, sa, sb, oacc, m_r, l_r, qf, kt, ntiles, s_k, s_v, k_off, v_off, kx, vx, k, v,
                                    dok, vok, b, h, q0, rbase, t);
        if (kt + 1 < ntiles)
            fuser_attn_pp_step<BF16, 1>(p, sb, sa, oacc, m_r, l_r, qf, kt + 1, ntiles, s_k, s_v, k_off, v_off, kx, vx,
                                        k, v, dok, vok, b, h, q0, rbase, t);
    }
    fuser_cp_wait<0>();
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
        const int row = rbase + 8 * hr;
        if (row >= p.Sq) continue;
        unsigned short* orow = o + (fuser_i64)row * p.o_ss;
        const float inv = fuser_attn_inv(l_r[hr], p.nan_zero);  // one reciprocal per row, not a division per output
#pragma unroll
        for (int n = 0; n < 8; ++n) {
            const int col = n * 8 + 2 * t;
            if (col < p.Dv) {
                *reinterpret_cast<fuser_u32*>(orow + col) = fuser_pack2<BF16>(oacc[n][2 * hr] * inv,
                                                                             oacc[n][2 * hr + 1] * inv);
            }
        }
    }
}
#endif

// ============================== gemm_softmax: the seed report's three launches ==============================
// W[bh][i][j] = score(i, j) in fp32 (64x64 tiles, the SIMT micro-kernel of flash_simt).
template <typename T>
FUSER_INLINE void fuser_attn_scores(const fuser_attn_params& p) {
    enum { BM = 64, BN = 64, BK = 16, NT = 128, LDA = BK + 4 };
    __shared__ float As[BM][LDA];
    __shared__ float Bs[BN][LDA];
    typedef fuser_attn_io<T> io;
    const int tid = threadIdx.x, tx = tid & 7, ty = tid >> 3;
    const int bh = blockIdx.z, b = bh / p.H, h = bh - b * p.H, hk = h / (p.H / p.Hkv);
    const int i0 = blockIdx.y * BM, j0 = blockIdx.x * BN;
    const T* q = (const T*)p.q + (fuser_i64)b * p.q_sb + (fuser_i64)h * p.q_sh;
    const T* k = (const T*)p.k + (fuser_i64)b * p.k_sb + (fuser_i64)hk * p.k_sh;
    float s[4][8];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) s[i][j] = 0.0f;
    for (int d0 = 0; d0 < p.D; d0 += BK) {
        for (int e = tid; e < BM * BK; e += NT) {
            const int r = e / BK, d = e - r * BK;
            As[r][d] = (i0 + r < p.Sq && d0 + d < p.D) ? io::ld(q, (fuser_i64)(i0 + r) * p.q_ss + d0 + d) : 0.0f;
            Bs[r][d] = (j0 + r < p.Skv && d0 + d < p.D) ? io::ld(k, (fuser_i64)(j0 + r) * p.k_ss + d0 + d) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int d = 0; d < BK; d += 4) {
            float4 qa[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) qa[i] = *reinterpret_cast<const float4*>(&As[ty * 4 + i][d]);
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const float4 kb = *reinterpret_cast<const float4*>(&Bs[tx + 8 * j][d]);
#pragma unroll
                for (int i = 0; i < 4; ++i)
                    s[i][j] = fuser_dot4(qa[i], kb, s[i][j]);
            }
        }
        __syncthreads();
    }
    float* w = (float*)p.ws + (fuser_i64)bh * p.Sq * p.ws_ld;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int row = i0 + ty * 4 + i;
        if (row >= p.Sq) continue;
        fuser_i64 off[FUSER_ATTN_TERMS];
        fuser_attn_row(p, b, h, row, off);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const int col = j0 + tx + 8 * j;
            if (col < p.Skv) w[(fuser_i64)row * p.ws_ld + col] = fuser_attn_score(p, off, row, col, s[i][j]);
        }
    }
}

// One warp per row: max, exp, sum (shuffles), normalise in place; fully masked rows → NaN or 0.
FUSER_INLINE void fuser_attn_softmax_rows(const fuser_attn_params& p) {
    const int lane = threadIdx.x % FUSER_WARP_SIZE;
    const fuser_i64 row = (fuser_i64)blockIdx.x * (blockDim.x / FUSER_WARP_SIZE) + threadIdx.x / FUSER_WARP_SIZE;
    const fuser_i64 rows = (fuser_i64)p.B * p.H * p.Sq;
    if (row >= rows) return;
    float* w = (float*)p.ws + row * p.ws_ld;
    float mx = FUSER_NEG_INF;
    for (int j = lane; j < p.Skv; j += FUSER_WARP_SIZE) mx = fmaxf(mx, w[j]);
#pragma unroll
    for (int off = FUSER_WARP_SIZE / 2; off > 0; off >>= 1) mx = fmaxf(mx, fuser_shfl_xor(mx, off));
    const float mu = mx == FUSER_NEG_INF ? 0.0f : mx;
    float sum = 0.0f;
    for (int j = lane; j < p.Skv; j += FUSER_WARP_SIZE) {
        const float e = fuser_exp2((w[j] - mu) * FUSER_LOG2E);
        w[j] = e;
        sum += e;
    }
#pragma unroll
    for (int off = FUSER_WARP_SIZE / 2; off > 0; off >>= 1) sum += fuser_shfl_xor(sum, off);
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    const float dead = p.nan_zero ? 0.0f : FUSER_QNAN;
    for (int j = lane; j < p.Skv; j += FUSER_WARP_SIZE) w[j] = sum > 0.0f ? w[j] * inv : dead;
}

// O[bh][i][c] = sum_j P[bh][i][j] V[j][c] (64x64 output tiles).
template <typename T>
FUSER_INLINE void fuser_attn_pv(const fuser_attn_params& p) {
    enum { BM = 64, BN = 64, BK = 16, NT = 128 };
    __shared__ float Ps[BM][BK + 4];
    __shared__ float Vs[BK][BN + 4];
    typedef fuser_attn_io<T> io;
    const int tid = threadIdx.x, tx = tid & 7, ty = tid >> 3;
    const int bh = blockIdx.z, b = bh / p.H, h = bh - b * p.H, hk = h / (p.H / p.Hkv);
    const int i0 = blockIdx.y * BM, c0 = blockIdx.x * BN;
    const float* w = (const float*)p.ws + (fuser_i64)bh * p.Sq * p.ws_ld;
    const T* v = (const T*)p.v + (fuser_i64)b * p.v_sb + (fuser_i64)hk * p.v_sh;
    T* o = (T*)p.o + (fuser_i64)b * p.o_sb + (fuser_i64)h * p.o_sh;
    float acc[4][8];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int c = 0; c < 8; ++c) acc[i][c] = 0.0f;
    for (int j0 = 0; j0 < p.Skv; j0 += BK) {
        for (int e = tid; e < BM * BK; e += NT) {
            const int r = e / BK, j = e - r * BK;
            Ps[r][j] = (i0 + r < p.Sq && j0 + j < p.Skv) ? w[(fuser_i64)(i0 + r) * p.ws_ld + j0 + j] : 0.0f;
            const int jr = e / BN, c = e - jr * BN;
            Vs[jr][c] = (j0 + jr < p.Skv && c0 + c < p.Dv) ? io::ld(v, (fuser_i64)(j0 + jr) * p.v_ss + c0 + c) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int j = 0; j < BK; ++j) {
            float pv[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) pv[i] = Ps[ty * 4 + i][j];
            const float4 v0 = *reinterpret_cast<const float4*>(&Vs[j][tx * 8]);
            const float4 v1 = *reinterpret_cast<const float4*>(&Vs[j][tx * 8 + 4]);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                acc[i][0] = fmaf(pv[i], v0.x, acc[i][0]); acc[i][1] = fmaf(pv[i], v0.y, acc[i][1]);
                acc[i][2] = fmaf(pv[i], v0.z, acc[i][2]); acc[i][3] = fmaf(pv[i], v0.w, acc[i][3]);
                acc[i][4] = fmaf(pv[i], v1.x, acc[i][4]); acc[i][5] = fmaf(pv[i], v1.y, acc[i][5]);
                acc[i][6] = fmaf(pv[i], v1.z, acc[i][6]); acc[i][7] = fmaf(pv[i], v1.w, acc[i][7]);
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int row = i0 + ty * 4 + i;
        if (row >= p.Sq) continue;
#pragma unroll
        for (int c = 0; c < 8; ++c) {
            const int col = c0 + tx * 8 + c;
            if (col < p.Dv) io::st(o, (fuser_i64)row * p.o_ss + col, acc[i][c]);
        }
    }
}

"""

ENTRY_MACROS = r"""
// MINB: blocks per SM the registers must allow (what shared memory allows: 4, 2 and 3)
#define FUSER_ATTN_SIMT(NAME, T, DM, BR, NT, MINB)                                                       \
    FUSER_GLOBAL void __launch_bounds__(NT, MINB) NAME(const fuser_attn_params p) { fuser_attn_simt<T, DM, BR, NT>(p); }
#define FUSER_ATTN_SIMT_KV(NAME, T, NK, RM, NT, MINB)                                                    \
    FUSER_GLOBAL void __launch_bounds__(NT, MINB) NAME(const fuser_attn_params p) {                      \
        fuser_attn_simt_kv<T, NK, RM, NT>(p);                                                            \
    }
#define FUSER_ATTN_SIMT_ALL(SFX, T)                                                                      \
    FUSER_ATTN_SIMT(fuser_attn_simt64_##SFX, T, 64, 64, 128, 4)                                          \
    FUSER_ATTN_SIMT(fuser_attn_simt64r128_##SFX, T, 64, 128, 256, 2)                                     \
    FUSER_ATTN_SIMT(fuser_attn_simt128_##SFX, T, 128, 32, 128, 3)                                        \
    FUSER_ATTN_SIMT_KV(fuser_attn_simtkv64r128_##SFX, T, 1, 4, 256, 2)                                    \
    FUSER_ATTN_SIMT_KV(fuser_attn_simtkv128r128_##SFX, T, 2, 4, 256, 2)                                   \
    FUSER_ATTN_SIMT_KV(fuser_attn_simtkv64r64_##SFX, T, 1, 4, 128, 4)                                     \
    FUSER_ATTN_SIMT_KV(fuser_attn_simtkv128r64_##SFX, T, 2, 4, 128, 4)                                    \
    FUSER_ATTN_SIMT_KV(fuser_attn_simtkv64r32_##SFX, T, 1, 2, 128, 4)                                     \
    FUSER_ATTN_SIMT_KV(fuser_attn_simtkv128r32_##SFX, T, 2, 2, 128, 4)                                    \
    FUSER_GLOBAL void __launch_bounds__(128) fuser_attn_scores_##SFX(const fuser_attn_params p) {          \
        fuser_attn_scores<T>(p);                                                                         \
    }                                                                                                    \
    FUSER_GLOBAL void __launch_bounds__(128) fuser_attn_pv_##SFX(const fuser_attn_params p) { fuser_attn_pv<T>(p); }
// Tensor-core entries; on AMD they run the SIMT kernel of the same dtype and head-dim class (the runner
// launches flash_simt's geometry there).
#if defined(FUSER_CUDA)
#define FUSER_ATTN_MMA(NAME, BF16, T, HD, BC, CB, SDM, SBR)                                              \
    FUSER_GLOBAL void __launch_bounds__(128, HD == 64 && BC == 128 ? 3 : 1) NAME(const fuser_attn_params p) {     \
        fuser_attn_mma<BF16, HD, BC, CB>(p);                                                             \
    }
#define FUSER_ATTN_MMA_PP(NAME, BF16, T)                                                                 \
    FUSER_GLOBAL void __launch_bounds__(128, 3) NAME(const fuser_attn_params p) { fuser_attn_mma_pp<BF16>(p); }
#else
#define FUSER_ATTN_MMA(NAME, BF16, T, HD, BC, CB, SDM, SBR)                                              \
    FUSER_GLOBAL void __launch_bounds__(128) NAME(const fuser_attn_params p) { fuser_attn_simt<T, SDM, SBR, 128>(p); }
#define FUSER_ATTN_MMA_PP(NAME, BF16, T)                                                                 \
    FUSER_GLOBAL void __launch_bounds__(128) NAME(const fuser_attn_params p) { fuser_attn_simt<T, 64, 64, 128>(p); }
#endif
#define FUSER_ATTN_MMA_ALL(SFX, BF16, T)                                                                 \
    FUSER_ATTN_MMA(fuser_attn_mma64_##SFX, BF16, T, 64, 64, 0, 64, 64)                                   \
    FUSER_ATTN_MMA(fuser_attn_mma64n128_##SFX, BF16, T, 64, 128, 0, 64, 64)                              \
    FUSER_ATTN_MMA(fuser_attn_mma64n128cb_##SFX, BF16, T, 64, 128, 1, 64, 64)                            \
    FUSER_ATTN_MMA_PP(fuser_attn_mma64pp_##SFX, BF16, T)                                                 \
    FUSER_ATTN_MMA(fuser_attn_mma128_##SFX, BF16, T, 128, 64, 0, 128, 32)                                \
    FUSER_ATTN_MMA(fuser_attn_mma128cb_##SFX, BF16, T, 128, 64, 1, 128, 32)
FUSER_GLOBAL void __launch_bounds__(256) fuser_attn_softmax(const fuser_attn_params p) { fuser_attn_softmax_rows(p); }
"""

_DTYPE_ENTRIES = {"f32": "FUSER_ATTN_SIMT_ALL(f32, float)\n",
                  "f16": "FUSER_ATTN_SIMT_ALL(f16, fuser_half)\nFUSER_ATTN_MMA_ALL(f16, 0, fuser_half)\n",
                  "bf16": "FUSER_ATTN_SIMT_ALL(bf16, fuser_bf16)\nFUSER_ATTN_MMA_ALL(bf16, 1, fuser_bf16)\n"}


def source_for(sfx: str) -> str:
    """One dtype's entry points only: what a runner compiles (a third of the compile time of SOURCE)."""
    return COMMON + ENTRY_MACROS + _DTYPE_ENTRIES[sfx]


# the whole family, every dtype (compile coverage, `onnx-fuse kernels build`)
SOURCE = COMMON + ENTRY_MACROS + "".join(_DTYPE_ENTRIES.values())
# flash_wgmma's entries: stubs except in an sm_90a compile (runners build them as their own module, wgmma_source_for)
SOURCE += _wg.SOURCE + _wg.ENTRY_MACROS + _wg.entries_source("f16") + _wg.entries_source("bf16")
# flash_tf32's entries (runners build them as their own module, _tf.source_for)
SOURCE += _tf.SOURCE + _tf.ENTRY_MACROS + _tf.ENTRIES


def wgmma_source_for(sfx: str) -> str:
    """flash_wgmma's module for one dtype (compiled for sm_90a)."""
    return _wg.source_for(COMMON, sfx)

SFX = ("f32", "f16", "bf16")
VARIANTS: list[str] = (
    [f"fuser_attn_{k}_{s}" for s in SFX for k in ("simt64", "simt64r128", "simt128", "scores", "pv")]
    + [f"fuser_attn_simtkv{n}r{r}_{s}" for s in SFX for n in (64, 128) for r in (128, 64, 32)]
    + ["fuser_attn_softmax"]
    + [f"fuser_attn_mma{v}_{s}" for s in ("f16", "bf16") for v in ("64", "64n128", "64n128cb", "64pp", "128",
                                                                    "128cb")])
VARIANTS += _wg.VARIANTS + _tf.VARIANTS

# flash_mma_n64 / _n128 pin the tensor-core kernel's keys per tile (n128: head dims up to 64);
# flash_simt_r128 gives the CUDA-core kernel 128 query rows and 256 threads per block (head dims up to 64)
# flash_simt_kv (_r64 / _r32 pin its query rows per block): all keys resident (head dims up to 64, up to 128 keys)
# flash_mma_pp: the software-pipelined tensor-core kernel (head dims up to 64)
TACTICS = ("auto", "flash_mma", "flash_mma_n64", "flash_mma_n128", "flash_mma_pp", "flash_simt", "flash_simt_r128",
           "flash_simt_kv", "flash_simt_kv_r128", "flash_simt_kv_r64", "flash_simt_kv_r32", "gemm_softmax")
# flash_wgmma: Hopper's warpgroup MMA (sm_90 only); flash_wgmma_<variant> pins a variant of attention_wgmma.WG_VARIANTS
TACTICS += ("flash_wgmma", *(f"flash_wgmma_{v}" for v in _wg.WG_VARIANTS))
# flash_tf32: fp32 on TF32 tensor cores (--allow-tf32); _m1 / _m2 pin 16 or 32 query rows per warp, _trunc truncates K/V
TACTICS += _tf.TACTICS
MAX_TERMS = 2
BC = 64
# dtype codes of the term tensors (and the kernels' element types)
DTYPE_CODES = {"float32": 0, "float16": 1, "bfloat16": 2}


# -- host-side parameter block (mirrors fuser_attn_params) ------------------------------------------------

class _Term(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_uint64), ("sb", ctypes.c_int64), ("sh", ctypes.c_int64), ("si", ctypes.c_int64),
                ("sj", ctypes.c_int64), ("kind", ctypes.c_int32), ("dtype", ctypes.c_int32),
                ("mod_b", ctypes.c_int32), ("fill", ctypes.c_float)]


class _Params(ctypes.Structure):
    _fields_ = ([(n, ctypes.c_uint64) for n in ("q", "k", "v", "o", "ws")]
                + [(f"{t}_{s}", ctypes.c_int64) for t in "qkvo" for s in ("sb", "sh", "ss")]
                + [(n, ctypes.c_int32) for n in ("B", "H", "Hkv", "Sq", "Skv", "D", "Dv", "causal", "nan_zero",
                                                  "nterms")]
                + [("scale", ctypes.c_float), ("ws_ld", ctypes.c_int32), ("term", _Term * MAX_TERMS)])


class StructArgs:
    """A kernel parameter block holding one struct passed by value (what cuLaunchKernel and
    hipModuleLaunchKernel take as kernelParams: an array of pointers to each parameter)."""

    def __init__(self) -> None:
        self.params = _Params()
        self._ptrs = (ctypes.c_void_p * 1)(ctypes.addressof(self.params))
        self.address = ctypes.addressof(self._ptrs)


# -- numpy reference -----------------------------------------------------------------------------------------

def _heads(x: np.ndarray, heads: int) -> np.ndarray:
    """[B, Hkv, S, D] → [B, heads, S, D]: kv head g serves query heads g*r .. g*r+r-1 (r = heads / Hkv)."""
    hkv = x.shape[1]
    if hkv == heads or hkv == 1:
        return x
    if heads % hkv:
        raise ValueError(f"{heads} query heads cannot share {hkv} kv heads")
    return np.repeat(x, heads // hkv, axis=1)


def reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None,
              bias: np.ndarray | None = None, scale: float | None = None, causal: bool = False,
              fill: float = float("-inf"), terms: Sequence[tuple] | None = None, nan_zero: bool = False,
              softmax_dtype: np.dtype | None = None) -> np.ndarray:
    """numpy reference in float64, result in q's dtype.

    q [B, H, Sq, D], k [B, Hkv, Skv, D], v [B, Hkv, Skv, Dv] (Hkv divides H; batch 1 broadcasts).
    ``scale`` defaults to 1/sqrt(D). ``causal``: query i attends keys j <= i (top-left aligned).
    Score terms apply in order: ``terms`` is a sequence of ``("bias", t)`` (S += t, broadcast),
    ``("mask", m, fill)`` (S = where(m, S, fill); True keeps) and ``("winbias", w)`` (w [1, nW, ·, ·, ·]:
    batch b adds w[0, b % nW]); without ``terms``, ``bias`` then ``mask`` (with ``fill``) apply.
    ``nan_zero``: NaN probabilities (fully masked rows) become 0. ``softmax_dtype`` only documents the
    model's choice: the reference always computes the softmax in float64.
    """
    del softmax_dtype
    q = np.asarray(q)
    if q.ndim != 4 or np.ndim(k) != 4 or np.ndim(v) != 4:
        raise ValueError(f"attention takes [B, H, S, D] tensors, got {np.shape(q)}, {np.shape(k)}, {np.shape(v)}")
    heads = q.shape[1]
    q64 = q.astype(np.float64)
    k64 = _heads(np.asarray(k).astype(np.float64), heads)
    v64 = _heads(np.asarray(v).astype(np.float64), heads)
    if scale is None:
        scale = 1.0 / np.sqrt(q.shape[-1])
    s = np.matmul(q64 * float(scale), np.swapaxes(k64, -1, -2))
    if causal:
        sq, skv = s.shape[-2:]
        keep = np.arange(skv)[None, :] <= np.arange(sq)[:, None]
        s = np.where(keep, s, -np.inf)
    if terms is None:
        terms = []
        if bias is not None:
            terms.append(("bias", bias))
        if mask is not None:
            terms.append(("mask", mask, fill))
    for t in terms:
        kind = t[0]
        if kind == "bias":
            s = s + np.asarray(t[1]).astype(np.float64)
        elif kind == "mask":
            s = np.where(np.asarray(t[1]).astype(bool), s, float(np.asarray(t[2]).reshape(-1)[0]))
        elif kind == "winbias":
            w = np.asarray(t[1]).astype(np.float64)
            shape = s.shape
            s = (s.reshape((-1, w.shape[1]) + shape[1:]) + w).reshape(shape)
        else:
            raise ValueError(f"unknown score term {kind!r}")
    with np.errstate(invalid="ignore", over="ignore"):
        m = np.max(s, axis=-1, keepdims=True)
        e = np.exp(s - m)
        p = e / np.sum(e, axis=-1, keepdims=True)
    if nan_zero:
        p = np.where(np.isnan(p), 0.0, p)
    return np.matmul(p, v64).astype(q.dtype)


def reference_node(variant, attrs: dict, args: list[np.ndarray | None]) -> np.ndarray:
    """The CPU executor of a ``FusedAttention<Variant>`` node: its inputs in the node's order (Q, K, V, then
    per term ``bias`` | ``mask, fill`` | ``winbias``, then ``scale`` before opset 15) and attributes."""
    q, k, v = args[0], args[1], args[2]
    terms, i = [], 3
    for kind in variant.terms:
        if kind == "mask":
            terms.append(("mask", args[i], args[i + 1]))
            i += 2
        else:
            terms.append((kind, args[i]))
            i += 1
    scale = float(attrs["scale"]) if "scale" in attrs else float(np.asarray(args[i]).reshape(-1)[0])
    return reference(q, k, v, scale=scale, causal=bool(variant.causal), terms=terms, nan_zero=variant.nan_zero)


# -- launch rules ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TermSpec:
    """One score term as the kernel sees it: kind (bias | mask | winbias), element dtype, the tensor's shape
    (broadcast into the scores [B, H, Sq, Skv]; winbias: [1, nW, ·, ·, ·]) and a mask's fill value."""

    kind: str
    dtype: str
    shape: tuple[int, ...]
    fill: float = float("-inf")


def term_strides(spec: TermSpec, scores: tuple[int, int, int, int]) -> tuple[tuple[int, int, int, int], int]:
    """Element strides (b, h, i, j) of a contiguous term tensor broadcast into ``scores``, and the batch
    modulus (winbias: nW)."""
    shape = tuple(int(d) for d in spec.shape)
    if spec.kind == "winbias":
        if len(shape) != 5 or shape[0] != 1:
            raise ValueError(f"a window term is [1, nW, H|1, Sq|1, Skv|1], got {shape}")
        st = [int(np.prod(shape[i + 1:], dtype=np.int64)) for i in range(5)]  # contiguous strides
        sb, sh, si, sj = (st[i] if shape[i] != 1 else 0 for i in range(1, 5))
        if scores[0] % shape[1]:
            raise ValueError(f"batch {scores[0]} is not a multiple of the {shape[1]} windows")
        return (sb, sh, si, sj), shape[1]
    if len(shape) > 4:
        raise ValueError(f"a score term has at most 4 dims, got {shape}")
    shape = (1,) * (4 - len(shape)) + shape
    for d, s in zip(shape, scores, strict=True):
        if d not in (1, s):
            raise ValueError(f"term of shape {spec.shape} does not broadcast into scores {scores}")
    st = [int(np.prod(shape[i + 1:], dtype=np.int64)) for i in range(4)]
    return tuple(0 if shape[i] == 1 else st[i] for i in range(4)), 0


def plan(backend_name: str, dtype: np.dtype, d: int, dv: int, sq: int, skv: int, aligned: bool,
         tactic: str = "auto", colbias: bool = False, bh: int = 1, num_sms: int = 132,
         arch: str = "", nterms: int = 0, causal: bool = False) -> dict:
    """The launch rule: tactic, entry (simt64/simt64r128/simtkv*/simt128, mma64/mma64n128/mma128), threads, rows
    per block, shared memory. ``bh`` (batch x heads) and ``num_sms`` size the grid of flash_simt_kv.
    Measured on H200 (BENCHMARKS.md): see the defaults below."""
    dt = np.dtype(dtype) if not isinstance(dtype, str) else dtype
    half = str(dt) in ("float16", "bfloat16")
    hd = max(d, dv)
    if tactic not in TACTICS:
        raise ValueError(f"unknown attention tactic {tactic!r}; known: {', '.join(TACTICS)}")
    if tactic.startswith("flash_tf32"):  # where it does not apply (not NVIDIA, not fp32, odd head dims): the default
        if _tf.supported(backend_name, str(dt) == "float32", d, dv, aligned):
            return _tf.plan(d, dv, colbias, tactic[len("flash_tf32_"):] if tactic.startswith("flash_tf32_") else "")
        tactic = "auto"
    mma_ok = (backend_name == "cuda" and half and hd <= 128 and d % 8 == 0 and dv % 8 == 0 and aligned)
    # flash_wgmma (``arch``: the device's, ``nterms``: score terms): where it does not apply, flash_mma runs
    if tactic.startswith("flash_wgmma") or (tactic == "auto" and WGMMA_AUTO and min(sq, skv) >= WGMMA_AUTO_MIN_LEN):
        if _wg.supported(backend_name, arch, half, d, dv, aligned, nterms, skv):
            return _wg.plan(tactic[len("flash_wgmma_"):] if tactic.startswith("flash_wgmma_") else "", causal,
                            sq, bh, num_sms, skv)
        if tactic != "auto":
            tactic = "flash_mma" if mma_ok else "auto"
    if tactic == "auto":  # head dims past 128 (rare) take the GEMM tactic, which tiles any D
        tactic = "flash_mma" if mma_ok else "flash_simt" if hd <= 128 else "gemm_softmax"
        if tactic == "flash_simt" and SIMT_SHORT_AUTO and hd <= 64 and skv <= 128:
            # up to 128 keys (H200 run 6): small grids take flash_simt_kv in 32-row blocks, large ones
            # flash_simt in 128-row blocks
            small = bh * ceil_div(sq, 64) < SIMT_KV_R64_BLOCKS_PER_SM * num_sms
            tactic = "flash_simt_kv_r32" if small else "flash_simt_r128"
    variant, kv_rows = "", 0
    if tactic.startswith("flash_simt_kv"):
        tactic, variant, kv_rows = "flash_simt", "kv", int(tactic[len("flash_simt_kv_r"):] or 0)
        if hd > 64 or skv > 128:
            raise ValueError(f"flash_simt_kv takes head dims up to 64 and up to 128 keys, not {hd} and {skv}")
        if kv_rows not in (0, 32, 64, 128):
            raise ValueError(f"flash_simt_kv tiles 32, 64 or 128 query rows, not {kv_rows}")
    if tactic in ("flash_mma_n64", "flash_mma_n128", "flash_mma_pp", "flash_simt_r128"):
        tactic, variant = tactic.rsplit("_", 1)
        if hd > 64 and variant in ("n128", "r128", "pp"):
            raise ValueError(f"{tactic}_{variant} takes head dims up to 64")
    if tactic == "flash_mma" and not mma_ok:
        raise ValueError("flash_mma needs fp16/bf16 on CUDA, D and Dv multiples of 8 up to 128, 16-byte rows")
    if tactic == "gemm_softmax":
        return {"tactic": tactic, "threads": 128, "rows": 64, "smem": 0}
    if hd > 128:
        raise ValueError(f"head dims up to 128 run on our kernels, not {hd}")
    if tactic == "flash_mma":
        hdp = 128 if hd > 64 else 64
        if hdp == 64 and not variant:
            variant = MMA_D64
        bc = 128 if variant == "n128" and hdp == 64 else 64
        smem = (64 * hdp + 4 * bc * hdp) * 2
        fam = "mma128" if hdp == 128 else {"n128": "mma64n128", "pp": "mma64pp"}.get(variant, "mma64")
        if colbias and fam in ("mma128", "mma64n128"):  # the kernel built for one key-padding-like bias
            fam += "cb"
        return {"tactic": tactic, "family": fam, "threads": 128, "rows": 64, "smem": smem}
    if variant == "kv":  # a [rows][68] float tile (Q, then P) and two [64][68] (K, then V)
        if not kv_rows:  # the largest row tile that the queries fill (3/4 or more) and whose grid still gives
            # every SM enough blocks; else 32 rows
            kv_rows = next((r for r, per_sm in SIMT_KV_ROWS if 4 * sq >= 3 * r * ceil_div(sq, r)
                            and bh * ceil_div(sq, r) >= per_sm * num_sms), 32)
        return {"tactic": "flash_simt", "family": f"simtkv{64 if skv <= 64 else 128}r{kv_rows}",
                "threads": 256 if kv_rows == 128 else 128, "rows": kv_rows, "smem": (kv_rows + 2 * 64) * 68 * 4}
    if hd > 64:
        dm, br, nt = 128, 32, 128
    elif variant == "r128" or (not variant and SIMT_ROWS_D64 == 128):
        dm, br, nt = 64, 128, 256
    else:
        dm, br, nt = 64, 64, 128
    smem = (br * (dm + 4) + BC * (dm + 4) + br * (BC + 4)) * 4
    fam = f"simt{dm}" + ("r128" if br == 128 else "")
    return {"tactic": "flash_simt", "family": fam, "threads": nt, "rows": br, "smem": smem}


# launch-rule defaults, from the H200 runs in BENCHMARKS.md
MMA_D64 = "n128"       # the tensor-core kernel at head dims <= 64: n64 | n128 (keys per tile) | pp (pipelined);
                       # H200 run 4: n128 35.2 us / 0.217 ms, n64 36.5 / 0.236, pp 37.2 / 0.236 (S=512 / S=4096)
SIMT_ROWS_D64 = 64     # query rows per block of the CUDA-core kernel at head dims <= 64
WGMMA_AUTO = True      # auto: flash_wgmma where it applies (sm_90, fp16/bf16, head dims <= 64, no terms) and
WGMMA_AUTO_MIN_LEN = 256  # query and key lengths reach this (measured there: H200, S = 512 and 4096, 1.3-1.6x
                          # faster than flash_mma; shorter sequences are not measured, so they keep flash_mma)
SIMT_SHORT_AUTO = True  # auto at head dims <= 64 and up to 128 keys: flash_simt_kv_r32 on small grids, else
                        # flash_simt_r128; H200 run 6, seed B256 S128: r128 43.2 us, simt64 44.5, kv_r64 45.3,
                        # kv_r32 51.2; B8 H12 S128: kv_r32 24.4, kv_r64 27.9, simt64 28.8, r128 30.9
SIMT_KV_R64_BLOCKS_PER_SM = 3  # "small": fewer 64-row blocks than this per SM
SIMT_KV_ROWS = ((128, 1.5), (64, 3.0))  # flash_simt_kv unpinned: (rows per block, from how many blocks per SM on)


class Runner:
    """Attention on device buffers, built once per node and shape.

    ``Runner(backend, q_shape, k_shape, v_shape, dtype, scale=None, causal=False, terms=(), nan_zero=False,
    tactic="auto", consts=None)``: shapes [B, H, Sq, D] / [B, Hkv, Skv, D] / [B, Hkv, Skv, Dv] (contiguous),
    ``terms`` a list of :class:`TermSpec` in the order they apply; ``consts`` optionally gives a term's values
    (uploaded once; that term then takes no pointer at call time). ``runner(ptrs, out_ptr, stream=0)`` with
    ``ptrs`` = [q, k, v, then the non-constant terms' pointers in order] launches asynchronously.
    ``output_shape`` is [B, H, Sq, Dv].

    ``strides`` (optional): ``{"q" | "k" | "v" | "o": (batch, head, row)}`` element strides of a tensor that is not
    contiguous in that layout — the runtime reads Q/K/V straight out of a [B, S, H·D] projection (or a packed
    [B, S, ΣN] one) and writes O as [B, S, H·Dv], instead of running the Transposes around the node. Elements
    inside a row stay contiguous, and every stride must keep rows 16-byte aligned (what the vector and async loads
    need); a tensor's batch stride 0 still means one batch shared by all (K/V of batch 1)."""

    def __init__(self, backend: DeviceBackend, q_shape: Sequence[int], k_shape: Sequence[int],
                 v_shape: Sequence[int], dtype, scale: float | None = None, causal: bool = False,
                 terms: Sequence[TermSpec] = (), nan_zero: bool = False, tactic: str = "auto",
                 consts: Sequence[np.ndarray | None] | None = None, aligned: bool = True,
                 strides: dict[str, tuple[int, int, int]] | None = None) -> None:
        if not backend.is_device:
            raise TypeError("Runner needs a device backend; use reference() for the cpu backend")
        if len(terms) > MAX_TERMS:
            raise ValueError(f"the kernels take up to {MAX_TERMS} score terms, got {len(terms)}")
        self.backend = backend
        self.dtype = np.dtype(dtype) if str(dtype) != "bfloat16" else "bfloat16"
        b, h, sq, d = (int(x) for x in q_shape)
        bk, hkv, skv, dk = (int(x) for x in k_shape)
        bv, hv, skv2, dv = (int(x) for x in v_shape)
        if dk != d or skv2 != skv or hv != hkv or bk not in (1, b) or bv not in (1, b) or hkv == 0 or h % hkv:
            raise ValueError(f"attention shapes do not fit: Q {tuple(q_shape)}, K {tuple(k_shape)}, V {tuple(v_shape)}")
        self.output_shape = (b, h, sq, dv)
        self.numel = b * h * sq * dv
        sfx = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}[str(self.dtype)]
        self.item = 4 if sfx == "f32" else 2
        colbias = len(terms) == 1 and terms[0].kind in ("bias", "winbias") and \
            term_strides(terms[0], (b, h, sq, skv))[0][2] == 0
        self.plan = plan(backend.name, self.dtype, d, dv, sq, skv, aligned, tactic, colbias, b * h, backend.num_sms,
                         arch=backend.arch, nterms=len(terms), causal=bool(causal))
        pr = StructArgs()
        self.args = pr
        p = pr.params
        p.B, p.H, p.Hkv, p.Sq, p.Skv, p.D, p.Dv = b, h, hkv, sq, skv, d, dv
        p.q_sb, p.q_sh, p.q_ss = h * sq * d, sq * d, d
        p.k_sb, p.k_sh, p.k_ss = (hkv * skv * d if bk > 1 else 0), skv * d, d
        p.v_sb, p.v_sh, p.v_ss = (hkv * skv * dv if bv > 1 else 0), skv * dv, dv
        p.o_sb, p.o_sh, p.o_ss = h * sq * dv, sq * dv, dv
        self.strides = dict(strides or {})
        for name, st in self.strides.items():
            if name not in ("q", "k", "v", "o") or len(st) != 3:
                raise ValueError(f"strides: {name!r} must be one of q, k, v, o with (batch, head, row) strides")
            if any(int(x) % (16 // self.item) for x in st):
                raise ValueError(f"strides of {name}: {tuple(st)} elements leave rows not 16-byte aligned")
            setattr(p, f"{name}_sb", int(st[0]) if name in "qo" or getattr(p, f"{name}_sb") else 0)
            setattr(p, f"{name}_sh", int(st[1]))
            setattr(p, f"{name}_ss", int(st[2]))
        p.scale = float(1.0 / np.sqrt(d) if scale is None else scale)
        p.causal, p.nan_zero, p.nterms = int(bool(causal)), int(bool(nan_zero)), len(terms)
        self._specs, self._consts = list(terms), list(consts or [None] * len(terms))
        self._term_slots: list[int] = []  # indices of terms whose pointer comes at call time
        self._bufs: list[DeviceBuffer] = []
        consts = list(consts or [None] * len(terms))
        for i, spec in enumerate(terms):
            (sb, sh, si, sj), mod = term_strides(spec, (b, h, sq, skv))
            tm = p.term[i]
            tm.sb, tm.sh, tm.si, tm.sj, tm.mod_b = sb, sh, si, sj, mod
            tm.kind = 2 if spec.kind == "mask" else 1
            tm.dtype = 3 if spec.kind == "mask" else DTYPE_CODES[str(spec.dtype)]
            tm.fill = float(spec.fill)
            if consts[i] is not None:
                arr = np.ascontiguousarray(consts[i])
                arr = arr.astype(np.uint8) if spec.kind == "mask" else arr
                buf = backend.upload(arr)
                self._bufs.append(buf)
                tm.ptr = buf.ptr
            else:
                self._term_slots.append(i)
        kind = self.plan["tactic"]
        src = source_for(sfx)
        if kind == "gemm_softmax":
            self.fn_scores = backend.function(f"{NAME}_{sfx}", src, f"fuser_attn_scores_{sfx}")
            self.fn_softmax = backend.function(f"{NAME}_{sfx}", src, "fuser_attn_softmax")
            self.fn_pv = backend.function(f"{NAME}_{sfx}", src, f"fuser_attn_pv_{sfx}")
            p.ws_ld = skv
            self._ws = DeviceBuffer(backend, max(4, b * h * sq * skv * 4))
            p.ws = self._ws.ptr
            self.grid_scores = (ceil_div(skv, 64), ceil_div(sq, 64), b * h)
            warps = 256 // backend.warp_size
            self.grid_softmax = (ceil_div(b * h * sq, warps), 1, 1)
            self.grid_pv = (ceil_div(dv, 64), ceil_div(sq, 64), b * h)
        else:
            fam = self.plan["family"]
            if kind == "flash_mma" and sfx == "f32":
                raise ValueError("flash_mma takes fp16/bf16")
            if kind == "flash_wgmma":  # its own module, compiled for the arch-specific target (sm_90a)
                self.fn = backend.function(f"{NAME}_wgmma_{sfx}", wgmma_source_for(sfx), f"fuser_attn_{fam}_{sfx}",
                                           arch=toolchain.arch_specific(backend.name, backend.arch))
            elif kind == "flash_tf32":  # its own module: the common code and the TF32 kernels only
                self.fn = backend.function(f"{NAME}_tf32", _tf.source_for(COMMON), f"fuser_attn_{fam}_{sfx}")
            else:
                self.fn = backend.function(f"{NAME}_{sfx}", src, f"fuser_attn_{fam}_{sfx}")
            backend.allow_dynamic_shared(self.fn, self.plan["smem"])
            self.grid = (ceil_div(sq, self.plan["rows"]), h, b)
            if self.grid[1] > 65535 or self.grid[2] > 65535:
                raise ValueError(f"grid {self.grid} exceeds 65535 heads or batches")

    @property
    def tactic(self) -> str:
        return self.plan["tactic"]

    def _simt_fallback(self) -> Runner:
        if getattr(self, "_fallback", None) is None:
            p = self.args.params
            self._fallback = Runner(self.backend, (p.B, p.H, p.Sq, p.D), (1 if p.k_sb == 0 else p.B, p.Hkv, p.Skv, p.D),
                                    (1 if p.v_sb == 0 else p.B, p.Hkv, p.Skv, p.Dv), self.dtype, p.scale,
                                    bool(p.causal), self._specs, bool(p.nan_zero), "flash_simt", self._consts,
                                    strides=self.strides)
        return self._fallback

    def __call__(self, inputs: Sequence[int], output: int, stream: int = 0) -> None:
        if self.numel == 0:
            return
        p = self.args.params
        p.q, p.k, p.v = (as_ptr(x) for x in inputs[:3])
        p.o = as_ptr(output)
        for slot, ptr in zip(self._term_slots, inputs[3:], strict=True):
            p.term[slot].ptr = as_ptr(ptr)
        be = self.backend
        if self.plan["tactic"] in ("flash_mma", "flash_wgmma", "flash_tf32") and (p.q | p.k | p.v | p.o) & 15:
            self._simt_fallback()(inputs, output, stream)  # cp.async moves 16-byte chunks
            return
        if self.plan["tactic"] == "gemm_softmax":
            be.launch(self.fn_scores, self.grid_scores, (128, 1, 1), self.args, 0, stream)
            be.launch(self.fn_softmax, self.grid_softmax, (256, 1, 1), self.args, 0, stream)
            be.launch(self.fn_pv, self.grid_pv, (128, 1, 1), self.args, 0, stream)
            return
        grid = self.plan.get("grid", self.grid)  # flash_wgmma's split tail: a 1-D grid of its own
        be.launch(self.fn, grid, (self.plan["threads"], 1, 1), self.args, self.plan["smem"], stream)


def run(backend: Backend, q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float | None = None,
        causal: bool = False, terms: Sequence[tuple] = (), nan_zero: bool = False, tactic: str = "auto") -> np.ndarray:
    """Host-array convenience: the reference on cpu, upload/launch/download on a device. ``terms`` as in
    :func:`reference` (constants here)."""
    if not backend.is_device:
        return reference(q, k, v, scale=scale, causal=causal, terms=list(terms), nan_zero=nan_zero)
    assert isinstance(backend, DeviceBackend)
    q, k, v = (np.ascontiguousarray(x) for x in (q, k, v))
    specs, consts = [], []
    for t in terms:
        arr = np.ascontiguousarray(t[1])
        fill = float(np.asarray(t[2]).reshape(-1)[0]) if t[0] == "mask" else float("-inf")
        specs.append(TermSpec(t[0], str(arr.dtype), arr.shape, fill))
        consts.append(arr)
    r = Runner(backend, q.shape, k.shape, v.shape, q.dtype, scale, causal, specs, nan_zero, tactic, consts)
    out = np.empty(r.output_shape, dtype=q.dtype)
    bufs = [backend.upload(x) for x in (q, k, v)]
    ob = backend.upload(out)
    r([b.ptr for b in bufs], ob.ptr)
    backend.synchronize()
    backend.copy_dtoh(out, ob.ptr)
    return out
