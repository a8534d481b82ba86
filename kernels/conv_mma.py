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

template <int F16> struct fuser_mma_t { typedef float T; };
template <> struct fuser_mma_t<1> { typedef fuser_half T; };

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
    fuser_conv_epi epi;
    epi.act = act; epi.res_mode = res_mode; epi.p0 = p0; epi.p1 = p1;
    fuser_mma_epilogue<T, MI, NI>(acc, y, r, bias, g, m0 + wm * WTM, nb + wn * WTN, Mg, npix, OHW, img_out, vec,
                                  epi);
}

#define FUSER_MMA_ENTRY(NAME, F16, T, BM, BN, WGM, WGN)                                                 \
    FUSER_GLOBAL void __launch_bounds__(WGM * WGN * 32, 512 / (WGM * WGN * 32))                       \
    NAME(FUSER_CONV_GEMM_PARAMS(T, T)) {                                                               \
        fuser_conv_mma<F16, BM, BN, WGM, WGN>(FUSER_CONV_GEMM_ARGS);                                     \
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


SOURCE = COMMON_SOURCE + _MMA_SOURCE + "".join(_entry_line(a, t) for a in ALGO_DTYPE for t in MMA_TILES)
VARIANTS: list[str] = [mma_entry(a, t) for a in ALGO_DTYPE for t in MMA_TILES]


def entry_source(algo: str, tile: tuple[int, int]) -> str:
    return COMMON_SOURCE + _MMA_SOURCE + _entry_line(algo, tile)


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
