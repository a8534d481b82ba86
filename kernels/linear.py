"""fp32 linear layers on the FP64 tensor cores: Y = act(X·W + b) [+ R], fp32 in and out.

Why fp64: on Hopper (and A100) the FP64 tensor cores (DMMA) have the same peak as the fp32 CUDA cores —
67 TFLOP/s each on an H200 — and cuBLAS's DGEMM runs nearer its peak than its SGEMM does: on ViT-B/16's
weight GEMMs at batch 8, 54–55 against 38–41 TFLOP/s (``bench/probe_fp64_gemm.py``, BENCHMARKS.md). fp32
values widen to fp64 exactly and each fp64 dot product rounds once to fp32, so the result is *more* exact
than SGEMM's (relative error 2.5e-8 against SGEMM's 5e-7), not a lower precision: an fp32 model keeps its
fp32 contract. GPUs whose fp64 rate is a fraction of fp32 (GeForce, L40, B200) must not take this path:
:func:`fp64_tensor_cores` gates it by architecture.

One linear step is three launches on the caller's stream (two when it reads the fp64 output of the step before):

    X (fp32 [M, K]) ─► widen ─► X64 ─┐
                                     ├─► cuBLAS DGEMM ─► C64 [M, N] ─► epilogue ─► Y (fp32 [M, N])
    W (fp64 [K, N], uploaded once) ──┘           b [N], R [M, N], GELU ─┘

The widen and epilogue kernels are ours (HIP-dialect source, this file); the GEMM is cuBLAS's DGEMM, called
through ctypes (:class:`Cublas`), because a DMMA GEMM at cuBLAS's 82% of peak is its own project. The
epilogue adds the bias, applies the exact (erf) GELU in fp32 as the exported graph does, and adds the
residual, so those onnxruntime element-wise kernels do not run. X64 and C64 live in scratch buffers shared
by the linear steps of one stream (:class:`LinearState`: they run one after another there).

AMD: the widen/epilogue source compiles through hiprtc (compile-checked here), but the GEMM binding is
CUDA-only (hipBLAS is not bound), so the runtime never plans linear steps on the hip backend.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import os
import re
import sys
from collections.abc import Sequence

import numpy as np

from .backend import DeviceBackend, DeviceBuffer, KernelArgs, as_ptr, ceil_div

NAME = "linear"

# Architectures whose FP64 tensor-core peak is at least their fp32 CUDA-core peak (A100: 19.5 / 19.5,
# H100/H200: 67 / 67 TFLOP/s). Not sm_86/89 (fp64 at 1/64 rate) nor sm_100 (B200: 40 fp64 vs 80 fp32).
FP64_TC_ARCHS = ("sm_80", "sm_90", "sm_90a")

BLOCK = 256
EPILOGUE_BLOCK = 128  # a row of 768 columns is 384 pairs: three full blocks

SOURCE = r"""
// fp32 -> fp64, n elements, one 16-byte vector (vec: x 16-byte aligned; y is ours) or one element per thread:
// a grid of n/4 threads keeps every load in flight at once (a grid-stride loop measured 38 us per ViT layer).
FUSER_GLOBAL void fuser_linear_widen(const float* __restrict__ x, double* __restrict__ y, fuser_i64 n, int vec) {
    const fuser_i64 i = (fuser_i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (vec) {
        const fuser_i64 n4 = n >> 2;
        if (i < n4) {
            const float4 v = reinterpret_cast<const float4*>(x)[i];
            double2* o = reinterpret_cast<double2*>(y) + 2 * i;
            o[0] = make_double2((double)v.x, (double)v.y);
            o[1] = make_double2((double)v.z, (double)v.w);
        }
        if (i < (n & 3)) y[(n4 << 2) + i] = (double)x[(n4 << 2) + i];
        return;
    }
    if (i < n) y[i] = (double)x[i];
}

// The exported GELU, in fp32 like the graph: x / sqrt(2) -> Erf -> + 1 -> * x -> * 0.5.
FUSER_INLINE float fuser_linear_act(float v, int gelu) {
    return gelu ? (v * (1.0f + erff(v / 1.41421353816986083984f))) * 0.5f : v;
}

// Y[m, :] = act(float(C[m, :]) + b) + R[m, :]   (bias, R optional: null pointers); Y fp32, or fp64 for a next
// linear step that reads it as its X (the fp32 value, widened exactly: the same numbers, one pass less).
// Grid: x over a row's columns (pairs of them when vec: N even and Y, R 8-byte aligned; C and b are ours), y over
// rows (striding past 65535): no index division, the bias read once per thread.
FUSER_INLINE void fuser_linear_put2(float* y, fuser_i64 at, float a0, float a1) {
    reinterpret_cast<float2*>(y)[at] = make_float2(a0, a1);
}
FUSER_INLINE void fuser_linear_put2(double* y, fuser_i64 at, float a0, float a1) {
    reinterpret_cast<double2*>(y)[at] = make_double2((double)a0, (double)a1);
}

template <typename TOut>
FUSER_INLINE void fuser_linear_epilogue_t(const double* __restrict__ c, const float* __restrict__ bias,
                                          const float* __restrict__ r, TOut* __restrict__ y,
                                          fuser_i64 m, int n, int gelu, int vec) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (vec) {
        if (2 * j >= n) return;
        const float b0 = bias ? bias[2 * j] : 0.0f, b1 = bias ? bias[2 * j + 1] : 0.0f;
        for (fuser_i64 row = blockIdx.y; row < m; row += gridDim.y) {
            const fuser_i64 at = row * n / 2 + j;
            const double2 cv = reinterpret_cast<const double2*>(c)[at];
            float a0 = fuser_linear_act((float)cv.x + b0, gelu), a1 = fuser_linear_act((float)cv.y + b1, gelu);
            if (r) { const float2 rv = reinterpret_cast<const float2*>(r)[at]; a0 += rv.x; a1 += rv.y; }
            fuser_linear_put2(y, at, a0, a1);
        }
        return;
    }
    if (j >= n) return;
    const float b = bias ? bias[j] : 0.0f;
    for (fuser_i64 row = blockIdx.y; row < m; row += gridDim.y) {
        const fuser_i64 at = row * n + j;
        float a = fuser_linear_act((float)c[at] + b, gelu);
        if (r) a += r[at];
        y[at] = (TOut)a;
    }
}

