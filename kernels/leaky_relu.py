"""LeakyReLU: y = x if x >= 0 else alpha * x, element-wise, fp32 or fp16 I/O, fp32 arithmetic.

Kernel design (seed report §5): branchless ``fmaxf(x, alpha*x)``, which is exact for alpha <= 1
(negative alpha too); for alpha > 1 the same identity holds with ``fminf``, chosen by a uniform kernel
argument, so every alpha is right without a per-element branch. One launch does everything: a scalar
head up to the first 16-byte boundary, a grid-stride body of 16-byte vectors (float4, or 8 halves)
with four loads in flight per thread, and a scalar tail. If input and output differ in their address
mod 16 the body cannot be vectorised for both, and the whole range goes through the (also unrolled,
coalesced) scalar loop. Indices are 64-bit throughout.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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

NAME = "leaky_relu"

SOURCE = r"""
struct fuser_leaky_op {
    float alpha;
    int use_min;   // alpha > 1: max(x, a*x) would pick a*x for x > 0
    FUSER_INLINE float operator()(float v) const {
        const float s = alpha * v;
        return use_min ? fminf(v, s) : fmaxf(v, s);
    }
};

template <typename T>
FUSER_INLINE void fuser_leaky_relu_impl(const T* __restrict__ x, T* __restrict__ y, fuser_i64 n,
                                        float alpha, int use_min, int vec_ok) {
    fuser_leaky_op op;
    op.alpha = alpha;
    op.use_min = use_min;
    const fuser_i64 lane = (fuser_i64)blockIdx.x * blockDim.x + threadIdx.x;
    const fuser_i64 nlanes = (fuser_i64)gridDim.x * blockDim.x;
    fuser_map<T>(x, y, n, op, lane, nlanes, vec_ok != 0);
}

FUSER_GLOBAL void __launch_bounds__(256)
fuser_leaky_relu_f32(const float* __restrict__ x, float* __restrict__ y, fuser_i64 n, float alpha,
                     int use_min, int vec_ok) {
    fuser_leaky_relu_impl<float>(x, y, n, alpha, use_min, vec_ok);
}

FUSER_GLOBAL void __launch_bounds__(256)
fuser_leaky_relu_f16(const fuser_half* __restrict__ x, fuser_half* __restrict__ y, fuser_i64 n,
                     float alpha, int use_min, int vec_ok) {
    fuser_leaky_relu_impl<fuser_half>(x, y, n, alpha, use_min, vec_ok);
}
"""

VARIANTS: list[str] = ["fuser_leaky_relu_f32", "fuser_leaky_relu_f16"]

BLOCK = 256
MAX_VPT = 2         # vectors per thread. H200, 64M fp32: 2 -> 99.2-99.8% of copy, 4 -> 97.6-97.8%, 1 -> 91%;
                    # 1M fp32: 2 or 4 -> 4.1 us, 1 -> 4.3-4.4 us (BENCHMARKS.md)
MAX_GRID = 2 ** 31 - 1


def reference(x: np.ndarray, alpha: float) -> np.ndarray:
    """numpy reference: float64 arithmetic, result in x's dtype."""
    x64 = np.asarray(x).astype(np.float64)
    return np.where(x64 >= 0, x64, float(alpha) * x64).astype(np.asarray(x).dtype)


def grid_blocks(numel: int, itemsize: int, num_sms: int, max_blocks: int | None = None,
                vectors_per_thread: int | None = None) -> int:
    """Launch rule. Measured on H200 (BENCHMARKS.md): a one-shot grid (every thread MAX_VPT vectors,
    no grid-stride iterations) reaches 99% of copy bandwidth where a persistent grid of 8 blocks/SM
    reached 89%; giving small tensors fewer vectors per thread (more blocks) measured slower, so the
    rule is the same at every size. The kernel still grid-strides, so ``max_blocks`` may cap the grid
    anywhere. ``num_sms`` is kept in the signature for rules that need it."""
    nv = max(1, ceil_div(numel, 16 // itemsize))
    vpt = vectors_per_thread or MAX_VPT
    blocks = ceil_div(nv, BLOCK * vpt)
    return max(1, min(blocks, max_blocks if max_blocks is not None else MAX_GRID))


class Runner:
    """LeakyReLU on device buffers, built once per node.

    ``Runner(backend, numel, dtype, alpha, max_blocks=None, vectors_per_thread=None)`` compiles/loads
    the kernel (the optional arguments override the launch rule, for tests and benchmarks);
    ``runner((x_ptr,), y_ptr, stream=0)`` launches it on ``stream`` (asynchronous). Pointers are ints
    (or torch/cupy tensors); they must be element-aligned, any 16-byte alignment is handled."""

    def __init__(self, backend: DeviceBackend, numel: int, dtype: np.dtype | type | str, alpha: float,
                 max_blocks: int | None = None, vectors_per_thread: int | None = None) -> None:
        if not backend.is_device:
            raise TypeError("Runner needs a device backend; use run() for the cpu backend")
        self.backend = backend
        self.numel = int(numel)
        self.dtype = np.dtype(dtype)
        self.alpha = float(alpha)
        self.fn = backend.function(NAME, SOURCE, f"fuser_leaky_relu_{dtype_suffix(self.dtype)}")
        self.blocks = grid_blocks(self.numel, self.dtype.itemsize, backend.num_sms, max_blocks,
                                  vectors_per_thread)
        self.args = KernelArgs("pplfii")
        self._use_min = 1 if self.alpha > 1.0 else 0

    def __call__(self, inputs: Sequence[int], output: int, stream: int = 0) -> None:
        if self.numel == 0:
            return
        x, y = as_ptr(inputs[0]), as_ptr(output)
        check_pointers((x, y), self.dtype.itemsize)
        vec_ok = 1 if (x & 15) == (y & 15) else 0
        self.args.set(x, y, self.numel, self.alpha, self._use_min, vec_ok)
        self.backend.launch(self.fn, grid_1d(self.blocks), (BLOCK, 1, 1), self.args, 0, stream)


def run(backend: Backend, x: np.ndarray, alpha: float) -> np.ndarray:
    """Host-array convenience: the reference on cpu, upload/launch/download on a device."""
    if not backend.is_device:
        return reference(x, alpha)
    assert isinstance(backend, DeviceBackend)
    x = np.ascontiguousarray(x)
    out = np.empty_like(x)
    xb = backend.upload(x)
    yb = backend.upload(out)
    Runner(backend, x.size, x.dtype, alpha)((xb.ptr,), yb.ptr)
    backend.synchronize()
    backend.copy_dtoh(out, yb.ptr)
    return out
