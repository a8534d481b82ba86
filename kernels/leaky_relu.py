"""LeakyReLU: y = x if x >= 0 else alpha * x, element-wise, fp32 or fp16 I/O, fp32 arithmetic.

Kernel design (seed report §5): branchless ``fmaxf(x, alpha*x)``, which is exact for alpha <= 1
(negative alpha too); for alpha > 1 the same identity holds with ``fminf``, chosen by a uniform kernel
argument, so every alpha is right without a per-element branch. One launch does everything. The
16-byte-aligned body (float4, or 8 halves, per access) is cut into tiles of ``block * vpt`` vectors,
one per block: every thread issues its ``vpt`` loads before its first store, full tiles run unguarded,
and the host passes the scalar head (up to the first 16-byte boundary) and the vector count, so a
block reaches its loads in a few instructions. The grid's last block also does the head and the
scalar tail. If input and output differ in their address mod 16 the body cannot be vectorised for
both, and the whole range goes through an unrolled, coalesced scalar loop. Indices are 64-bit.
``choose_config`` picks ``vpt`` by size (H200 measurements in BENCHMARKS.md).
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

_SOURCE_BODY = r"""
struct fuser_leaky_op {
    float alpha;
    int use_min;   // alpha > 1: max(x, a*x) would pick a*x for x > 0
    FUSER_INLINE float operator()(float v) const {
        const float s = alpha * v;
        return use_min ? fminf(v, s) : fmaxf(v, s);
    }
};

// op on every lane of one 16-byte vector.
FUSER_INLINE float4 fuser_leaky_vec(float4 t, const fuser_leaky_op& op) {
    t.x = op(t.x); t.y = op(t.y); t.z = op(t.z); t.w = op(t.w);
    return t;
}
FUSER_INLINE unsigned int fuser_leaky_h2(unsigned int w, const fuser_leaky_op& op) {
    float lo, hi;
    fuser_io<fuser_half>::unpack(w, lo, hi);
    return fuser_io<fuser_half>::pack(op(lo), op(hi));
}
FUSER_INLINE uint4 fuser_leaky_vec(uint4 t, const fuser_leaky_op& op) {
    t.x = fuser_leaky_h2(t.x, op); t.y = fuser_leaky_h2(t.y, op);
    t.z = fuser_leaky_h2(t.z, op); t.w = fuser_leaky_h2(t.w, op);
    return t;
}

// Read-only (non-coherent) vector load on CUDA (LDG.E.128.CONSTANT); a plain load on HIP.
template <typename V>
FUSER_INLINE V fuser_leaky_ld(const V* p) {
#if defined(FUSER_CUDA)
    return __ldg(p);
#else
    return *p;
#endif
}

// Tile scheme. The 16-byte-aligned body [head, head + nv*VEC) is cut into tiles of BLOCK*VPT vectors;
// block b takes tiles b, b + gridDim.x, ... (one tile each with the default one-shot grid). Thread t
// loads vectors t, t + BLOCK, ..., t + (VPT-1)*BLOCK of its tile, all VPT loads issued before the
// first use, so a block reads one contiguous 16*BLOCK*VPT-byte span. Full tiles run unguarded; only
// the last, partial tile checks bounds. The scalar head (before the first 16-byte boundary) and tail
// (after the last whole vector) are fewer than 2*VEC elements: the grid's last block does them, one
// per thread. x and y differing in address mod 16 (vec_ok = 0): everything goes through the scalar
// grid-stride loop of fuser_map.
// HOST = 1: head and nv come from the host (Runner computes them from the pointers), so a block goes
// from its first instruction to its loads in a few instructions; HOST = 0 derives them in the kernel
// (what the first tile version did, ~50 dependent 64-bit instructions before the first load).
template <typename T, int BLOCK, int VPT, int HOST>
FUSER_INLINE void fuser_leaky_tiles(const T* __restrict__ x, T* __restrict__ y, fuser_i64 n, fuser_i64 head,
                                    fuser_i64 nv, const fuser_leaky_op& op, int vec_ok) {
    typedef fuser_io<T> io;
    typedef typename io::vec_t vec_t;
    if (!vec_ok) {
        fuser_map<T>(x, y, n, op, (fuser_i64)blockIdx.x * BLOCK + threadIdx.x, (fuser_i64)gridDim.x * BLOCK,
                     false);
        return;
    }
    if (!HOST) {
        head = fuser_head(x, n);
        nv = (n - head) / io::VEC;
    }
    const fuser_u64 unv = (fuser_u64)nv;
    const fuser_u64 TILE = (fuser_u64)BLOCK * VPT;
    const fuser_u64 full = unv / TILE;
    const fuser_u64 ntiles = (unv + TILE - 1) / TILE;
    const vec_t* __restrict__ xv = reinterpret_cast<const vec_t*>(x + head);
    vec_t* __restrict__ yv = reinterpret_cast<vec_t*>(y + head);
    for (fuser_u64 t = blockIdx.x; t < ntiles; t += gridDim.x) {
        const vec_t* __restrict__ px = xv + t * TILE + threadIdx.x;
        vec_t* __restrict__ py = yv + t * TILE + threadIdx.x;
        vec_t v[VPT];
        if (t < full) {
#pragma unroll
            for (int u = 0; u < VPT; ++u) v[u] = fuser_leaky_ld(px + u * BLOCK);
#pragma unroll
            for (int u = 0; u < VPT; ++u) py[u * BLOCK] = fuser_leaky_vec(v[u], op);
        } else {
            // vectors of this tile from this thread's first one on (may be <= 0)
            const int rem = (int)(unv - t * TILE) - (int)threadIdx.x;
#pragma unroll
            for (int u = 0; u < VPT; ++u) if (u * BLOCK < rem) v[u] = fuser_leaky_ld(px + u * BLOCK);
#pragma unroll
            for (int u = 0; u < VPT; ++u) if (u * BLOCK < rem) py[u * BLOCK] = fuser_leaky_vec(v[u], op);
        }
    }
    if (blockIdx.x == gridDim.x - 1) {
        const fuser_i64 tail0 = head + nv * io::VEC;
        const fuser_i64 j = threadIdx.x;
        if (j < head + (n - tail0)) {
            const fuser_i64 e = j < head ? j : tail0 + (j - head);
            io::st(y, e, op(io::ld(x, e)));
        }
    }
}

