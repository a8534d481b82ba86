"""Fused Winograd F(2x2, 3x3) convolution (seed report §2.3) + bias (+ residual) + activation.

For 3x3, stride 1, dilation 1, group 1 (any pads, any sizes: partial tiles are masked).
``Y = A^T [ (G g G^T) . (B^T d B) ] A`` per 2x2 output tile: 16 multiplies instead of 36.

- Weights: ``U = G g G^T`` computed once per node on the host in float64, stored fp32 as
  [Cpad][16][Mpad] (C padded to the channel chunk, C_out to the block tile).
- One kernel does everything (nothing goes through device memory in between): a block owns 32 output
  channels x 32 tiles. Per chunk of 8 input channels, each thread loads one 4x4 input patch (zeros
  outside the image), transforms it (adds only) into shared memory as V[c][xi][tile], and the block
  copies U[c][xi][co] beside it; then the 16 transform-domain GEMMs run with each thread owning one
  component xi and an 8 (co) x 8 (tile) register block, read as float4 (rows padded: conflict free).
  The next chunk's patch is loaded into registers while this one is multiplied; at most 128 registers,
  so two blocks share an SM and cover each other's barriers and weight loads.
- Output: the accumulators go through shared memory (two halves of the channels) so each thread
  gathers the 16 components of a (co, tile), applies ``A^T m A``, the bias, residual and activation,
  and writes the 2x2 outputs.

Accuracy (fp32): the transforms only add and halve, so the error is that of fp32 accumulation —
measured against float64 in tests and in BENCHMARKS.md.
"""

from __future__ import annotations

import numpy as np

from .backend import KernelArgs, ceil_div, dtype_suffix
from .conv import COMMON_SOURCE, reference  # noqa: F401  (every family exposes its reference)

NAME = "conv_winograd"

