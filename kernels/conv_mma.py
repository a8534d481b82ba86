"""Convolution on tensor cores: the implicit GEMM of ``conv.py`` with warp-level matrix instructions.

- ``mma_tf32`` (fp32 tensors): ``mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32``. Operands are
  rounded to TF32 (10-bit mantissa, ``cvt.rna``) when they are written to shared memory; accumulation
  is fp32. Relative L2 error ~3e-4 (measured, as cuDNN's TF32): only with ``--allow-tf32``.
- ``mma_f16`` (fp16 tensors): ``mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32``; fp16 weights
  (exactly what an fp16 model holds), fp32 accumulation: as accurate as the fp16 SIMT path.

Block tile BM x BN (128x128 with 8 warps as 2x4, or 64x64 with 4 warps as 2x2), each warp a
(BM/2) x (BN/WGN) tile of m16 x n8 fragments held in registers. A stage is 16 32-bit words of k (16 k
for TF32, 16 k-pairs for FP16), double buffered through registers like the SIMT kernel; both tiles are
k-contiguous in shared memory (weights packed [G][Mpad][Kpad] on the host; each thread of the im2col
gather writes one pixel's contiguous k run as 16-byte vectors), rows padded to 20 words, and fragments
load with ``ldmatrix.x4`` (one instruction per m16 A fragment or per pair of n8 B fragments) — all
bank-conflict free. Split-K as in ``conv.py``.

- ``mma_tf32_ms`` (fp32 tensors, ``--allow-tf32``): the same TF32 GEMM fed by a multistage shared-memory
  pipeline, in the manner of CUTLASS's multistage implicit-GEMM conv (no code from it): ``cp.async``
  copies global memory straight into a 4-stage ring (16 k per stage; commit/wait groups, one barrier per
  stage), so the copies of stage k + 3 are in flight while stage k is multiplied and no register holds a
  staged tile. Weights are rounded to TF32 on the host; the im2col values land unrounded and get half a
  TF32 ulp added in registers before the mma (which ignores the low 13 bits): round to nearest, as
  ``cvt.rna`` — the same rel-L2 (~3e-4) as ``mma_tf32`` and cuDNN's TF32. The gather is 16-byte copies of 4
  pixels for 1x1 stride-1 convs (a plain GEMM over NCHW), else 4-byte zero-filling copies per element
  (channel walk or k table). Tiles 128x128 (8 warps), 128x64 / 64x128 / 64x64 / 64x32 (4 warps); the
  warp's n8 fragments are interleaved so that B loads as vectors and each thread stores runs of 4 or 8
  consecutive pixels.

On AMD (and in the CPU emulator) the inline PTX is replaced by a portable implementation of the same
fragment contract with 32-lane shuffles, and ``cp.async`` by plain copies: the tactics compile and compute
the same function there, but they are not a speed path (the tactic list never offers them off NVIDIA; a
matrix-core path via MFMA is future work).
"""

from __future__ import annotations

import numpy as np

from .backend import ceil_div, dtype_suffix
from .conv import (
    COMMON_SOURCE,
    KPAD,
    MPAD,
    _GemmTactic,
    reference,  # noqa: F401  (every family exposes its reference)
    weights_gmk,
)

NAME = "conv_mma"

