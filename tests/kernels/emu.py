"""A CPU emulator of the device backends, for testing kernel *logic* with no GPU.

The family's HIP-dialect source (prelude included) is compiled by the host C++ compiler (g++ 12+, C++20)
behind a small shim: every GPU thread of a block is a ``std::thread``, ``__syncthreads`` is a
``std::barrier`` over the block, 32-lane warp shuffles exchange through a per-warp buffer and barrier,
``__shared__`` variables are function statics (blocks run one after another). The source compiles on the
HIP side of the prelude (``__HIP__``), so kernels take their portable paths (on the tensor-core tactic:
the shuffle fallback of the mma fragment contract). What this proves: indexing, bounds, tiling, barriers
placement and the host launch logic. What it cannot: hardware-only instructions (inline PTX) and timing.

``EmuBackend`` implements the DeviceBackend interface (host memory stands in for device memory), so the
families' Runners run on it unchanged.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from fuser.kernels.backend import DeviceBackend, KernelArgs
from fuser.kernels.prelude import full_source

SHIM = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <atomic>
#include <barrier>
#include <thread>
#include <vector>
#include <memory>
#include <utility>
#define __HIP__ 1
#define FUSER_EMU 1  // kernels that need it: dynamic shared memory as a static array
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __restrict__ __restrict
struct emu_dim3 { unsigned x, y, z; };
inline thread_local emu_dim3 threadIdx, blockIdx;
inline emu_dim3 blockDim, gridDim;
struct float4 { float x, y, z, w; };
struct float2 { float x, y; };
struct uint4 { unsigned x, y, z, w; };
struct uint2 { unsigned x, y; };
struct int4 { int x, y, z, w; };
inline float __expf(float v) { return expf(v); }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline float __int_as_float(int v) { return __builtin_bit_cast(float, v); }
inline float __uint_as_float(unsigned v) { return __builtin_bit_cast(float, v); }
inline int __float_as_int(float v) { return __builtin_bit_cast(int, v); }
inline unsigned __float_as_uint(float v) { return __builtin_bit_cast(unsigned, v); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float v) { return 1.0f / sqrtf(v); }
struct emu_block {
    std::unique_ptr<std::barrier<>> bar;
    std::vector<std::unique_ptr<std::barrier<>>> warps;
    std::vector<float> xch;
};
inline emu_block* emu_cur = nullptr;
inline void __syncthreads() { emu_cur->bar->arrive_and_wait(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
inline int atomicAdd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_add(v); }
inline float atomicExch(float* p, float v) { return std::atomic_ref<float>(*p).exchange(v); }
inline float emu_shfl_src(float v, int src) {
    const int t = threadIdx.x, w = t / 32;
    emu_cur->xch[t] = v;
    emu_cur->warps[w]->arrive_and_wait();
    const float r = emu_cur->xch[w * 32 + (src & 31)];
    emu_cur->warps[w]->arrive_and_wait();
    return r;
}
inline float __shfl(float v, int src, int width = 32) {
    const int lane = threadIdx.x & 31, base = lane - lane % width;
    return emu_shfl_src(v, base + (src % width));
}
inline float __shfl_xor(float v, int mask, int width = 32) {
    const int lane = threadIdx.x & 31, base = lane - lane % width;
    return emu_shfl_src(v, base + ((lane - base) ^ mask) % width);
}
inline float __shfl_down(float v, int d, int width = 32) {
    const int lane = threadIdx.x & 31, base = lane - lane % width;
    const int s = (lane - base) + d;
    return emu_shfl_src(v, s < width ? base + s : lane);
}
template <typename... A, std::size_t... I>
void emu_call(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*reinterpret_cast<A*>(args[I])...);
}
template <typename... A>
void emu_launch(void (*f)(A...), unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                void** args) {
    gridDim = {gx, gy, gz};
    blockDim = {bx, by, bz};
    const unsigned nt = bx * by * bz;
    for (unsigned z = 0; z < gz; ++z)
    for (unsigned y = 0; y < gy; ++y)
    for (unsigned x = 0; x < gx; ++x) {
        emu_block blk;
        blk.bar = std::make_unique<std::barrier<>>(nt);
        for (unsigned w = 0; w < (nt + 31) / 32; ++w)
            blk.warps.push_back(std::make_unique<std::barrier<>>(nt - w * 32 < 32 ? nt - w * 32 : 32));
        blk.xch.assign(nt, 0.0f);
        emu_cur = &blk;
        std::vector<std::thread> ts;
        ts.reserve(nt);
        for (unsigned t = 0; t < nt; ++t) {
            ts.emplace_back([&, t] {
                blockIdx = {x, y, z};
                threadIdx = {t % bx, (t / bx) % by, t / (bx * by)};
                emu_call(f, args, std::index_sequence_for<A...>{});
                blk.bar->arrive_and_drop();
                blk.warps[t / 32]->arrive_and_drop();
            });
        }
        for (auto& th : ts) th.join();
    }
}
"""

def compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++"))


def _cache_dir() -> Path:
    d = Path(os.environ.get("ONNX_FUSE_EMU_CACHE", Path(tempfile.gettempdir()) / "onnx-fuse-emu"))
    d.mkdir(parents=True, exist_ok=True)
    return d


_lock = threading.Lock()


def build(source: str, entries: list[str]) -> ctypes.CDLL:
    """Compile ``source`` (family source, prelude added) into a shared library exposing
    ``emu_<entry>(gx, gy, gz, bx, by, bz, void** args)`` per entry point; cached by content."""
    body = full_source(source)
    wrappers = "".join(
        f'extern "C" void emu_{e}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, '
        f"void** a) {{ emu_launch({e}, gx, gy, gz, bx, by, bz, a); }}\n" for e in entries)
    text = SHIM + "#define FUSER_WARP_SIZE 32\n" + body + "\n" + wrappers
    key = hashlib.sha256(text.encode()).hexdigest()[:24]
    so = _cache_dir() / f"emu_{key}.so"
    with _lock:
        if not so.exists():
            cxx = compiler()
            if cxx is None:
                raise RuntimeError("no C++ compiler for the emulator")
            src = _cache_dir() / f"emu_{key}.cpp"
            src.write_text(text)
            tmp = so.with_suffix(f".{os.getpid()}.tmp")
            r = subprocess.run([cxx, "-std=c++20", "-O1", "-fPIC", "-shared", "-pthread", "-w", "-o", str(tmp),
                                str(src)], capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"emulator build failed:\n{r.stderr[:4000]}")
            os.replace(tmp, so)
    return ctypes.CDLL(str(so))


class EmuBackend(DeviceBackend):
    name = "emu"
    arch = "emu"
    warp_size = 32
    num_sms = 4

    def __init__(self) -> None:
        super().__init__()
        self._mem: dict[int, Any] = {}
        self.launches: list[tuple[str, tuple, tuple]] = []

    def function(self, family: str, source: str, entry: str) -> Any:
        key = (hashlib.sha256(source.encode()).hexdigest(), entry)
        fn = self._functions.get(key)
        if fn is None:
            lib = build(source, [entry])
            fn = getattr(lib, f"emu_{entry}")
            fn.argtypes = [ctypes.c_uint] * 6 + [ctypes.c_void_p]
            fn.restype = None
            fn.entry = entry
            self._functions[key] = fn
        return fn

    def _load_module(self, image: bytes) -> Any:  # pragma: no cover - function() is overridden
        raise NotImplementedError

    def _get_function(self, module: Any, entry: str) -> Any:  # pragma: no cover
        raise NotImplementedError

    def launch(self, fn: Any, grid: tuple[int, int, int], block: tuple[int, int, int], args: KernelArgs,
               shared: int = 0, stream: int = 0) -> None:
        self.launches.append((fn.entry, tuple(grid), tuple(block)))
        fn(*grid, *block, args.address)

    def malloc(self, nbytes: int) -> int:
        buf = np.empty(max(1, int(nbytes)) + 256, dtype=np.uint8)
        addr = buf.ctypes.data
        ptr = addr + (-addr % 256)   # cuMemAlloc-like 256-byte alignment
        self._mem[ptr] = buf
        return ptr

    def free(self, ptr: int) -> None:
        self._mem.pop(ptr, None)

    def copy_htod(self, dst: int, src: np.ndarray) -> None:
        src = np.ascontiguousarray(src)
        ctypes.memmove(dst, src.ctypes.data, src.nbytes)

    def copy_dtoh(self, dst: np.ndarray, src: int) -> None:
        ctypes.memmove(dst.ctypes.data, src, dst.nbytes)

    def synchronize(self) -> None:
        pass