FUSER_GLOBAL void fuser_linear_epilogue(const double* __restrict__ c, const float* __restrict__ bias,
                                        const float* __restrict__ r, float* __restrict__ y,
                                        fuser_i64 m, int n, int gelu, int vec) {
    fuser_linear_epilogue_t<float>(c, bias, r, y, m, n, gelu, vec);
}
FUSER_GLOBAL void fuser_linear_epilogue_f64(const double* __restrict__ c, const float* __restrict__ bias,
                                            const float* __restrict__ r, double* __restrict__ y,
                                            fuser_i64 m, int n, int gelu, int vec) {
    fuser_linear_epilogue_t<double>(c, bias, r, y, m, n, gelu, vec);
}
"""

VARIANTS: list[str] = ["fuser_linear_widen", "fuser_linear_epilogue", "fuser_linear_epilogue_f64"]


def reference(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None, residual: np.ndarray | None = None,
              gelu: bool = False) -> np.ndarray:
    """numpy reference: the product in float64 rounded once to fp32 (what the device computes), then the fp32
    epilogue in the graph's order (bias, GELU, residual)."""
    y = (np.asarray(x, np.float64) @ np.asarray(w, np.float64)).astype(np.float32)
    if bias is not None:
        y = y + np.asarray(bias, np.float32).reshape(-1)
    if gelu:
        from math import erf

        verf = np.vectorize(erf, otypes=[np.float64])
        y = ((y * (np.float32(1.0) + verf(y / np.float32(1.41421353816986083984)).astype(np.float32)))
             * np.float32(0.5)).astype(np.float32)
    if residual is not None:
        y = y + residual
    return y.astype(np.float32)