_MMA_SOURCE = r"""
// ---- conv: tensor-core GEMM ----
FUSER_INLINE float fuser_mma_shfl(float v, int src) {
#if defined(FUSER_CUDA)
    return __shfl_sync(0xffffffffu, v, src, 32);
#else
    return __shfl(v, src, 32);
#endif
}
FUSER_INLINE float fuser_bits_f(fuser_u32 u) {
#if defined(FUSER_CUDA)
    return __uint_as_float(u);
#else
    return __builtin_bit_cast(float, u);
#endif
}
// fp32 -> tf32 (round to nearest, ties away), as a 32-bit pattern.
FUSER_INLINE fuser_u32 fuser_tf32(float f) {
#if defined(FUSER_CUDA)
    fuser_u32 r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(f));
    return r;
#else
    const fuser_u32 u = __builtin_bit_cast(fuser_u32, f);
    return (u + 0x1000u) & 0xffffe000u;
#endif
}

// d += A(16x8, row) * B(8x8, col), TF32 in, fp32 out. Lane = 4 g + t:
// a = {A[g][t], A[g+8][t], A[g][t+4], A[g+8][t+4]}, b = {B[t][g], B[t+4][g]},
// d = {D[g][2t], D[g][2t+1], D[g+8][2t], D[g+8][2t+1]}.
FUSER_INLINE void fuser_mma_tf32(float (&d)[4], const fuser_u32 (&a)[4], const fuser_u32 (&b)[2]) {
#if defined(FUSER_CUDA)
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    // The tensor cores read the top 19 bits of each operand (the low 13 are ignored): masked here too, so
    // unrounded operands (the multistage kernel rounds by adding half a TF32 ulp) compute the same.
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const fuser_u32 tm = 0xffffe000u;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        const int hi = k >> 2, q = k & 3;
        const float alo = fuser_mma_shfl(fuser_bits_f((hi ? a[2] : a[0]) & tm), g * 4 + q);
        const float ahi = fuser_mma_shfl(fuser_bits_f((hi ? a[3] : a[1]) & tm), g * 4 + q);
        const float b0 = fuser_mma_shfl(fuser_bits_f((hi ? b[1] : b[0]) & tm), (2 * t) * 4 + q);
        const float b1 = fuser_mma_shfl(fuser_bits_f((hi ? b[1] : b[0]) & tm), (2 * t + 1) * 4 + q);
        d[0] = fmaf(alo, b0, d[0]); d[1] = fmaf(alo, b1, d[1]);
        d[2] = fmaf(ahi, b0, d[2]); d[3] = fmaf(ahi, b1, d[3]);
    }
#endif
}

// d += A(16x16, row) * B(16x8, col), FP16 pairs along k, fp32 out. Lane = 4 g + t:
// a = {A[g][2t..2t+1], A[g+8][2t..], A[g][2t+8..], A[g+8][2t+8..]}, b = {B[2t..2t+1][g], B[2t+8..][g]}.
FUSER_INLINE void fuser_mma_f16(float (&d)[4], const fuser_u32 (&a)[4], const fuser_u32 (&b)[2]) {
#if defined(FUSER_CUDA)
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int kp = 0; kp < 8; ++kp) {   // k pair 2kp, 2kp+1
        const int hi = kp >> 2, q = kp & 3;
        const float fa0 = fuser_bits_f(hi ? a[2] : a[0]), fa1 = fuser_bits_f(hi ? a[3] : a[1]);
        const float fb = fuser_bits_f(hi ? b[1] : b[0]);
        const fuser_u32 alo = __builtin_bit_cast(fuser_u32, fuser_mma_shfl(fa0, g * 4 + q));
        const fuser_u32 ahi = __builtin_bit_cast(fuser_u32, fuser_mma_shfl(fa1, g * 4 + q));
        const fuser_u32 b0 = __builtin_bit_cast(fuser_u32, fuser_mma_shfl(fb, (2 * t) * 4 + q));
        const fuser_u32 b1 = __builtin_bit_cast(fuser_u32, fuser_mma_shfl(fb, (2 * t + 1) * 4 + q));
        float al[2], ah[2], bl[2], bh[2];
        fuser_io<fuser_half>::unpack(alo, al[0], al[1]);
        fuser_io<fuser_half>::unpack(ahi, ah[0], ah[1]);
        fuser_io<fuser_half>::unpack(b0, bl[0], bl[1]);
        fuser_io<fuser_half>::unpack(b1, bh[0], bh[1]);
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            d[0] = fmaf(al[e], bl[e], d[0]); d[1] = fmaf(al[e], bh[e], d[1]);
            d[2] = fmaf(ah[e], bl[e], d[2]); d[3] = fmaf(ah[e], bh[e], d[3]);
        }
    }
#endif
}

template <int F16> struct fuser_mma_t { typedef float T; };
template <> struct fuser_mma_t<1> { typedef fuser_half T; };

// Epilogue of an m16n8 accumulator grid: warp tile rows mrow0 + mi*16 + {g, g+8}; NQ: how the warp's n8 tiles are
// interleaved (mma_tf32_ms, see below: groups of NQ tiles, the pixel of column c of tile ni is
// 8 NQ (ni / NQ) + NQ c + ni % NQ; NQ = 1 is the plain order, pixels ncol0 + ni*8 + 2t). Each thread stores runs of
// VW = min(2 NQ, 4) consecutive pixels: run f starts at ncol0 + 8 NQ (f / FPG) + 2 NQ t + VW (f % FPG).
template <typename T, int MI, int NI, int NQ, bool VEC, class Epi>
FUSER_INLINE void fuser_mma_epilogue(const float (&acc)[MI][NI][4], T* __restrict__ y, const T* __restrict__ r,
                                     const float* __restrict__ bias, int g, int mrow0, int ncol0, int Mg,
                                     int npix, int OHW, fuser_i64 img_out, int vec, const Epi& epi) {
    constexpr int VW = 2 * NQ < 4 ? 2 * NQ : 4, FPG = 2 * NQ / VW, NV = 2 * NI / VW;
    const int lane = threadIdx.x & 31, gq = lane >> 2, tq = lane & 3;
    int bq[NV], pq[NV], nl[NV];
#pragma unroll
    for (int f = 0; f < NV; ++f) {
        const int n = ncol0 + 8 * NQ * (f / FPG) + 2 * NQ * tq + VW * (f % FPG);
        nl[f] = npix - n;
        bq[f] = nl[f] > 0 ? n / OHW : 0;
        pq[f] = n - bq[f] * OHW;
    }
#pragma unroll
    for (int mi = 0; mi < MI; ++mi) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int m = mrow0 + mi * 16 + h * 8 + gq;
            if (m < Mg) {
                const int co = g * Mg + m;
                const float bv = bias[co];
#pragma unroll
                for (int f = 0; f < NV; ++f) {
                    float v[VW];
#pragma unroll
                    for (int j = 0; j < VW; ++j) {   // run position i = e NQ + ni % NQ
                        const int i = VW * (f % FPG) + j;
                        v[j] = acc[mi][NQ * (f / FPG) + i % NQ][2 * h + i / NQ];
                    }
                    fuser_conv_out<T, VW, VEC>(y, r, co, bq[f], pq[f], nl[f], v, bv, OHW, img_out, vec, epi);
                }
            }
        }
    }
}

// Split-K reduction of an m16n8 accumulator grid (see fuser_splitk_last); false: not the last split.
template <int BM, int BN, int MI, int NI>
FUSER_INLINE bool fuser_mma_splitk(float (&acc)[MI][NI][4], float* __restrict__ ws, int* __restrict__ cnt,
                                   int splits, int wm0, int wn0, int* s_last) {
    const int lane = threadIdx.x & 31, gq = lane >> 2, tq = lane & 3;
    const fuser_i64 tile = ((fuser_i64)blockIdx.z / splits * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    float* __restrict__ wt = ws + tile * (BM * BN);
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < NI; ++ni)
#pragma unroll
            for (int e = 0; e < 4; ++e)
                atomicAdd(wt + (wm0 + mi * 16 + (e >> 1) * 8 + gq) * BN + wn0 + ni * 8 + 2 * tq + (e & 1),
                          acc[mi][ni][e]);
    if (!fuser_splitk_last(cnt + tile, splits, s_last)) return false;
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < NI; ++ni)
#pragma unroll
            for (int e = 0; e < 4; ++e)
                acc[mi][ni][e] = atomicExch(wt + (wm0 + mi * 16 + (e >> 1) * 8 + gq) * BN + wn0 + ni * 8 + 2 * tq
                                            + (e & 1), 0.0f);
    return true;
}

// 8x8 b16 matrices from shared memory: lanes 8j..8j+7 give the row addresses of matrix j; lane l gets
// row l/4, 32-bit word l%4 of each. ldmatrix on CUDA; elsewhere the same through shuffled addresses.
FUSER_INLINE void fuser_ldsm_x4(fuser_u32 (&d)[4], const fuser_u32* p) {
#if defined(FUSER_CUDA)
    fuser_u32 a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3]) : "r"(a) : "memory");
#else
    const int lane = threadIdx.x & 31;
    const fuser_u64 a = (fuser_u64)p;
    const float lo = fuser_bits_f((fuser_u32)a), hi = fuser_bits_f((fuser_u32)(a >> 32));
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int src = j * 8 + (lane >> 2);
        const fuser_u64 q = (fuser_u64)__builtin_bit_cast(fuser_u32, fuser_mma_shfl(lo, src))
                            | ((fuser_u64)__builtin_bit_cast(fuser_u32, fuser_mma_shfl(hi, src)) << 32);
        d[j] = reinterpret_cast<const fuser_u32*>(q)[lane & 3];
    }
#endif
}

// The tensor-core implicit GEMM. F16 = 0: TF32 m16n8k8 on fp32 tensors (one k per 32-bit word);
// F16 = 1: FP16 m16n8k16 on fp16 tensors (a k pair per word). Either way a stage is 16 words of k:
// A tile [BM][16 words] (weights packed [G][Mpad][Kpad], k contiguous), B tile [BN][16 words] (the im2col
// gather, each thread writing one pixel's contiguous k run as 16-byte vectors), rows padded to 20 words
// so ldmatrix and the vector stores are bank-conflict free. Fragments load with ldmatrix.x4: one
// instruction per m16 A fragment or per pair of n8 B fragments.
template <int F16, int BM, int BN, int WGM, int WGN>
FUSER_INLINE void fuser_conv_mma(FUSER_CONV_GEMM_PARAMS(typename fuser_mma_t<F16>::T, typename fuser_mma_t<F16>::T)) {
    typedef typename fuser_mma_t<F16>::T T;
    constexpr int KW16 = 16, SK = KW16 + 4;          // words of k per stage, padded row
    constexpr int BK = F16 ? 2 * KW16 : KW16;         // k per stage
    constexpr int THR = WGM * WGN * 32;
    constexpr int WTM = BM / WGM, WTN = BN / WGN, MI = WTM / 16, NI = WTN / 8;
    constexpr int KG = THR / BN, LB = KW16 / KG;      // k groups per column; contiguous words per thread
    static_assert(THR % BN == 0 && KW16 % KG == 0 && LB % 4 == 0 && NI % 2 == 0, "tile shape");
    constexpr int AV = BM * 4, LA = (AV + THR - 1) / THR;   // 4 vectors of 16 B per A row
    typedef fuser_conv_cols<T, BN, THR> Cols;
    __shared__ __align__(16) fuser_u32 As[2][BM][SK];
    __shared__ __align__(16) fuser_u32 Bs[2][BN][SK];
    __shared__ int s_last;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp / WGN, wn = warp % WGN;
    const int g = blockIdx.z / splits, m0 = blockIdx.y * BM, nb = blockIdx.x * BN;
    const int kt0 = (blockIdx.z - g * splits) * kt_per;
    const int kt1 = kt0 + kt_per < ktiles ? kt0 + kt_per : ktiles;
    const fuser_i64 HW = (fuser_i64)H * W;
    const T* __restrict__ wg = wp + ((fuser_i64)g * Mpad + m0) * Kpad;
    Cols cols;
    cols.init(x + (fuser_i64)g * Cg * HW, tid, nb, npix, OHW, OW, W, img_in, sh, sw, ph, pw);
    const int kw0 = cols.row0 * LB;                   // this thread's first word of k in a stage

    uint4 ra[LA];
    fuser_u32 rb[LB];
    auto load = [&](int kt) {
        const int k0 = kt * BK;
#pragma unroll
        for (int i = 0; i < LA; ++i) {
            const int idx = tid + i * THR;
            if (AV % THR == 0 || idx < AV)
                ra[i] = *reinterpret_cast<const uint4*>(wg + (fuser_i64)(idx >> 2) * Kpad + k0
                                                        + (idx & 3) * (F16 ? 8 : 4));
        }
        if (kmaj) {
            cols.walk_tile(BK, Cg, KW, dh, dw, H, W, HW);
            const T* p = cols.tp + (F16 ? 2 : 1) * kw0 * HW;
#pragma unroll
            for (int i = 0; i < LB; ++i) {
                if (F16) {
                    const unsigned short* q = reinterpret_cast<const unsigned short*>(p);
                    rb[i] = cols.tvalid ? (fuser_u32)q[0] | ((fuser_u32)q[HW] << 16) : 0u;
                    p += 2 * HW;
                } else {
                    rb[i] = cols.tvalid ? fuser_tf32(fuser_io<T>::ld(p, 0)) : 0u;
                    p += HW;
                }
            }
        } else {
#pragma unroll
            for (int i = 0; i < LB; ++i) {
                if (F16) {
                    const int k = k0 + 2 * (kw0 + i);
                    rb[i] = (fuser_u32)cols.get_bits(ktab, k, H, W)
                            | ((fuser_u32)cols.get_bits(ktab, k + 1, H, W) << 16);
                } else {
                    rb[i] = fuser_tf32(cols.get(ktab, k0 + kw0 + i, H, W));
                }
            }
        }
    };
    auto store = [&](int buf) {
#pragma unroll
        for (int i = 0; i < LA; ++i) {
            const int idx = tid + i * THR;
            if (AV % THR == 0 || idx < AV) {
                uint4 t = ra[i];
                if (!F16) {
                    t.x = fuser_tf32(fuser_bits_f(t.x)); t.y = fuser_tf32(fuser_bits_f(t.y));
                    t.z = fuser_tf32(fuser_bits_f(t.z)); t.w = fuser_tf32(fuser_bits_f(t.w));
                }
                *reinterpret_cast<uint4*>(&As[buf][idx >> 2][(idx & 3) * 4]) = t;
            }
        }
#pragma unroll
        for (int i = 0; i < LB; i += 4) {
            uint4 t;
            t.x = rb[i]; t.y = rb[i + 1]; t.z = rb[i + 2]; t.w = rb[i + 3];
            *reinterpret_cast<uint4*>(&Bs[buf][cols.col][kw0 + i]) = t;
        }
    };

    float acc[MI][NI][4];
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NI; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    // ldmatrix row/word of this lane: A matrices (rows +0/+8, words +0/+4), B (rows +0/+8 <- lane bit 4)
    const int ar = (lane & 7) + ((lane >> 3) & 1) * 8, ac = (lane >> 4) * 4;
    const int br = (lane & 7) + (lane >> 4) * 8, bc = ((lane >> 3) & 1) * 4;
    if (kmaj) cols.walk_init(kt0 * BK, Cg, KW);
    load(kt0);
    store(0);
    __syncthreads();
    for (int kt = kt0; kt < kt1; ++kt) {
        const int buf = (kt - kt0) & 1;
        if (kt + 1 < kt1) load(kt + 1);
#pragma unroll
        for (int ks = 0; ks < KW16 / 8; ++ks) {
            fuser_u32 a[MI][4], b[NI][2];
#pragma unroll
            for (int mi = 0; mi < MI; ++mi) fuser_ldsm_x4(a[mi], &As[buf][wm * WTM + mi * 16 + ar][ks * 8 + ac]);
#pragma unroll
            for (int nj = 0; nj < NI / 2; ++nj) {
                fuser_u32 q[4];
                fuser_ldsm_x4(q, &Bs[buf][wn * WTN + nj * 16 + br][ks * 8 + bc]);
                b[2 * nj][0] = q[0]; b[2 * nj][1] = q[1]; b[2 * nj + 1][0] = q[2]; b[2 * nj + 1][1] = q[3];
            }
#pragma unroll
            for (int mi = 0; mi < MI; ++mi)
#pragma unroll
                for (int ni = 0; ni < NI; ++ni) {
                    if (F16) fuser_mma_f16(acc[mi][ni], a[mi], b[ni]);
                    else fuser_mma_tf32(acc[mi][ni], a[mi], b[ni]);
                }
        }
        if (kt + 1 < kt1) store(buf ^ 1);
        __syncthreads();
    }
    if (splits > 1 && !fuser_mma_splitk<BM, BN, MI, NI>(acc, ws, cnt, splits, wm * WTM, wn * WTN, &s_last)) return;
    FUSER_CONV_EPILOGUE(act, vec && nb + BN <= npix,
        fuser_mma_epilogue<T, MI, NI, 1, VEC>(acc, y, r, bias, g, m0 + wm * WTM, nb + wn * WTN, Mg, npix, OHW,
                                              img_out, vec, fuser_conv_make_epi<ACT>(act, res_mode, p0, p1)))
}

#define FUSER_MMA_ENTRY(NAME, F16, T, BM, BN, WGM, WGN)                                                 \
    FUSER_GLOBAL void __launch_bounds__(WGM * WGN * 32, 512 / (WGM * WGN * 32))                       \
    NAME(FUSER_CONV_GEMM_PARAMS(T, T)) {                                                               \
        fuser_conv_mma<F16, BM, BN, WGM, WGN>(FUSER_CONV_GEMM_ARGS);                                     \
    }
"""

