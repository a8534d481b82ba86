"""Fill the kernel disk cache with every conv tactic's per-entry module, compiled in parallel processes
(one NVRTC compile is single-threaded; the conv modules together are ~2 minutes of compile on one core).

Usage: python bench/warm_conv_cache.py [--jobs N]   (on the GPU machine, before tests and benchmarks)
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time


def _compile(job: tuple[str, str, str, str, str, int]) -> tuple[str, float, bool]:
    backend, arch, family, source, entry, ws = job
    from fuser.kernels import toolchain

    t = time.perf_counter()
    code = toolchain.compile_family(backend, arch, source, family, warp_size=ws)
    return entry, time.perf_counter() - t, code.cached


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 4)
    args = ap.parse_args()
    from fuser.kernels import conv
    from fuser.kernels.backend import select_backend

    be = select_backend("auto")
    if not be.is_device:
        print("no GPU backend: nothing to warm")
        return 0
    jobs = [(be.name, be.arch, fam, src, entry, be.warp_size) for fam, src, entry in conv.entry_sources()]
    from fuser.kernels import conv_wgmma, toolchain

    target = toolchain.arch_specific(be.name, be.arch)
    if target and conv.algo_ok("wgmma_tf32", conv.geometry((1, 1, 1, 1), (1, 1, 1, 1)), "float32", be.name, be.arch):
        # wgmma_tf32's modules: their own sm_90a builds
        jobs += [(be.name, target, conv_wgmma.NAME, conv_wgmma.entry_source(t), conv_wgmma.wg_entry(t), be.warp_size)
                 for t in conv_wgmma.WG_TILES]
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(min(args.jobs, len(jobs))) as pool:
        for entry, dt, cached in pool.imap_unordered(_compile, jobs):
            print(f"  {entry}: {'cached' if cached else f'{dt:.1f} s'}", flush=True)
    print(f"warmed {len(jobs)} conv modules for {be.arch} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
