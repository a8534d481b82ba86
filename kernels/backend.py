"""Backends: where kernels run. ``hip`` (AMD, hip-python), ``cuda`` (NVIDIA, cuda-python driver API) and
``cpu`` (the numpy references). ``select_backend("auto")`` tries them in that order.

Device backends share this small interface so the families' runners never care which vendor they are
on: compile+load a family's module (through the disk cache), look up entry points, launch with packed
arguments on a stream, and move bytes. Device pointers are plain ints; scalar kernel arguments are
exact-width ctypes values (see ``KernelArgs``).
"""

from __future__ import annotations

import ctypes
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

DEVICES = ("auto", "hip", "cuda", "cpu")

# Kernel argument codes -> exact-width C types. Pointers travel as 64-bit integers.
_ARG_TYPES: dict[str, type[ctypes._SimpleCData]] = {
    "p": ctypes.c_uint64,   # device pointer
    "l": ctypes.c_int64,    # fuser_i64
    "i": ctypes.c_int32,    # int
    "f": ctypes.c_float,    # float
}


class BackendUnavailable(RuntimeError):
    """An explicitly requested device is not usable here (no driver, no GPU, no bindings)."""


class KernelArgs:
    """A kernel's parameter block, built once per runner and refilled per launch.

    ``signature`` is one code per parameter (``p`` pointer, ``l`` int64, ``i`` int32, ``f`` float32).
    ``address`` is a ``void**`` array, what cuLaunchKernel/hipModuleLaunchKernel take as kernelParams;
    refilling sets ctypes values in place, so a launch allocates nothing."""

    def __init__(self, signature: str) -> None:
        self.signature = signature
        self._slots = [_ARG_TYPES[c]() for c in signature]
        self._ptrs = (ctypes.c_void_p * max(1, len(self._slots)))(
            *[ctypes.addressof(s) for s in self._slots])
        self.address = ctypes.addressof(self._ptrs)

    def set(self, *values: int | float) -> KernelArgs:
        if len(values) != len(self._slots):
            raise TypeError(
                f"kernel takes {len(self._slots)} arguments ({self.signature}), got {len(values)}")
        for slot, v in zip(self._slots, values, strict=True):
            slot.value = v
        return self

    def values(self) -> list[int | float]:
        return [s.value for s in self._slots]


class Backend:  # noqa: B024 - the CPU backend implements nothing device-side
    """Common interface. ``is_device`` is False only for the CPU backend."""

    name: str = ""
    arch: str = ""
    is_device: bool = False
    warp_size: int = 32
    num_sms: int = 1
    l2_bytes: int = 0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.arch}>"


class DeviceBackend(Backend, ABC):
    is_device = True

    def __init__(self) -> None:
        self._modules: dict[tuple[str, str], Any] = {}
        self._functions: dict[tuple[str, str, str], Any] = {}
        self._lock = threading.Lock()

    # -- compile/load ---------------------------------------------------------------------------
    def function(self, family: str, source: str, entry: str, arch: str | None = None) -> Any:
        """The loaded entry point ``entry`` of ``family`` (compiled through the disk cache, loaded once
        per process). ``arch`` compiles the module for another target than the device's own: its
        architecture-specific variant (``toolchain.arch_specific``: sm_90 -> sm_90a) for code that needs it."""
        from .cache import cache_key  # local: keep import graph flat

        arch = arch or self.arch
        skey = cache_key(source, (), arch, self.name, "")
        fkey = (family, skey, entry)
        fn = self._functions.get(fkey)
        if fn is not None:
            return fn
        with self._lock:
            mod = self._modules.get((family, skey))
            if mod is None:
                from .toolchain import compile_family

                code = compile_family(self.name, arch, source, family, warp_size=self.warp_size)
                mod = self._load_module(code.image)
                self._modules[(family, skey)] = mod
            fn = self._get_function(mod, entry)
            self._functions[fkey] = fn
        return fn

    @abstractmethod
    def _load_module(self, image: bytes) -> Any: ...

    @abstractmethod
    def _get_function(self, module: Any, entry: str) -> Any: ...

    # -- launch -----------------------------------------------------------------------------------
    @abstractmethod
    def launch(self, fn: Any, grid: tuple[int, int, int], block: tuple[int, int, int], args: KernelArgs,
               shared: int = 0, stream: int = 0) -> None: ...

    def allow_dynamic_shared(self, fn: Any, nbytes: int) -> None:
        """Let ``fn`` take ``nbytes`` of dynamic shared memory (past the 48 KiB default) and, where the vendor
        has one, prefer the largest shared-memory carveout so that as many blocks fit on an SM as their
        registers allow (left to itself the driver may pick a carveout that holds fewer). Default: nothing to
        do (the CPU emulator has no limit)."""

    # -- memory (small helpers for runners' constants and host round trips) ------------------------
    @abstractmethod
    def malloc(self, nbytes: int) -> int: ...

    @abstractmethod
    def free(self, ptr: int) -> None: ...

    @abstractmethod
    def copy_htod(self, dst: int, src: np.ndarray) -> None: ...

    @abstractmethod
    def copy_dtoh(self, dst: np.ndarray, src: int) -> None: ...

    @abstractmethod
    def synchronize(self) -> None: ...

    def upload(self, arr: np.ndarray) -> DeviceBuffer:
        arr = np.ascontiguousarray(arr)
        buf = DeviceBuffer(self, max(1, arr.nbytes))
        if arr.nbytes:
            self.copy_htod(buf.ptr, arr)
        return buf