_MS_SOURCE = r"""
// ---- conv: multistage tensor-core GEMM (TF32), cp.async pipeline ----
// Global -> shared copies that complete asynchronously: cp.async on CUDA (src-size 0 reads nothing and
// zero-fills, which is how padding and out-of-range pixels become zeros; the source address of such a copy
// may point anywhere, it is never dereferenced). On AMD and in the CPU emulator they are plain synchronous
// copies with the same effect (reading only when ok), and commit/wait have nothing to wait for.
#if defined(FUSER_CUDA)
#define FUSER_MS_STAGES(S) (S)
#elif defined(__HIPCC_RTC__)
#define FUSER_MS_STAGES(S) 2      // AMD: synchronous copies fill no pipeline, and static LDS is 64 KiB
#else
#define FUSER_MS_STAGES(S) (S)    // CPU emulator: the CUDA kernel's exact buffer rotation
#endif

FUSER_INLINE fuser_u32 fuser_ms_saddr(const void* p) {
#if defined(FUSER_CUDA)
    fuser_u32 a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
#else
    return 0u;
#endif
}
// 16 bytes to word `off` of the shared buffer (generic base `sm`, shared-window base `ss`); zeros if !ok.
FUSER_INLINE void fuser_ms_cp16(fuser_u32* sm, fuser_u32 ss, int off, const void* src, bool ok) {
#if defined(FUSER_CUDA)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(ss + 4u * (fuser_u32)off), "l"(src), "r"(ok ? 16 : 0) : "memory");
#else
    uint4 v;
    v.x = 0u; v.y = 0u; v.z = 0u; v.w = 0u;
    if (ok) v = *reinterpret_cast<const uint4*>(src);
    *reinterpret_cast<uint4*>(sm + off) = v;
#endif
}
// 4 bytes (one element of the im2col gather); zero if !ok.
FUSER_INLINE void fuser_ms_cp4(fuser_u32* sm, fuser_u32 ss, int off, const void* src, bool ok) {
#if defined(FUSER_CUDA)
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n"
                 :: "r"(ss + 4u * (fuser_u32)off), "l"(src), "r"(ok ? 4 : 0) : "memory");
#else
    sm[off] = ok ? *reinterpret_cast<const fuser_u32*>(src) : 0u;
#endif
}
FUSER_INLINE void fuser_ms_commit() {
#if defined(FUSER_CUDA)
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
// Wait until at most N committed groups of this thread are still in flight.
template <int N>
FUSER_INLINE void fuser_ms_wait() {
#if defined(FUSER_CUDA)
    asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory");
#endif
}
FUSER_INLINE void fuser_ms_ldsm_x4(fuser_u32 (&d)[4], const fuser_u32* sm, fuser_u32 ss, int off) {
#if defined(FUSER_CUDA)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3]) : "r"(ss + 4u * (fuser_u32)off) : "memory");
#else
    fuser_ldsm_x4(d, sm + off);
#endif
}
// B fragments of a k row: NI words in groups of NQ = min(NI, 4) consecutive words, group q at word 8 NQ q
// (one 16- or 8-byte vector load per group).
template <int NI>
FUSER_INLINE void fuser_ms_lds(fuser_u32 (&d)[NI], const fuser_u32* p) {
    constexpr int NQ = NI < 4 ? NI : 4;
#pragma unroll
    for (int q = 0; q < NI / NQ; ++q) {
        if constexpr (NQ == 4) {
            const uint4 t = *reinterpret_cast<const uint4*>(p + 8 * NQ * q);
            d[4 * q] = t.x; d[4 * q + 1] = t.y; d[4 * q + 2] = t.z; d[4 * q + 3] = t.w;
        } else {
            const uint2 t = *reinterpret_cast<const uint2*>(p + 8 * NQ * q);
            d[2 * q] = t.x; d[2 * q + 1] = t.y;
        }
    }
}

// The implicit GEMM of conv.py (Y[m, n] = sum_k W[m, k] X[k, n] per group) on TF32 tensor cores, with the
// operands streamed through an S-stage shared-memory ring by cp.async: the copies of stage k + S - 1 are in
// flight while stage k is multiplied, one barrier per stage (BK = 16 or 32 k), no register staging.
//
// A (weights, packed [G][Mpad][Kpad] on the host and already rounded to TF32 there): [BM][BK] words per
//   stage as 16-byte chunks, chunk c of row r stored at c ^ swizzle(r) (BK = 16: (r >> 1) & 3, two rows per
//   128-byte bank line; BK = 32: r & 7), so the 16-byte copies and the ldmatrix.x4 fragment loads (8 rows
//   of one chunk column per phase) are both conflict-free.
// B (the im2col gather): [BK][BN + 8] words, pixels contiguous as in NCHW, so one k row of the tile is
//   BN consecutive pixels. `kmaj` selects the gather: 2 = 1x1 stride-1 conv whose image size is a multiple
//   of 4 on a 16-byte aligned input (a plain GEMM over NCHW: 16-byte copies of 4 pixels), 1 = the
//   channel-innermost walk (a k-tile inside one kernel position: one bounds test per tile, 4-byte copies),
//   0 = the k table (4-byte copies, each tested). Values land unrounded; fragments get half a TF32 ulp added
//   in registers (round to nearest, ties away, once the mma ignores the low 13 bits: as cvt.rna).
// Fragments: each warp owns WTM x WTN = (MI m16) x (NI n8). Inside the warp's WTN columns the n8 tiles are
//   interleaved in groups of NQ = min(NI, 4): the pixel of column c of tile ni is
//   8 NQ (ni / NQ) + NQ c + ni % NQ. A lane's B fragments of a group then lie side by side (one vector load
//   per group and k row; the row stride BN + 8 = 8 mod 32 keeps them conflict-free), and each thread owns
//   runs of 2 NQ consecutive pixels of a row, stored as float4s by the shared epilogue.
template <int BM, int BN, int WGM, int WGN, int STAGES, int BK>
FUSER_INLINE void fuser_conv_mma_ms(FUSER_CONV_GEMM_PARAMS(float, float)) {
    constexpr int S = FUSER_MS_STAGES(STAGES);
    constexpr int THR = WGM * WGN * 32;
    constexpr int WTM = BM / WGM, WTN = BN / WGN, MI = WTM / 16, NI = WTN / 8, NQ = NI < 4 ? NI : 4;
    constexpr int LDB = BN + 8;
    constexpr int AW = BM * BK, SW = AW + BK * LDB;       // words: A tile, one stage
    constexpr int CPA = BK / 4, LA = BM * CPA / THR, ARS = THR / CPA;   // A: chunks per row, per thread; rows apart
    constexpr int KG = THR / BN, LB = BK / KG;            // 4-byte gather: k groups per column, k per thread
    constexpr int CPR = BN / 4, RPP = THR / CPR;          // 16-byte gather: chunks per k row, rows per pass
    static_assert(S >= 2 && (BK == 16 || BK == 32) && (NI == 2 || NI == 4 || NI == 8) && MI >= 1
                  && (BM * CPA) % THR == 0 && ARS % 8 == 0 && THR % BN == 0 && BK % KG == 0 && THR % CPR == 0
                  && BK % RPP == 0, "tile shape");
#if defined(FUSER_CUDA)
    extern __shared__ __align__(16) fuser_u32 fuser_ms_smem[];   // S * SW words (the host opts in)
#else
    __shared__ __align__(16) fuser_u32 fuser_ms_smem[S * SW];
#endif
    __shared__ int s_last;
    fuser_u32* const sm = fuser_ms_smem;
    const fuser_u32 ss = fuser_ms_saddr(sm);

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp / WGN, wn = warp % WGN;
    const int g = blockIdx.z / splits, m0 = blockIdx.y * BM, nb = blockIdx.x * BN;
    const int kt0 = (blockIdx.z - g * splits) * kt_per;
    const int kt1 = kt0 + kt_per < ktiles ? kt0 + kt_per : ktiles;
    const fuser_i64 HW = (fuser_i64)H * W;
    const float* __restrict__ xg = x + (fuser_i64)g * Cg * HW;

    // A copies: rows ar0 + i * ARS, chunk tid % CPA (ARS is a multiple of 8: one swizzle for all i)
    auto aswz = [](int r) { return CPA == 8 ? r & 7 : (r >> 1) & 3; };
    const int ar0 = tid / CPA, ac0 = tid % CPA;
    const float* __restrict__ asrc = wp + ((fuser_i64)g * Mpad + m0 + ar0) * Kpad + ac0 * 4;
    const int adst = ar0 * BK + (ac0 ^ aswz(ar0)) * 4;
    // B gather state, in 32-bit offsets from one 64-bit base (an image holds < 2^31 elements): few registers.
    // Gathers 0/1: column tid % BN, k rows kw0 .. kw0 + LB - 1 of each stage. Gather 2: pixels
    // nb + 4 * (tid % CPR) + 0..3, k rows tid / CPR + p * RPP.
    const int HWi = H * W;
    const float* __restrict__ xb = xg;   // 0/1: the column's image; 2: its 4 pixels at k row kw0
    int ih0 = FUSER_CONV_BIG, iw0 = 0, pix = 0, kw0, bdst;
    int wci = 0, wkh = 0, wkw = 0;       // gather 1: the next k-tile's first channel and kernel position
    if (kmaj == 2) {
        const int pc = tid % CPR, n = nb + pc * 4;
        kw0 = tid / CPR;
        bdst = kw0 * LDB + pc * 4;
        if (n < npix) {
            const int b = n / OHW;
            xb = xg + (fuser_i64)b * img_in + (n - b * OHW) + (fuser_i64)kw0 * HWi;
            ih0 = 0;
        }
    } else {
        const int col = tid % BN, n = nb + col;
        kw0 = (tid / BN) * LB;
        bdst = kw0 * LDB + col;
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

    // Issue the copies of k-tile kt into stage st (gather 1 walks the k-tiles: they must come in order).
    auto load = [&](int st, int kt) {
        const int k0 = kt * BK, so = st * SW;
#pragma unroll
        for (int i = 0; i < LA; ++i) fuser_ms_cp16(sm, ss, so + adst + i * ARS * BK, asrc + i * ARS * Kpad + k0, true);
        const int sb = so + AW + bdst;
        if (kmaj == 2) {
#pragma unroll
            for (int p = 0; p < BK / RPP; ++p) {
                const int k = k0 + p * RPP;          // + kw0: xb already points at row kw0
                const bool ok = ih0 == 0 && k + kw0 < K;
                fuser_ms_cp16(sm, ss, sb + p * RPP * LDB, xb + k * HWi, ok);
            }
        } else if (kmaj == 1) {
            // a k-tile lies inside one kernel position: one bounds test for the column
            const int ih = ih0 + wkh * dh, iw = iw0 + wkw * dw;
            const bool ok = (unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W;
            const int off = (wci + kw0) * HWi + ih * W + iw;
            wci += BK;
            if (wci == Cg) {
                wci = 0;
                if (++wkw == KW) { wkw = 0; ++wkh; }
            }
#pragma unroll
            for (int i = 0; i < LB; ++i) fuser_ms_cp4(sm, ss, sb + i * LDB, xb + off + i * HWi, ok);
        } else {
            // the k table (padded k and out-of-range pixels fail the same unsigned test); unrolled by 2 only:
            // the table entries of a whole stage in flight at once would cost registers the other gathers need
#pragma unroll 2
            for (int i = 0; i < LB; ++i) {
                const int4 e = ktab[k0 + kw0 + i];
                const int ih = ih0 + e.y, iw = iw0 + e.z;
                const bool ok = (unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W;
                fuser_ms_cp4(sm, ss, sb + i * LDB, xb + pix + e.x, ok);
            }
        }
    };

    float acc[MI][NI][4];
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NI; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    // Prologue: S - 1 stages in flight (a group per stage, empty ones included, so the count stays exact).
#pragma unroll
    for (int s = 0; s < S - 1; ++s) {
        if (kt0 + s < kt1) load(s, kt0 + s);
        fuser_ms_commit();
    }
    // ldmatrix rows of this lane (matrices: rows +0/+8, words +0/+4) and its B fragment words
    const int ar = (lane & 7) + ((lane >> 3) & 1) * 8;
    const int aoff = (wm * WTM + ar) * BK, asw = aswz(ar), ahalf = lane >> 4;
    const int boff = AW + (lane & 3) * LDB + wn * WTN + (lane >> 2) * NQ;
    int rs = 0, ws_ = S - 1;
    for (int kt = kt0; kt < kt1; ++kt) {
        fuser_ms_wait<S - 2>();      // this thread's copies of stage rs have landed
        __syncthreads();             // ... everyone's; and everyone is done with the stage refilled next
        if (kt + S - 1 < kt1) load(ws_, kt + S - 1);
        fuser_ms_commit();
        const int so = rs * SW;
#pragma unroll
        for (int ks = 0; ks < BK / 8; ++ks) {
            fuser_u32 a[MI][4], b[NI][2], lo[NI], hi[NI];
#pragma unroll
            for (int mi = 0; mi < MI; ++mi)
                fuser_ms_ldsm_x4(a[mi], sm, ss, so + aoff + mi * 16 * BK + ((2 * ks + ahalf) ^ asw) * 4);
            fuser_ms_lds<NI>(lo, sm + so + boff + ks * 8 * LDB);
            fuser_ms_lds<NI>(hi, sm + so + boff + (ks * 8 + 4) * LDB);
#pragma unroll
            for (int ni = 0; ni < NI; ++ni) {
                b[ni][0] = lo[ni] + 0x1000u;
                b[ni][1] = hi[ni] + 0x1000u;
            }
#pragma unroll
            for (int mi = 0; mi < MI; ++mi)
#pragma unroll
                for (int ni = 0; ni < NI; ++ni) fuser_mma_tf32(acc[mi][ni], a[mi], b[ni]);
        }
        rs = rs + 1 == S ? 0 : rs + 1;
        ws_ = ws_ + 1 == S ? 0 : ws_ + 1;
    }
    fuser_ms_wait<0>();              // only empty groups are left; none outlives the block

    // Split-K sums over the logical (row, n8 column) positions: the same in every split of a tile.
    if (splits > 1 && !fuser_mma_splitk<BM, BN, MI, NI>(acc, ws, cnt, splits, wm * WTM, wn * WTN, &s_last)) return;
    FUSER_CONV_EPILOGUE(act, vec && nb + BN <= npix,
        fuser_mma_epilogue<float, MI, NI, NQ, VEC>(acc, y, r, bias, g, m0 + wm * WTM, nb + wn * WTN, Mg, npix, OHW,
                                                   img_out, vec, fuser_conv_make_epi<ACT>(act, res_mode, p0, p1)))
}

#define FUSER_MS_ENTRY(NAME, BM, BN, WGM, WGN, STAGES, MINB, BK)                                        \
    FUSER_GLOBAL void __launch_bounds__(WGM * WGN * 32, MINB) NAME(FUSER_CONV_GEMM_PARAMS(float, float)) { \
        fuser_conv_mma_ms<BM, BN, WGM, WGN, STAGES, BK>(FUSER_CONV_GEMM_ARGS);                           \
    }
"""