_WINO_SOURCE = r"""
// ---- conv: Winograd F(2x2, 3x3) ----
template <typename T>
FUSER_INLINE void fuser_conv_wino(const T* __restrict__ x, const float* __restrict__ U,
                                  const float* __restrict__ bias, const T* __restrict__ r, T* __restrict__ y,
                                  int C, int H, int W, int OH, int OW, int TW, int tpi, int ntiles, int ph, int pw,
                                  int Cout, int Mpad, fuser_i64 img_in, fuser_i64 img_out, int res_mode, int act,
                                  float p0, float p1) {
    constexpr int BM = 32, BT = 32, CK = 8, RS = 36;     // RS: padded row of 32 (+4: conflict-free float4)
    __shared__ __align__(16) float smem[2 * CK * 16 * RS];
    float* V = smem;                    // [CK][16][RS] transformed input, tile-minor
    float* Us = smem + CK * 16 * RS;    // [CK][16][RS] transformed weights, co-minor
    const int tid = threadIdx.x;
    const int xi = tid >> 4, tco = (tid >> 2) & 3, tt = tid & 3;     // GEMM role
    const int cl = tid >> 5, tl = tid & 31;                           // transform role
    const int co0 = blockIdx.y * BM, t0 = blockIdx.x * BT;
    const fuser_i64 HW = (fuser_i64)H * W;

    const T* xb = x;
    int ih0 = FUSER_CONV_BIG, iw0 = 0;
    {
        const int tile = t0 + tl;
        if (tile < ntiles) {
            const int b = tile / tpi, q = tile - b * tpi, th = q / TW, tw = q - th * TW;
            xb = x + (fuser_i64)b * img_in;
            ih0 = 2 * th - ph; iw0 = 2 * tw - pw;
        }
    }
    float d[16];
    auto load = [&](int c0) {     // the next chunk's input patch, into registers during the GEMM
        const int c = c0 + cl;
        const T* xc = xb + (fuser_i64)c * HW;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int ih = ih0 + i;
            const bool rok = c < C && (unsigned)ih < (unsigned)H;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int iw = iw0 + j;
                d[i * 4 + j] = (rok && (unsigned)iw < (unsigned)W) ? fuser_io<T>::ld(xc, (fuser_i64)ih * W + iw) : 0.0f;
            }
        }
    };
    // transform the patch into V; copy the chunk's weights straight into Us (no register prefetch: with
    // 2 blocks per SM the other block covers the latency, and the registers it would take allow them)
    auto store = [&](int c0) {
        float t[16];
#pragma unroll
        for (int j = 0; j < 4; ++j) {          // B^T d
            t[0 * 4 + j] = d[0 * 4 + j] - d[2 * 4 + j];
            t[1 * 4 + j] = d[1 * 4 + j] + d[2 * 4 + j];
            t[2 * 4 + j] = d[2 * 4 + j] - d[1 * 4 + j];
            t[3 * 4 + j] = d[1 * 4 + j] - d[3 * 4 + j];
        }
        float* vp = V + cl * 16 * RS + tl;
#pragma unroll
        for (int i = 0; i < 4; ++i) {          // (B^T d) B
            vp[(i * 4 + 0) * RS] = t[i * 4 + 0] - t[i * 4 + 2];
            vp[(i * 4 + 1) * RS] = t[i * 4 + 1] + t[i * 4 + 2];
            vp[(i * 4 + 2) * RS] = t[i * 4 + 2] - t[i * 4 + 1];
            vp[(i * 4 + 3) * RS] = t[i * 4 + 1] - t[i * 4 + 3];
        }
        float4 ru[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int idx = tid + i * 256;              // float4 index in [CK][16][BM / 4]
            const int cc = idx >> 7, rem = idx & 127;
            ru[i] = *reinterpret_cast<const float4*>(U + ((fuser_i64)(c0 + cc) * 16 + (rem >> 3)) * Mpad + co0
                                                     + (rem & 7) * 4);
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int idx = tid + i * 256;
            const int cc = idx >> 7, rem = idx & 127;
            *reinterpret_cast<float4*>(Us + (cc * 16 + (rem >> 3)) * RS + (rem & 7) * 4) = ru[i];
        }
    };

    float acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;

    const int nch = (C + CK - 1) / CK;
    load(0);
    store(0);
    __syncthreads();
    for (int ch = 0; ch < nch; ++ch) {
        if (ch + 1 < nch) load((ch + 1) * CK);
#pragma unroll
        for (int c = 0; c < CK; ++c) {
            const float* up = Us + (c * 16 + xi) * RS + tco * 8;
            const float* vq = V + (c * 16 + xi) * RS + tt * 8;
            const float4 u0 = *reinterpret_cast<const float4*>(up), u1 = *reinterpret_cast<const float4*>(up + 4);
            const float4 v0 = *reinterpret_cast<const float4*>(vq), v1 = *reinterpret_cast<const float4*>(vq + 4);
            const float u[8] = {u0.x, u0.y, u0.z, u0.w, u1.x, u1.y, u1.z, u1.w};
            const float v[8] = {v0.x, v0.y, v0.z, v0.w, v1.x, v1.y, v1.z, v1.w};
#pragma unroll
            for (int i = 0; i < 8; ++i)
#pragma unroll
                for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(u[i], v[j], acc[i][j]);
        }
        __syncthreads();
        if (ch + 1 < nch) {
            store((ch + 1) * CK);
            __syncthreads();
        }
    }

    fuser_conv_epi epi;
    epi.act = act; epi.res_mode = res_mode; epi.p0 = p0; epi.p1 = p1;
    float* S = smem;                    // [16 xi][16 co][BT] staging, one half of the channels at a time
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
        for (int ii = 0; ii < 4; ++ii) {
            float* sp = S + (xi * 16 + tco * 4 + ii) * BT + tt * 8;
            float4 a0, a1;
            a0.x = acc[4 * h + ii][0]; a0.y = acc[4 * h + ii][1]; a0.z = acc[4 * h + ii][2]; a0.w = acc[4 * h + ii][3];
            a1.x = acc[4 * h + ii][4]; a1.y = acc[4 * h + ii][5]; a1.z = acc[4 * h + ii][6]; a1.w = acc[4 * h + ii][7];
            *reinterpret_cast<float4*>(sp) = a0;
            *reinterpret_cast<float4*>(sp + 4) = a1;
        }
        __syncthreads();
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int idx = tid + e * 256;
            const int tl2 = idx & 31, c2 = idx >> 5;
            const int co = co0 + (c2 >> 2) * 8 + 4 * h + (c2 & 3);
            const int tile = t0 + tl2;
            if (co < Cout && tile < ntiles) {
                float m[16];
#pragma unroll
                for (int k = 0; k < 16; ++k) m[k] = S[(k * 16 + c2) * BT + tl2];
                float a[4], bq[4];
#pragma unroll
                for (int j = 0; j < 4; ++j) {   // A^T m
                    a[j] = m[0 * 4 + j] + m[1 * 4 + j] + m[2 * 4 + j];
                    bq[j] = m[1 * 4 + j] - m[2 * 4 + j] - m[3 * 4 + j];
                }
                float o[4];
                o[0] = a[0] + a[1] + a[2];  o[1] = a[1] - a[2] - a[3];
                o[2] = bq[0] + bq[1] + bq[2]; o[3] = bq[1] - bq[2] - bq[3];
                const int b = tile / tpi, q = tile - b * tpi, th = q / TW, tw = q - th * TW;
                const int oh = 2 * th, ow = 2 * tw;
                const float bv = bias[co];
                const fuser_i64 base = (fuser_i64)b * img_out + (fuser_i64)co * OH * OW;
#pragma unroll
                for (int u = 0; u < 4; ++u) {
                    const int yy = oh + (u >> 1), xx = ow + (u & 1);
                    if (yy < OH && xx < OW) {
                        const fuser_i64 off = base + (fuser_i64)yy * OW + xx;
                        const float rv = r ? fuser_io<T>::ld(r, off) : 0.0f;
                        fuser_io<T>::st(y, off, epi(o[u] + bv, rv));
                    }
                }
            }
        }
        __syncthreads();
    }
}

#define FUSER_WINO_ENTRY(NAME, T)                                                                       \
    FUSER_GLOBAL void __launch_bounds__(256, 2)                                                        \
    NAME(const T* __restrict__ x, const float* __restrict__ U, const float* __restrict__ bias,          \
         const T* __restrict__ r, T* __restrict__ y, int C, int H, int W, int OH, int OW, int TW,        \
         int tpi, int ntiles, int ph, int pw, int Cout, int Mpad, fuser_i64 img_in, fuser_i64 img_out,   \
         int res_mode, int act, float p0, float p1) {                                                   \
        fuser_conv_wino<T>(x, U, bias, r, y, C, H, W, OH, OW, TW, tpi, ntiles, ph, pw, Cout, Mpad,       \
                           img_in, img_out, res_mode, act, p0, p1);                                     \
    }
FUSER_WINO_ENTRY(fuser_conv_winograd_f32, float)
FUSER_WINO_ENTRY(fuser_conv_winograd_f16, fuser_half)
"""