# Hopper parts sold with fp64 cut to ~1 TFLOP/s (H800, H20): same sm_90, told apart by name only
SLOW_FP64_NAMES = re.compile(r"\b(H800|H20)\b")


def fp64_tensor_cores(arch: str, device_name: str = "") -> bool:
    """Does this GPU run fp64 GEMMs on tensor cores at least as fast as fp32 ones on CUDA cores?"""
    return arch in FP64_TC_ARCHS and not SLOW_FP64_NAMES.search(device_name)


# -- cuBLAS (CUDA only) ---------------------------------------------------------------------------------
_CUBLAS_NAMES = ("libcublas.so.13", "libcublas.so.12", "libcublas.so.11", "libcublas.so")


def _ort_cuda_major() -> str | None:
    """The CUDA major version onnxruntime-gpu was built for ("12", "13"), if it says."""
    try:
        from onnxruntime.capi import build_and_package_info as info

        return str(getattr(info, "cuda_version", "") or "").split(".")[0] or None
    except Exception:  # noqa: BLE001 - no onnxruntime, or a CPU build
        return None


@functools.cache  # one search per process: Session start-up asks, then each session's handle loads it
def _find_cublas() -> ctypes.CDLL:
    """The libcublas onnxruntime already loaded (same process, same copy), else one of the CUDA major onnxruntime
    was built for, else one on the loader path, else one from an ``nvidia-cublas`` wheel on sys.path."""
    try:
        with open("/proc/self/maps") as f:
            loaded = sorted({ln.split()[-1] for ln in f if "/libcublas.so" in ln})
        for path in loaded:
            return ctypes.CDLL(path)
    except OSError:
        pass
    major = _ort_cuda_major()
    names = ([f"libcublas.so.{major}"] if major else []) + list(_CUBLAS_NAMES)
    for name in dict.fromkeys(names):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    for base in sys.path:
        for path in sorted(glob.glob(os.path.join(base, "nvidia", "*", "lib", "libcublas.so*")), reverse=True):
            try:
                return ctypes.CDLL(path)
            except OSError:
                continue
    found = ctypes.util.find_library("cublas")
    if found:
        return ctypes.CDLL(found)
    raise RuntimeError("linear layers on fp64 tensor cores need libcublas (it ships with onnxruntime-gpu's CUDA "
                       "libraries); none was found")


def cublas_available() -> bool:
    """Can this process load cuBLAS (so the runtime may plan linear steps)?"""
    try:
        _find_cublas()
    except RuntimeError:
        return False
    return True


class Cublas:
    """One cuBLAS handle with its own workspace (so a CUDA-graph capture never allocates)."""

    WORKSPACE = 32 << 20

    def __init__(self, backend: DeviceBackend) -> None:
        lib = _find_cublas()
        self.lib = lib
        self.handle = ctypes.c_void_p()
        self._check(lib.cublasCreate_v2(ctypes.byref(self.handle)), "cublasCreate")
        self._ws = DeviceBuffer(backend, self.WORKSPACE)
        self._set_workspace()
        self._dgemm = lib.cublasDgemm_v2
        self._dgemm.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                ctypes.POINTER(ctypes.c_double), ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                ctypes.c_int, ctypes.POINTER(ctypes.c_double), ctypes.c_void_p, ctypes.c_int]
        self._one, self._zero = ctypes.c_double(1.0), ctypes.c_double(0.0)
        self._stream = None

    def _set_workspace(self) -> None:
        self._check(self.lib.cublasSetWorkspace_v2(self.handle, ctypes.c_void_p(self._ws.ptr),
                                                   ctypes.c_size_t(self.WORKSPACE)), "cublasSetWorkspace")

    def __del__(self) -> None:
        handle, self.handle = getattr(self, "handle", None), None
        if handle:
            try:
                self.lib.cublasDestroy_v2(handle)
            except Exception:  # noqa: BLE001 - interpreter shutdown: the library may be gone
                pass

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"{what} failed: cuBLAS status {status}")

    def gemm_rowmajor(self, m: int, n: int, k: int, x: int, w: int, c: int, stream: int) -> None:
        """C[m, n] = X[m, k] · W[k, n], all fp64 row-major: cuBLAS (column-major) computes Cᵀ = Wᵀ·Xᵀ."""
        if stream != self._stream:
            self._check(self.lib.cublasSetStream_v2(self.handle, ctypes.c_void_p(stream)), "cublasSetStream")
            self._set_workspace()  # cublasSetStream resets the handle to cuBLAS's default workspace pool
            self._stream = stream
        self._check(self._dgemm(self.handle, 0, 0, n, m, k, ctypes.byref(self._one), ctypes.c_void_p(w), n,
                                ctypes.c_void_p(x), k, ctypes.byref(self._zero), ctypes.c_void_p(c), n),
                    "cublasDgemm")