# (BM, BN) -> warps (along M, along N)
MMA_TILES: dict[tuple[int, int], tuple[int, int]] = {(128, 128): (2, 4), (64, 64): (2, 2)}
ALGO_DTYPE = {"mma_tf32": np.float32, "mma_f16": np.float16}


def mma_entry(algo: str, tile: tuple[int, int]) -> str:
    return f"fuser_conv_{algo}_{tile[0]}x{tile[1]}_{dtype_suffix(ALGO_DTYPE[algo])}"


def _entry_line(algo: str, tile: tuple[int, int]) -> str:
    wgm, wgn = MMA_TILES[tile]
    kind, ctype = ("0", "float") if algo == "mma_tf32" else ("1", "fuser_half")
    return f"FUSER_MMA_ENTRY({mma_entry(algo, tile)}, {kind}, {ctype}, {tile[0]}, {tile[1]}, {wgm}, {wgn})\n"


# The multistage TF32 kernel: (BM, BN) -> (warps along M, warps along N, pipeline stages, blocks per SM that
# __launch_bounds__ asks the register allocator to allow, k per stage). These are the builds measured on the
# H200 (BENCHMARKS.md, run 1: 3, 4 or 5 stages within 1%; run 2: 32 k per stage on 64x64 and 64x32, faster than
# 16 on all nine problems — 0.78-0.95x the time — by halving the barriers per k). 64x64 warp tiles (128x128 as
# 2x2 warps, 32 k per stage: 215 registers, 2 blocks/SM) were timed in run 2 and lost (1.32-1.38x the time of
# 2x4 warps at 16 k on the large problems): the build stays, reachable through bench_conv.py --ms-variants.
# 32 k per stage costs the channel walk where Cg % 32 != 0 (those convs fall back to the k table).
MS_ALGO = "mma_tf32_ms"
MS_TILES: dict[tuple[int, int], tuple[int, int, int, int, int]] = {
    (128, 128): (2, 4, 4, 2, 16), (128, 64): (2, 2, 4, 3, 16), (64, 128): (1, 4, 4, 3, 16),
    (64, 64): (2, 2, 3, 4, 32), (64, 32): (2, 2, 4, 4, 32)}


