"""Inference BatchNormalization apply (+ optional fused activation), fp32 or fp16 I/O, fp32 arithmetic.

Parameter fusion (seed report §4): an inference BN is the per-channel affine map
``y = x * scale[c] + shift[c]`` with ``scale = gamma / sqrt(var + eps)`` and
``shift = beta - mean * scale``, computed ONCE per model on the host in float64
(``fold_scale_shift``), so the kernel reads two floats per plane instead of four per element and does
no rsqrt.

Kernel design: plane-indexed. x is [N, C, *spatial]; plane p = (n, c) is S = prod(spatial) contiguous
elements and its channel is p % C: one modulo per plane, none per element. Threads are split into
groups of ``tpp`` (threads per plane, a power of two); a block holds 256 / tpp groups, so small planes
(7x7, 14x14) pack several per block while 56x56 planes get a whole block. When there are too few
planes to fill the GPU, each plane is cut into ``chunks`` pieces. Inside a piece the shared
``fuser_map`` does a scalar head to the 16-byte boundary, a 16-byte vector body, a scalar tail
(per plane, so any H*W and any pointer offset work); 64-bit indices.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .activations import ACTIVATION_CODES, activation_params, apply_activation
from .backend import (
    Backend,
    DeviceBackend,
    KernelArgs,
    as_ptr,
    ceil_div,
    check_pointers,
    dtype_suffix,
    grid_1d,
)

NAME = "batchnorm"

SOURCE = r"""
template <typename T, int ACT>
FUSER_INLINE void fuser_bn_impl(const T* __restrict__ x, T* __restrict__ y,
                                const float* __restrict__ scale, const float* __restrict__ shift,
                                fuser_i64 planes, fuser_i64 S, int C, int chunks, fuser_i64 chunk_len,
                                int tpp_log2, int vec_ok, int act, float p0, float p1) {
    const int tpp = 1 << tpp_log2;
    const int gpb = blockDim.x >> tpp_log2;           // plane groups per block
    const int group = threadIdx.x >> tpp_log2;
    const int lane = threadIdx.x & (tpp - 1);
    const fuser_i64 items = planes * chunks;
    const bool small = (planes >> 32) == 0;           // 32-bit channel modulo (64-bit is a long call)
    for (fuser_i64 it = (fuser_i64)blockIdx.x * gpb + group; it < items; it += (fuser_i64)gridDim.x * gpb) {
        fuser_i64 p = it, k = 0;
        if (chunks > 1) { p = it / chunks; k = it - p * chunks; }
        const int c = small ? (int)((fuser_u32)p % (fuser_u32)C) : (int)(p % C);
        fuser_affine_act_t<ACT> op;
        op.A = scale[c]; op.B = shift[c]; op.act = act; op.p0 = p0; op.p1 = p1;
        const fuser_i64 s0 = k * chunk_len;
        fuser_i64 len = S - s0;
        if (len > chunk_len) len = chunk_len;
        const fuser_i64 off = p * S + s0;
        fuser_map<T>(x + off, y + off, len, op, lane, tpp, vec_ok != 0);
    }
}

// One entry point per dtype for any activation (ACT=-1, switched at run time), plus entry points with
// the common activations compiled in (no per-element switch, fewer registers).
#define FUSER_BN_ENTRY(NAME, T, ACT)                                                                  \
    FUSER_GLOBAL void __launch_bounds__(256)                                                          \
    NAME(const T* __restrict__ x, T* __restrict__ y, const float* __restrict__ scale,                \
         const float* __restrict__ shift, fuser_i64 planes, fuser_i64 S, int C, int chunks,          \
         fuser_i64 chunk_len, int tpp_log2, int vec_ok, int act, float p0, float p1) {                \
        fuser_bn_impl<T, ACT>(x, y, scale, shift, planes, S, C, chunks, chunk_len, tpp_log2, vec_ok,  \
                              act, p0, p1);                                                           \
    }
