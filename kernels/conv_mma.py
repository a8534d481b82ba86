"""Convolution on tensor cores: the implicit GEMM of ``conv.py`` with warp-level matrix instructions.

- ``mma_tf32`` (fp32 tensors): ``mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32``. Operands are
  rounded to TF32 (10-bit mantissa, ``cvt.rna``) when they are written to shared memory; accumulation
  is fp32. Relative error ~1e-3 of a K-long dot product: only with ``--allow-tf32``.
- ``mma_f16`` (fp16 tensors): ``mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32``; fp16 weights
  (exactly what an fp16 model holds), fp32 accumulation: as accurate as the fp16 SIMT path.

Block tile BM x BN (128x128 with 8 warps as 2x4, or 64x64 with 4 warps as 2x2), each warp a
(BM/2) x (BN/WGN) tile of m16 x n8 fragments held in registers; BK = 16 (TF32) or 32 (FP16) per
shared-memory stage, double buffered through registers like the SIMT kernel. Shared layouts are padded
so that every fragment read is bank-conflict free: TF32 keeps A as [k][m] and B as [k][n] (one 32-bit
element per fragment register); FP16 needs k-pairs in one register, so A is [m][k/2] (weights packed
that way on the host) and the im2col tile is written transposed as [n][k/2].

On AMD (and in the CPU emulator) the inline PTX is replaced by a portable implementation of the same
fragment contract with 32-lane shuffles: the tactic compiles and computes the same function there,
but it is not a speed path (the tactic list never offers it off NVIDIA; a matrix-core path via
MFMA is future work).
"""

from __future__ import annotations

import numpy as np

