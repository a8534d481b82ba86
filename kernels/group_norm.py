"""GroupNormalization (+ optional fused activation, SiLU being the one that matters), fp32 or fp16 I/O,
fp32 arithmetic.

x is [N, C, *spatial]; the C channels split into G groups of Cg = C / G channels, and each (n, g) group
is M = Cg * S contiguous elements, normalised with its own mean and (population) variance, then scaled
per channel: ``y = act((x - mean) * rstd * gamma[c] + beta[c])``.

Two schemes, chosen per node by ``plan``:

- **fused** (groups of up to 16384 elements, with enough groups to fill the GPU, or tiny ones): one
  block per group, the group held in registers (32 floats per thread, 128-512 threads), exact
  two-pass statistics from the registers (mean, then sum of squared deviations: no cancellation),
  warp-shuffle block sums, ``rsqrtf``, then the affine+activation written from registers. x is read
  once and y written once: the minimum traffic.
- **split** (large groups, or too few groups to fill the GPU, seed-report concern): kernel 1 cuts each
  group into chunks and writes one Welford partial (count, mean, M2) per chunk; kernel 2 has each
  chunk merge its group's partials (Chan's formula, numerically stable) and apply. Costs one extra
  read of x, buys full-GPU parallelism for any N*G. No cooperative launch, no atomics.

Vector (16-byte) loads whenever pointers and S allow, scalar otherwise; 64-bit indexing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .activations import ACTIVATION_CODES, activation_params, apply_activation
from .backend import (
    Backend,
    DeviceBackend,
    DeviceBuffer,
    KernelArgs,
    as_ptr,
    ceil_div,
    check_pointers,
    dtype_suffix,
    grid_1d,
)

NAME = "group_norm"

SOURCE = r"""
// V elements per access: V == fuser_io<T>::VEC (16 bytes) or 1 (scalar).
template <typename T, int V> struct fuser_vio {
    static FUSER_INLINE void ld(const T* p, fuser_i64 i, float (&v)[V]) { fuser_io<T>::ldv(p, i, v); }
    static FUSER_INLINE void st(T* p, fuser_i64 i, const float (&v)[V]) { fuser_io<T>::stv(p, i, v); }
};
template <typename T> struct fuser_vio<T, 1> {
    static FUSER_INLINE void ld(const T* p, fuser_i64 i, float (&v)[1]) { v[0] = fuser_io<T>::ld(p, i); }
    static FUSER_INLINE void st(T* p, fuser_i64 i, const float (&v)[1]) { fuser_io<T>::st(p, i, v[0]); }
};

// ---- fused: one block per group, group cached in registers, exact two-pass statistics ----
template <typename T, int V, int NREG, int ACT>
FUSER_INLINE void fuser_gn_fused_impl(const T* __restrict__ x, T* __restrict__ y,
                                      const float* __restrict__ gamma, const float* __restrict__ beta,
                                      int G, int Cg, int S, float eps, int act, float p0, float p1) {
    __shared__ float smem[96];
    const fuser_i64 grp = blockIdx.x;
    const int M = Cg * S;
    const int nv = M / V;
    const T* xg = x + grp * (fuser_i64)M;
    T* yg = y + grp * (fuser_i64)M;
    float cache[NREG][V];
    float s = 0.0f;
#pragma unroll
    for (int r = 0; r < NREG; ++r) {
        const int i = threadIdx.x + r * blockDim.x;
        if (i < nv) {
            fuser_vio<T, V>::ld(xg, i, cache[r]);
#pragma unroll
            for (int k = 0; k < V; ++k) s += cache[r][k];
        }
    }
    const float mean = fuser_block_sum(s, smem) / (float)M;
    float q = 0.0f;
#pragma unroll
    for (int r = 0; r < NREG; ++r) {
        const int i = threadIdx.x + r * blockDim.x;
        if (i < nv) {
#pragma unroll
            for (int k = 0; k < V; ++k) { const float d = cache[r][k] - mean; q = fmaf(d, d, q); }
        }
    }
    const float var = fuser_block_sum(q, smem) / (float)M;
    const float rstd = rsqrtf(var + eps);
    const int c0 = (int)(grp % G) * Cg;
#pragma unroll
    for (int r = 0; r < NREG; ++r) {
        const int i = threadIdx.x + r * blockDim.x;
        if (i < nv) {
            // S % V == 0 on the vector path, so all V elements share one channel.
            const int c = c0 + (int)((unsigned)(i * V) / (unsigned)S);
            const float A = rstd * gamma[c];
            const float B = fmaf(-mean, A, beta[c]);
            float o[V];
#pragma unroll
            for (int k = 0; k < V; ++k) o[k] = fuser_activation_t<ACT>(fmaf(cache[r][k], A, B), act, p0, p1);
            fuser_vio<T, V>::st(yg, i, o);
        }
    }
}

