"""Memory-bound kernel benchmarks against PyTorch and the device-copy roofline, in one run.

Method: every measured op (ours, torch's, and a plain device copy of the same bytes) is captured
``inner`` times into a CUDA graph, rotating over enough buffer sets that the working set exceeds the
L2 several times when one set would fit; the graph is replayed after warm-up and timed with CUDA
events; the median replay time / inner is reported (min and max too). Inputs are fresh random normal
data. Accuracy is measured against a float64 reference computed on the GPU by torch in float64:
SNR in dB (10 log10 |ref|^2 / |out - ref|^2) and cosine similarity, for ours and for torch.

LeakyReLU rows (``bench_leaky``) time every compiled launch configuration against torch in two
output regimes, each ``--repeat`` times (interleaved), so the run-to-run spread is measured:
``rot`` = every captured call writes its own output buffer (ours and ``aten::leaky_relu.out``);
``one`` = every call writes the same output buffer, which is what ``F.leaky_relu`` does inside a
captured graph (its freed output block is handed straight back to the next call, so a small output
stays in L2).

Usage: python bench/bench_kernels.py [--out DIR] [--quick] [--only leaky] [--repeat N]
torch is used only here (allocation, baselines, timing); the library itself does not need it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timing import time_graph

from fuser.kernels import batchnorm, group_norm, leaky_relu
from fuser.kernels.backend import select_backend

try:
    from cuda.bindings import driver as _drv
except ImportError:  # older cuda-python layout
    from cuda import cuda as _drv  # type: ignore[no-redef]

DATE = "2026-11-21"
L2_ROTATE_FACTOR = 3        # rotate sets until the working set is >= 3x L2


def nsets_for(set_bytes: int, l2: int) -> int:
    if set_bytes >= L2_ROTATE_FACTOR * l2:
        return 1
    return min(32, math.ceil(L2_ROTATE_FACTOR * l2 / set_bytes))


def accuracy(out: torch.Tensor, ref64: torch.Tensor) -> tuple[float, float]:
    o = out.double().reshape(-1)
    r = ref64.reshape(-1)
    noise = torch.sum((o - r) ** 2).item()
    sig = torch.sum(r * r).item()
    snr = float("inf") if noise == 0 else 10 * math.log10(sig / noise)
    cos = (torch.dot(o, r) / (torch.linalg.vector_norm(o) * torch.linalg.vector_norm(r))).item()
    return snr, cos


class Bench:
    def __init__(self, quick: bool) -> None:
        self.be = select_backend("cuda")
        self.l2 = self.be.l2_bytes
        self.quick = quick
        self.rows: list[dict[str, Any]] = []
        self._copy_cache: dict[tuple[int, torch.dtype], dict[str, float]] = {}

    def copy_time(self, numel: int, dtype: torch.dtype) -> dict[str, float]:
        key = (numel, dtype)
        if key not in self._copy_cache:
            esz = torch.empty(0, dtype=dtype).element_size()
            ns = nsets_for(2 * numel * esz, self.l2)
            src = [torch.randn(numel, device="cuda").to(dtype) for _ in range(ns)]
            dst = [torch.empty(numel, device="cuda", dtype=dtype) for _ in range(ns)]
            # Roofline = the faster of torch's copy kernel and the driver's device-to-device memcpy
            # (run 1 saw torch's copy_ at 2.7 TB/s for 1 GiB tensors, far under its 4.2 TB/s at 256 MiB).
            t_torch = time_graph(lambda i, st: dst[i].copy_(src[i]), ns)
            nbytes = numel * esz
            t_drv = time_graph(lambda i, st: _drv.cuMemcpyDtoDAsync(dst[i].data_ptr(), src[i].data_ptr(),
                                                                    nbytes, st), ns)
            best = min((t_torch, t_drv), key=lambda t: t["median_ms"])
            best = dict(best, torch_copy_ms=t_torch["median_ms"], memcpy_ms=t_drv["median_ms"])
            self._copy_cache[key] = best
            del src, dst
        return self._copy_cache[key]

    def case(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, make_inputs: Callable[[], Any],
             ours: Callable[[Any, torch.Tensor, int], None], theirs: Callable[[Any], torch.Tensor],
             ref64: Callable[[Any], torch.Tensor], baseline_name: str, goal: str,
             bytes_moved: int | None = None) -> dict[str, Any]:
        numel = math.prod(shape)
        esz = torch.empty(0, dtype=dtype).element_size()
        moved = bytes_moved if bytes_moved is not None else 2 * numel * esz
        ns = nsets_for(moved, self.l2)
        ins = [make_inputs() for _ in range(ns)]
        outs = [torch.empty(shape, device="cuda", dtype=dtype) for _ in range(ns)]
        # accuracy first, on set 0 (outputs poisoned so unwritten elements show up as NaN)
        outs[0].fill_(float("nan"))
        ours(ins[0], outs[0], torch.cuda.current_stream().cuda_stream)
        torch.cuda.synchronize()
        r64 = ref64(ins[0])
        snr, cos = accuracy(outs[0], r64)
        bsnr, bcos = accuracy(theirs(ins[0]), r64)
        finite = bool(torch.isfinite(outs[0]).all().item())
        del r64
        t_ours = time_graph(lambda i, st: ours(ins[i], outs[i], st), ns)
        t_torch = time_graph(lambda i, st: theirs(ins[i]), ns)
        t_copy = self.copy_time(numel, dtype)
        row = {
            "case": name, "shape": list(shape), "dtype": str(dtype).replace("torch.", ""),
            "baseline": baseline_name, "torch_ms": t_torch["median_ms"], "ours_ms": t_ours["median_ms"],
            "ours_min_ms": t_ours["min_ms"], "ours_max_ms": t_ours["max_ms"],
            "torch_min_ms": t_torch["min_ms"], "torch_max_ms": t_torch["max_ms"],
            "copy_ms": t_copy["median_ms"], "torch_copy_ms": t_copy["torch_copy_ms"],
            "memcpy_ms": t_copy["memcpy_ms"], "bytes": moved,
            "ours_gbs": moved / t_ours["median_ms"] / 1e6, "copy_gbs": 2 * numel * esz / t_copy["median_ms"] / 1e6,
            "speedup": t_torch["median_ms"] / t_ours["median_ms"],
            "snr_db": snr, "cos": cos, "torch_snr_db": bsnr, "torch_cos": bcos, "finite": finite,
            "nsets": ns, "inner": t_ours["inner"], "goal": goal,
        }
        row["pct_copy"] = 100.0 * row["ours_gbs"] / row["copy_gbs"]
        self.rows.append(row)
        print(f"\n[Evaluate] {name} {tuple(shape)} {row['dtype']}")
        print(f"- Baseline latency      : {row['torch_ms']:.4f} ms  ({baseline_name})")
        print(f"- Current latency       : {row['ours_ms']:.4f} ms  (min {row['ours_min_ms']:.4f}, "
              f"max {row['ours_max_ms']:.4f})")
        print(f"- Speedup               : {row['speedup']:.3f}x")
        print(f"- Accuracy SNR          : {snr:.2f} dB (torch: {bsnr:.2f} dB) vs float64")
        print(f"- Accuracy Cosine       : {cos:.12f} (torch: {bcos:.12f})")
        print(f"- Bandwidth             : {row['ours_gbs']:.0f} GB/s = {row['pct_copy']:.1f}% of copy "
              f"({row['copy_gbs']:.0f} GB/s); {ns} buffer set(s)")
        print(f"- All outputs written   : {finite}; goal: {goal}")
        ins.clear()
        outs.clear()
        torch.cuda.empty_cache()
        return row


def randn(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(shape, device="cuda", dtype=torch.float32).to(dtype)


def bench_bn(b: Bench, shape: tuple[int, ...], caps: bool, eps: float = 1e-5) -> None:
    be = b.be
    c = shape[1]
    gamma = torch.rand(c, device="cuda", dtype=torch.float64) + 0.5
    beta = torch.randn(c, device="cuda", dtype=torch.float64) * 0.5
    mean = torch.randn(c, device="cuda", dtype=torch.float64)
    var = torch.rand(c, device="cuda", dtype=torch.float64) + 0.2
    g32, b32, m32, v32 = (t.float() for t in (gamma, beta, mean, var))
    scale, shift = batchnorm.fold_scale_shift(gamma.cpu().numpy(), beta.cpu().numpy(), mean.cpu().numpy(),
                                              var.cpu().numpy(), eps)
    bshape = (1, c) + (1,) * (len(shape) - 2)

    def bn_ref(x: torch.Tensor, act: bool) -> torch.Tensor:
        y = (x.double() - mean.view(bshape)) / torch.sqrt(var.view(bshape) + eps) * gamma.view(bshape) \
            + beta.view(bshape)
        return F.leaky_relu(y, 0.1) if act else y

    def torch_bn(x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, m32, v32, g32, b32, training=False, eps=eps)

    tag = "x".join(map(str, shape))
    rb = batchnorm.Runner(be, shape, np.float32, scale, shift)
    b.case(f"batchnorm {tag}", shape, torch.float32, lambda: randn(shape, torch.float32),
           lambda x, y, st: rb((x.data_ptr(),), y.data_ptr(), st), torch_bn,
           lambda x: bn_ref(x, False), "F.batch_norm(eval)", ">=90% copy")
    rbl = batchnorm.Runner(be, shape, np.float32, scale, shift, "LeakyRelu", alpha=0.1)
    b.case(f"batchnorm+leaky {tag}", shape, torch.float32, lambda: randn(shape, torch.float32),
           lambda x, y, st: rbl((x.data_ptr(),), y.data_ptr(), st),
           lambda x: F.leaky_relu(torch_bn(x), 0.1), lambda x: bn_ref(x, True),
           "F.batch_norm(eval)+F.leaky_relu", ">=90% copy")
    # Launch-rule / kernel comparisons in the same run (run 2's defaults and alternatives).
    variants: list[tuple[str, dict[str, Any]]] = [("generic act", {"specialize": False})]
    if caps:
        variants.append(("persistent sms*8", {"max_blocks": be.num_sms * 8}))
    else:
        variants += [("per_lane=2", {"per_lane": 2}), ("per_lane=8", {"per_lane": 8})]
    for label, kw in variants:
        rv = batchnorm.Runner(be, shape, np.float32, scale, shift, "LeakyRelu", alpha=0.1, **kw)
        b.case(f"batchnorm+leaky {tag} {label}", shape, torch.float32,
               lambda: randn(shape, torch.float32),
               lambda x, y, st, r=rv: r((x.data_ptr(),), y.data_ptr(), st),
               lambda x: F.leaky_relu(torch_bn(x), 0.1), lambda x: bn_ref(x, True),
               "F.batch_norm(eval)+F.leaky_relu", "info")


LEAKY_ALPHA = 0.01


def _spread(v: list[float]) -> float:
    return max(v) - min(v)


def bench_leaky(b: Bench, n: int, dtype: torch.dtype, configs: list[tuple[str, int, int]],
                repeat: int, offs: tuple[int, int] = (0, 0), tag: str = "") -> None:
    """LeakyReLU at ``n`` elements: each listed config of ``leaky_relu.CONFIGS`` (``*`` marks the one
    ``choose_config`` picks for this size), torch allocating
    (``F.leaky_relu``) and torch writing a given output (``aten::leaky_relu.out``), in the ``rot`` and
    ``one`` output regimes (module docstring), ``repeat`` times each, interleaved. ``offs`` shifts
    input/output by that many elements (head/tail path). Every config's output is checked bit-equal
    to torch's and fully written before it is timed."""
    esz = torch.empty(0, dtype=dtype).element_size()
    rule = leaky_relu.choose_config(n, esz)
    moved = 2 * n * esz
    ns = nsets_for(moved, b.l2)
    pad = 16 // esz
    xb = [randn((n + pad,), dtype) for _ in range(ns)]
    yb = [torch.empty(n + pad, device="cuda", dtype=dtype) for _ in range(ns)]
    xs = [t[offs[0]:offs[0] + n] for t in xb]
    ys = [t[offs[1]:offs[1] + n] for t in yb]
    t_copy = b.copy_time(n, dtype)
    ref_t = F.leaky_relu(xs[0], LEAKY_ALPHA)
    r64 = F.leaky_relu(xs[0].double(), LEAKY_ALPHA)
    bsnr, _ = accuracy(ref_t, r64)
    runners = {}
    acc = {}
    for cfg in configs:
        r = leaky_relu.Runner(b.be, n, np.dtype(str(dtype).replace("torch.", "")), LEAKY_ALPHA, config=cfg)
        ys[0].fill_(float("nan"))
        r((xs[0].data_ptr(),), ys[0].data_ptr(), torch.cuda.current_stream().cuda_stream)
        torch.cuda.synchronize()
        snr, cos = accuracy(ys[0], r64)
        acc[cfg] = (snr, cos, bool(torch.isfinite(ys[0]).all().item()), bool(torch.equal(ys[0], ref_t)))
        runners[cfg] = r
    del r64, ref_t
    regimes = ["rot", "one"] if ns > 1 else ["rot"]
    alloc_ptrs: list[int] = []

    def torch_alloc(i: int, st: int) -> torch.Tensor:
        out = F.leaky_relu(xs[i], LEAKY_ALPHA)
        alloc_ptrs.append(out.data_ptr())
        return out

    torch_calls = {"rot": lambda i, st: torch.ops.aten.leaky_relu.out(xs[i], LEAKY_ALPHA, out=ys[i]),
                   "one": torch_alloc}
    tt: dict[str, list[float]] = {g: [] for g in regimes}
    to: dict[tuple[Any, str], list[float]] = {(c, g): [] for c in configs for g in regimes}
    for _ in range(repeat):
        for g in regimes:
            alloc_ptrs.clear()
            tt[g].append(time_graph(torch_calls[g], ns)["median_ms"])
            if g == "one":
                distinct_alloc = len(set(alloc_ptrs[-max(20, ns):]))
            for cfg in configs:
                r = runners[cfg]
                one = g == "one"

                def call(i: int, st: int, r: Any = r, one: bool = one) -> None:
                    r((xs[i].data_ptr(),), ys[0 if one else i].data_ptr(), st)

                to[(cfg, g)].append(time_graph(call, ns)["median_ms"])
    name = f"leaky_relu {n / 2**20:g}M{'' if dtype == torch.float32 else ' fp16'}{tag}"
    for g in regimes:
        for cfg in configs:
            o = to[(cfg, g)]
            t = tt[g]
            ours_ms, torch_ms = statistics.median(o), statistics.median(t)
            snr, cos, finite, exact = acc[cfg]
            scheme, blk, vpt = cfg
            label = f"{scheme}{blk}x{vpt}{'*' if cfg == rule else ''}"
            row = {
                "case": f"{name} {label} [{g}]", "shape": [n], "dtype": str(dtype).replace("torch.", ""),
                "config": list(cfg), "default": cfg == rule, "regime": g, "offsets": list(offs),
                "baseline": "aten::leaky_relu.out (rotating outputs)" if g == "rot"
                else "F.leaky_relu (allocating; one reused output in the graph)",
                "torch_ms": torch_ms, "ours_ms": ours_ms, "torch_reps_ms": t, "ours_reps_ms": o,
                "torch_spread_ms": _spread(t), "ours_spread_ms": _spread(o),
                "copy_ms": t_copy["median_ms"], "torch_copy_ms": t_copy["torch_copy_ms"],
                "memcpy_ms": t_copy["memcpy_ms"], "bytes": moved, "ours_gbs": moved / ours_ms / 1e6,
                "copy_gbs": moved / t_copy["median_ms"] / 1e6, "speedup": torch_ms / ours_ms,
                "snr_db": snr, "cos": cos, "torch_snr_db": bsnr, "finite": finite, "equal_to_torch": exact,
                "nsets": ns,
            }
            if g == "one":
                row["torch_alloc_distinct_outputs"] = distinct_alloc
            row["pct_copy"] = 100.0 * row["ours_gbs"] / row["copy_gbs"]
            b.rows.append(row)
            print(f"[leaky] {row['case']:44s} torch {torch_ms:.5f} ({' '.join(f'{v:.5f}' for v in t)}) "
                  f"ours {ours_ms:.5f} ({' '.join(f'{v:.5f}' for v in o)}) x{row['speedup']:.3f} "
                  f"{row['pct_copy']:.1f}% copy; snr {snr:.1f} (torch {bsnr:.1f}) finite {finite} "
                  f"equal {exact}" + (f"; torch outputs in graph: {distinct_alloc}" if g == "one" else ""))