def ms_entry(tile: tuple[int, int]) -> str:
    return f"fuser_conv_{MS_ALGO}_{tile[0]}x{tile[1]}_f32"


def ms_threads(tile: tuple[int, int]) -> int:
    return MS_TILES[tile][0] * MS_TILES[tile][1] * 32


def ms_bk(tile: tuple[int, int]) -> int:
    return MS_TILES[tile][4]


def ms_smem_bytes(tile: tuple[int, int]) -> int:
    """Dynamic shared memory of the CUDA build: stages x (A [BM][BK] + B [BK][BN + 8]) fp32 words."""
    bm, bn = tile
    bk = ms_bk(tile)
    return MS_TILES[tile][2] * (bm * bk + bk * (bn + 8)) * 4


def _ms_entry_line(tile: tuple[int, int]) -> str:
    wgm, wgn, stages, minb, bk = MS_TILES[tile]
    return f"FUSER_MS_ENTRY({ms_entry(tile)}, {tile[0]}, {tile[1]}, {wgm}, {wgn}, {stages}, {minb}, {bk})\n"


SOURCE = (COMMON_SOURCE + _MMA_SOURCE + "".join(_entry_line(a, t) for a in ALGO_DTYPE for t in MMA_TILES)
          + _MS_SOURCE + "".join(_ms_entry_line(t) for t in MS_TILES))