// The epilogue runs after the statistics, when this block has no loads left to hide it behind, so
// the common activations (none, SiLU) are compiled in rather than switched per element.
template <typename T, int V, int NREG>
FUSER_INLINE void fuser_gn_fused(const T* __restrict__ x, T* __restrict__ y, const float* __restrict__ gamma,
                                 const float* __restrict__ beta, int G, int Cg, int S, float eps, int act,
                                 float p0, float p1) {
    if (act == 0) fuser_gn_fused_impl<T, V, NREG, 0>(x, y, gamma, beta, G, Cg, S, eps, act, p0, p1);
    else if (act == 8) fuser_gn_fused_impl<T, V, NREG, 8>(x, y, gamma, beta, G, Cg, S, eps, act, p0, p1);
    else fuser_gn_fused_impl<T, V, NREG, -1>(x, y, gamma, beta, G, Cg, S, eps, act, p0, p1);
}

// ---- split, kernel 1: one Welford partial per (group, chunk) ----
template <typename T>
FUSER_INLINE fuser_welford fuser_welford_segment(const T* __restrict__ x, fuser_i64 n, bool vec_ok) {
    typedef fuser_io<T> io;
    const int VEC = io::VEC;
    fuser_welford w; w.n = 0.0f; w.mean = 0.0f; w.m2 = 0.0f;
    fuser_i64 head = n, nv = 0;
    if (vec_ok) { head = fuser_head(x, n); nv = (n - head) / VEC; }
    const T* xb = x + head;
    // Four guarded vector loads in flight per step (as in fuser_map), then the merges.
    for (fuser_i64 i = threadIdx.x; i < nv; i += 4 * (fuser_i64)blockDim.x) {
        float v[4][VEC];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const fuser_i64 iu = i + u * (fuser_i64)blockDim.x;
            if (iu < nv) io::ldv(xb, iu, v[u]);
        }
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            if (i + u * (fuser_i64)blockDim.x < nv) {
                // Summarise the vector (count, mean, M2) and merge it: one division per VEC elements.
                float vs = 0.0f;
#pragma unroll
                for (int k = 0; k < VEC; ++k) vs += v[u][k];
                fuser_welford b; b.n = (float)VEC; b.mean = vs * (1.0f / VEC); b.m2 = 0.0f;
#pragma unroll
                for (int k = 0; k < VEC; ++k) { const float d = v[u][k] - b.mean; b.m2 = fmaf(d, d, b.m2); }
                w = fuser_welford_merge(w, b);
            }
        }
    }
    const fuser_i64 tail0 = head + nv * VEC;
    const fuser_i64 ns = head + (n - tail0);
    for (fuser_i64 j = threadIdx.x; j < ns; j += blockDim.x) {
        const fuser_i64 e = j < head ? j : tail0 + (j - head);
        fuser_welford b; b.n = 1.0f; b.mean = io::ld(x, e); b.m2 = 0.0f;
        w = fuser_welford_merge(w, b);
    }
    return w;
}

template <typename T>
FUSER_INLINE void fuser_gn_partial_impl(const T* __restrict__ x, float* __restrict__ part, fuser_i64 groups,
                                        fuser_i64 M, int chunks, fuser_i64 chunk_len, int vec_ok) {
    __shared__ float smem[96];
    const fuser_i64 items = groups * chunks;
    for (fuser_i64 it = blockIdx.x; it < items; it += gridDim.x) {
        const fuser_i64 grp = it / chunks, k = it - grp * chunks;
        const fuser_i64 s0 = k * chunk_len;
        fuser_i64 len = M - s0;
        if (len > chunk_len) len = chunk_len;
        fuser_welford w = fuser_welford_segment<T>(x + grp * M + s0, len, vec_ok != 0);
        w = fuser_welford_block(w, smem);
        if (threadIdx.x == 0) { part[3 * it] = w.n; part[3 * it + 1] = w.mean; part[3 * it + 2] = w.m2; }
    }
}