from .backend import ceil_div, dtype_suffix
from .conv import (
    COMMON_SOURCE,
    KPAD,
    MPAD,
    _GemmTactic,
    pack_weights_km,
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
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        const int hi = k >> 2, q = k & 3;
        const float alo = fuser_mma_shfl(fuser_bits_f(hi ? a[2] : a[0]), g * 4 + q);
        const float ahi = fuser_mma_shfl(fuser_bits_f(hi ? a[3] : a[1]), g * 4 + q);
        const float b0 = fuser_mma_shfl(fuser_bits_f(hi ? b[1] : b[0]), (2 * t) * 4 + q);
        const float b1 = fuser_mma_shfl(fuser_bits_f(hi ? b[1] : b[0]), (2 * t + 1) * 4 + q);
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

// Epilogue of an m16n8 accumulator grid: warp tile rows wm0 + mi*16 + {g, g+8}, pixels wn0 + ni*8 + 2t.
template <typename T, int MI, int NI>
FUSER_INLINE void fuser_mma_epilogue(const float (&acc)[MI][NI][4], T* __restrict__ y, const T* __restrict__ r,
                                     const float* __restrict__ bias, int g, int mrow0, int ncol0, int Mg,
                                     int npix, int OHW, fuser_i64 img_out, int vec, const fuser_conv_epi& epi) {
    const int lane = threadIdx.x & 31, gq = lane >> 2, tq = lane & 3;
    int bq[NI], pq[NI], nl[NI];
#pragma unroll
    for (int ni = 0; ni < NI; ++ni) {
        const int n = ncol0 + ni * 8 + 2 * tq;
        nl[ni] = npix - n;
        bq[ni] = nl[ni] > 0 ? n / OHW : 0;
        pq[ni] = n - bq[ni] * OHW;
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
                for (int ni = 0; ni < NI; ++ni) {
                    float v[2];
                    v[0] = acc[mi][ni][2 * h]; v[1] = acc[mi][ni][2 * h + 1];
                    fuser_conv_out<T, 2>(y, r, co, bq[ni], pq[ni], nl[ni], v, bv, OHW, img_out, vec, epi);
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

// TF32: fp32 tensors, weights packed [G][Kpad][Mpad] fp32.
template <int BM, int BN, int WGM, int WGN>
FUSER_INLINE void fuser_conv_mma_tf32(FUSER_CONV_GEMM_PARAMS(float, float)) {
    constexpr int BK = 16, PAD = 8;
    constexpr int THR = WGM * WGN * 32;
    constexpr int WTM = BM / WGM, WTN = BN / WGN, MI = WTM / 16, NI = WTN / 8;
    typedef fuser_conv_cols<float, BN, THR> Cols;
    static_assert(THR % BN == 0 && BK % Cols::RSTEP == 0, "threads must tile the B tile");
    constexpr int AV = BK * BM / 4, LA = (AV + THR - 1) / THR, LB = BK / Cols::RSTEP;
    __shared__ __align__(16) fuser_u32 As[2][BK][BM + PAD];
    __shared__ __align__(16) fuser_u32 Bs[2][BK][BN + PAD];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp / WGN, wn = warp % WGN, gq = lane >> 2, tq = lane & 3;
    __shared__ int s_last;
    const int g = blockIdx.z / splits, m0 = blockIdx.y * BM, nb = blockIdx.x * BN;
    const int kt0 = (blockIdx.z - g * splits) * kt_per;
    const int kt1 = kt0 + kt_per < ktiles ? kt0 + kt_per : ktiles;
    const fuser_i64 HW = (fuser_i64)H * W;
    const float* __restrict__ wg = wp + (fuser_i64)g * Kpad * Mpad + m0;
    Cols cols;
    cols.init(x + (fuser_i64)g * Cg * HW, tid, nb, npix, OHW, OW, W, img_in, sh, sw, ph, pw);

    float4 ra[LA];
    float rb[LB];
    auto load = [&](int kt) {
        const int k0 = kt * BK;
#pragma unroll
        for (int i = 0; i < LA; ++i) {
            const int idx = tid + i * THR;
            if (AV % THR == 0 || idx < AV)
                ra[i] = *reinterpret_cast<const float4*>(wg + (fuser_i64)(k0 + idx / (BM / 4)) * Mpad
                                                         + (idx % (BM / 4)) * 4);
        }
        if (kmaj) {
            cols.tile_begin(k0, Cg, KW, dh, dw, H, W, HW);
#pragma unroll
            for (int i = 0; i < LB; ++i) rb[i] = cols.get_km(cols.row0 + i * Cols::RSTEP, HW);
        } else {
#pragma unroll
            for (int i = 0; i < LB; ++i) rb[i] = cols.get(ktab, k0 + cols.row0 + i * Cols::RSTEP, H, W);
        }
    };
    auto store = [&](int buf) {
#pragma unroll
        for (int i = 0; i < LA; ++i) {
            const int idx = tid + i * THR;
            if (AV % THR == 0 || idx < AV) {
                uint4 t;
                t.x = fuser_tf32(ra[i].x); t.y = fuser_tf32(ra[i].y);
                t.z = fuser_tf32(ra[i].z); t.w = fuser_tf32(ra[i].w);
                *reinterpret_cast<uint4*>(&As[buf][idx / (BM / 4)][(idx % (BM / 4)) * 4]) = t;
            }
        }
#pragma unroll
        for (int i = 0; i < LB; ++i) Bs[buf][cols.row0 + i * Cols::RSTEP][cols.col] = fuser_tf32(rb[i]);
    };

    float acc[MI][NI][4];
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NI; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    load(kt0);
    store(0);
    __syncthreads();
    for (int kt = kt0; kt < kt1; ++kt) {
        const int buf = (kt - kt0) & 1;
        if (kt + 1 < kt1) load(kt + 1);
#pragma unroll
        for (int ks = 0; ks < BK / 8; ++ks) {
            const int kk = ks * 8 + tq;
            fuser_u32 a[MI][4], b[NI][2];
#pragma unroll
            for (int mi = 0; mi < MI; ++mi) {
                const int rr = wm * WTM + mi * 16 + gq;
                a[mi][0] = As[buf][kk][rr];     a[mi][1] = As[buf][kk][rr + 8];
                a[mi][2] = As[buf][kk + 4][rr]; a[mi][3] = As[buf][kk + 4][rr + 8];
            }
#pragma unroll
            for (int ni = 0; ni < NI; ++ni) {
                const int c = wn * WTN + ni * 8 + gq;
                b[ni][0] = Bs[buf][kk][c]; b[ni][1] = Bs[buf][kk + 4][c];
            }
#pragma unroll
            for (int mi = 0; mi < MI; ++mi)
#pragma unroll
                for (int ni = 0; ni < NI; ++ni) fuser_mma_tf32(acc[mi][ni], a[mi], b[ni]);
        }
        if (kt + 1 < kt1) store(buf ^ 1);
        __syncthreads();
    }
    if (splits > 1 && !fuser_mma_splitk<BM, BN, MI, NI>(acc, ws, cnt, splits, wm * WTM, wn * WTN, &s_last)) return;
    fuser_conv_epi epi;
    epi.act = act; epi.res_mode = res_mode; epi.p0 = p0; epi.p1 = p1;
    fuser_mma_epilogue<float, MI, NI>(acc, y, r, bias, g, m0 + wm * WTM, nb + wn * WTN, Mg, npix, OHW, img_out,
                                      vec, epi);
}

// FP16: fp16 tensors, weights packed [G][Mpad][Kpad] fp16 (k contiguous: pairs for the A fragments).
template <int BM, int BN, int WGM, int WGN>
FUSER_INLINE void fuser_conv_mma_f16(FUSER_CONV_GEMM_PARAMS(fuser_half, fuser_half)) {
    constexpr int BK = 32, KP = BK / 2, SP = KP + 4;    // u32 pairs per row, padded stride
    constexpr int THR = WGM * WGN * 32;
    constexpr int WTM = BM / WGM, WTN = BN / WGN, MI = WTM / 16, NI = WTN / 8;
    typedef fuser_conv_cols<fuser_half, BN, THR> Cols;
    static_assert(THR % BN == 0 && KP % Cols::RSTEP == 0, "threads must tile the B tile");
    constexpr int AV = BM * (BK / 8), LA = (AV + THR - 1) / THR, LB = KP / Cols::RSTEP;
    __shared__ __align__(16) fuser_u32 As[2][BM][SP];
    __shared__ __align__(16) fuser_u32 Bs[2][BN][SP];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp / WGN, wn = warp % WGN, gq = lane >> 2, tq = lane & 3;
    __shared__ int s_last;
    const int g = blockIdx.z / splits, m0 = blockIdx.y * BM, nb = blockIdx.x * BN;
    const int kt0 = (blockIdx.z - g * splits) * kt_per;
    const int kt1 = kt0 + kt_per < ktiles ? kt0 + kt_per : ktiles;
    const fuser_i64 HW = (fuser_i64)H * W;
    const fuser_half* __restrict__ wg = wp + ((fuser_i64)g * Mpad + m0) * Kpad;
    Cols cols;
    cols.init(x + (fuser_i64)g * Cg * HW, tid, nb, npix, OHW, OW, W, img_in, sh, sw, ph, pw);

    uint4 ra[LA];
    fuser_u32 rb[LB];
    auto load = [&](int kt) {
        const int k0 = kt * BK;
#pragma unroll
        for (int i = 0; i < LA; ++i) {
            const int idx = tid + i * THR;
            if (AV % THR == 0 || idx < AV)
                ra[i] = *reinterpret_cast<const uint4*>(wg + (fuser_i64)(idx / (BK / 8)) * Kpad + k0
                                                        + (idx % (BK / 8)) * 8);
        }
        if (kmaj) {
            cols.tile_begin(k0, Cg, KW, dh, dw, H, W, HW);
#pragma unroll
            for (int i = 0; i < LB; ++i) {
                const int row = 2 * (cols.row0 + i * Cols::RSTEP);
                rb[i] = (fuser_u32)cols.get_km_bits(row, HW) | ((fuser_u32)cols.get_km_bits(row + 1, HW) << 16);
            }
        } else {
#pragma unroll
            for (int i = 0; i < LB; ++i) {
                const int k = k0 + 2 * (cols.row0 + i * Cols::RSTEP);
                rb[i] = (fuser_u32)cols.get_bits(ktab, k, H, W)
                        | ((fuser_u32)cols.get_bits(ktab, k + 1, H, W) << 16);
            }
        }
    };
    auto store = [&](int buf) {
#pragma unroll
        for (int i = 0; i < LA; ++i) {
            const int idx = tid + i * THR;
            if (AV % THR == 0 || idx < AV)
                *reinterpret_cast<uint4*>(&As[buf][idx / (BK / 8)][(idx % (BK / 8)) * 4]) = ra[i];
        }
#pragma unroll
        for (int i = 0; i < LB; ++i) Bs[buf][cols.col][cols.row0 + i * Cols::RSTEP] = rb[i];
    };

    float acc[MI][NI][4];
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NI; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    load(kt0);
    store(0);
    __syncthreads();
    for (int kt = kt0; kt < kt1; ++kt) {
        const int buf = (kt - kt0) & 1;
        if (kt + 1 < kt1) load(kt + 1);
#pragma unroll
        for (int ks = 0; ks < BK / 16; ++ks) {
            const int kq = ks * 8 + tq;
            fuser_u32 a[MI][4], b[NI][2];
#pragma unroll
            for (int mi = 0; mi < MI; ++mi) {
                const int rr = wm * WTM + mi * 16 + gq;
                a[mi][0] = As[buf][rr][kq];     a[mi][1] = As[buf][rr + 8][kq];
                a[mi][2] = As[buf][rr][kq + 4]; a[mi][3] = As[buf][rr + 8][kq + 4];
            }
#pragma unroll
            for (int ni = 0; ni < NI; ++ni) {
                const int c = wn * WTN + ni * 8 + gq;
                b[ni][0] = Bs[buf][c][kq]; b[ni][1] = Bs[buf][c][kq + 4];
            }
#pragma unroll
            for (int mi = 0; mi < MI; ++mi)
#pragma unroll
                for (int ni = 0; ni < NI; ++ni) fuser_mma_f16(acc[mi][ni], a[mi], b[ni]);
        }
        if (kt + 1 < kt1) store(buf ^ 1);
        __syncthreads();
    }
    if (splits > 1 && !fuser_mma_splitk<BM, BN, MI, NI>(acc, ws, cnt, splits, wm * WTM, wn * WTN, &s_last)) return;
    fuser_conv_epi epi;
    epi.act = act; epi.res_mode = res_mode; epi.p0 = p0; epi.p1 = p1;
    fuser_mma_epilogue<fuser_half, MI, NI>(acc, y, r, bias, g, m0 + wm * WTM, nb + wn * WTN, Mg, npix, OHW,
                                           img_out, vec, epi);
}

#define FUSER_MMA_ENTRY(NAME, KIND, T, BM, BN, WGM, WGN)                                                \
    FUSER_GLOBAL void __launch_bounds__(WGM * WGN * 32) NAME(FUSER_CONV_GEMM_PARAMS(T, T)) {            \
        fuser_conv_mma_##KIND<BM, BN, WGM, WGN>(FUSER_CONV_GEMM_ARGS);                                   \
    }
"""

# (BM, BN) -> warps (along M, along N)
MMA_TILES: dict[tuple[int, int], tuple[int, int]] = {(128, 128): (2, 4), (64, 64): (2, 2)}
ALGO_DTYPE = {"mma_tf32": np.float32, "mma_f16": np.float16}


def mma_entry(algo: str, tile: tuple[int, int]) -> str:
    return f"fuser_conv_{algo}_{tile[0]}x{tile[1]}_{dtype_suffix(ALGO_DTYPE[algo])}"


def _entry_line(algo: str, tile: tuple[int, int]) -> str:
    wgm, wgn = MMA_TILES[tile]
    kind, ctype = ("tf32", "float") if algo == "mma_tf32" else ("f16", "fuser_half")
    return f"FUSER_MMA_ENTRY({mma_entry(algo, tile)}, {kind}, {ctype}, {tile[0]}, {tile[1]}, {wgm}, {wgn})\n"


SOURCE = COMMON_SOURCE + _MMA_SOURCE + "".join(_entry_line(a, t) for a in ALGO_DTYPE for t in MMA_TILES)
VARIANTS: list[str] = [mma_entry(a, t) for a in ALGO_DTYPE for t in MMA_TILES]


def entry_source(algo: str, tile: tuple[int, int]) -> str:
    return COMMON_SOURCE + _MMA_SOURCE + _entry_line(algo, tile)


def pack_weights_mk_f16(w: np.ndarray, g, kmaj: bool = False) -> np.ndarray:
    """fp16 [G][Mpad][Kpad] (k contiguous): the A operand of the FP16 tensor-core tactic."""
    kpad, mpad = ceil_div(max(g.k, 1), KPAD) * KPAD, ceil_div(g.mg, MPAD) * MPAD
    out = np.zeros((g.group, mpad, kpad), dtype=np.float16)
    out[:, :g.mg, :g.k] = weights_gmk(w, g, kmaj).astype(np.float16)
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
        if self.algo == "mma_tf32":
            p = pack_weights_km(w, self.g, self.kmaj)
            return self.backend.upload(p), p.shape[1], p.shape[2]
        p = pack_weights_mk_f16(w, self.g, self.kmaj)
        return self.backend.upload(p), p.shape[2], p.shape[1]

    def entry_name(self) -> str:
        return mma_entry(self.algo, self.tile)

    def source(self) -> str:
        return entry_source(self.algo, self.tile)

    def threads(self) -> int:
        wgm, wgn = MMA_TILES[self.tile]
        return wgm * wgn * 32
