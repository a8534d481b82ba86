"""Depthwise convolution (group == C_in, any channel multiplier) + bias (+ residual) + activation.

A depthwise conv does K*K multiply-adds per output and reads each input ~K*K/stride^2 times: it is
memory- and latency-bound, not a GEMM. Direct kernel: a block row of threads walks the output pixels
of one (image, output channel) plane, each thread 4 consecutive output columns; the plane's weights
are uniform across the block (one broadcast load each), the K*K input reads of neighbouring threads
overlap and are served by L1. 3x3 and 5x5 have the filter loops compiled in (fully unrolled); other
sizes, strides, dilations and asymmetric pads run the generic entry. fp32 arithmetic.
"""

from __future__ import annotations

import numpy as np

from .backend import KernelArgs, ceil_div, dtype_suffix
from .conv import COMMON_SOURCE, _aligned, reference  # noqa: F401  (every family exposes its reference)

NAME = "conv_depthwise"

_DW_SOURCE = r"""
// ---- conv: depthwise ----
template <typename T, int KH, int KW>
FUSER_INLINE void fuser_conv_dw(const T* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
                                const T* __restrict__ r, T* __restrict__ y, int C, int Cout, int H, int W, int OH,
                                int OW, int kh_, int kw_, int sh, int sw, int ph, int pw, int dh, int dw, int mult,
                                int vec, int res_mode, int act, float p0, float p1) {
    const int kh_n = KH > 0 ? KH : kh_, kw_n = KW > 0 ? KW : kw_;
    const int plane = blockIdx.x;                    // b * Cout + co
    const int co = plane % Cout, b = plane / Cout, ci = co / mult;
    const int OWq = (OW + 3) >> 2;
    const int q = blockIdx.y * blockDim.x + threadIdx.x;
    if (q >= OH * OWq) return;
    const int oh = q / OWq, ow0 = (q - oh * OWq) * 4;
    const T* __restrict__ xp = x + ((fuser_i64)b * C + ci) * H * W;
    const float* __restrict__ wc = w + (fuser_i64)co * kh_n * kw_n;
    const float bv = bias[co];
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    const int iw_base = ow0 * sw - pw;
#pragma unroll
    for (int i = 0; i < kh_n; ++i) {
        const int ih = oh * sh - ph + i * dh;
        if ((unsigned)ih < (unsigned)H) {
            const T* __restrict__ row = xp + (fuser_i64)ih * W;
#pragma unroll
            for (int j = 0; j < kw_n; ++j) {
                const float wv = wc[i * kw_n + j];
                const int iw0 = iw_base + j * dw;
#pragma unroll
                for (int u = 0; u < 4; ++u) {
                    const int iw = iw0 + u * sw;
                    if ((unsigned)iw < (unsigned)W) acc[u] = fmaf(wv, fuser_io<T>::ld(row, iw), acc[u]);
                }
            }
        }
    }
    fuser_conv_epi epi;
    epi.act = act; epi.res_mode = res_mode; epi.p0 = p0; epi.p1 = p1;
    const fuser_i64 off = (fuser_i64)plane * OH * OW + (fuser_i64)oh * OW + ow0;
    if (vec && ow0 + 4 <= OW) {   // host: OW % 4 == 0 and y (r) 4-element aligned
        float rr[4] = {0.0f, 0.0f, 0.0f, 0.0f}, o[4];
        if (r) fuser_cvec<T, 4>::ld(r + off, rr);
#pragma unroll
        for (int u = 0; u < 4; ++u) o[u] = epi(acc[u] + bv, rr[u]);
        fuser_cvec<T, 4>::st(y + off, o);
    } else {
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            if (ow0 + u < OW) {
                const float rv = r ? fuser_io<T>::ld(r, off + u) : 0.0f;
                fuser_io<T>::st(y, off + u, epi(acc[u] + bv, rv));
            }
        }
    }
}

#define FUSER_DW_ENTRY(NAME, T, KH, KW)                                                                 \
    FUSER_GLOBAL void __launch_bounds__(256)                                                           \
    NAME(const T* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,          \
         const T* __restrict__ r, T* __restrict__ y, int C, int Cout, int H, int W, int OH, int OW,      \
         int kh_, int kw_, int sh, int sw, int ph, int pw, int dh, int dw, int mult, int vec,            \
         int res_mode, int act, float p0, float p1) {                                                   \
        fuser_conv_dw<T, KH, KW>(x, w, bias, r, y, C, Cout, H, W, OH, OW, kh_, kw_, sh, sw, ph, pw, dh,  \
                                 dw, mult, vec, res_mode, act, p0, p1);                                 \
    }
"""

KERNELS = ((3, 3), (5, 5), (0, 0))   # compiled-in filter sizes; (0, 0) = any
SIG = "ppppp" + "i" * 18 + "ff"
BLOCK = 256


def dw_entry(k: tuple[int, int], dtype) -> str:
    size = "any" if k == (0, 0) else f"{k[0]}x{k[1]}"
    return f"fuser_conv_dw_{size}_{dtype_suffix(dtype)}"


def _entry_line(k: tuple[int, int], dtype) -> str:
    ctype = "float" if np.dtype(dtype) == np.float32 else "fuser_half"
    return f"FUSER_DW_ENTRY({dw_entry(k, dtype)}, {ctype}, {k[0]}, {k[1]})\n"


SOURCE = COMMON_SOURCE + _DW_SOURCE + "".join(_entry_line(k, dt) for k in KERNELS for dt in (np.float32, np.float16))
VARIANTS: list[str] = [dw_entry(k, dt) for k in KERNELS for dt in (np.float32, np.float16)]


def entry_source(k: tuple[int, int], dtype) -> str:
    return COMMON_SOURCE + _DW_SOURCE + _entry_line(k, dtype)


class DepthwiseTactic:
    algo = "depthwise"

    def __init__(self, backend, g, dtype, w, bias, epi) -> None:
        if not g.depthwise:
            raise ValueError("depthwise tactic needs group == C_in")
        self.backend, self.g, self.dtype, self.epi = backend, g, np.dtype(dtype), epi
        self._w = backend.upload(np.ascontiguousarray(np.asarray(w, np.float32).reshape(g.cout, g.kh * g.kw)))
        self._bias = backend.upload(np.ascontiguousarray(bias, dtype=np.float32))
        k = (g.kh, g.kw) if (g.kh, g.kw) in KERNELS else (0, 0)
        self.entry = dw_entry(k, self.dtype)
        self.fn = backend.function(NAME, entry_source(k, self.dtype), self.entry)
        self.grid = (g.n * g.cout, ceil_div(g.oh * ceil_div(g.ow, 4), BLOCK), 1)
        if self.grid[1] > 65535:
            raise ValueError("output plane too large for the depthwise grid")
        self.args = KernelArgs(SIG)

    def __call__(self, x: int, r: int, y: int, stream: int) -> None:
        g, isz, e = self.g, self.dtype.itemsize, self.epi
        vec = int(g.ow % 4 == 0 and _aligned(y, 4 * isz) and (r == 0 or _aligned(r, 4 * isz)))
        self.args.set(x, self._w.ptr, self._bias.ptr, r, y, g.c, g.cout, g.h, g.w, g.oh, g.ow, g.kh, g.kw, g.sh,
                      g.sw, g.ph, g.pw, g.dh, g.dw, g.cout // g.c, vec, e.res_mode, e.act, e.p0, e.p1)
        self.backend.launch(self.fn, self.grid, (BLOCK, 1, 1), self.args, 0, stream)