class LinearState:
    """What the linear steps of one stream share: a cuBLAS handle and grow-only scratch buffers for X64 and C64.
    Steps on one stream run one after another, so one pair of buffers serves them all; each runtime session (its
    own stream) has its own state, so two sessions never share scratch. A buffer outgrown is kept, not freed, while
    the state lives: a captured CUDA graph may still name it."""

    def __init__(self, backend: DeviceBackend) -> None:
        self.backend = backend
        self.cublas = Cublas(backend)
        self.slots: dict[str, DeviceBuffer] = {}
        self.kept: list[DeviceBuffer] = []
        self.weights: dict[object, DeviceBuffer] = {}

    def weight(self, key: object, w: np.ndarray) -> DeviceBuffer:
        """W [K, N] in fp64 on the device, uploaded once per ``key``: the runners of one node at several input
        shapes (a dynamic batch or sequence) share it instead of holding a copy each."""
        buf = self.weights.get(key)
        if buf is None:
            buf = self.weights[key] = self.backend.upload(np.ascontiguousarray(w, dtype=np.float64))
        return buf

    def scratch(self, slot: str, nbytes: int) -> int:
        buf = self.slots.get(slot)
        if buf is None or buf.nbytes < nbytes:
            if buf is not None:
                self.kept.append(buf)
            buf = self.slots[slot] = DeviceBuffer(self.backend, nbytes)
        return buf.ptr


def _default_state(backend: DeviceBackend) -> LinearState:
    """The state of runners built without one (tests, benchmarks): one per backend."""
    state = getattr(backend, "_linear_state", None)
    if state is None:
        state = backend._linear_state = LinearState(backend)
    return state


