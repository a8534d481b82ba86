"""AMD backend through hip-python (``hip.hip`` module API, ``hip.hiprtc`` compiler).

UNTESTED ON HARDWARE: this project has no AMD GPU. Compiling through hiprtc for gfx90a/gfx1030 is
tested in CI with no GPU; the load/launch path below (hipModuleLoadData, hipModuleGetFunction,
hipModuleLaunchKernel with a ``void**`` kernelParams block) mirrors the CUDA backend call for call and
follows hip-python's documented signatures, but it has never run. Treat a first AMD run as a bring-up.

The compile target is the device's full ``gcnArchName`` (e.g. ``gfx90a:sramecc+:xnack-``) so the code
object's target features match the device; the warp size is the device's ``warpSize`` (64 on CDNA,
32 on RDNA).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import BackendUnavailable, DeviceBackend, KernelArgs


def _check(result: Any, what: str) -> Any:
    status = result[0] if isinstance(result, tuple) else result
    if int(status) != 0:
        raise RuntimeError(f"{what} failed: {status!r}")
    if not isinstance(result, tuple) or len(result) == 1:
        return None
    return result[1] if len(result) == 2 else result[1:]


class HipBackend(DeviceBackend):
    name = "hip"

    def __init__(self, device_index: int = 0) -> None:
        super().__init__()
        try:
            from hip import hip
        except Exception as e:  # ImportError, or hip-python failing to find libamdhip64
            raise BackendUnavailable(f"hip backend needs hip-python and ROCm (ROCM_PATH): {e}") from e
        self._hip = hip
        try:
            count = _check(hip.hipGetDeviceCount(), "hipGetDeviceCount")
        except Exception as e:
            raise BackendUnavailable(f"hip backend: HIP runtime not usable here: {e}") from e
        if count <= device_index:
            raise BackendUnavailable(f"hip backend: no AMD GPU {device_index} (found {count})")
        self.device_index = device_index
        self.activate()
        props = _check(hip.hipGetDeviceProperties(device_index), "hipGetDeviceProperties")
        arch = props.gcnArchName
        self.arch = (arch.decode() if isinstance(arch, bytes) else str(arch)).split("\0", 1)[0]
        self.warp_size = int(props.warpSize)
        self.num_sms = int(props.multiProcessorCount)
        self.l2_bytes = int(props.l2CacheSize)
        name = props.name
        name = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
        self.device_name = name.split("\0")[0]

    def activate(self) -> None:
        _check(self._hip.hipSetDevice(self.device_index), "hipSetDevice")

    def _load_module(self, image: bytes) -> Any:
        return _check(self._hip.hipModuleLoadData(image), "hipModuleLoadData")

    def _get_function(self, module: Any, entry: str) -> Any:
        res = self._hip.hipModuleGetFunction(module, entry.encode())
        return _check(res, f"hipModuleGetFunction({entry})")

    def launch(self, fn: Any, grid: tuple[int, int, int], block: tuple[int, int, int], args: KernelArgs,
               shared: int = 0, stream: int = 0) -> None:
        res = self._hip.hipModuleLaunchKernel(fn, grid[0], grid[1], grid[2], block[0], block[1], block[2],
                                              shared, stream or None, args.address, None)
        if int(res[0]) != 0:
            raise RuntimeError(f"hipModuleLaunchKernel failed: {res[0]!r} (grid={grid}, block={block})")

    def allow_dynamic_shared(self, fn: Any, nbytes: int) -> None:
        if nbytes > 48 * 1024:  # never run here (no AMD GPU): the CUDA opt-in's counterpart
            attr = self._hip.hipFuncAttribute.hipFuncAttributeMaxDynamicSharedMemorySize
            self._hip.hipFuncSetAttribute(fn, attr, int(nbytes))

    def malloc(self, nbytes: int) -> int:
        return int(_check(self._hip.hipMalloc(max(1, int(nbytes))), "hipMalloc"))

    def free(self, ptr: int) -> None:
        _check(self._hip.hipFree(ptr), "hipFree")

    def copy_htod(self, dst: int, src: np.ndarray) -> None:
        src = np.ascontiguousarray(src)
        _check(self._hip.hipMemcpyHtoD(dst, src, src.nbytes), "hipMemcpyHtoD")

    def copy_dtoh(self, dst: np.ndarray, src: int) -> None:
        if not dst.flags.c_contiguous:
            raise ValueError("copy_dtoh needs a C-contiguous destination")
        _check(self._hip.hipMemcpyDtoH(dst, src, dst.nbytes), "hipMemcpyDtoH")

    def synchronize(self) -> None:
        _check(self._hip.hipDeviceSynchronize(), "hipDeviceSynchronize")
