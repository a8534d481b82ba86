"""Runtime compilers behind one function: NVRTC (cuda-python) for NVIDIA, hiprtc (hip-python) for AMD.

Neither needs a GPU: CI compiles every family for sm_80/sm_90 and gfx90a/gfx1030 with none present.
Every compile goes through the on-disk cache (``cache.py``); ``compile_count()`` counts real compiles
in this process, which is how the tests prove a second run compiles nothing.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import cache
from .prelude import compile_options, full_source

_lock = threading.Lock()
_compiles = 0


class ToolchainMissing(RuntimeError):
    """The runtime compiler for a backend is not installed or cannot load its library."""


class CompileError(RuntimeError):
    """The runtime compiler rejected a source; ``log`` holds its diagnostics."""

    def __init__(self, message: str, log: str) -> None:
        super().__init__(f"{message}\n{log}")
        self.log = log


@dataclass(frozen=True)
class CompiledCode:
    backend: str
    arch: str
    name: str
    image: bytes      # cubin (NVIDIA) or code object (AMD), loadable with cuModuleLoadData/hipModuleLoadData
    log: str
    cached: bool
    seconds: float
    key: str


def compile_count() -> int:
    """Real (non-cached) compiles done by this process."""
    return _compiles


def _nvrtc() -> Any:
    try:
        from cuda.bindings import nvrtc
    except ImportError:
        try:
            from cuda import nvrtc  # type: ignore[no-redef]  # cuda-python < 12.6 layout
        except ImportError as e:
            raise ToolchainMissing(
                "NVRTC not available: pip install cuda-bindings nvidia-cuda-nvrtc (or cuda-python)") from e
    return nvrtc


# Where tests/kernels/setup_toolchains.sh links ROCm 5.2's libamdhip64 for hip-python (compile-only hosts).
DEFAULT_ROCM_DIR = os.path.join(os.path.expanduser("~"), ".local", "share", "onnx-fuse", "rocm")


def _hiprtc() -> Any:
    # hip-python reads ROCM_PATH when it first loads its libraries; default it to the links the setup
    # script makes, so a developer who ran it needs no extra export.
    if "ROCM_PATH" not in os.environ:
        rocm_dir = os.environ.get("ONNX_FUSE_ROCM_DIR", DEFAULT_ROCM_DIR)
        if os.path.exists(os.path.join(rocm_dir, "lib", "libhiprtc.so")):
            os.environ["ROCM_PATH"] = rocm_dir
    try:
        from hip import hiprtc
    except Exception as e:  # hip-python raises various errors when ROCm libraries are missing
        raise ToolchainMissing(
            "hiprtc not available: install hip-python and ROCm's libamdhip64/hiprtc, and set ROCM_PATH "
            f"so that $ROCM_PATH/lib holds libhiprtc.so (tests/kernels/setup_toolchains.sh): {e}") from e
    return hiprtc


def _check(result: Any, what: str) -> Any:
    """cuda-python / hip-python return (status, values...); raise on a non-zero status."""
    status = result[0] if isinstance(result, tuple) else result
    if int(status) != 0:
        raise RuntimeError(f"{what} failed: {status!r}")
    if isinstance(result, tuple):
        return result[1] if len(result) == 2 else result[1:]
    return None


_versions: dict[str, str] = {}


def compiler_version(backend: str) -> str:
    """A string naming the compiler build; part of every cache key."""
    if backend in _versions:
        return _versions[backend]
    try:
        if backend == "cuda":
            major, minor = _check(_nvrtc().nvrtcVersion(), "nvrtcVersion")
            v = f"nvrtc-{major}.{minor}"
        elif backend == "hip":
            major, minor = _check(_hiprtc().hiprtcVersion(), "hiprtcVersion")
            v = f"hiprtc-{major}.{minor}"
        else:
            raise ValueError(f"no runtime compiler for backend {backend!r}")
    except (ToolchainMissing, ValueError):
        raise
    except Exception as e:  # library found by the binding but not loadable
        raise ToolchainMissing(f"{backend} runtime compiler not usable: {e}") from e
    _versions[backend] = v
    return v


def toolchain_available(backend: str) -> bool:
    try:
        compiler_version(backend)
    except ToolchainMissing:
        return False
    return True


def _compile_nvrtc(source: str, name: str, options: Sequence[str]) -> tuple[bytes, str]:
    nvrtc = _nvrtc()
    prog = _check(nvrtc.nvrtcCreateProgram(source.encode(), name.encode(), 0, [], []), "nvrtcCreateProgram")
    try:
        opts = [o.encode() for o in options]
        status = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)[0]
        size = _check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
        buf = b" " * size
        _check(nvrtc.nvrtcGetProgramLog(prog, buf), "nvrtcGetProgramLog")
        log = buf.rstrip(b"\0 ").decode(errors="replace")
        if int(status) != 0:
            raise CompileError(f"NVRTC failed to compile {name} ({' '.join(options)}): {status!r}", log)
        size = _check(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
        image = b" " * size
        _check(nvrtc.nvrtcGetCUBIN(prog, image), "nvrtcGetCUBIN")
        return image, log
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def _compile_hiprtc(source: str, name: str, options: Sequence[str]) -> tuple[bytes, str]:
    hiprtc = _hiprtc()
    res = hiprtc.hiprtcCreateProgram(source.encode(), name.encode(), 0, [], [])
    prog = _check(res, "hiprtcCreateProgram")
    try:
        opts = [o.encode() for o in options]
        status = hiprtc.hiprtcCompileProgram(prog, len(opts), opts)[0]
        size = _check(hiprtc.hiprtcGetProgramLogSize(prog), "hiprtcGetProgramLogSize")
        log = ""
        if size:
            buf = bytearray(size)
            _check(hiprtc.hiprtcGetProgramLog(prog, buf), "hiprtcGetProgramLog")
            log = bytes(buf).rstrip(b"\0 ").decode(errors="replace")
        if int(status) != 0:
            raise CompileError(f"hiprtc failed to compile {name} ({' '.join(options)}): {status!r}", log)
        size = _check(hiprtc.hiprtcGetCodeSize(prog), "hiprtcGetCodeSize")
        image = bytearray(size)
        _check(hiprtc.hiprtcGetCode(prog, image), "hiprtcGetCode")
        return bytes(image), log
    finally:
        # The C API takes hiprtcProgram*: pass a reference to the handle, not the handle itself.
        hiprtc.hiprtcDestroyProgram(prog.createRef())


def compile_family(backend: str, arch: str, family_source: str, name: str, *,
                   warp_size: int | None = None, extra_options: Sequence[str] = (),
                   use_cache: bool = True) -> CompiledCode:
    """Compile one family's source (prelude added here) for ``arch``; cached on disk.

    ``warp_size`` is read from the device when there is one; compile-only builds infer it from ``arch``.
    Set ``ONNX_FUSE_NO_CACHE=1`` to bypass the cache (debugging the compiler itself)."""
    global _compiles
    source = full_source(family_source)
    options = [*compile_options(backend, arch, warp_size), *extra_options]
    key = cache.cache_key(source, options, arch, backend, compiler_version(backend))
    use_cache = use_cache and os.environ.get("ONNX_FUSE_NO_CACHE", "") not in ("1", "true")
    if use_cache:
        image = cache.load(backend, key)
        if image is not None:
            return CompiledCode(backend, arch, name, image, "", True, 0.0, key)
    t0 = time.perf_counter()
    if backend == "cuda":
        image, log = _compile_nvrtc(source, f"{name}.cu", options)
    elif backend == "hip":
        image, log = _compile_hiprtc(source, f"{name}.hip", options)
    else:
        raise ValueError(f"no runtime compiler for backend {backend!r}")
    seconds = time.perf_counter() - t0
    with _lock:
        _compiles += 1
    if use_cache:
        cache.store(backend, key, image)
    return CompiledCode(backend, arch, name, image, log, False, seconds, key)


# NVIDIA targets with an architecture-specific variant: code built for sm_90a may use instructions that exist
# only on compute capability 9.0 (wgmma, setmaxnreg) and loads nowhere else, so a family asks for it per module
# (DeviceBackend.function(..., arch=...)) and everything else keeps compiling for the plain, portable target.
_ARCH_SPECIFIC = {"sm_90": "sm_90a"}


def arch_specific(backend: str, arch: str) -> str | None:
    """The architecture-specific target of a device's ``arch`` (cuda sm_90 -> sm_90a), or None where there is
    none (other NVIDIA archs, AMD)."""
    return _ARCH_SPECIFIC.get(arch) if backend == "cuda" else None


def has_symbol(image: bytes, entry: str) -> bool:
    """Whether a compiled image names ``entry`` (ELF string tables of cubins and AMD code objects hold
    the unmangled ``extern "C"`` names, NUL-terminated)."""
    return (b"\0" + entry.encode() + b"\0") in image
