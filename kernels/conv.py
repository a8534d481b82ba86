"""Convolution family: fused Conv + bias (+ residual Add) + activation — implicit GEMM on SIMT cores.

This module holds the numpy reference (what the CPU backend runs and what every GPU conv tactic is
tested against), the host-side geometry, tactic names and launch rules shared by all conv tactics, the
SIMT implicit-GEMM kernels, and :class:`Runner`, which runs any tactic. The reference implements ONNX
Conv exactly: N-D (1-D/2-D/3-D), groups and depthwise, strides, explicit pads or ``auto_pad``,
dilations; accumulation in float64, output in the input's dtype.

Tactics (the ``tactic`` attribute of a fused conv node; ``_<BM>x<BN>`` pins a tile, else the launch
rule picks it):

- ``igemm`` (this file; seed report §2.2): implicit GEMM, per group ``Y[m, n] = sum_k W[m, k] X[k, n]``
  with m the output channel, n = (batch, oh, ow) the output pixel and k = (ci, kh, kw); the im2col
  matrix is never materialised: each thread gathers its column of a BK x BN tile straight from NCHW
  through a per-node *k table* (k -> channel/row/column offsets; padded k and out-of-range pixels read
  as zero by construction, so the inner loop has one unsigned bounds test per element and no
  divisions). Weights are packed once per node on the host as [G][Kpad][Mpad] (k-major, zero padded),
  so weight tiles move as unguarded float4 loads. Shared-memory tiles, double buffering (the next tile
  is loaded into registers while the current one is multiplied, one barrier per step), 4x4/4x8/8x8
  register blocking read as float4 from shared memory, 4-pixel vector stores. When C_in per group is a
  multiple of the k-tile, k runs channel-innermost (kh, kw, ci): a k-tile then lies in one kernel
  position, one bounds test per tile, no k table. Split-K (a self-cleaning fp32 workspace; the last
  split of a tile runs the epilogue) when the tiles alone leave SMs idle. fp32 arithmetic for fp32 and
  fp16 tensors.
- ``mma_tf32`` / ``mma_f16`` (conv_mma.py): the same GEMM on tensor cores (mma.sync TF32 m16n8k8 and
  FP16 m16n8k16, fp32 accumulation); on AMD a portable fallback of the same fragment contract.
- ``mma_tf32_ms`` (conv_mma.py): the TF32 GEMM with a multistage cp.async shared-memory pipeline (4 stages
  of 16 k in flight, one barrier per stage); the TF32 tactic of choice with ``allow_tf32``.
- ``wgmma_tf32`` (conv_wgmma.py): the TF32 GEMM on Hopper's warpgroup MMA (``wgmma``, sm_90a only): pixels as M
  (the im2col operand from registers), channels as N (weights through a swizzled shared-memory descriptor).
- ``depthwise`` (conv_depthwise.py): direct depthwise (group == C_in) convolution.
- ``winograd`` (conv_winograd.py; seed report §2.3): fused Winograd F(2x2, 3x3), 3x3 stride 1.
- ``library``: no kernel of ours; the node stays in an onnxruntime island (cuDNN/MIOpen).

Epilogue (every tactic): ``y = act(conv + bias (+ R))``; ``residual_after=True`` gives
``act(conv + bias) + R`` (a shortcut Add after the activation, Darknet's). 1-D and 2-D convolutions run
on kernels; 3-D ones and tensors past 32-bit per-image indexing are routed to ``library``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .activations import ACTIVATION_CODES, activation_params, apply_activation
from .backend import Backend, DeviceBackend, KernelArgs, as_ptr, ceil_div, check_pointers, dtype_suffix

NAME = "conv"


def conv_pads(in_spatial: tuple[int, ...], kernel: tuple[int, ...], strides: tuple[int, ...],
              dilations: tuple[int, ...], pads: tuple[int, ...] | None, auto_pad: str) -> list[int]:
    """Explicit [begin..., end...] pads for any ``auto_pad`` mode (ONNX Conv semantics)."""
    nd = len(kernel)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for i in range(nd):
            out = -(-in_spatial[i] // strides[i])
            eff = (kernel[i] - 1) * dilations[i] + 1
            total = max(0, (out - 1) * strides[i] + eff - in_spatial[i])
            small, big = total // 2, total - total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else big)
            end.append(big if auto_pad == "SAME_UPPER" else small)
        return begin + end
    if auto_pad == "VALID" or not pads:
        return [0] * (2 * nd)
    return list(pads)


def conv_reference(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, *, group: int = 1,
                   strides=None, pads=None, dilations=None, auto_pad: str = "NOTSET",
                   kernel_shape=None) -> np.ndarray:
    nd = w.ndim - 2
    kernel = tuple(int(k) for k in (kernel_shape or w.shape[2:]))
    strides = tuple(int(s) for s in (strides or (1,) * nd))
    dilations = tuple(int(d) for d in (dilations or (1,) * nd))
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    p = conv_pads(x.shape[2:], kernel, strides, dilations, pads, auto_pad)
    x64 = np.pad(x.astype(np.float64), [(0, 0), (0, 0)] + [(p[i], p[i + nd]) for i in range(nd)])
    eff = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True))
    win = np.lib.stride_tricks.sliding_window_view(x64, eff, axis=tuple(range(2, 2 + nd)))
    win = win[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)
              + tuple(slice(None, None, d) for d in dilations)]
    n, c = x.shape[:2]
    out_sp = win.shape[2:2 + nd]
    m = w.shape[0]
    cg, mg = c // group, m // group
    ksize = int(np.prod(kernel))
    # [N, C, O..., K...] → [G, N·O, Cg·K]
    cols = np.moveaxis(win, 1, 1 + nd).reshape(n, *out_sp, group, cg * ksize)
    cols = np.moveaxis(cols, -2, 0).reshape(group, -1, cg * ksize)
    wg = w.astype(np.float64).reshape(group, mg, cg * ksize)
    y = np.matmul(cols, np.swapaxes(wg, 1, 2))  # [G, N·O, Mg]
    y = y.reshape(group, n, *out_sp, mg)
    y = np.moveaxis(y, 0, -2).reshape(n, *out_sp, m)
    y = np.moveaxis(y, -1, 1)
    if b is not None:
        y = y + b.astype(np.float64).reshape((1, m) + (1,) * nd)
    return y


def reference(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, residual: np.ndarray | None = None,
              activation: str = "", alpha: float = 0.01, beta: float = 0.0,
              clip_min: float = float("-inf"), clip_max: float = float("inf"), residual_after: bool = False,
              **conv_attrs) -> np.ndarray:
    """Fused Conv(+bias)(+residual)+activation; ``conv_attrs`` are ONNX Conv attributes.
    ``residual_after``: the residual is added after the activation instead of before it."""
    y = conv_reference(x, w, b, **conv_attrs)
    if residual is not None and not residual_after:
        y = y + residual.astype(np.float64)
    y = apply_activation(y, activation, alpha, beta, clip_min, clip_max)
    if residual is not None and residual_after:
        y = y + residual.astype(np.float64)
    return y.astype(x.dtype)


# ---- geometry -------------------------------------------------------------------------------------
class Unsupported(ValueError):
    """No kernel of ours runs this convolution (it keeps the ``library`` tactic)."""


@dataclass(frozen=True)
class ConvGeometry:
    """A 1-D or 2-D convolution in 2-D terms (1-D: H = KH = 1)."""

    nd: int
    n: int
    c: int
    h: int
    w: int
    cout: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int   # begin pads (end pads only shape the output size)
    pw: int
    dh: int
    dw: int
    oh: int
    ow: int
    group: int

    @property
    def cg(self) -> int:
        return self.c // self.group

    @property
    def mg(self) -> int:
        return self.cout // self.group

    @property
    def k(self) -> int:
        return self.cg * self.kh * self.kw

    @property
    def ohw(self) -> int:
        return self.oh * self.ow

    @property
    def npix(self) -> int:
        return self.n * self.oh * self.ow

    @property
    def output_shape(self) -> tuple[int, ...]:
        sp = (self.ow,) if self.nd == 1 else (self.oh, self.ow)
        return (self.n, self.cout, *sp)

    @property
    def pointwise(self) -> bool:
        """1x1, stride 1, no padding, no dilation effect: the GEMM reads X as it lies."""
        return (self.kh == 1 and self.kw == 1 and self.sh == 1 and self.sw == 1 and self.ph == 0
                and self.pw == 0 and self.oh == self.h and self.ow == self.w)

    @property
    def depthwise(self) -> bool:
        return self.group == self.c and self.group > 1 and self.cout % self.c == 0

    @property
    def winograd_ok(self) -> bool:
        return (self.group == 1 and self.kh == 3 and self.kw == 3 and self.sh == 1 and self.sw == 1
                and self.dh == 1 and self.dw == 1)

    @property
    def flops(self) -> int:
        return 2 * self.npix * self.cout * self.k


_I32 = 2 ** 31 - 1


def geometry(x_shape: Sequence[int], w_shape: Sequence[int], group: int = 1, strides=None, pads=None,
             dilations=None, auto_pad: str | bytes = "NOTSET", kernel_shape=None) -> ConvGeometry:
    """The 2-D view of an ONNX Conv; raises :class:`Unsupported` where no kernel of ours applies."""
    nd = len(w_shape) - 2
    if nd not in (1, 2) or len(x_shape) != nd + 2:
        raise Unsupported(f"{nd}-D convolution (kernels do 1-D and 2-D)")
    kernel = tuple(int(k) for k in (kernel_shape or w_shape[2:]))
    if kernel != tuple(int(k) for k in w_shape[2:]):
        raise Unsupported("kernel_shape differs from the weight's shape")
    strides = tuple(int(s) for s in (strides or (1,) * nd))
    dil = tuple(int(d) for d in (dilations or (1,) * nd))
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    sp_in = tuple(int(d) for d in x_shape[2:])
    p = conv_pads(sp_in, kernel, strides, dil, tuple(pads) if pads else None, auto_pad)
    out = tuple((sp_in[i] + p[i] + p[i + nd] - ((kernel[i] - 1) * dil[i] + 1)) // strides[i] + 1
                for i in range(nd))
    n, c, cout, group = int(x_shape[0]), int(x_shape[1]), int(w_shape[0]), int(group)
    if group < 1 or c % group or cout % group or int(w_shape[1]) * group != c:
        raise Unsupported(f"inconsistent group={group} for C={c}, weight {tuple(w_shape)}")
    if min(out) < 1 or min(p) < 0:
        raise Unsupported(f"empty or negative-padded output {out}")
    if nd == 1:
        g = ConvGeometry(1, n, c, 1, sp_in[0], cout, 1, kernel[0], 1, strides[0], 0, p[0], 1, dil[0], 1,
                         out[0], group)
    else:
        g = ConvGeometry(2, n, c, sp_in[0], sp_in[1], cout, kernel[0], kernel[1], strides[0], strides[1],
                         p[0], p[1], dil[0], dil[1], out[0], out[1], group)
    if (g.c * g.h * g.w > _I32 or g.cout * g.ohw > _I32 or g.npix > _I32 or max(g.h, g.w) >= 2 ** 26
            or g.kh * g.kw * g.cg >= 2 ** 26):
        raise Unsupported("tensor too large for 32-bit per-image indexing")
    return g


# ---- tactics ----------------------------------------------------------------------------------------
LIBRARY = "library"
ALGOS = ("igemm", "mma_tf32", "mma_tf32_ms", "wgmma_tf32", "mma_f16", "depthwise", "winograd")
TF32_ALGOS = ("mma_tf32", "mma_tf32_ms", "wgmma_tf32")   # fp32 tensors on TF32 tensor cores: only with allow_tf32
TILES: dict[str, tuple[tuple[int, int], ...]] = {
    "igemm": ((128, 128), (64, 128), (64, 64), (32, 64), (32, 32)),
    "mma_tf32": ((128, 128), (64, 64)),
    "mma_tf32_ms": ((128, 128), (128, 64), (64, 128), (64, 64), (64, 32)),
    "mma_f16": ((128, 128), (64, 64)),
    # (channels, pixels), as every tile here (conv_wgmma.WG_TILES)
    "wgmma_tf32": ((128, 128), (64, 128), (128, 64), (64, 64)),
}
# Relative per-SM throughput of a tile shape (bigger register blocks reuse more); for the launch rule.
_TILE_EFF = {"igemm": {(128, 128): 1.0, (64, 128): 0.9, (64, 64): 0.7, (32, 64): 0.55, (32, 32): 0.4},
             "mma_tf32": {(128, 128): 1.0, (64, 64): 0.8}, "mma_f16": {(128, 128): 1.0, (64, 64): 0.8},
             # mma_tf32_ms: fitted to the H200 TF32 run (BENCHMARKS.md): 128x128 for the problems that fill the
             # GPU, 64x32 below that; 64x128 (four warps in a row) was never the fastest
             "mma_tf32_ms": {(128, 128): 1.0, (128, 64): 0.5, (64, 128): 0.4, (64, 64): 0.5, (64, 32): 0.9},
             # wgmma_tf32: fitted to the H200 run of 2026-11-21 (bench_conv.py --extra: 15 problems; with its split-K
             # cost, _SPLIT_COST, the rule's tile is within 5% of the fastest on each)
             "wgmma_tf32": {(128, 128): 1.0, (64, 128): 0.95, (128, 64): 0.68, (64, 64): 0.8}}


def parse_tactic(tactic: str) -> tuple[str, tuple[int, int] | None]:
    """``"igemm_64x128"`` → ("igemm", (64, 128)); ``"winograd"`` → ("winograd", None)."""
    t = (tactic or "auto").strip()
    if t in ("auto", LIBRARY, *ALGOS):
        return t, None
    algo, _, tile = t.rpartition("_")
    if algo in TILES and "x" in tile:
        bm, _, bn = tile.partition("x")
        if bm.isdigit() and bn.isdigit() and (int(bm), int(bn)) in TILES[algo]:
            return algo, (int(bm), int(bn))
    raise ValueError(f"unknown conv tactic {tactic!r}")


def tactic_name(algo: str, tile: tuple[int, int] | None) -> str:
    return f"{algo}_{tile[0]}x{tile[1]}" if tile else algo


def algo_ok(algo: str, g: ConvGeometry, dtype, backend_name: str = "cuda", arch: str = "") -> bool:
    """Can ``algo`` run this geometry and dtype (correctly — not necessarily fast)? ``arch``: the device's
    (``wgmma_tf32`` runs only on NVIDIA sm_90, through its sm_90a build)."""
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float16):
        return False
    if algo == "igemm":
        return True
    if algo in ("mma_tf32", "mma_tf32_ms"):
        return dt == np.float32
    if algo == "wgmma_tf32":
        return dt == np.float32 and backend_name == "cuda" and arch == "sm_90"
    if algo == "mma_f16":
        return dt == np.float16
    if algo == "depthwise":
        return g.depthwise
    if algo == "winograd":
        return g.winograd_ok
    return False


def candidate_tactics(g: ConvGeometry, dtype, allow_tf32: bool = False, backend_name: str = "cuda",
                      arch: str = "") -> list[str]:
    """Every concrete tactic worth timing for this node (``--tune``), ``library`` first."""
    out = [LIBRARY]
    for algo in ALGOS:
        if not algo_ok(algo, g, dtype, backend_name, arch):
            continue
        if algo in TF32_ALGOS and not allow_tf32:
            continue
        if algo.startswith("mma") and backend_name != "cuda":
            continue   # the AMD build of these is a portable fallback, never a speed tactic
        if algo in TILES:
            out += [tactic_name(algo, t) for t in TILES[algo] if t[0] <= max(16, 2 * g.mg) or t == TILES[algo][-1]]
        else:
            out.append(algo)
    return out


_GEMM_BK = {"igemm": 8, "mma_tf32": 16, "mma_tf32_ms": 16, "mma_f16": 32, "wgmma_tf32": 32}
_GEMM_THREADS = {"igemm": {(128, 128): 256, (64, 128): 256, (64, 64): 256, (32, 64): 128, (32, 32): 64},
                 "mma_tf32": {(128, 128): 256, (64, 64): 128}, "mma_f16": {(128, 128): 256, (64, 64): 128},
                 "mma_tf32_ms": {(128, 128): 256, (128, 64): 128, (64, 128): 128, (64, 64): 128, (64, 32): 128},
                 "wgmma_tf32": {(128, 128): 256, (64, 128): 256, (128, 64): 128, (64, 64): 128}}
# Resident blocks per SM where registers/shared memory (ptxas, sm_90) say otherwise than 512 threads per SM.
# 64x64 / 64x32 build 32 k per stage (conv_mma.MS_TILES): ~52 KiB of shared memory, 4 blocks.
_GEMM_BPS = {"mma_tf32_ms": {(128, 128): 2, (128, 64): 3, (64, 128): 3, (64, 64): 4, (64, 32): 4},
             "wgmma_tf32": {(128, 128): 2, (64, 128): 2, (128, 64): 2, (64, 64): 3}}
_MS_BK32 = ((64, 64), (64, 32))   # conv_mma.MS_TILES' k per stage (conv_mma imports this module)


_SPLIT_COST = {"wgmma_tf32": 16}


def tile_cost(algo: str, tile: tuple[int, int], g: ConvGeometry, num_sms: int = 132) -> float:
    """Relative time of a GEMM tactic's tile (split-K included): waves of resident blocks x block work /
    tile efficiency, plus the split-K reduction. Only compared between tiles of one node."""
    bm, bn = tile
    blocks = ceil_div(g.npix, bn) * ceil_div(g.mg, bm) * g.group
    bk = 32 if algo == "mma_tf32_ms" and tile in _MS_BK32 else _GEMM_BK[algo]
    ktiles = ceil_div(max(g.k, 1), bk)
    splits = split_k(blocks, ktiles, num_sms)
    kt_per = ceil_div(ktiles, splits)
    bps = _GEMM_BPS.get(algo, {}).get(tile) or max(1, 512 // _GEMM_THREADS[algo][tile])  # resident blocks/SM
    waves = ceil_div(blocks * ceil_div(ktiles, kt_per), num_sms * bps)
    # a block's work is its k *elements* (a 32-k stage does twice a 16-k stage's), not its stage count
    t = waves * bps * bm * bn * kt_per * bk / _GEMM_BK[algo] / _TILE_EFF[algo][tile]
    if splits > 1:   # the reduction (wgmma_tf32: its splits measured costlier on the H200, 2026-11-21 run 2)
        t += waves * bps * bm * bn * _SPLIT_COST.get(algo, 2)
    return t


def pick_tile(algo: str, g: ConvGeometry, num_sms: int = 132) -> tuple[int, int]:
    """Launch rule: the tile of least :func:`tile_cost`."""
    return min(TILES[algo], key=lambda t: tile_cost(algo, t, g, num_sms))


def wgmma_preferred(g: ConvGeometry, arch: str) -> bool:
    """``wgmma_tf32`` over ``mma_tf32_ms`` (sm_90, TF32 allowed): where its 64x64 tiles alone make >= 192 blocks, or
    >= 96 blocks with K >= 2048, and K >= 128. Fitted to the H200 run of 2026-11-21 (bench_conv.py --extra, 15
    problems: it sorts all 15 the way the measurements do; wgmma's smallest tile is 64 pixels x 64 channels, so
    mma_tf32_ms's 64x32 tiles and split-K keep the small problems, and tiny K is untested)."""
    if arch != "sm_90" or g.k < 128:
        return False
    blocks = ceil_div(g.npix, 64) * ceil_div(g.mg, 64) * g.group
    return blocks >= 192 or (blocks >= 96 and g.k >= 2048)


def heuristic(g: ConvGeometry, dtype, allow_tf32: bool = False, backend_name: str = "cuda", arch: str = "") -> str:
    """The tactic without tuning (documented in README): depthwise kernel for depthwise convs; on
    NVIDIA, FP16 tensor cores for fp16 tensors and TF32 tensor cores for fp32 only with ``allow_tf32``
    (the multistage ``mma_tf32_ms``: at launch-rule tiles faster than ``mma_tf32`` on all nine problems of
    BENCHMARKS.md; on sm_90 the warpgroup-MMA ``wgmma_tf32`` where :func:`wgmma_preferred`);
    Winograd F(2x2,3x3) for 3x3 stride-1 convs with at least 48 blocks of work (it was the fastest
    fp32 tactic on every 3x3 problem of BENCHMARKS.md); else SIMT implicit GEMM. The tile (and split-K)
    is left to the launch rule."""
    dt = np.dtype(dtype)
    if g.depthwise and g.cg == 1:
        return "depthwise"
    if backend_name == "cuda" and g.k >= 16 and g.mg >= 16:
        if dt == np.float16:
            return "mma_f16"
        if allow_tf32:
            return "wgmma_tf32" if wgmma_preferred(g, arch) else "mma_tf32_ms"
    if g.winograd_ok and ceil_div(g.n * ceil_div(g.oh, 2) * ceil_div(g.ow, 2), 32) * ceil_div(g.cout, 32) >= 48:
        return "winograd"
    return "igemm"


# ---- device source -----------------------------------------------------------------------------------
# Shared by every conv tactic's source: vector I/O of 2/4 consecutive elements, the epilogue.
COMMON_SOURCE = r"""
// ---- conv: shared device code ----
#define FUSER_CONV_BIG (1 << 28)

template <typename T, int N> struct fuser_cvec;
// float x 4 as one 16-byte access. On CUDA through PTX: NVVM split the float4 copy into four 4-byte stores in the
// GEMM epilogues (four store instructions, each sector written four times), which cost up to 1.7x on 1x1 convs
// (bench/probe_codesize.py, H100, 2026-11-21).
template <> struct fuser_cvec<float, 4> {
    static FUSER_INLINE void ld(const float* p, float (&v)[4]) {
#if defined(FUSER_CUDA)
        // not volatile: the compiler may still issue a tile's residual loads ahead of its stores
        asm("ld.global.v4.f32 {%0, %1, %2, %3}, [%4];" : "=f"(v[0]), "=f"(v[1]), "=f"(v[2]), "=f"(v[3]) : "l"(p));
#else
        const float4 t = *reinterpret_cast<const float4*>(p);
        v[0] = t.x; v[1] = t.y; v[2] = t.z; v[3] = t.w;
#endif
    }
    static FUSER_INLINE void st(float* p, const float (&v)[4]) {
#if defined(FUSER_CUDA)
        // no "memory" clobber: nothing in a kernel reads its output back, and loads (bias, residual, staged
        // accumulators) stay free to move across the stores
        asm volatile("st.global.v4.f32 [%0], {%1, %2, %3, %4};" :: "l"(p), "f"(v[0]), "f"(v[1]), "f"(v[2]), "f"(v[3]));
#else
        float4 t; t.x = v[0]; t.y = v[1]; t.z = v[2]; t.w = v[3];
        *reinterpret_cast<float4*>(p) = t;
#endif
    }
};
template <> struct fuser_cvec<float, 2> {
    static FUSER_INLINE void ld(const float* p, float (&v)[2]) {
        const float2 t = *reinterpret_cast<const float2*>(p);
        v[0] = t.x; v[1] = t.y;
    }
    static FUSER_INLINE void st(float* p, const float (&v)[2]) {
        float2 t; t.x = v[0]; t.y = v[1];
        *reinterpret_cast<float2*>(p) = t;
    }
};
template <> struct fuser_cvec<fuser_half, 4> {
    static FUSER_INLINE void ld(const fuser_half* p, float (&v)[4]) {
        const uint2 t = *reinterpret_cast<const uint2*>(p);
        fuser_io<fuser_half>::unpack(t.x, v[0], v[1]);
        fuser_io<fuser_half>::unpack(t.y, v[2], v[3]);
    }
    static FUSER_INLINE void st(fuser_half* p, const float (&v)[4]) {
        uint2 t;
        t.x = fuser_io<fuser_half>::pack(v[0], v[1]);
        t.y = fuser_io<fuser_half>::pack(v[2], v[3]);
        *reinterpret_cast<uint2*>(p) = t;
    }
};
template <> struct fuser_cvec<fuser_half, 2> {
    static FUSER_INLINE void ld(const fuser_half* p, float (&v)[2]) {
        fuser_io<fuser_half>::unpack(*reinterpret_cast<const unsigned int*>(p), v[0], v[1]);
    }
    static FUSER_INLINE void st(fuser_half* p, const float (&v)[2]) {
        *reinterpret_cast<unsigned int*>(p) = fuser_io<fuser_half>::pack(v[0], v[1]);
    }
};

// Activation classes of the GEMM epilogues (FUSER_CONV_EPILOGUE): every activation but three is piecewise
// linear, y' = clamp(A y + B, lo, hi) (times y: HardSwish) (+ lk min(y, 0): LeakyRelu), decoded once from
// (act, p0, p1); Sigmoid and SiLU share y' = y^s / (1 + e^-y); Tanh runs fuser_activation (ACT = -1). NaN bounds
// leave a side unclamped (fmaxf/fminf return the other operand), so the identity passes NaN through as before.
#define FUSER_ACT_PWL 100
#define FUSER_ACT_SIG 101

// out = act(v + r) (res_mode 1: residual before the activation), act(v) + r (2), act(v) (0). ACT: -1 reads the
// activation from `act` at run time (every code, one switch per value); FUSER_ACT_PWL / SIG: one class,
// branch-free per value (set up by fuser_conv_make_epi).
template <int ACT>
struct fuser_conv_epi_t {
    int act, res_mode;
    float p0, p1;
    float A, B, lo, hi, lk;
    bool aff, mul, leaky;
    FUSER_INLINE float operator()(float v, float r) const {
        if (res_mode == 1) v += r;
        if constexpr (ACT == FUSER_ACT_PWL) {
            float t = aff ? fmaf(A, v, B) : v;
            t = fminf(fmaxf(t, lo), hi);
            t = mul ? v * t : t;
            v = leaky ? fmaf(lk, fminf(v, 0.0f), t) : t;
        } else if constexpr (ACT == FUSER_ACT_SIG) {
            const float s = fuser_rcp(1.0f + __expf(-v));   // as fuser_activation_fast
            v = mul ? v * s : s;
        } else {
            v = fuser_activation_fast(v, act, p0, p1);
        }
        return res_mode == 2 ? v + r : v;
    }
};
typedef fuser_conv_epi_t<-1> fuser_conv_epi;

template <int ACT>
FUSER_INLINE fuser_conv_epi_t<ACT> fuser_conv_make_epi(int act, int res_mode, float p0, float p1) {
    fuser_conv_epi_t<ACT> e;
    e.act = act; e.res_mode = res_mode; e.p0 = p0; e.p1 = p1;
    const float nan = __int_as_float(0x7fffffff);
    e.A = 1.0f; e.B = 0.0f; e.lo = nan; e.hi = nan; e.lk = 0.0f;
    e.aff = false; e.mul = act == 6 || act == 8; e.leaky = false;
    switch (act) {
    case 1: e.lo = 0.0f; break;                                        // Relu: max(y, 0)
    case 2: e.lo = 0.0f; e.lk = p0; e.leaky = true; break;             // LeakyRelu: max(y, 0) + a min(y, 0)
    case 3: e.lo = p0; e.hi = p1; break;                               // Clip
    case 5: e.A = p0; e.B = p1; e.aff = true; e.lo = 0.0f; e.hi = 1.0f; break;          // HardSigmoid
    case 6: e.A = 1.0f / 6.0f; e.B = 0.5f; e.aff = true; e.lo = 0.0f; e.hi = 1.0f; break;  // HardSwish
    default: break;                                                     // identity (and the other classes)
    }
    return e;
}

// Runs the epilogue statement `...` with two constants: VEC (every output run of the thread is a whole aligned
// vector: the host's `vec` and a tile whose pixels all exist, `full`; rows past the channels are skipped by the
// callers as before) and ACT (with VEC, the activation class
// of the run-time code `act`; without, -1: any code, any run). Tanh (rare in CNNs, and tanhf is long) always
// takes the general path. The likely case comes first, so that its code follows the main loop's.
// Why: a GEMM epilogue is unrolled over every output a thread holds, and with fuser_activation's switch and the
// element-wise fallback inside it every output carried all nine activations (tanhf's ~20 instructions among
// them) and a scalar loop: two thirds of a tile kernel's machine code (99 KB for the 64x32 mma_tf32_ms kernel).
// A short conv runs that code about once per SM and waited on instruction fetch (ncu, H100: 58% of warp stalls
// "no instruction" on a 1x1 conv, 2-4x cuDNN's time). Interior tiles now run short straight-line code; only
// edge tiles, unaligned tensors and Tanh take the general one.
#define FUSER_CONV_EPILOGUE(act, full, ...)                                                             \
    if ((full) && (act) != 4 && (act) != 7 && (act) != 8) {                                             \
        constexpr bool VEC = true; constexpr int ACT = FUSER_ACT_PWL; __VA_ARGS__;                      \
    } else if ((full) && (act) != 7) {                                                                  \
        constexpr bool VEC = true; constexpr int ACT = FUSER_ACT_SIG; __VA_ARGS__;                      \
    } else {                                                                                            \
        constexpr bool VEC = false; constexpr int ACT = -1; __VA_ARGS__;                                \
    }

// N consecutive outputs of channel co, linear pixels n0..n0+N-1 with n0 = b * OHW + p; nleft = npix - n0.
// vec: the host checked OHW % N == 0 and N-element alignment of y (and r), so an N-group never leaves
// image b and is aligned: one vector access. Otherwise element by element, stepping into image b+1.
template <typename T, int N, bool VEC = false, class Epi = fuser_conv_epi>
FUSER_INLINE void fuser_conv_out(T* __restrict__ y, const T* __restrict__ r, int co, int b, int p, int nleft,
                                 const float (&v)[N], float bias, int OHW, fuser_i64 img_out, int vec,
                                 const Epi& epi) {
    if (nleft <= 0) return;
    fuser_i64 off = (fuser_i64)b * img_out + (fuser_i64)co * OHW + p;
    if (VEC || (vec && nleft >= N)) {   // VEC: the caller knows the run is whole and aligned
        float rr[N], o[N];
#pragma unroll
        for (int j = 0; j < N; ++j) rr[j] = 0.0f;
        if (r) fuser_cvec<T, N>::ld(r + off, rr);
#pragma unroll
        for (int j = 0; j < N; ++j) o[j] = epi(v[j] + bias, rr[j]);
        fuser_cvec<T, N>::st(y + off, o);
        return;
    }
    if constexpr (VEC) return;
    // A rolled loop (v[j] picked by selects, no local memory): this path serves only ragged edges and unaligned
    // tensors, and unrolled it was most of an epilogue's machine code.
    const int nj = nleft < N ? nleft : N;
#pragma unroll 1
    for (int j = 0; j < nj; ++j) {
        float vj = v[0];
#pragma unroll
        for (int q = 1; q < N; ++q) vj = j == q ? v[q] : vj;
        if (p == OHW) { p = 0; ++b; off = (fuser_i64)b * img_out + (fuser_i64)co * OHW; }
        const float rv = r ? fuser_io<T>::ld(r, off) : 0.0f;
        fuser_io<T>::st(y, off, epi(vj + bias, rv));
        ++p; ++off;
    }
}

// The im2col gather of the GEMM tactics: a BK x BN tile of B (k rows, pixel columns), each thread
// owning one column; consecutive threads own consecutive pixels, so every row load is coalesced.
// Column precompute: pixel n -> (image base, top-left input offset). Rows come from the k table
// (int4: x offset, row offset, column offset, 0); padded k has row offset FUSER_CONV_BIG, a pixel past
// npix has ih0 = FUSER_CONV_BIG, so both read zero through the same unsigned bounds test.
template <typename T, int BN, int THR>
struct fuser_conv_cols {
    static constexpr int BCOLS = BN;
    static constexpr int RSTEP = THR / BCOLS;
    const T* xb;
    int pix, ih0, iw0, col, row0;
    FUSER_INLINE void init(const T* xg, int tid, int nb, int npix, int OHW, int OW, int W, fuser_i64 img_in,
                           int sh, int sw, int ph, int pw) {
        col = tid % BCOLS;
        row0 = tid / BCOLS;
        const int n = nb + col;
        xb = xg; pix = 0; ih0 = FUSER_CONV_BIG; iw0 = 0;
        if (n < npix) {
            const int b = n / OHW, q = n - b * OHW;
            const int oh = q / OW, ow = q - oh * OW;
            xb = xg + (fuser_i64)b * img_in;
            ih0 = oh * sh - ph; iw0 = ow * sw - pw;
            pix = ih0 * W + iw0;
        }
    }
    // element (k, this column) of B, fp32
    FUSER_INLINE float get(const int4* __restrict__ ktab, int k, int H, int W) const {
        const int4 e = ktab[k];
        const int ih = ih0 + e.y, iw = iw0 + e.z;
        return ((unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W) ? fuser_io<T>::ld(xb, pix + e.x) : 0.0f;
    }
    // Channel-innermost k order (k = (kh * KW + kw) * Cg + ci, host checked Cg % BK == 0): a k-tile lies
    // inside one kernel position, so one bounds test per tile; row j is input channel ci0 + j. The
    // k-tiles are walked in order (walk_init once, walk_tile per tile): no divisions in the loop.
    const T* tp;
    bool tvalid;
    int wci, wkh, wkw;
    FUSER_INLINE void walk_init(int k0, int Cg, int KW) {
        const int rs = k0 / Cg;
        wci = k0 - rs * Cg; wkh = rs / KW; wkw = rs - wkh * KW;
    }
    // Set up the current tile (tp, tvalid) and step to the next one.
    FUSER_INLINE void walk_tile(int bk, int Cg, int KW, int dh, int dw, int H, int W, fuser_i64 HW) {
        const int ih = ih0 + wkh * dh, iw = iw0 + wkw * dw;
        tvalid = (unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W;
        tp = xb + (fuser_i64)wci * HW + (tvalid ? ih * W + iw : 0);
        wci += bk;
        if (wci == Cg) {
            wci = 0;
            if (++wkw == KW) { wkw = 0; ++wkh; }
        }
    }
    // raw 16-bit element (fp16 tensor-core path)
    FUSER_INLINE unsigned short get_bits(const int4* __restrict__ ktab, int k, int H, int W) const {
        const int4 e = ktab[k];
        const int ih = ih0 + e.y, iw = iw0 + e.z;
        return ((unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W)
            ? reinterpret_cast<const unsigned short*>(xb)[pix + e.x] : (unsigned short)0;
    }
};

// Kernel parameters shared by the GEMM tactics (one KernelArgs signature: CONV_GEMM_SIG on the host).
// Grid: x = pixel tiles, y = channel tiles, z = groups x splits (split-K: split s of a tile runs k-tiles
// [s * kt_per, (s + 1) * kt_per)).
#define FUSER_CONV_GEMM_PARAMS(T, WT)                                                                     \
    const T* __restrict__ x, const WT* __restrict__ wp, const float* __restrict__ bias,                 \
    const T* __restrict__ r, T* __restrict__ y, const int4* __restrict__ ktab, float* __restrict__ ws,  \
    int* __restrict__ cnt, int H, int W, int OW, int OHW, int npix, int K, int ktiles, int splits,      \
    int kt_per, fuser_i64 img_in, fuser_i64 img_out, int sh, int sw, int ph, int pw, int Cg, int Mg,    \
    int Mpad, int Kpad, int kmaj, int KW, int dh, int dw, int vec, int res_mode, int act, float p0,      \
    float p1
#define FUSER_CONV_GEMM_ARGS                                                                           \
    x, wp, bias, r, y, ktab, ws, cnt, H, W, OW, OHW, npix, K, ktiles, splits, kt_per, img_in, img_out,   \
    sh, sw, ph, pw, Cg, Mg, Mpad, Kpad, kmaj, KW, dh, dw, vec, res_mode, act, p0, p1

// Split-K: every split of a tile atomically adds its partial sums into the tile's fp32 workspace, then
// counts itself in; the last to arrive takes the sums back (atomicExch to zero: the workspace and the
// counter are clean again for the next launch, no memset) and alone runs the epilogue.
FUSER_INLINE bool fuser_splitk_last(int* __restrict__ cnt, int splits, int* s_flag) {
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        const int last = atomicAdd(cnt, 1) == splits - 1;
        if (last) *cnt = 0;
        *s_flag = last;
    }
    __syncthreads();
    __threadfence();
    return *s_flag != 0;
}
"""

_IGEMM_SOURCE = r"""
// ---- conv: implicit GEMM on SIMT cores ----
// Block tile BM (output channels) x BN (pixels), BK = 8; thread tile (4 RM) x (4 RN) taken as RM x RN
// blocks of 4 spread BM/RM (BN/RN) apart, so shared-memory reads are float4 and conflict-free and
// output stores are 4 consecutive pixels.
// The igemm thread tile's outputs: rows mrow0 + rm * (BM / RM) + i (i < 4), runs of 4 pixels per rn.
template <typename T, int BM, int RM, int RN, bool VEC, class Epi>
FUSER_INLINE void fuser_igemm_epilogue(const float (&acc)[4 * RM][4 * RN], T* __restrict__ y, const T* __restrict__ r,
                                       const float* __restrict__ bias, int g, int mrow0, const int (&bq)[RN],
                                       const int (&pq)[RN], const int (&nl)[RN], int Mg, int OHW, fuser_i64 img_out,
                                       int vec, const Epi& epi) {
#pragma unroll
    for (int rm = 0; rm < RM; ++rm) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int m = mrow0 + rm * (BM / RM) + i;
            if (m < Mg) {
                const int co = g * Mg + m;
                const float bv = bias[co];
#pragma unroll
                for (int rn = 0; rn < RN; ++rn) {
                    float v[4];
#pragma unroll
                    for (int j = 0; j < 4; ++j) v[j] = acc[rm * 4 + i][rn * 4 + j];
                    fuser_conv_out<T, 4, VEC>(y, r, co, bq[rn], pq[rn], nl[rn], v, bv, OHW, img_out, vec, epi);
                }
            }
        }
    }
}

template <typename T, int BM, int BN, int RM, int RN>
FUSER_INLINE void fuser_conv_igemm(FUSER_CONV_GEMM_PARAMS(T, float)) {
    constexpr int BK = 8;
    constexpr int TM = 4 * RM, TN = 4 * RN;
    constexpr int TYM = BM / TM, TXN = BN / TN, THR = TYM * TXN;
    typedef fuser_conv_cols<T, BN, THR> Cols;
    static_assert(THR % Cols::BCOLS == 0, "threads must tile the B columns");
    constexpr int AV = BK * BM / 4;                          // float4 per A tile
    constexpr int LA = (AV + THR - 1) / THR;
    constexpr int LB = (BK + Cols::RSTEP - 1) / Cols::RSTEP;  // B rows per thread
    __shared__ __align__(16) float As[2][BK][BM];
    __shared__ __align__(16) float Bs[2][BK][BN];

    __shared__ int s_last;
    const int tid = threadIdx.x;
    const int tx = tid % TXN, ty = tid / TXN;
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
            cols.walk_tile(BK, Cg, KW, dh, dw, H, W, HW);
            const T* p = cols.tp + cols.row0 * HW;
#pragma unroll
            for (int i = 0; i < LB; ++i) {
                const int row = cols.row0 + i * Cols::RSTEP;
                if (BK % Cols::RSTEP == 0 || row < BK) rb[i] = cols.tvalid ? fuser_io<T>::ld(p, 0) : 0.0f;
                p += Cols::RSTEP * HW;
            }
        } else {
#pragma unroll
            for (int i = 0; i < LB; ++i) {
                const int row = cols.row0 + i * Cols::RSTEP;
                if (BK % Cols::RSTEP == 0 || row < BK) rb[i] = cols.get(ktab, k0 + row, H, W);
            }
        }
    };
    auto store = [&](int buf) {
#pragma unroll
        for (int i = 0; i < LA; ++i) {
            const int idx = tid + i * THR;
            if (AV % THR == 0 || idx < AV)
                *reinterpret_cast<float4*>(&As[buf][idx / (BM / 4)][(idx % (BM / 4)) * 4]) = ra[i];
        }
#pragma unroll
        for (int i = 0; i < LB; ++i) {
            const int row = cols.row0 + i * Cols::RSTEP;
            if (BK % Cols::RSTEP == 0 || row < BK) Bs[buf][row][cols.col] = rb[i];
        }
    };

    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;

    if (kmaj) cols.walk_init(kt0 * BK, Cg, KW);
    load(kt0);
    store(0);
    __syncthreads();
    for (int kt = kt0; kt < kt1; ++kt) {
        const int buf = (kt - kt0) & 1;
        if (kt + 1 < kt1) load(kt + 1);
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            float a[TM], bv[TN];
#pragma unroll
            for (int rm = 0; rm < RM; ++rm) {
                const float4 t = *reinterpret_cast<const float4*>(&As[buf][kk][rm * (BM / RM) + ty * 4]);
                a[rm * 4 + 0] = t.x; a[rm * 4 + 1] = t.y; a[rm * 4 + 2] = t.z; a[rm * 4 + 3] = t.w;
            }
#pragma unroll
            for (int rn = 0; rn < RN; ++rn) {
                const float4 t = *reinterpret_cast<const float4*>(&Bs[buf][kk][rn * (BN / RN) + tx * 4]);
                bv[rn * 4 + 0] = t.x; bv[rn * 4 + 1] = t.y; bv[rn * 4 + 2] = t.z; bv[rn * 4 + 3] = t.w;
            }
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], bv[j], acc[i][j]);
        }
        if (kt + 1 < kt1) store(buf ^ 1);
        __syncthreads();
    }

    if (splits > 1) {
        const fuser_i64 tile = ((fuser_i64)blockIdx.z / splits * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
        float* __restrict__ wt = ws + tile * (BM * BN);
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int j = 0; j < TN; ++j)
                atomicAdd(wt + ((i / 4) * (BM / RM) + ty * 4 + i % 4) * BN + (j / 4) * (BN / RN) + tx * 4 + j % 4,
                          acc[i][j]);
        if (!fuser_splitk_last(cnt + tile, splits, &s_last)) return;
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int j = 0; j < TN; ++j)
                acc[i][j] = atomicExch(wt + ((i / 4) * (BM / RM) + ty * 4 + i % 4) * BN + (j / 4) * (BN / RN)
                                       + tx * 4 + j % 4, 0.0f);
    }

    int bq[RN], pq[RN], nl[RN];
#pragma unroll
    for (int rn = 0; rn < RN; ++rn) {
        const int n0 = nb + rn * (BN / RN) + tx * 4;
        nl[rn] = npix - n0;
        bq[rn] = nl[rn] > 0 ? n0 / OHW : 0;
        pq[rn] = n0 - bq[rn] * OHW;
    }
    FUSER_CONV_EPILOGUE(act, vec && nb + BN <= npix,
        fuser_igemm_epilogue<T, BM, RM, RN, VEC>(acc, y, r, bias, g, m0 + ty * 4, bq, pq, nl, Mg, OHW, img_out, vec,
                                                 fuser_conv_make_epi<ACT>(act, res_mode, p0, p1)))
}

#define FUSER_IGEMM_ENTRY(NAME, T, BM, BN, RM, RN)                                                      \
    FUSER_GLOBAL void __launch_bounds__((BM / (4 * RM)) * (BN / (4 * RN)))                              \
    NAME(FUSER_CONV_GEMM_PARAMS(T, float)) {                                                           \
        fuser_conv_igemm<T, BM, BN, RM, RN>(FUSER_CONV_GEMM_ARGS);                                       \
    }
"""

# (BM, BN) -> (RM, RN): thread tile (4 RM) x (4 RN); threads = (BM / 4RM) * (BN / 4RN)
IGEMM_TILES: dict[tuple[int, int], tuple[int, int]] = {
    (128, 128): (2, 2), (64, 128): (1, 2), (64, 64): (1, 1), (32, 64): (1, 1), (32, 32): (1, 1),
}


def igemm_entry(tile: tuple[int, int], dtype) -> str:
    return f"fuser_conv_igemm_{tile[0]}x{tile[1]}_{dtype_suffix(dtype)}"


def igemm_threads(tile: tuple[int, int]) -> int:
    rm, rn = IGEMM_TILES[tile]
    return (tile[0] // (4 * rm)) * (tile[1] // (4 * rn))


def _igemm_entry_line(tile: tuple[int, int], dtype) -> str:
    rm, rn = IGEMM_TILES[tile]
    ctype = "float" if np.dtype(dtype) == np.float32 else "fuser_half"
    return f"FUSER_IGEMM_ENTRY({igemm_entry(tile, dtype)}, {ctype}, {tile[0]}, {tile[1]}, {rm}, {rn})\n"


_DTYPES = (np.float32, np.float16)
# Everything (what CI compiles for every target); at run time each Runner compiles only its own entry
# point (``entry_source``): one tile is a few seconds of NVRTC, the whole family a minute.
SOURCE = COMMON_SOURCE + _IGEMM_SOURCE + "".join(_igemm_entry_line(t, dt) for t in IGEMM_TILES for dt in _DTYPES)
VARIANTS: list[str] = [igemm_entry(t, dt) for t in IGEMM_TILES for dt in _DTYPES]


def entry_source(tile: tuple[int, int], dtype) -> str:
    return COMMON_SOURCE + _IGEMM_SOURCE + _igemm_entry_line(tile, dtype)


def entry_sources() -> list[tuple[str, str, str]]:
    """(family, source, entry) of every per-entry module the Runners of all conv tactics compile (to fill
    the disk cache ahead of time, in parallel)."""
    from . import conv_depthwise, conv_mma, conv_winograd

    out = [(NAME, entry_source(t, dt), igemm_entry(t, dt)) for t in IGEMM_TILES for dt in _DTYPES]
    out += [(conv_mma.NAME, conv_mma.entry_source(a, t), conv_mma.entry_name(a, t)) for a, t in conv_mma.all_entries()]
    out += [(conv_depthwise.NAME, conv_depthwise.entry_source(k, dt), conv_depthwise.dw_entry(k, dt))
            for k in conv_depthwise.KERNELS for dt in _DTYPES]
    out += [(conv_winograd.NAME, conv_winograd.SOURCE, e) for e in conv_winograd.VARIANTS[:1]]
    return out


# KernelArgs signature of FUSER_CONV_GEMM_PARAMS
CONV_GEMM_SIG = "pppppppp" + "i" * 9 + "ll" + "i" * 15 + "ff"
KPAD = 32      # k padding of packed weights and k tables (the largest BK of any GEMM tactic)
MPAD = 128     # m padding of packed weights (the largest BM)


# ---- host helpers shared by the tactics ----------------------------------------------------------------
def k_table(g: ConvGeometry) -> np.ndarray:
    """int32 [Kpad, 4]: for k = (ci, kh, kw): (ci*H*W + kh*dh*W + kw*dw, kh*dh, kw*dw, 0); padded k:
    (0, BIG, BIG, 0) so it always reads zero."""
    kpad = ceil_div(max(g.k, 1), KPAD) * KPAD
    tab = np.zeros((kpad, 4), dtype=np.int32)
    k = np.arange(g.k)
    ci, rest = np.divmod(k, g.kh * g.kw)
    kh, kw = np.divmod(rest, g.kw)
    tab[:g.k, 0] = ci * g.h * g.w + kh * g.dh * g.w + kw * g.dw
    tab[:g.k, 1] = kh * g.dh
    tab[:g.k, 2] = kw * g.dw
    tab[g.k:, 1] = 1 << 28
    tab[g.k:, 2] = 1 << 28
    return tab


def weights_gmk(w: np.ndarray, g: ConvGeometry, kmaj: bool = False) -> np.ndarray:
    """[G, Mg, K] with k = (ci, kh, kw), or with ``kmaj`` the channel-innermost k = (kh, kw, ci)."""
    w = np.asarray(w)
    if not kmaj:
        return w.reshape(g.group, g.mg, g.k)
    return w.reshape(g.group, g.mg, g.cg, g.kh * g.kw).transpose(0, 1, 3, 2).reshape(g.group, g.mg, g.k)


def pack_weights_km(w: np.ndarray, g: ConvGeometry, kmaj: bool = False) -> np.ndarray:
    """fp32 [G][Kpad][Mpad] (k-major): what the SIMT and TF32 GEMM tactics load as float4 rows."""
    kpad, mpad = ceil_div(max(g.k, 1), KPAD) * KPAD, ceil_div(g.mg, MPAD) * MPAD
    wk = weights_gmk(w, g, kmaj).astype(np.float32).transpose(0, 2, 1)
    out = np.zeros((g.group, kpad, mpad), dtype=np.float32)
    out[:, :g.k, :g.mg] = wk
    return out


def split_k(blocks: int, ktiles: int, num_sms: int) -> int:
    """Split the k loop when the tiles alone leave the GPU idle: aim at ~2 blocks per SM, keep >= 8
    k-tiles per split, at most 16 splits."""
    if blocks >= num_sms or ktiles < 16:
        return 1
    return max(1, min(ceil_div(2 * num_sms, blocks), ktiles // 8, 16))


def _aligned(ptr: int, nbytes: int) -> bool:
    return ptr % nbytes == 0


class _Epilogue:
    def __init__(self, activation: str, alpha: float, beta: float, clip_min: float, clip_max: float,
                 residual: bool, residual_after: bool) -> None:
        if activation not in ACTIVATION_CODES:
            raise ValueError(f"unknown activation {activation!r}")
        self.p0, self.p1 = activation_params(activation, alpha, beta, clip_min, clip_max)
        self.act = ACTIVATION_CODES[activation]
        self.res_mode = (2 if residual_after else 1) if residual else 0


class _GemmTactic:
    """Shared host side of the GEMM tactics (igemm, mma_*): k table, bias, entry choice, launch."""

    family_name = NAME
    vec_width = 4

    def __init__(self, backend: DeviceBackend, g: ConvGeometry, dtype: np.dtype, w: np.ndarray, bias: np.ndarray,
                 tile: tuple[int, int], epi: _Epilogue, splits: int | None = None,
                 kmaj: bool | None = None) -> None:
        self.backend, self.g, self.dtype, self.tile, self.epi = backend, g, dtype, tile, epi
        self._ktab = backend.upload(k_table(g))
        self._bias = backend.upload(np.ascontiguousarray(bias, dtype=np.float32))
        # channel-innermost k order when a k-tile never straddles two kernel positions
        self.kmaj = g.cg % self.bk == 0 and g.kh * g.kw > 1 and kmaj is not False
        self._w, self.kpad, self.mpad = self.pack(w)
        self.ktiles = ceil_div(max(g.k, 1), self.bk)
        gx, gy = ceil_div(g.npix, tile[1]), ceil_div(g.mg, tile[0])
        self.splits = split_k(gx * gy * g.group, self.ktiles, backend.num_sms) if splits is None else int(splits)
        self.kt_per = ceil_div(self.ktiles, max(1, self.splits))
        self.splits = ceil_div(self.ktiles, self.kt_per)      # every split non-empty
        self.grid = (gx, gy, g.group * self.splits)
        self._ws = self._cnt = None
        if self.splits > 1:  # zeroed once; the kernels leave them zeroed
            self._ws = backend.upload(np.zeros(gx * gy * g.group * tile[0] * tile[1], np.float32))
            self._cnt = backend.upload(np.zeros(gx * gy * g.group, np.int32))
        self.args = KernelArgs(CONV_GEMM_SIG)
        self.entry = self.entry_name()
        self.fn = self.load_function()

    bk = 8
    smem = 0      # dynamic shared memory per block (bytes)

    def load_function(self):
        return self.backend.function(self.family_name, self.source(), self.entry)

    def pack(self, w: np.ndarray):
        p = pack_weights_km(w, self.g, self.kmaj)
        return self.backend.upload(p), p.shape[1], p.shape[2]

    def entry_name(self) -> str:
        return igemm_entry(self.tile, self.dtype)

    def source(self) -> str:
        return entry_source(self.tile, self.dtype)

    def threads(self) -> int:
        return igemm_threads(self.tile)

    def kmode(self, x: int) -> int:
        """The kernel's ``kmaj`` argument for input pointer ``x``: which gather runs."""
        return int(self.kmaj)

    def __call__(self, x: int, r: int, y: int, stream: int) -> None:
        g, isz = self.g, self.dtype.itemsize
        vw = self.vec_width
        vec = int(g.ohw % vw == 0 and _aligned(y, vw * isz) and (r == 0 or _aligned(r, vw * isz)))
        e = self.epi
        ws, cnt = (self._ws.ptr, self._cnt.ptr) if self.splits > 1 else (0, 0)
        self.args.set(x, self._w.ptr, self._bias.ptr, r, y, self._ktab.ptr, ws, cnt, g.h, g.w, g.ow, g.ohw, g.npix,
                      g.k, self.ktiles, self.splits, self.kt_per, g.c * g.h * g.w, g.cout * g.ohw, g.sh, g.sw, g.ph,
                      g.pw, g.cg, g.mg, self.mpad, self.kpad, self.kmode(x), g.kw, g.dh, g.dw, vec, e.res_mode,
                      e.act, e.p0, e.p1)
        self.backend.launch(self.fn, self.grid, (self.threads(), 1, 1), self.args, self.smem, stream)


class IGemmTactic(_GemmTactic):
    algo = "igemm"


def _make_tactic(algo: str, tile, backend, g, dtype, w, bias, epi, splits=None):
    if algo == "igemm":
        return IGemmTactic(backend, g, dtype, w, bias, tile or pick_tile("igemm", g, backend.num_sms), epi, splits)
    if algo == "mma_tf32_ms":
        from . import conv_mma

        return conv_mma.MmaMsTactic(backend, g, dtype, w, bias, tile or pick_tile(algo, g, backend.num_sms), epi,
                                    splits)
    if algo == "wgmma_tf32":
        from . import conv_wgmma

        return conv_wgmma.WgmmaTactic(backend, g, dtype, w, bias, tile or pick_tile(algo, g, backend.num_sms), epi,
                                      splits)
    if algo in ("mma_tf32", "mma_f16"):
        from . import conv_mma

        return conv_mma.MmaTactic(backend, g, dtype, w, bias, tile or pick_tile(algo, g, backend.num_sms), epi,
                                  algo, splits)
    if algo == "depthwise":
        from . import conv_depthwise

        return conv_depthwise.DepthwiseTactic(backend, g, dtype, w, bias, epi)
    if algo == "winograd":
        from . import conv_winograd

        return conv_winograd.WinogradTactic(backend, g, dtype, w, bias, epi)
    raise ValueError(f"no kernel for tactic {algo!r}")


class Runner:
    """Fused Conv(+bias)(+residual)+activation on device buffers, built once per node and shape.

    ``Runner(backend, x_shape, dtype, w, b=None, residual=False, activation="", alpha=0.01, beta=0.0,
    clip_min=-inf, clip_max=inf, tactic="auto", allow_tf32=False, residual_after=False, **conv_attrs)``
    packs the weights for the tactic and loads its kernel; ``output_shape`` is the result's shape;
    ``runner((x_ptr[, r_ptr]), y_ptr, stream=0)`` launches asynchronously. ``tactic`` is a name from
    :func:`parse_tactic`; "auto" (or a tactic that cannot run this shape/dtype) means :func:`heuristic`,
    which uses TF32 only when ``allow_tf32``. ``self.tactic`` is what runs. ``library`` raises
    :class:`Unsupported`, as do 3-D convolutions. ``splits`` overrides the split-K rule of the GEMM
    tactics (tests, benchmarks)."""

    def __init__(self, backend: DeviceBackend, x_shape: Sequence[int], dtype, w: np.ndarray,
                 b: np.ndarray | None = None, *, residual: bool = False, activation: str = "", alpha: float = 0.01,
                 beta: float = 0.0, clip_min: float = float("-inf"), clip_max: float = float("inf"),
                 tactic: str = "auto", allow_tf32: bool = False, residual_after: bool = False,
                 splits: int | None = None, **conv_attrs) -> None:
        if not backend.is_device:
            raise TypeError("Runner needs a device backend; use run() for the cpu backend")
        self.backend = backend
        self.dtype = np.dtype(dtype)
        dtype_suffix(self.dtype)
        w = np.asarray(w)
        self.geom = g = geometry(x_shape, w.shape, **conv_attrs)
        self.output_shape = g.output_shape
        self.residual = bool(residual)
        algo, tile = parse_tactic(tactic)
        if algo == LIBRARY:
            raise Unsupported("tactic 'library' runs in onnxruntime, not on a Runner")
        if algo in TF32_ALGOS:
            allow_tf32 = True
        if algo == "auto" or not algo_ok(algo, g, self.dtype, backend.name, backend.arch):
            algo, tile = parse_tactic(heuristic(g, self.dtype, allow_tf32, backend.name, backend.arch))
        bias = np.zeros(g.cout, np.float32) if b is None else np.asarray(b, np.float32).reshape(-1)
        if bias.size != g.cout:
            raise ValueError(f"bias must have {g.cout} elements, got {bias.size}")
        epi = _Epilogue(activation, alpha, beta, clip_min, clip_max, self.residual, residual_after)
        self.impl = _make_tactic(algo, tile, backend, g, self.dtype, w, bias, epi, splits)
        self.tactic = tactic_name(algo, getattr(self.impl, "tile", None) if algo in TILES else None)

    def __call__(self, inputs: Sequence[int], output: int, stream: int = 0) -> None:
        if self.geom.npix == 0 or self.geom.cout == 0:
            return
        x, y = as_ptr(inputs[0]), as_ptr(output)
        r = as_ptr(inputs[1]) if self.residual else 0
        check_pointers([p for p in (x, y, r) if p], self.dtype.itemsize)
        self.impl(x, r, y, stream)


def run(backend: Backend, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None,
        residual: np.ndarray | None = None, activation: str = "", alpha: float = 0.01, beta: float = 0.0,
        clip_min: float = float("-inf"), clip_max: float = float("inf"), tactic: str = "auto",
        residual_after: bool = False, **conv_attrs) -> np.ndarray:
    """Host-array convenience: the reference on cpu, upload/launch/download on a device."""
    if not backend.is_device:
        return reference(x, w, b, residual, activation, alpha, beta, clip_min, clip_max, residual_after,
                         **conv_attrs)
    assert isinstance(backend, DeviceBackend)
    x = np.ascontiguousarray(x)
    runner = Runner(backend, x.shape, x.dtype, w, b, residual=residual is not None, activation=activation,
                    alpha=alpha, beta=beta, clip_min=clip_min, clip_max=clip_max, tactic=tactic,
                    residual_after=residual_after, **conv_attrs)
    out = np.empty(runner.output_shape, x.dtype)
    xb, yb = backend.upload(x), backend.upload(out)
    ins = [xb.ptr]
    if residual is not None:
        rb = backend.upload(np.ascontiguousarray(residual, dtype=x.dtype))
        ins.append(rb.ptr)
    runner(ins, yb.ptr)
    backend.synchronize()
    backend.copy_dtoh(out, yb.ptr)
    return out