// Stride scheme (the kernel before 2026-11-21's tile change, kept for comparison): fuser_map's
// grid-stride loop, four guarded vectors per step.
template <typename T>
FUSER_INLINE void fuser_leaky_stride(const T* __restrict__ x, T* __restrict__ y, fuser_i64 n,
                                     const fuser_leaky_op& op, int vec_ok) {
    const fuser_i64 lane = (fuser_i64)blockIdx.x * blockDim.x + threadIdx.x;
    const fuser_i64 nlanes = (fuser_i64)gridDim.x * blockDim.x;
    fuser_map<T>(x, y, n, op, lane, nlanes, vec_ok != 0);
}
"""

_ENTRY = r"""
FUSER_GLOBAL void __launch_bounds__({block})
{entry}(const {ctype}* __restrict__ x, {ctype}* __restrict__ y, fuser_i64 n, fuser_i64 head, fuser_i64 nv,
        float alpha, int use_min, int vec_ok) {{
    fuser_leaky_op op;
    op.alpha = alpha;
    op.use_min = use_min;
    {body};
}}
"""

_CTYPES = {"f32": "float", "f16": "fuser_half"}

# Launch configurations: (scheme, threads per block, 16-byte vectors per thread). "tile": the tile
# kernel with head/nv from the host; "tilek": the same with head/nv derived in the kernel; "stride":
# the grid-stride kernel used before 2026-11-21. choose_config() is the rule Runner uses; the others
# are compiled for the benchmark's comparison rows and the tests (bench/bench_kernels.py,
# BENCHMARKS.md 2026-11-21 "LeakyReLU against torch at every size").
Config = tuple[str, int, int]
SMALL: Config = ("tile", 128, 8)
LARGE: Config = ("tile", 128, 2)
SMALL_MAX_VECTORS = 1 << 19     # provisional
CONFIGS: list[Config] = [
    LARGE,
    SMALL,
    ("tile", 128, 1),
    ("tile", 256, 1),
    ("tile", 128, 4),
    ("tile", 128, 16),
    ("tilek", 128, 2),
    ("tilek", 128, 8),
    ("stride", 256, 2),
]
MAX_GRID = 2 ** 31 - 1


def choose_config(numel: int, itemsize: int) -> Config:
    """The launch configuration for ``numel`` elements of ``itemsize`` bytes."""
    return SMALL if ceil_div(numel, 16 // itemsize) <= SMALL_MAX_VECTORS else LARGE


def entry_name(suffix: str, config: Config) -> str:
    """Kernel entry for dtype ``suffix`` (f32/f16) and a launch configuration."""
    scheme, block, vpt = config
    return f"fuser_leaky_relu_{suffix}_{scheme}{block}x{vpt}"


def _entries() -> str:
    out = []
    for cfg in CONFIGS:
        scheme, block, vpt = cfg
        for sfx, ctype in _CTYPES.items():
            if scheme in ("tile", "tilek"):
                host = int(scheme == "tile")
                body = f"fuser_leaky_tiles<{ctype}, {block}, {vpt}, {host}>(x, y, n, head, nv, op, vec_ok)"
            else:
                body = f"fuser_leaky_stride<{ctype}>(x, y, n, op, vec_ok)"
            out.append(_ENTRY.format(block=block, entry=entry_name(sfx, cfg), ctype=ctype, body=body))
    return "".join(out)


SOURCE = _SOURCE_BODY + _entries()

VARIANTS: list[str] = [entry_name(sfx, cfg) for cfg in CONFIGS for sfx in _CTYPES]


def reference(x: np.ndarray, alpha: float) -> np.ndarray:
    """numpy reference: float64 arithmetic, result in x's dtype."""
    x64 = np.asarray(x).astype(np.float64)
    return np.where(x64 >= 0, x64, float(alpha) * x64).astype(np.asarray(x).dtype)