// ---- split, kernel 2: merge the group's partials, apply to this chunk channel by channel ----
template <typename T>
FUSER_INLINE void fuser_gn_apply_impl(const T* __restrict__ x, T* __restrict__ y,
                                      const float* __restrict__ gamma, const float* __restrict__ beta,
                                      const float* __restrict__ part, fuser_i64 groups, int G, int Cg,
                                      fuser_i64 S, int chunks, fuser_i64 chunk_len, float eps, int vec_ok,
                                      int act, float p0, float p1) {
    __shared__ float smem[96];
    const fuser_i64 M = (fuser_i64)Cg * S;
    const fuser_i64 items = groups * chunks;
    for (fuser_i64 it = blockIdx.x; it < items; it += gridDim.x) {
        const fuser_i64 grp = it / chunks, k = it - grp * chunks;
        fuser_welford w; w.n = 0.0f; w.mean = 0.0f; w.m2 = 0.0f;
        for (int j = threadIdx.x; j < chunks; j += blockDim.x) {
            const float* pp = part + 3 * (grp * chunks + j);
            fuser_welford b; b.n = pp[0]; b.mean = pp[1]; b.m2 = pp[2];
            w = fuser_welford_merge(w, b);
        }
        w = fuser_welford_block(w, smem);
        const float mean = w.mean;
        const float rstd = rsqrtf(fmaxf(w.m2 / w.n, 0.0f) + eps);
        const fuser_i64 s0 = k * chunk_len;
        fuser_i64 end = s0 + chunk_len;
        if (end > M) end = M;
        const fuser_i64 gbase = grp * M;
        const int c0 = (int)(grp % G) * Cg;
        for (fuser_i64 e = s0; e < end;) {
            const fuser_i64 cl = e / S;                   // once per channel segment, not per element
            fuser_i64 seg_end = (cl + 1) * S;
            if (seg_end > end) seg_end = end;
            fuser_affine_act op;
            op.A = rstd * gamma[c0 + cl];
            op.B = fmaf(-mean, op.A, beta[c0 + cl]);
            op.act = act; op.p0 = p0; op.p1 = p1;
            fuser_map<T>(x + gbase + e, y + gbase + e, seg_end - e, op, threadIdx.x, blockDim.x, vec_ok != 0);
            e = seg_end;
        }
    }
}

#define FUSER_GN_FUSED(NAME, T, V, NREG)                                                              \
    FUSER_GLOBAL void __launch_bounds__(512)                                                          \
    NAME(const T* __restrict__ x, T* __restrict__ y, const float* __restrict__ gamma,                \
         const float* __restrict__ beta, int G, int Cg, int S, float eps, int act, float p0, float p1) { \
        fuser_gn_fused<T, V, NREG>(x, y, gamma, beta, G, Cg, S, eps, act, p0, p1);                    \
    }
FUSER_GN_FUSED(fuser_group_norm_fused_f32_v, float, 4, 8)
FUSER_GN_FUSED(fuser_group_norm_fused_f32_s, float, 1, 32)
FUSER_GN_FUSED(fuser_group_norm_fused_f16_v, fuser_half, 8, 4)
FUSER_GN_FUSED(fuser_group_norm_fused_f16_s, fuser_half, 1, 32)

#define FUSER_GN_SPLIT(SUFFIX, T)                                                                     \
    FUSER_GLOBAL void __launch_bounds__(256)                                                          \
    fuser_group_norm_partial_##SUFFIX(const T* __restrict__ x, float* __restrict__ part,             \
                                      fuser_i64 groups, fuser_i64 M, int chunks, fuser_i64 chunk_len, \
                                      int vec_ok) {                                                   \
        fuser_gn_partial_impl<T>(x, part, groups, M, chunks, chunk_len, vec_ok);                      \
    }                                                                                                 \
    FUSER_GLOBAL void __launch_bounds__(256)                                                          \
    fuser_group_norm_apply_##SUFFIX(const T* __restrict__ x, T* __restrict__ y,                      \
                                    const float* __restrict__ gamma, const float* __restrict__ beta, \
                                    const float* __restrict__ part, fuser_i64 groups, int G, int Cg,  \
                                    fuser_i64 S, int chunks, fuser_i64 chunk_len, float eps,          \
                                    int vec_ok, int act, float p0, float p1) {                        \
        fuser_gn_apply_impl<T>(x, y, gamma, beta, part, groups, G, Cg, S, chunks, chunk_len, eps,     \
                               vec_ok, act, p0, p1);                                                  \
    }