class Runner:
    """One linear layer on device buffers, built once per node and input shape.

    ``Runner(backend, x_shape, w, bias=None, residual=False, gelu=False, x_f64=False, y_f64=False)``: ``w`` [K, N]
    (uploaded once as fp64), ``bias`` [N] or None; ``runner((x_ptr[, r_ptr]), y_ptr, stream)`` launches widen,
    DGEMM and epilogue. ``x_f64``: X is already fp64 (a previous step's ``y_f64`` output; no widen); ``y_f64``: Y
    is written as fp64 (the fp32 results, widened). ``output_shape`` is ``x_shape[:-1] + (N,)``, ``output_dtype``
    float32 or float64. ``state``: the stream's :class:`LinearState` (default: one per backend); ``weight_key``:
    share the fp64 weights with the state's other runners of that key. fp32 pointers at any 4-byte alignment, fp64
    ones 8-byte aligned."""

    def __init__(self, backend: DeviceBackend, x_shape: Sequence[int], w: np.ndarray, bias: np.ndarray | None = None,
                 residual: bool = False, gelu: bool = False, x_f64: bool = False, y_f64: bool = False,
                 state: LinearState | None = None, weight_key: object = None) -> None:
        if not backend.is_device or backend.name != "cuda":
            raise TypeError("linear.Runner needs the cuda backend (the DGEMM is cuBLAS's)")
        w = np.asarray(w)
        if w.ndim != 2 or w.shape[0] == 0 or len(x_shape) < 1 or int(x_shape[-1]) != w.shape[0]:
            raise ValueError(f"linear: X {tuple(x_shape)} and W {w.shape} do not multiply")
        self.backend = backend
        self.k, self.n = int(w.shape[0]), int(w.shape[1])
        self.m = int(np.prod([int(d) for d in x_shape[:-1]], dtype=np.int64))
        self.output_shape = tuple(int(d) for d in x_shape[:-1]) + (self.n,)
        if self.m >= 2**31 or self.n >= 2**31:
            raise ValueError(f"linear: {self.m} x {self.n} is past cuBLAS's 32-bit dimensions")
        self.state = state or _default_state(backend)
        if weight_key is None or state is None:  # a key names weights only within a caller's own state
            self._w = backend.upload(np.ascontiguousarray(w, dtype=np.float64))
        else:
            self._w = self.state.weight(weight_key, w)
        self._b = None
        if bias is not None:
            b = np.ascontiguousarray(np.asarray(bias, np.float32).reshape(-1))
            if b.size != self.n:
                raise ValueError(f"linear: bias has {b.size} elements, W has N={self.n} columns")
            self._b = backend.upload(b)
        self.residual, self.gelu = bool(residual), bool(gelu)
        self.x_f64, self.y_f64 = bool(x_f64), bool(y_f64)
        self.output_dtype = np.dtype(np.float64 if y_f64 else np.float32)
        self.widen = backend.function(NAME, SOURCE, "fuser_linear_widen")
        entry = "fuser_linear_epilogue_f64" if y_f64 else "fuser_linear_epilogue"
        self.epilogue = backend.function(NAME, SOURCE, entry)
        self._wargs = KernelArgs("ppli")
        self._eargs = KernelArgs("ppppliii")

    def __call__(self, inputs: Sequence[int], output: int, stream: int = 0) -> None:
        if self.m == 0 or self.n == 0:
            return
        x, y = as_ptr(inputs[0]), as_ptr(output)
        r = as_ptr(inputs[1]) if self.residual else 0
        if any(p & 3 for p in (x, y, r)) or (self.x_f64 and x & 7) or (self.y_f64 and y & 7):
            raise ValueError("linear: pointers must be aligned to their element size")
        mk, mn = self.m * self.k, self.m * self.n
        c64 = self.state.scratch("c", 8 * mn)
        b = self.backend
        if self.x_f64:
            x64 = x
        else:
            x64 = self.state.scratch("x", 8 * mk)
            vec = 1 if x & 15 == 0 else 0
            self._wargs.set(x, x64, mk, vec)
            b.launch(self.widen, (ceil_div(max(mk // 4, 3) if vec else mk, BLOCK), 1, 1), (BLOCK, 1, 1), self._wargs,
                     0, stream)
        self.state.cublas.gemm_rowmajor(self.m, self.n, self.k, x64, int(self._w.ptr), c64, stream)
        # pairs: N even, Y and R 8-byte aligned (an fp64 Y is 16-byte aligned: ours, from the runtime)
        vec = 1 if self.n % 2 == 0 and y & (15 if self.y_f64 else 7) == 0 and r & 7 == 0 else 0
        self._eargs.set(c64, int(self._b.ptr) if self._b is not None else 0, r, y, self.m, self.n, int(self.gelu), vec)
        cols = self.n // 2 if vec else self.n
        b.launch(self.epilogue, (ceil_div(cols, EPILOGUE_BLOCK), min(self.m, 65535), 1), (EPILOGUE_BLOCK, 1, 1),
                 self._eargs, 0, stream)