VARIANTS: list[str] = [mma_entry(a, t) for a in ALGO_DTYPE for t in MMA_TILES] + [ms_entry(t) for t in MS_TILES]


def entry_source(algo: str, tile: tuple[int, int]) -> str:
    if algo == MS_ALGO:
        return COMMON_SOURCE + _MMA_SOURCE + _MS_SOURCE + _ms_entry_line(tile)
    return COMMON_SOURCE + _MMA_SOURCE + _entry_line(algo, tile)


def entry_name(algo: str, tile: tuple[int, int]) -> str:
    return ms_entry(tile) if algo == MS_ALGO else mma_entry(algo, tile)


def all_entries() -> list[tuple[str, tuple[int, int]]]:
    """(algo, tile) of every tensor-core entry point."""
    return [(a, t) for a in ALGO_DTYPE for t in MMA_TILES] + [(MS_ALGO, t) for t in MS_TILES]


def pack_weights_mk(w: np.ndarray, g, kmaj: bool = False, dtype=np.float16) -> np.ndarray:
    """[G][Mpad][Kpad] (k contiguous), fp32 (TF32 tactic) or fp16: the A operand of the tensor-core tactics."""
    kpad, mpad = ceil_div(max(g.k, 1), KPAD) * KPAD, ceil_div(g.mg, MPAD) * MPAD
    out = np.zeros((g.group, mpad, kpad), dtype=dtype)
    out[:, :g.mg, :g.k] = weights_gmk(w, g, kmaj).astype(dtype)
    return out


