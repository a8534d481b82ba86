"""Ahead-of-time builds for CI and the CLI (``onnx-fuse kernels list|build``): compile every family for
a target with no GPU present, fill the disk cache, and report per variant."""

from __future__ import annotations

import time
from dataclasses import dataclass

from .registry import families, has_device_code
from .toolchain import CompileError, compile_family, has_symbol


@dataclass(frozen=True)
class BuildResult:
    family: str
    variant: str         # entry point; "" for a reference-only family
    ok: bool
    log: str             # compiler diagnostics (or the reason for failure)
    seconds: float       # compile time of the family's module (0.0 when served from the cache)
    cached: bool
    backend: str = ""
    arch: str = ""


@dataclass(frozen=True)
class FamilyInfo:
    name: str
    variants: tuple[str, ...]
    has_device_code: bool
    doc: str              # first line of the module docstring


def list_families() -> list[FamilyInfo]:
    out = []
    for fam in families():
        doc = (fam.__doc__ or "").strip().splitlines()
        out.append(FamilyInfo(fam.NAME, tuple(getattr(fam, "VARIANTS", ())), has_device_code(fam),
                              doc[0] if doc else ""))
    return out


def build_all(backend: str, arch: str, use_cache: bool = True) -> list[BuildResult]:
    """Compile every family for ``backend`` ("cuda" or "hip") and ``arch`` (sm_80, sm_90, gfx90a,
    gfx1030, ...); one module per family, one result per entry point. Never raises for a compile
    failure (it is reported with ok=False and the log); raises ToolchainMissing if the compiler is not
    installed, ValueError for an unknown backend/arch."""
    results: list[BuildResult] = []
    for fam in families():
        variants = list(getattr(fam, "VARIANTS", ()))
        if not has_device_code(fam):
            results.append(BuildResult(fam.NAME, "", True, "reference-only: no device source yet", 0.0, False,
                                       backend, arch))
            continue
        t0 = time.perf_counter()
        try:
            code = compile_family(backend, arch, fam.SOURCE, fam.NAME, use_cache=use_cache)
        except CompileError as e:
            dt = time.perf_counter() - t0
            results.extend(BuildResult(fam.NAME, v, False, e.log or str(e), dt, False, backend, arch)
                           for v in variants)
            continue
        for v in variants:
            ok = has_symbol(code.image, v)
            log = code.log if ok else f"entry point {v} missing from the compiled image\n{code.log}"
            results.append(BuildResult(fam.NAME, v, ok, log, code.seconds, code.cached, backend, arch))
    return results