FUSER_BN_ENTRY(fuser_batchnorm_f32, float, -1)
FUSER_BN_ENTRY(fuser_batchnorm_f32_none, float, 0)
FUSER_BN_ENTRY(fuser_batchnorm_f32_relu, float, 1)
FUSER_BN_ENTRY(fuser_batchnorm_f32_leaky, float, 2)
FUSER_BN_ENTRY(fuser_batchnorm_f32_silu, float, 8)
FUSER_BN_ENTRY(fuser_batchnorm_f16, fuser_half, -1)
FUSER_BN_ENTRY(fuser_batchnorm_f16_none, fuser_half, 0)
FUSER_BN_ENTRY(fuser_batchnorm_f16_relu, fuser_half, 1)
FUSER_BN_ENTRY(fuser_batchnorm_f16_leaky, fuser_half, 2)
FUSER_BN_ENTRY(fuser_batchnorm_f16_silu, fuser_half, 8)
"""

# Activations with a compiled-in entry point (suffix); the rest use the run-time switch.
SPECIALIZED: dict[str, str] = {"": "none", "Relu": "relu", "LeakyRelu": "leaky", "SiLU": "silu"}

VARIANTS: list[str] = [f"fuser_batchnorm_{dt}{sfx}" for dt in ("f32", "f16")
                       for sfx in ["", *(f"_{v}" for v in SPECIALIZED.values())]]

BLOCK = 256
MAX_GRID = 2 ** 31 - 1    # one-shot grid: measured 98% of copy on H200 vs 88% for 8 blocks/SM persistent
PER_LANE = 4              # vectors a lane should get per piece (the four loads fuser_map keeps in flight)


def fold_scale_shift(gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray,
                     eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (scale, shift) of an inference BN, computed in float64, returned as float32."""
    g, b, m, v = (np.asarray(a, dtype=np.float64).ravel() for a in (gamma, beta, mean, var))
    scale = g / np.sqrt(v + float(eps))
    shift = b - m * scale
    return scale.astype(np.float32), shift.astype(np.float32)


def reference(x: np.ndarray, scale: np.ndarray, shift: np.ndarray, activation: str = "",
              alpha: float = 0.01, beta: float = 0.0, clip_min: float = float("-inf"),
              clip_max: float = float("inf")) -> np.ndarray:
    """numpy reference: x [N, C, *spatial] (rank >= 2); scale/shift hold C float32 values (any shape).
    float64 arithmetic, result in x's dtype."""
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"BatchNorm input must be [N, C, ...], got shape {x.shape}")
    c = x.shape[1]
    sc = np.asarray(scale, dtype=np.float32).ravel().astype(np.float64)
    sh = np.asarray(shift, dtype=np.float32).ravel().astype(np.float64)
    if sc.size != c or sh.size != c:
        raise ValueError(f"scale/shift must have C={c} elements, got {sc.size}/{sh.size}")
    bshape = (1, c) + (1,) * (x.ndim - 2)
    y = x.astype(np.float64) * sc.reshape(bshape) + sh.reshape(bshape)
    y = apply_activation(y, activation, alpha, beta, clip_min, clip_max)
    return y.astype(x.dtype)


def plan(shape: Sequence[int], itemsize: int, num_sms: int, max_blocks: int | None = None,
         per_lane: int = PER_LANE) -> dict[str, int]:
    """The launch rule: threads per plane, chunks per plane and grid for an input shape. ``per_lane``:
    vectors each lane should get (fewer lanes per plane when larger)."""
    n, c = int(shape[0]), int(shape[1])
    s = int(np.prod(shape[2:], dtype=np.int64)) if len(shape) > 2 else 1
    planes = n * c
    vec = 16 // itemsize
    nvp = max(1, ceil_div(s, vec))                       # vectors per plane
    tpp = 1
    while tpp < BLOCK and tpp * per_lane < nvp:
        tpp *= 2
    chunks, chunk_len = 1, max(1, s)
    target_lanes = num_sms * 2048                        # threads a full GPU keeps resident
    if planes * tpp < target_lanes and nvp > tpp * per_lane:
        want = ceil_div(target_lanes, max(1, planes * tpp))
        most = ceil_div(nvp, tpp * per_lane)             # keep >= per_lane vectors per lane per piece
        chunks = max(1, min(want, most))
        chunk_len = ceil_div(ceil_div(s, chunks), vec) * vec   # pieces start on vector multiples
        chunks = ceil_div(s, chunk_len)
    gpb = BLOCK // tpp
    items = planes * chunks
    cap = max_blocks if max_blocks is not None else MAX_GRID
    blocks = max(1, min(ceil_div(items, gpb), cap))
    return {"planes": planes, "S": s, "C": c, "tpp": tpp, "tpp_log2": tpp.bit_length() - 1,
            "chunks": chunks, "chunk_len": chunk_len, "blocks": blocks}