FUSER_GN_SPLIT(f32, float)
FUSER_GN_SPLIT(f16, fuser_half)
"""

VARIANTS: list[str] = [
    "fuser_group_norm_fused_f32_v", "fuser_group_norm_fused_f32_s",
    "fuser_group_norm_fused_f16_v", "fuser_group_norm_fused_f16_s",
    "fuser_group_norm_partial_f32", "fuser_group_norm_apply_f32",
    "fuser_group_norm_partial_f16", "fuser_group_norm_apply_f16",
]

CACHE_PER_THREAD = 32        # NREG * V of the fused kernels
FUSED_THREADS = (128, 256, 512)
FUSED_MAX = FUSED_THREADS[-1] * CACHE_PER_THREAD    # 16384 elements per group
SPLIT_BLOCK = 256
SPLIT_MIN_CHUNK = 4096       # elements: a 256-thread block should get a few vectors per thread
WAVES = 8                    # split scheme: aim for this many blocks per SM when choosing chunks
MAX_GRID = 2 ** 31 - 1


def reference(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, num_groups: int, epsilon: float,
              activation: str = "", alpha: float = 0.01, act_beta: float = 0.0) -> np.ndarray:
    """numpy reference: statistics and arithmetic in float64, result in x's dtype.
    x [N, C, *spatial]; gamma/beta hold C values (any shape)."""
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"GroupNorm input must be [N, C, ...], got shape {x.shape}")
    n, c = x.shape[0], x.shape[1]
    if num_groups <= 0 or c % num_groups:
        raise ValueError(f"C={c} is not divisible into {num_groups} groups")
    g = np.asarray(gamma).astype(np.float64).ravel()
    b = np.asarray(beta).astype(np.float64).ravel()
    if g.size != c or b.size != c:
        raise ValueError(f"gamma/beta must have C={c} elements, got {g.size}/{b.size}")
    x64 = x.astype(np.float64).reshape(n, num_groups, -1)
    mean = x64.mean(axis=-1, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=-1, keepdims=True)
    xn = ((x64 - mean) / np.sqrt(var + float(epsilon))).reshape(x.shape)
    bshape = (1, c) + (1,) * (x.ndim - 2)
    y = xn * g.reshape(bshape) + b.reshape(bshape)
    y = apply_activation(y, activation, alpha, act_beta)
    return y.astype(x.dtype)


def plan(shape: Sequence[int], num_groups: int, itemsize: int, num_sms: int,
         force: str | None = None) -> dict[str, int | str]:
    """The launch rule: fused or split, block size, chunks, grid."""
    n, c = int(shape[0]), int(shape[1])
    s = int(np.prod(shape[2:], dtype=np.int64)) if len(shape) > 2 else 1
    if num_groups <= 0 or c % num_groups:
        raise ValueError(f"C={c} is not divisible into {num_groups} groups")
    cg = c // num_groups
    m = cg * s
    groups = n * num_groups
    fused = m <= FUSED_MAX and (groups >= num_sms or m <= 4096)
    if force is not None:
        fused = force == "fused"
        if fused and m > FUSED_MAX:
            raise ValueError(f"group of {m} elements exceeds the fused kernel's {FUSED_MAX}")
    if fused:
        threads = next(t for t in FUSED_THREADS if t * CACHE_PER_THREAD >= m)
        return {"scheme": "fused", "groups": groups, "G": num_groups, "Cg": cg, "S": s, "M": m,
                "threads": threads, "blocks": groups}
    vec = 16 // itemsize
    want = ceil_div(num_sms * WAVES, groups)             # chunks to give every SM several blocks
    most = max(1, ceil_div(m, SPLIT_MIN_CHUNK))
    chunks = max(1, min(want, most))
    chunk_len = ceil_div(ceil_div(m, chunks), vec) * vec
    chunks = ceil_div(m, chunk_len)
    items = groups * chunks
    blocks = max(1, min(items, MAX_GRID))
    return {"scheme": "split", "groups": groups, "G": num_groups, "Cg": cg, "S": s, "M": m,
            "threads": SPLIT_BLOCK, "chunks": chunks, "chunk_len": chunk_len, "blocks": blocks}


class Runner:
    """GroupNorm(+activation) on device buffers, built once per node.

    ``Runner(backend, shape, dtype, gamma, beta, num_groups, epsilon, activation="", alpha=0.01,
    act_beta=0.0, force=None)`` uploads gamma/beta, allocates the split scheme's workspace and loads
    the kernels; ``runner((x_ptr,), y_ptr, stream=0)`` launches asynchronously (one launch fused, two
    split). ``force`` in {None, "fused", "split"} overrides the plan (tests, benchmarks). Not in-place:
    the split scheme reads x after kernel 1."""

    def __init__(self, backend: DeviceBackend, shape: Sequence[int], dtype: np.dtype | type | str,
                 gamma: np.ndarray, beta: np.ndarray, num_groups: int, epsilon: float,
                 activation: str = "", alpha: float = 0.01, act_beta: float = 0.0,
                 force: str | None = None) -> None:
        if not backend.is_device:
            raise TypeError("Runner needs a device backend; use run() for the cpu backend")
        if len(shape) < 2:
            raise ValueError(f"GroupNorm input must be [N, C, ...], got shape {tuple(shape)}")
        if activation not in ACTIVATION_CODES:
            raise ValueError(f"unknown activation {activation!r}")
        self.backend = backend
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.numel = int(np.prod(self.shape, dtype=np.int64))
        c = self.shape[1]
        g = np.ascontiguousarray(np.asarray(gamma, dtype=np.float32).ravel())
        b = np.ascontiguousarray(np.asarray(beta, dtype=np.float32).ravel())
        if g.size != c or b.size != c:
            raise ValueError(f"gamma/beta must have C={c} elements")
        self._gamma, self._beta = backend.upload(g), backend.upload(b)
        self.plan = plan(self.shape, num_groups, self.dtype.itemsize, backend.num_sms, force)
        self.eps = float(epsilon)
        p0, p1 = activation_params(activation, alpha, act_beta)
        self._act = (ACTIVATION_CODES[activation], p0, p1)
        sfx = dtype_suffix(self.dtype)
        self._vec = 16 // self.dtype.itemsize
        if self.plan["scheme"] == "fused":
            self.fn_vec = backend.function(NAME, SOURCE, f"fuser_group_norm_fused_{sfx}_v")
            self.fn_scalar = backend.function(NAME, SOURCE, f"fuser_group_norm_fused_{sfx}_s")
            self.args = KernelArgs("ppppiiififf")
        else:
            self.fn_partial = backend.function(NAME, SOURCE, f"fuser_group_norm_partial_{sfx}")
            self.fn_apply = backend.function(NAME, SOURCE, f"fuser_group_norm_apply_{sfx}")
            nparts = int(self.plan["groups"]) * int(self.plan["chunks"])
            self._part = DeviceBuffer(backend, 3 * 4 * nparts)
            self.args_partial = KernelArgs("ppllili")
            self.args_apply = KernelArgs("pppppliililfiiff")

    def __call__(self, inputs: Sequence[int], output: int, stream: int = 0) -> None:
        if self.numel == 0:
            return
        x, y = as_ptr(inputs[0]), as_ptr(output)
        check_pointers((x, y), self.dtype.itemsize)
        pl = self.plan
        be = self.backend
        if pl["scheme"] == "fused":
            vec_ok = x % 16 == 0 and y % 16 == 0 and int(pl["S"]) % self._vec == 0
            self.args.set(x, y, self._gamma.ptr, self._beta.ptr, pl["G"], pl["Cg"], pl["S"], self.eps,
                          *self._act)
            be.launch(self.fn_vec if vec_ok else self.fn_scalar, grid_1d(int(pl["blocks"])),
                      (int(pl["threads"]), 1, 1), self.args, 0, stream)
            return
        vec_ok = 1 if (x & 15) == (y & 15) else 0
        grid = grid_1d(int(pl["blocks"]))
        self.args_partial.set(x, self._part.ptr, pl["groups"], pl["M"], pl["chunks"], pl["chunk_len"], vec_ok)
        be.launch(self.fn_partial, grid, (SPLIT_BLOCK, 1, 1), self.args_partial, 0, stream)
        self.args_apply.set(x, y, self._gamma.ptr, self._beta.ptr, self._part.ptr, pl["groups"], pl["G"],
                            pl["Cg"], pl["S"], pl["chunks"], pl["chunk_len"], self.eps, vec_ok, *self._act)
        be.launch(self.fn_apply, grid, (SPLIT_BLOCK, 1, 1), self.args_apply, 0, stream)


def run(backend: Backend, x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, num_groups: int,
        epsilon: float, activation: str = "", alpha: float = 0.01, act_beta: float = 0.0) -> np.ndarray:
    """Host-array convenience: the reference on cpu, upload/launch/download on a device."""
    if not backend.is_device:
        return reference(x, gamma, beta, num_groups, epsilon, activation, alpha, act_beta)
    assert isinstance(backend, DeviceBackend)
    x = np.ascontiguousarray(x)
    out = np.empty_like(x)
    xb, yb = backend.upload(x), backend.upload(out)
    Runner(backend, x.shape, x.dtype, gamma, beta, num_groups, epsilon, activation, alpha, act_beta)(
        (xb.ptr,), yb.ptr)
    backend.synchronize()
    backend.copy_dtoh(out, yb.ptr)
    return out