SOURCE = COMMON_SOURCE + _WINO_SOURCE
VARIANTS: list[str] = ["fuser_conv_winograd_f32", "fuser_conv_winograd_f16"]
SIG = "ppppp" + "i" * 12 + "ll" + "ii" + "ff"
CK, BM, BT = 8, 32, 32

# F(2x2, 3x3) transforms (Lavin & Gray): Y = A^T [(G g G^T) . (B^T d B)] A
G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
BT_MAT = np.array([[1.0, 0.0, -1.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, -1.0, 1.0, 0.0], [0.0, 1.0, 0.0, -1.0]])
AT = np.array([[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]])


def transform_weights(w: np.ndarray) -> np.ndarray:
    """fp32 U = G g G^T as [Cpad][16][Mpad] (float64 arithmetic)."""
    cout, c = w.shape[:2]
    u = np.einsum("ai,ocij,bj->coab", G, np.asarray(w, np.float64), G).reshape(c, cout, 16)
    cpad, mpad = ceil_div(c, CK) * CK, ceil_div(cout, BM) * BM
    out = np.zeros((cpad, 16, mpad), np.float32)
    out[:c, :, :cout] = u.transpose(0, 2, 1)
    return out


def winograd_reference(x: np.ndarray, w: np.ndarray, pads: tuple[int, int] = (1, 1)) -> np.ndarray:
    """The algorithm itself in float64 (tests check the transforms against direct convolution)."""
    n, c, h, wd = x.shape
    cout = w.shape[0]
    oh, ow = h + 2 * pads[0] - 2, wd + 2 * pads[1] - 2
    th, tw = ceil_div(oh, 2), ceil_div(ow, 2)
    xp = np.zeros((n, c, 2 * th + 2, 2 * tw + 2))
    xp[:, :, pads[0]:pads[0] + h, pads[1]:pads[1] + wd] = x
    u = np.einsum("ai,ocij,bj->ocab", G, np.asarray(w, np.float64), G)
    y = np.zeros((n, cout, 2 * th, 2 * tw))
    for i in range(th):
        for j in range(tw):
            d = xp[:, :, 2 * i:2 * i + 4, 2 * j:2 * j + 4]
            v = np.einsum("ak,nckl,bl->ncab", BT_MAT, d, BT_MAT)
            m = np.einsum("ocab,ncab->noab", u, v)
            y[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2] = np.einsum("ia,noab,jb->noij", AT, m, AT)
    return y[:, :, :oh, :ow]


class WinogradTactic:
    algo = "winograd"

    def __init__(self, backend, g, dtype, w, bias, epi) -> None:
        if not g.winograd_ok:
            raise ValueError("winograd F(2x2,3x3) needs a 3x3, stride-1, undilated, ungrouped conv")
        self.backend, self.g, self.dtype, self.epi = backend, g, np.dtype(dtype), epi
        u = transform_weights(np.asarray(w))
        self.mpad = u.shape[2]
        self._u = backend.upload(u)
        self._bias = backend.upload(np.ascontiguousarray(bias, dtype=np.float32))
        self.tw = ceil_div(g.ow, 2)
        self.tpi = ceil_div(g.oh, 2) * self.tw
        self.ntiles = g.n * self.tpi
        if self.ntiles >= 2 ** 31:
            raise ValueError("too many tiles")
        self.entry = f"fuser_conv_winograd_{dtype_suffix(self.dtype)}"
        self.fn = backend.function(NAME, SOURCE, self.entry)
        self.grid = (ceil_div(self.ntiles, BT), ceil_div(g.cout, BM), 1)
        self.args = KernelArgs(SIG)

    def __call__(self, x: int, r: int, y: int, stream: int) -> None:
        g, e = self.g, self.epi
        self.args.set(x, self._u.ptr, self._bias.ptr, r, y, g.c, g.h, g.w, g.oh, g.ow, self.tw, self.tpi, self.ntiles,
                      g.ph, g.pw, g.cout, self.mpad, g.c * g.h * g.w, g.cout * g.ohw, e.res_mode, e.act, e.p0, e.p1)
        self.backend.launch(self.fn, self.grid, (256, 1, 1), self.args, 0, stream)