class DeviceBuffer:
    """Owned device allocation, freed when collected (runners keep their constants in these)."""

    def __init__(self, backend: DeviceBackend, nbytes: int) -> None:
        self.backend = backend
        self.nbytes = nbytes
        self.ptr = backend.malloc(nbytes)

    def __int__(self) -> int:
        return self.ptr

    def __del__(self) -> None:
        ptr, self.ptr = getattr(self, "ptr", 0), 0
        if ptr:
            try:
                self.backend.free(ptr)
            except Exception:  # interpreter shutdown: the driver may already be gone
                pass


_backends: dict[str, Backend] = {}
_select_lock = threading.Lock()


def _make(device: str) -> Backend:
    if device == "cpu":
        from .backend_cpu import CpuBackend

        return CpuBackend()
    if device == "cuda":
        from .backend_cuda import CudaBackend

        return CudaBackend()
    if device == "hip":
        from .backend_hip import HipBackend

        return HipBackend()
    raise ValueError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")


def select_backend(device: str = "auto") -> Backend:
    """The backend for ``device`` in {auto, hip, cuda, cpu}; one instance per process and device.

    ``auto`` picks hip, then cuda, then cpu. An explicit device that cannot be used raises
    ``BackendUnavailable`` saying why (no silent fallback to another device)."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
    with _select_lock:
        if device != "auto":
            if device not in _backends:
                _backends[device] = _make(device)
            return _backends[device]
        for candidate in ("hip", "cuda"):
            if candidate in _backends:
                return _backends[candidate]
            try:
                _backends[candidate] = _make(candidate)
                return _backends[candidate]
            except BackendUnavailable:
                continue
        if "cpu" not in _backends:
            _backends["cpu"] = _make("cpu")
        return _backends["cpu"]


def grid_1d(blocks: int) -> tuple[int, int, int]:
    """A grid of ``blocks`` along x; at least 1 (a zero grid is a launch error)."""
    return (max(1, int(blocks)), 1, 1)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def as_ptr(x: int | Any) -> int:
    """Accept an int, a DeviceBuffer, or anything with ``data_ptr()`` (torch) / ``.data.ptr`` (cupy)."""
    if isinstance(x, int):
        return x
    if isinstance(x, DeviceBuffer):
        return x.ptr
    if hasattr(x, "data_ptr"):
        return int(x.data_ptr())
    data = getattr(x, "data", None)
    if data is not None and hasattr(data, "ptr"):
        return int(data.ptr)
    return int(x)


def dtype_suffix(dtype: Any) -> str:
    dt = np.dtype(dtype)
    if dt == np.float32:
        return "f32"
    if dt == np.float16:
        return "f16"
    raise TypeError(f"kernels take float32 or float16 tensors, not {dt}")


def check_pointers(ptrs: Sequence[int], itemsize: int) -> None:
    for p in ptrs:
        if p % itemsize:
            raise ValueError(f"device pointer {p:#x} is not aligned to its element size {itemsize}")