class MmaTactic(_GemmTactic):
    family_name = NAME
    vec_width = 2

    def __init__(self, backend, g, dtype, w, bias, tile, epi, algo: str, splits: int | None = None) -> None:
        if np.dtype(dtype) != ALGO_DTYPE[algo]:
            raise ValueError(f"{algo} runs {np.dtype(ALGO_DTYPE[algo]).name} tensors, not {np.dtype(dtype).name}")
        self.algo = algo
        self.bk = 16 if algo == "mma_tf32" else 32
        super().__init__(backend, g, np.dtype(dtype), w, bias, tile, epi, splits)

    def pack(self, w: np.ndarray):
        p = pack_weights_mk(w, self.g, self.kmaj, ALGO_DTYPE[self.algo])
        return self.backend.upload(p), p.shape[2], p.shape[1]

    def entry_name(self) -> str:
        return mma_entry(self.algo, self.tile)

    def source(self) -> str:
        return entry_source(self.algo, self.tile)

    def threads(self) -> int:
        wgm, wgn = MMA_TILES[self.tile]
        return wgm * wgn * 32


def round_tf32(a: np.ndarray) -> np.ndarray:
    """fp32 -> the nearest TF32 value (ties away from zero, as ``cvt.rna.tf32.f32``), kept as fp32; NaN stays."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    bits = a.view(np.uint32)
    out = ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)
    return np.where(np.isnan(a), a, out)


class MmaMsTactic(_GemmTactic):
    """``mma_tf32_ms``: the multistage cp.async TF32 kernel (fp32 tensors)."""

    family_name = NAME
    algo = MS_ALGO
    vec_width = 4

    def __init__(self, backend, g, dtype, w, bias, tile, epi, splits: int | None = None) -> None:
        if np.dtype(dtype) != np.float32:
            raise ValueError(f"{MS_ALGO} runs float32 tensors, not {np.dtype(dtype).name}")
        self.bk = ms_bk(tile)      # k per stage: the channel walk needs Cg % bk == 0
        # the build's block size, fixed now: bench_conv.py --ms-variants swaps MS_TILES only while building
        self.nthreads = ms_threads(tile)
        super().__init__(backend, g, np.dtype(dtype), w, bias, tile, epi, splits)
        # the channel walk serves 1x1 convs as well (their k order is the same either way)
        self.walk = self.kmaj or (g.kh * g.kw == 1 and g.cg % self.bk == 0)
        self.smem = ms_smem_bytes(tile) if backend.name == "cuda" else 0   # elsewhere: static shared
        if self.smem:
            backend.allow_dynamic_shared(self.fn, self.smem)

    def pack(self, w: np.ndarray):
        p = round_tf32(pack_weights_mk(w, self.g, self.kmaj, np.float32))
        return self.backend.upload(p), p.shape[2], p.shape[1]

    def kmode(self, x: int) -> int:
        g = self.g
        if g.pointwise and g.ohw % 4 == 0 and x % 16 == 0:
            return 2      # a plain GEMM over NCHW: 16-byte copies of 4 pixels
        return 1 if self.walk else 0

    def entry_name(self) -> str:
        return ms_entry(self.tile)

    def source(self) -> str:
        return entry_source(MS_ALGO, self.tile)

    def threads(self) -> int:
        return self.nthreads