def grid_blocks(numel: int, itemsize: int, num_sms: int, max_blocks: int | None = None,
                vectors_per_thread: int | None = None, block: int | None = None) -> int:
    """Launch rule: a one-shot grid, one tile of ``block * vectors_per_thread`` 16-byte vectors per block
    (defaults: choose_config's). The kernels loop over tiles, so ``max_blocks`` may cap the grid
    anywhere, and a ``vectors_per_thread`` other than the kernel's own only changes the grid size.
    ``num_sms`` is kept in the signature for rules that need it."""
    _, cfg_block, cfg_vpt = choose_config(numel, itemsize)
    nv = max(1, ceil_div(numel, 16 // itemsize))
    blocks = ceil_div(nv, (block or cfg_block) * (vectors_per_thread or cfg_vpt))
    return max(1, min(blocks, max_blocks if max_blocks is not None else MAX_GRID))


class Runner:
    """LeakyReLU on device buffers, built once per node.

    ``Runner(backend, numel, dtype, alpha, max_blocks=None, vectors_per_thread=None, config=None)``
    compiles/loads the kernel (the optional arguments override the launch rule and pick one of
    ``CONFIGS``, for tests and benchmarks); ``runner((x_ptr,), y_ptr, stream=0)`` launches it on
    ``stream`` (asynchronous). Pointers are ints (or torch/cupy tensors); they must be
    element-aligned, any 16-byte alignment is handled."""

    def __init__(self, backend: DeviceBackend, numel: int, dtype: np.dtype | type | str, alpha: float,
                 max_blocks: int | None = None, vectors_per_thread: int | None = None,
                 config: Config | None = None) -> None:
        if not backend.is_device:
            raise TypeError("Runner needs a device backend; use run() for the cpu backend")
        self.backend = backend
        self.numel = int(numel)
        self.dtype = np.dtype(dtype)
        self.alpha = float(alpha)
        cfg = tuple(config) if config is not None else choose_config(self.numel, self.dtype.itemsize)
        if cfg not in CONFIGS:
            raise ValueError(f"leaky_relu: no compiled configuration {cfg!r}; compiled: {CONFIGS}")
        self.config = cfg
        self.block = cfg[1]
        self.fn = backend.function(NAME, SOURCE, entry_name(dtype_suffix(self.dtype), cfg))
        self.blocks = grid_blocks(self.numel, self.dtype.itemsize, backend.num_sms, max_blocks,
                                  vectors_per_thread or cfg[2], self.block)
        self.args = KernelArgs("pplllfii")
        self._use_min = 1 if self.alpha > 1.0 else 0
        self._vec = 16 // self.dtype.itemsize

    def __call__(self, inputs: Sequence[int], output: int, stream: int = 0) -> None:
        n = self.numel
        if n == 0:
            return
        x, y = as_ptr(inputs[0]), as_ptr(output)
        esz = self.dtype.itemsize
        check_pointers((x, y), esz)
        if (x & 15) == (y & 15):   # one scalar head brings both to a 16-byte boundary
            head = min(((16 - (x & 15)) & 15) // esz, n)
            self.args.set(x, y, n, head, (n - head) // self._vec, self.alpha, self._use_min, 1)
        else:                       # no common vector alignment: all scalar
            self.args.set(x, y, n, n, 0, self.alpha, self._use_min, 0)
        self.backend.launch(self.fn, grid_1d(self.blocks), (self.block, 1, 1), self.args, 0, stream)


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
