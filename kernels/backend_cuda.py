"""NVIDIA backend through cuda-python's driver API (``cuda.bindings.driver``).

Why the driver API and not ``cuda.core``: a launch here is one ``cuLaunchKernel`` call with a
pre-packed ``void**`` parameter block (``KernelArgs``), no per-launch Python objects; bench/ measures
the per-launch host cost. The primary context is used, so pointers from torch, cupy or onnxruntime on
the same device are valid here and streams are interchangeable (pass their integer handles).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import BackendUnavailable, DeviceBackend, KernelArgs


def _check(result: Any, what: str) -> Any:
    status = result[0]
    if int(status) != 0:
        raise RuntimeError(f"{what} failed: {status!r}")
    if len(result) == 1:
        return None
    return result[1] if len(result) == 2 else result[1:]


class CudaBackend(DeviceBackend):
    name = "cuda"

    def __init__(self, device_index: int = 0) -> None:
        super().__init__()
        try:
            from cuda.bindings import driver
        except ImportError as e:
            raise BackendUnavailable("cuda backend needs cuda-python: pip install cuda-bindings") from e
        self._drv = driver
        try:
            _check(driver.cuInit(0), "cuInit")
            count = _check(driver.cuDeviceGetCount(), "cuDeviceGetCount")
        except Exception as e:  # no libcuda, no driver, or driver/GPU broken
            raise BackendUnavailable(f"cuda backend: CUDA driver not usable here: {e}") from e
        if count <= device_index:
            raise BackendUnavailable(f"cuda backend: no CUDA device {device_index} (found {count})")
        self.device = _check(driver.cuDeviceGet(device_index), "cuDeviceGet")
        self.context = _check(driver.cuDevicePrimaryCtxRetain(self.device), "cuDevicePrimaryCtxRetain")
        self.activate()
        attr = driver.CUdevice_attribute

        def get(a: Any) -> int:
            return int(_check(driver.cuDeviceGetAttribute(a, self.device), "cuDeviceGetAttribute"))

        major = get(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
        minor = get(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
        self.arch = f"sm_{major}{minor}"
        self.warp_size = get(attr.CU_DEVICE_ATTRIBUTE_WARP_SIZE)
        self.num_sms = get(attr.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        self.l2_bytes = get(attr.CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)
        raw = _check(driver.cuDeviceGetName(256, self.device), "cuDeviceGetName")
        self.device_name = bytes(raw).split(b"\0", 1)[0].decode(errors="replace")
        self._launch = driver.cuLaunchKernel
        self._ok = driver.CUresult.CUDA_SUCCESS

    def activate(self) -> None:
        """Make this device's primary context current on the calling thread (once per thread)."""
        _check(self._drv.cuCtxSetCurrent(self.context), "cuCtxSetCurrent")

    def _load_module(self, image: bytes) -> Any:
        return _check(self._drv.cuModuleLoadData(image), "cuModuleLoadData")

    def _get_function(self, module: Any, entry: str) -> Any:
        return _check(self._drv.cuModuleGetFunction(module, entry.encode()), f"cuModuleGetFunction({entry})")

    def launch(self, fn: Any, grid: tuple[int, int, int], block: tuple[int, int, int], args: KernelArgs,
               shared: int = 0, stream: int = 0) -> None:
        res = self._launch(fn, grid[0], grid[1], grid[2], block[0], block[1], block[2], shared, stream,
                           args.address, 0)
        if res[0] != self._ok:
            raise RuntimeError(f"cuLaunchKernel failed: {res[0]!r} (grid={grid}, block={block})")

    def allow_dynamic_shared(self, fn: Any, nbytes: int) -> None:
        attrs = self._drv.CUfunction_attribute
        want = [(attrs.CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT, 100)]
        if nbytes > 48 * 1024:
            want.append((attrs.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, int(nbytes)))
        for attr, value in want:
            _check(self._drv.cuFuncSetAttribute(fn, attr, value), f"cuFuncSetAttribute({attr}, {value})")

    def malloc(self, nbytes: int) -> int:
        return int(_check(self._drv.cuMemAlloc(max(1, int(nbytes))), "cuMemAlloc"))

    def free(self, ptr: int) -> None:
        _check(self._drv.cuMemFree(ptr), "cuMemFree")

    def copy_htod(self, dst: int, src: np.ndarray) -> None:
        src = np.ascontiguousarray(src)
        _check(self._drv.cuMemcpyHtoD(dst, src, src.nbytes), "cuMemcpyHtoD")

    def copy_dtoh(self, dst: np.ndarray, src: int) -> None:
        if not dst.flags.c_contiguous:
            raise ValueError("copy_dtoh needs a C-contiguous destination")
        _check(self._drv.cuMemcpyDtoH(dst, src, dst.nbytes), "cuMemcpyDtoH")

    def synchronize(self) -> None:
        _check(self._drv.cuCtxSynchronize(), "cuCtxSynchronize")
