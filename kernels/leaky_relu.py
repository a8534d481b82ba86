"""LeakyReLU: y = x if x >= 0 else alpha * x, element-wise, fp32 or fp16 I/O, fp32 arithmetic.

Kernel design (seed report §5): branchless ``fmaxf(x, alpha*x)``, which is exact for alpha <= 1
(negative alpha too); for alpha > 1 the same identity holds with ``fminf``, chosen by a uniform kernel
argument, so every alpha is right without a per-element branch. One launch does everything. The
16-byte-aligned body (float4, or 8 halves, per access) is cut into tiles of ``block * vpt`` vectors,
one per block: every thread issues its ``vpt`` loads before its first store, full tiles run unguarded
(the partial one out of line), and the host passes the scalar head (up to the first 16-byte
boundary) and the vector count, so with 32-bit offsets a block reaches its loads after ~19
instructions. The grid's last block also does the head and the scalar tail. If input and output
differ in their address mod 16 the body cannot be vectorised for both, and the whole range goes
through an unrolled, coalesced scalar loop (in the 64-bit "tile" kernel, which also serves capped
grids and tensors of 2^31 vectors or more). ``choose_config`` picks
``vpt`` by size (H200 measurements in BENCHMARKS.md).
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
// head and nv come from the host (Runner computes them from the pointers): deriving them here put
// ~50 dependent 64-bit instructions before the first load (H200 run 5: 0.07 us more at 1M fp32).
template <typename T, int BLOCK, int VPT>
FUSER_INLINE void fuser_leaky_tiles(const T* __restrict__ x, T* __restrict__ y, fuser_i64 n, fuser_i64 head,
                                    fuser_i64 nv, const fuser_leaky_op& op, int vec_ok) {
    typedef fuser_io<T> io;
    typedef typename io::vec_t vec_t;
    if (!vec_ok) {
        fuser_map<T>(x, y, n, op, (fuser_i64)blockIdx.x * BLOCK + threadIdx.x, (fuser_i64)gridDim.x * BLOCK,
                     false);
        return;
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

// The last, partial tile: out of line, so that the full-tile path is what follows the bounds check in
// the code (the block's first instruction-cache lines) rather than a jump over this.
template <typename V, int BLOCK, int VPT>
__device__ __noinline__ void fuser_leaky_tile32_part(const V* __restrict__ px, V* __restrict__ py, unsigned i,
                                                     unsigned un, fuser_leaky_op op) {
    V v[VPT];
#pragma unroll
    for (int u = 0; u < VPT; ++u) if (i + (unsigned)(u * BLOCK) < un) v[u] = fuser_leaky_ld(px + u * BLOCK);
#pragma unroll
    for (int u = 0; u < VPT; ++u) if (i + (unsigned)(u * BLOCK) < un) py[u * BLOCK] = fuser_leaky_vec(v[u], op);
}

// Tile scheme, short path: the same tiles for the common case (x and y share their 16-byte alignment,
// fewer than 2^31 - 2^16 vectors, one block per tile), which Runner checks on the host. 32-bit
// offsets, no tile loop and no division: a block reaches its first load after ~19 instructions (the
// "tile" kernel: ~50, then a jump), which a ~4 us launch (1M fp32 elements) notices. Blocks past
// the last tile (the host rounds the grid up from numel, not nv) find every guard false.
template <typename T, int BLOCK, int VPT>
FUSER_INLINE void fuser_leaky_tile32(const T* __restrict__ x, T* __restrict__ y, fuser_i64 n, fuser_i64 head,
                                     fuser_i64 nv, const fuser_leaky_op& op) {
    typedef fuser_io<T> io;
    typedef typename io::vec_t vec_t;
    const unsigned un = (unsigned)nv;
    const unsigned i = blockIdx.x * (unsigned)(BLOCK * VPT) + threadIdx.x;
    const vec_t* __restrict__ px = reinterpret_cast<const vec_t*>(x + head) + i;
    vec_t* __restrict__ py = reinterpret_cast<vec_t*>(y + head) + i;
    if (i + (unsigned)((VPT - 1) * BLOCK) < un) {
        vec_t v[VPT];
#pragma unroll
        for (int u = 0; u < VPT; ++u) v[u] = fuser_leaky_ld(px + u * BLOCK);
#pragma unroll
        for (int u = 0; u < VPT; ++u) py[u * BLOCK] = fuser_leaky_vec(v[u], op);
    } else {
        fuser_leaky_tile32_part<vec_t, BLOCK, VPT>(px, py, i, un, op);
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
# kernel (head/nv from the host, 64-bit, any grid); "tile32": its short path, with the "tile" kernel of
# the same shape as the fallback where the short path does not apply; "stride": the grid-stride kernel
# used before 2026-11-21. choose_config() is the rule Runner uses; the others are compiled for the
# benchmark's comparison rows and the tests (bench/bench_kernels.py, BENCHMARKS.md 2026-11-21
# "LeakyReLU against torch at every size").
Config = tuple[str, int, int]
SMALL: Config = ("tile32", 128, 8)
LARGE: Config = ("tile32", 128, 1)
# H200 run 6, 1M fp32 (2^18 vectors): 128x8 3.86 us, 128x1 3.95 us; 4M (2^20): 128x1 9.97 us, 128x8
# 10.11 us; 16M and up: 128x1 within 0.2% of copy, 128x8 5% slower. The switch sits between the two.
SMALL_MAX_VECTORS = 1 << 19
CONFIGS: list[Config] = [
    SMALL,
    LARGE,
    ("tile", 128, 8),
    ("tile", 128, 1),
    ("stride", 256, 2),
]
TILE32_MAX_VECTORS = 2 ** 31 - 2 ** 16    # grid * tile bound for the short path: 32-bit offsets stay < 2^31
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
            if scheme == "tile32":
                body = f"fuser_leaky_tile32<{ctype}, {block}, {vpt}>(x, y, n, head, nv, op)"
            elif scheme == "tile":
                body = f"fuser_leaky_tiles<{ctype}, {block}, {vpt}>(x, y, n, head, nv, op, vec_ok)"
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
        scheme, self.block, vpt = cfg
        sfx = dtype_suffix(self.dtype)
        self._vec = 16 // self.dtype.itemsize
        self.blocks = grid_blocks(self.numel, self.dtype.itemsize, backend.num_sms, max_blocks,
                                  vectors_per_thread or vpt, self.block)
        # tile32: its short path needs one block per tile and 32-bit offsets, else the "tile" kernel.
        self.fn = backend.function(NAME, SOURCE, entry_name(sfx, ("tile", self.block, vpt) if scheme == "tile32"
                                                               else cfg))
        self._fn_short = None
        tile = self.block * vpt
        if (scheme == "tile32" and self.blocks >= ceil_div(ceil_div(self.numel, self._vec), tile)
                and self.blocks * tile <= TILE32_MAX_VECTORS):
            self._fn_short = backend.function(NAME, SOURCE, entry_name(sfx, cfg))
        self.args = KernelArgs("pplllfii")
        self._use_min = 1 if self.alpha > 1.0 else 0

    def __call__(self, inputs: Sequence[int], output: int, stream: int = 0) -> None:
        n = self.numel
        if n == 0:
            return
        x, y = as_ptr(inputs[0]), as_ptr(output)
        esz = self.dtype.itemsize
        check_pointers((x, y), esz)
        fn = self.fn
        if (x & 15) == (y & 15):   # one scalar head brings both to a 16-byte boundary
            head = min(((16 - (x & 15)) & 15) // esz, n)
            self.args.set(x, y, n, head, (n - head) // self._vec, self.alpha, self._use_min, 1)
            if self._fn_short is not None:
                fn = self._fn_short
        else:                       # no common vector alignment: all scalar
            self.args.set(x, y, n, n, 0, self.alpha, self._use_min, 0)
        self.backend.launch(fn, grid_1d(self.blocks), (self.block, 1, 1), self.args, 0, stream)


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