class Runner:
    """BN(+activation) apply on device buffers, built once per node.

    ``Runner(backend, shape, dtype, scale, shift, activation="", alpha=0.01, beta=0.0,
    clip_min=-inf, clip_max=inf, max_blocks=None, specialize=True, per_lane=4)`` uploads scale/shift
    (from ``fold_scale_shift``) and loads the kernel (the last three override the launch rule: tests,
    benchmarks); ``runner((x_ptr,), y_ptr, stream=0)`` launches asynchronously. Any element-
    aligned pointers; in-place (x_ptr == y_ptr) is fine."""

    def __init__(self, backend: DeviceBackend, shape: Sequence[int], dtype: np.dtype | type | str,
                 scale: np.ndarray, shift: np.ndarray, activation: str = "", alpha: float = 0.01,
                 beta: float = 0.0, clip_min: float = float("-inf"), clip_max: float = float("inf"),
                 max_blocks: int | None = None, specialize: bool = True, per_lane: int = PER_LANE) -> None:
        if not backend.is_device:
            raise TypeError("Runner needs a device backend; use run() for the cpu backend")
        if len(shape) < 2:
            raise ValueError(f"BatchNorm input must be [N, C, ...], got shape {tuple(shape)}")
        if activation not in ACTIVATION_CODES:
            raise ValueError(f"unknown activation {activation!r}")
        self.backend = backend
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.numel = int(np.prod(self.shape, dtype=np.int64))
        sc = np.ascontiguousarray(np.asarray(scale, dtype=np.float32).ravel())
        sh = np.ascontiguousarray(np.asarray(shift, dtype=np.float32).ravel())
        if sc.size != self.shape[1] or sh.size != self.shape[1]:
            raise ValueError(f"scale/shift must have C={self.shape[1]} elements")
        self._scale = backend.upload(sc)
        self._shift = backend.upload(sh)
        self.plan = plan(self.shape, self.dtype.itemsize, backend.num_sms, max_blocks, per_lane)
        entry = f"fuser_batchnorm_{dtype_suffix(self.dtype)}"
        if specialize and activation in SPECIALIZED:
            entry += f"_{SPECIALIZED[activation]}"
        self.entry = entry
        self.fn = backend.function(NAME, SOURCE, entry)
        p0, p1 = activation_params(activation, alpha, beta, clip_min, clip_max)
        self._act = (ACTIVATION_CODES[activation], p0, p1)
        self.args = KernelArgs("pppplliiliiiff")

    def __call__(self, inputs: Sequence[int], output: int, stream: int = 0) -> None:
        if self.numel == 0:
            return
        x, y = as_ptr(inputs[0]), as_ptr(output)
        check_pointers((x, y), self.dtype.itemsize)
        pl = self.plan
        vec_ok = 1 if (x & 15) == (y & 15) else 0
        self.args.set(x, y, self._scale.ptr, self._shift.ptr, pl["planes"], pl["S"], pl["C"], pl["chunks"],
                      pl["chunk_len"], pl["tpp_log2"], vec_ok, *self._act)
        self.backend.launch(self.fn, grid_1d(pl["blocks"]), (BLOCK, 1, 1), self.args, 0, stream)


def run(backend: Backend, x: np.ndarray, scale: np.ndarray, shift: np.ndarray, activation: str = "",
        alpha: float = 0.01, beta: float = 0.0, clip_min: float = float("-inf"),
        clip_max: float = float("inf")) -> np.ndarray:
    """Host-array convenience: the reference on cpu, upload/launch/download on a device."""
    if not backend.is_device:
        return reference(x, scale, shift, activation, alpha, beta, clip_min, clip_max)
    assert isinstance(backend, DeviceBackend)
    x = np.ascontiguousarray(x)
    out = np.empty_like(x)
    xb, yb = backend.upload(x), backend.upload(out)
    runner = Runner(backend, x.shape, x.dtype, scale, shift, activation, alpha, beta, clip_min, clip_max)
    runner((xb.ptr,), yb.ptr)
    backend.synchronize()
    backend.copy_dtoh(out, yb.ptr)
    return out