def leaky_table(rows: list[dict[str, Any]]) -> None:
    print("\nLEAKY (median of repeats, ms; spread = max-min of the repeats' medians; x = torch/ours)")
    print(f"{'case':46s} {'torch':>8s} {'+-':>6s} {'ours':>8s} {'+-':>6s} {'x':>6s} {'%copy':>6s} eq")
    for r in rows:
        if "regime" not in r:
            continue
        print(f"{r['case'][:46]:46s} {r['torch_ms']:8.5f} {r['torch_spread_ms']:6.5f} {r['ours_ms']:8.5f} "
              f"{r['ours_spread_ms']:6.5f} {r['speedup']:6.3f} {r['pct_copy']:6.1f} "
              f"{'Y' if r['equal_to_torch'] and r['finite'] else 'N'}")


def dump_cubin(be: Any, path: str) -> None:
    """The LeakyReLU family's module as this device's NVRTC builds it (for cuobjdump -sass)."""
    from fuser.kernels import toolchain

    code = toolchain.compile_family(be.name, be.arch, leaky_relu.SOURCE, leaky_relu.NAME, warp_size=be.warp_size)
    with open(path, "wb") as f:
        f.write(code.image)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", ""))
    ap.add_argument("--quick", action="store_true", help="small sizes only (smoke)")
    ap.add_argument("--only", choices=["all", "leaky"], default="all", help="leaky: LeakyReLU rows only")
    ap.add_argument("--repeat", type=int, default=2, help="LeakyReLU: times each config is timed")
    ap.add_argument("--configs", choices=["all", "final"], default="all",
                    help="LeakyReLU: every compiled config, or the default and the old stride kernel")
    ap.add_argument("--cubin", default="", help="write the LeakyReLU module (cubin) here")
    args = ap.parse_args()
    torch.manual_seed(0)
    b = Bench(args.quick)
    be = b.be
    props = torch.cuda.get_device_properties(0)
    print(f"device: {props.name}, {be.num_sms} SMs, L2 {be.l2_bytes / 2**20:.0f} MiB, arch {be.arch}; "
          f"torch {torch.__version__}; date {DATE}")

    # ---- launch overhead (host side, eager) --------------------------------------------------------
    x1, y1 = randn((1,), torch.float32), torch.empty(1, device="cuda")
    r1 = leaky_relu.Runner(be, 1, np.float32, 0.01)
    r1((x1.data_ptr(),), y1.data_ptr())
    torch.cuda.synchronize()
    n_launch = 3000
    t0 = time.perf_counter()
    for _ in range(n_launch):
        r1((x1.data_ptr(),), y1.data_ptr())
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    ours_us = (t1 - t0) / n_launch * 1e6
    t0 = time.perf_counter()
    for _ in range(n_launch):
        be.launch(r1.fn, (1, 1, 1), (r1.block, 1, 1), r1.args, 0, 0)
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    raw_us = (t1 - t0) / n_launch * 1e6
    t0 = time.perf_counter()
    for _ in range(n_launch):
        F.leaky_relu(x1, 0.01)
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    torch_us = (t1 - t0) / n_launch * 1e6
    launch = {"runner_call_us": ours_us, "cuLaunchKernel_us": raw_us, "torch_leaky_relu_us": torch_us}
    print(f"launch overhead (host, eager): Runner.__call__ {ours_us:.2f} us, bare cuLaunchKernel "
          f"{raw_us:.2f} us, torch F.leaky_relu {torch_us:.2f} us")

    # ---- LeakyReLU ---------------------------------------------------------------------------------
    if args.cubin:
        dump_cubin(be, args.cubin)
    old = ("stride", 256, 2)

    def pick(n: int, esz: int, extra: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
        """The rule's config, the pre-2026-11-21 stride kernel, then ``extra`` (all configs unless
        --configs final)."""
        out = [leaky_relu.choose_config(n, esz), old]
        return out + ([] if args.configs == "final" else [c for c in extra if c not in out])

    sizes = [1 << 20, 1 << 24] if args.quick else [1 << 20, 1 << 22, 1 << 24, 1 << 26, 1 << 28]
    for n in sizes:
        bench_leaky(b, n, torch.float32, pick(n, 4, leaky_relu.CONFIGS), args.repeat)
        torch.cuda.empty_cache()
    n = 1 << 26 if not args.quick else 1 << 22
    bench_leaky(b, n, torch.float16, pick(n, 2, leaky_relu.CONFIGS), args.repeat)
    torch.cuda.empty_cache()
    # head + tail path: both pointers one element past a 16-byte boundary, 3 elements past a vector
    bench_leaky(b, (1 << 20) + 3, torch.float32, pick(1 << 20, 4, []), args.repeat, offs=(1, 1), tag=" +3 off1")
    torch.cuda.empty_cache()

    # ---- BatchNorm (+LeakyReLU) ------------------------------------------------------------------
    bn_shapes = [(8, 64, 56, 56), (8, 512, 14, 14)] if args.quick else [(256, 64, 56, 56), (64, 512, 14, 14)]
    if args.only == "all":
        for i, shape in enumerate(bn_shapes):
            bench_bn(b, shape, caps=(i == 0 and not args.quick))
        bench_gn(b, args.quick)
    return summary(b, args, props, launch)


def bench_gn(b: Bench, quick: bool) -> None:
    be = b.be
    # ---- GroupNorm (+SiLU) -------------------------------------------------------------------------
    shape = (16, 64, 56, 56) if quick else (256, 64, 56, 56)
    G = 32
    eps = 1e-5
    gw = torch.rand(64, device="cuda") + 0.5
    gb = torch.randn(64, device="cuda") * 0.3
    gwn, gbn = gw.cpu().numpy(), gb.cpu().numpy()

    def gn_ref(x: torch.Tensor, silu: bool) -> torch.Tensor:
        y = F.group_norm(x.double(), G, gw.double(), gb.double(), eps)
        return F.silu(y) if silu else y

    tag = "x".join(map(str, shape))
    for force in (None, "split"):
        sfx = "" if force is None else " [split scheme]"
        rg = group_norm.Runner(be, shape, np.float32, gwn, gbn, G, eps, force=force)
        b.case(f"group_norm {tag} G={G}{sfx}", shape, torch.float32, lambda: randn(shape, torch.float32),
               lambda x, y, st, r=rg: r((x.data_ptr(),), y.data_ptr(), st),
               lambda x: F.group_norm(x, G, gw, gb, eps), lambda x: gn_ref(x, False), "F.group_norm",
               ">=2x torch" if force is None else "info")
        rgs = group_norm.Runner(be, shape, np.float32, gwn, gbn, G, eps, "SiLU", force=force)
        b.case(f"group_norm+silu {tag} G={G}{sfx}", shape, torch.float32, lambda: randn(shape, torch.float32),
               lambda x, y, st, r=rgs: r((x.data_ptr(),), y.data_ptr(), st),
               lambda x: F.silu(F.group_norm(x, G, gw, gb, eps)), lambda x: gn_ref(x, True),
               "F.group_norm+F.silu", ">=2x torch" if force is None else "info")
    rgh = group_norm.Runner(be, shape, np.float16, gwn, gbn, G, eps, "SiLU")
    b.case(f"group_norm+silu {tag} G={G} fp16", shape, torch.float16, lambda: randn(shape, torch.float16),
           lambda x, y, st: rgh((x.data_ptr(),), y.data_ptr(), st),
           lambda x: F.silu(F.group_norm(x, G, gw.half(), gb.half(), eps)), lambda x: gn_ref(x, True),
           "F.group_norm+F.silu (fp16)", "info")

    shape2 = (2, 320, 64, 64)        # few, large groups (SD-UNet-like): the plan picks the split scheme
    gw2 = torch.rand(320, device="cuda") + 0.5
    gb2 = torch.randn(320, device="cuda") * 0.3
    rg2 = group_norm.Runner(be, shape2, np.float32, gw2.cpu().numpy(), gb2.cpu().numpy(), G, eps, "SiLU")
    b.case(f"group_norm+silu 2x320x64x64 G={G} [{rg2.plan['scheme']}]", shape2, torch.float32,
           lambda: randn(shape2, torch.float32), lambda x, y, st: rg2((x.data_ptr(),), y.data_ptr(), st),
           lambda x: F.silu(F.group_norm(x, G, gw2, gb2, eps)),
           lambda x: F.silu(F.group_norm(x.double(), G, gw2.double(), gb2.double(), eps)),
           "F.group_norm+F.silu", "info")


def summary(b: Bench, args: argparse.Namespace, props: Any, launch: dict[str, float]) -> int:
    be = b.be
    # ---- summary -----------------------------------------------------------------------------------
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "bench.json"), "w") as f:
            json.dump({"date": DATE, "device": props.name, "sms": be.num_sms, "l2_bytes": be.l2_bytes,
                       "arch": be.arch, "torch": torch.__version__, "launch": launch,
                       "rows": b.rows, "utc": datetime.datetime.now(datetime.timezone.utc).isoformat()},
                      f, indent=1)
    print(f"\nSUMMARY {DATE} {props.name} (median ms; %copy = our bytes/s over a device copy of the same "
          "bytes)")
    hdr = f"{'case':52s} {'torch':>8s} {'ours':>8s} {'speedup':>7s} {'GB/s':>6s} {'%copy':>6s} {'SNR dB':>7s} ok"
    print(hdr)
    for r in b.rows:
        if "regime" in r:
            continue
        print(f"{r['case'][:52]:52s} {r['torch_ms']:8.4f} {r['ours_ms']:8.4f} {r['speedup']:7.2f} "
              f"{r['ours_gbs']:6.0f} {r['pct_copy']:6.1f} {r['snr_db']:7.1f} {'Y' if r['finite'] else 'N'}")
    leaky_table(b.rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
