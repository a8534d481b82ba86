"""Fused Conv+BN+LeakyReLU kernels vs PyTorch/cuDNN on the seed report's conv problem set, in one run.

Per problem (N, Cin, H, W, Cout, K; stride 1, pad K//2): BN (random statistics) is folded into the
weights and bias in float64 (what fold_bn does), and our fused kernel computes conv + bias + LeakyReLU(0.1)
in one launch. Baselines, in the same process: eager ``conv2d -> batch_norm -> leaky_relu`` (three
launches) and ``conv2d`` alone (cuDNN), both with ``torch.backends.cudnn.allow_tf32 = False`` for fp32;
TF32: our ``mma_tf32`` (register double buffer), ``mma_tf32_ms`` (multistage cp.async) and, on sm_90,
``wgmma_tf32`` (Hopper warpgroup MMA) tactics vs cuDNN conv
alone with TF32 allowed; fp16: our ``mma_f16`` vs cuDNN fp16.

Method (as bench_kernels.py): each op is captured ``inner`` times into a CUDA graph, rotating over
enough input/output sets to exceed 3x L2 when one set fits in it, the graph is replayed after warm-up,
timed with CUDA events; the median replay / inner is reported. Inputs are fresh ``randn``. Accuracy:
SNR in dB and relative L2 against a float64 reference computed on the GPU (torch float64), for ours
and for cuDNN.

Usage: python bench/bench_conv.py [--out DIR] [--quick] [--tactics] [--tf32-only] [--tf32-tactics T,..]
       [--ms-variants TILE:WGM,WGN,S,MINB,BK;..] [--wg-variants TILE:NWG,S,MINB,PIPE;..] [--cases NAME,..]
(--tactics: time every tactic; --tf32-only: only cuDNN TF32 and our TF32 tactics; --ms-variants
128x128:2,4,4,2,16: also time the multistage kernel of that tile built with another configuration (warps along
M and N, pipeline stages, blocks per SM for __launch_bounds__, k per stage; see conv_mma.MS_TILES), reported
as ``<tactic>@w<WGM>x<WGN>s<S>k<BK>``)
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time

import numpy as np
import timing
import torch
import torch.nn.functional as F

from fuser.kernels import conv, conv_mma, conv_wgmma
from fuser.kernels.backend import select_backend

PROBLEMS = [  # name, N, Cin, H, W, Cout, K (seed report table 1)
    ("small_1", 1, 3, 64, 64, 16, 3),
    ("mobilenet_like", 1, 64, 56, 56, 64, 3),
    ("resnet_block", 1, 64, 56, 56, 128, 1),
    ("medium", 1, 32, 128, 128, 64, 3),
    ("large_batch", 8, 64, 128, 128, 128, 3),
    ("large_spatial", 4, 64, 256, 256, 128, 3),
    ("very_wide_pointwise", 1, 128, 32, 320, 256, 1),
    ("1x1_heavy_channels", 1, 512, 16, 16, 512, 1),
    ("5x5_kernel", 1, 32, 64, 64, 64, 5),
]
# Darknet-53 / CSPDarknet-53 shapes at batch 8 (256x256 input): 3x3 and 1x1 TF32 convs at 8-32 spatial with
# 128-1024 channels, what the end-to-end TF32 runs spend most time in (--extra)
EXTRA = [
    ("dn_3x3_32", 8, 128, 32, 32, 256, 3),
    ("dn_1x1_32", 8, 256, 32, 32, 128, 1),
    ("dn_3x3_16", 8, 256, 16, 16, 512, 3),
    ("dn_1x1_16", 8, 512, 16, 16, 256, 1),
    ("dn_3x3_8", 8, 512, 8, 8, 1024, 3),
    ("dn_1x1_8", 8, 1024, 8, 8, 512, 1),
]
ALPHA = 0.1


def time_graph(call, nsets: int) -> float:
    """Median ms per call (bench/timing.py), this benchmark's shorter loop."""
    return timing.time_graph(call, nsets, inner_min=10, reps=15, warmup=2)["median_ms"]


def acc(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    o, r = out.double().ravel(), ref.ravel()
    ne = torch.linalg.vector_norm(o - r).item()
    nr = torch.linalg.vector_norm(r).item()
    return (10 * math.log10(nr * nr / (ne * ne)) if ne > 0 else float("inf")), ne / nr


def run_problem(be, name, n, c, h, w, m, k, dtype, args, l2: int) -> dict:
    torch.manual_seed(hash(name) % 2 ** 31)
    tdt = torch.float32 if dtype == np.float32 else torch.float16
    pad = k // 2
    wt = torch.randn(m, c, k, k, device="cuda", dtype=torch.float64) / math.sqrt(c * k * k)
    gamma = 1 + 0.2 * torch.randn(m, device="cuda", dtype=torch.float64)
    beta = 0.2 * torch.randn(m, device="cuda", dtype=torch.float64)
    mean = 0.2 * torch.randn(m, device="cuda", dtype=torch.float64)
    var = 0.5 + torch.rand(m, device="cuda", dtype=torch.float64)
    eps = 1e-5
    scale = gamma / torch.sqrt(var + eps)
    wf64, bf64 = wt * scale.view(-1, 1, 1, 1), beta - mean * scale
    set_bytes = (n * c * h * w + 2 * n * m * h * w) * (4 if dtype == np.float32 else 2)
    nsets = 1 if set_bytes >= 3 * l2 else min(16, math.ceil(3 * l2 / set_bytes))
    xs = [torch.randn(n, c, h, w, device="cuda", dtype=tdt) for _ in range(nsets)]
    ys = [torch.empty(n, m, h, w, device="cuda", dtype=tdt) for _ in range(nsets)]
    w_t, wf, bf = wt.to(tdt), wf64.to(tdt), bf64.float()
    bn = [t.to(tdt) for t in (mean, var, gamma, beta)]
    ref = F.leaky_relu(F.conv2d(xs[0].double(), wf64, bf64, padding=pad), ALPHA)
    row = {"case": name, "shape": [n, c, h, w, m, k], "dtype": np.dtype(dtype).name,
           "gflop": 2 * n * h * w * m * c * k * k / 1e9}
    tf32_modes = [False, True] if dtype == np.float32 else [False]
    if args.tf32_only:
        tf32_modes = [True]
    for tf32 in tf32_modes:
        torch.backends.cudnn.allow_tf32 = tf32
        tag = "_tf32" if tf32 else ""
        row["cudnn" + tag] = time_graph(lambda i, st: F.conv2d(xs[i], w_t, None, padding=pad), nsets)
        out = F.leaky_relu(F.conv2d(xs[0], wf, bf.to(tdt), padding=pad), ALPHA)
        row["cudnn_snr" + tag], row["cudnn_rel" + tag] = acc(out, ref)
        if not tf32:
            row["eager3"] = time_graph(lambda i, st: F.leaky_relu(F.batch_norm(
                F.conv2d(xs[i], w_t, None, padding=pad), bn[0], bn[1], bn[2], bn[3], False, 0.0, eps), ALPHA), nsets)
    torch.backends.cudnn.allow_tf32 = False
    geom = conv.geometry((n, c, h, w), (m, c, k, k), pads=[pad] * 4)
    if dtype == np.float32:
        cands = [conv.heuristic(geom, dtype)]
        if args.tactics:
            cands += [t for t in conv.candidate_tactics(geom, dtype, allow_tf32=False)[1:] if t not in cands]
        elif geom.winograd_ok and "winograd" not in cands:
            cands.append("winograd")
        if "igemm" not in cands:
            cands.append("igemm")
        if args.tf32_tactics:
            tf32_cands = args.tf32_tactics.split(",")
        else:
            tf32_cands = ["mma_tf32", "mma_tf32_ms"] + (["wgmma_tf32"] if be.arch == "sm_90" else [])
            if args.tactics:
                tf32_cands += [t for t in conv.candidate_tactics(geom, dtype, True, be.name, be.arch)
                               if t.startswith(conv.TF32_ALGOS)]
        auto_tf32 = conv.heuristic(geom, dtype, True, be.name, be.arch)   # the TF32 default (tactic without tile)
        if auto_tf32 not in tf32_cands:
            tf32_cands.insert(0, auto_tf32)
        row["auto_tf32"] = auto_tf32
        if args.tf32_only:
            cands = []
    else:
        cands, tf32_cands = ["mma_f16"] + (["mma_f16_128x128", "mma_f16_64x64", "igemm"] if args.tactics else []), []
    wnp = wf.cpu().numpy() if dtype == np.float32 else wf.float().cpu().numpy().astype(np.float16)
    bnp = bf.cpu().numpy()
    ours = {}
    variants = [(t, None) for t in cands + tf32_cands]
    if dtype == np.float32:
        for v in filter(None, (args.ms_variants or "").split(";")):
            tile, _, cfg = v.partition(":")
            variants.append((f"{conv_mma.MS_ALGO}_{tile}", tuple(int(c) for c in cfg.split(","))))
        if be.arch == "sm_90":
            for v in filter(None, (args.wg_variants or "").split(";")):
                tile, _, cfg = v.partition(":")
                variants.append((f"{conv_wgmma.ALGO}_{tile}", tuple(int(c) for c in cfg.split(","))))
    for i, (t, cfg) in enumerate(variants):
        saved = None
        table = conv_wgmma.WG_TILES if t.startswith(conv_wgmma.ALGO) else conv_mma.MS_TILES
        if cfg is not None:   # another configuration: another source, so another module
            tile = conv.parse_tactic(t)[1]
            saved = table[tile]
            table[tile] = cfg
        try:
            r = conv.Runner(be, (n, c, h, w), dtype, wnp, bnp, activation="LeakyRelu", alpha=ALPHA, tactic=t,
                            allow_tf32=t.startswith(conv.TF32_ALGOS), pads=[pad] * 4)
        finally:
            if saved is not None:
                table[tile] = saved
        if cfg is not None and table is conv_wgmma.WG_TILES:
            name_t = r.tactic + f"@g{cfg[0]}s{cfg[1]}b{cfg[2]}p{cfg[3]}"
        else:
            name_t = r.tactic + (f"@w{cfg[0]}x{cfg[1]}s{cfg[2]}k{cfg[4]}" if cfg is not None else "")
        if name_t in ours:
            ours[name_t]["req"].append(t)
            continue
        y = ys[0].fill_(float("nan"))
        r((xs[0].data_ptr(),), y.data_ptr())
        torch.cuda.synchronize()
        written = bool(torch.isfinite(y).all().item())
        snr, rel = acc(y, ref)
        ms = time_graph(lambda j, st, r=r: r((xs[j].data_ptr(),), ys[j].data_ptr(), st), nsets)
        ours[name_t] = {"ms": ms, "snr": snr, "rel": rel, "written": written, "tf32": t.startswith(conv.TF32_ALGOS),
                        "default": i == 0, "req": [t]}
        print(f"  {name} {np.dtype(dtype).name} {name_t}: {ms:.4f} ms, SNR {snr:.1f} dB, rel {rel:.2e}"
              f"{'' if written else ' NOT FULLY WRITTEN'}", flush=True)
    row["ours"] = ours
    acc_ok = {t: v for t, v in ours.items() if not v["tf32"] and v["written"]}
    if acc_ok:
        row["best"] = min(acc_ok, key=lambda t: acc_ok[t]["ms"])
        row["default"] = next(t for t, v in ours.items() if v["default"])
    tf = {t: v for t, v in ours.items() if v["tf32"] and v["written"]}
    if tf:
        row["best_tf32"] = min(tf, key=lambda t: tf[t]["ms"])
    xs.clear()
    ys.clear()
    torch.cuda.empty_cache()
    return row


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tactics", action="store_true", help="time every candidate tactic")
    ap.add_argument("--fp16", action="store_true", help="also the fp16 rows")
    ap.add_argument("--tf32-only", action="store_true", help="fp32 rows: only cuDNN TF32 and our TF32 tactics")
    ap.add_argument("--tf32-tactics", default="", help="comma-separated TF32 tactics to time (default: "
                    "mma_tf32,mma_tf32_ms, plus every TF32 tile with --tactics)")
    ap.add_argument("--ms-variants", default="", help="TILE:WGM,WGN,S,MINB,BK;... other mma_tf32_ms builds")
    ap.add_argument("--wg-variants", default="", help="TILE:NWG,S,MINB,PIPE;... other wgmma_tf32 builds "
                    "(conv_wgmma.WG_TILES), reported as <tactic>@g<NWG>s<S>b<MINB>p<PIPE>")
    ap.add_argument("--extra", action="store_true", help="also the Darknet-53 batch-8 shapes (EXTRA)")
    ap.add_argument("--cases", default="", help="comma-separated problem names (default: all)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    be = select_backend("cuda")
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 * 2 ** 20)
    meta = {"date": datetime.date.today().isoformat(), "device": torch.cuda.get_device_name(0), "sms": be.num_sms,
            "torch": torch.__version__, "cudnn": torch.backends.cudnn.version()}
    print(json.dumps(meta), flush=True)
    rows = []
    probs = PROBLEMS[:3] if args.quick else PROBLEMS
    if args.extra:
        probs = probs + EXTRA
    if args.cases:
        probs = [p for p in probs if p[0] in args.cases.split(",")]
    t0 = time.time()
    for p in probs:
        rows.append(run_problem(be, *p, np.float32, args, l2))
    if args.fp16:
        for p in probs:
            rows.append(run_problem(be, *p, np.float16, args, l2))
    with open(os.path.join(args.out, "bench_conv.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(f"\n[bench_conv] {meta['device']} torch {meta['torch']} cuDNN {meta['cudnn']} ({time.time() - t0:.0f} s)")
    print("| case | dtype | eager conv+BN+LReLU | cuDNN conv | ours (tactic) | vs eager | vs cuDNN | SNR ours/cuDNN "
          "| cuDNN TF32 | ours TF32 | TF32 ratio | SNR TF32 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "best" not in r:
            continue
        o = r["ours"][r["best"]]
        line = (f"| {r['case']} | {r['dtype']} | {r['eager3']:.4f} | {r['cudnn']:.4f} | {o['ms']:.4f} ({r['best']}) | "
                f"{r['eager3'] / o['ms']:.2f}x | {o['ms'] / r['cudnn']:.2f} | {o['snr']:.1f}/{r['cudnn_snr']:.1f} | ")
        if "best_tf32" in r:
            t = r["ours"][r["best_tf32"]]
            line += (f"{r['cudnn_tf32']:.4f} | {t['ms']:.4f} ({r['best_tf32']}) | {t['ms'] / r['cudnn_tf32']:.2f} | "
                     f"{t['snr']:.1f}/{r['cudnn_snr_tf32']:.1f} |")
        else:
            line += " | | | |"
        print(line)
    tf_rows = [r for r in rows if "best_tf32" in r]
    if tf_rows:
        print("\nTF32 (ms): register kernel / multistage / warpgroup MMA (launch rule tiles) / fastest TF32 tactic")
        print("| case | cuDNN TF32 | mma_tf32 (tile) | mma_tf32_ms (tile) | wgmma_tf32 (tile) | wgmma / cuDNN "
              "| default TF32 (heuristic) | default / cuDNN | fastest (tactic) | fastest / cuDNN "
              "| rel-L2 ours / cuDNN |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in tf_rows:
            def by_req(req: str, r=r) -> str:
                hit = [(k, v) for k, v in r["ours"].items() if req in v["req"]]
                return f"{hit[0][1]['ms']:.4f} ({hit[0][0]})" if hit else "-"
            b = r["ours"][r["best_tf32"]]
            wg = [v for v in r["ours"].values() if "wgmma_tf32" in v["req"]]
            wgr = f"{wg[0]['ms'] / r['cudnn_tf32']:.2f}" if wg else "-"
            au = [v for v in r["ours"].values() if r.get("auto_tf32") in v["req"]]
            aur = f"{au[0]['ms'] / r['cudnn_tf32']:.2f}" if au else "-"
            print(f"| {r['case']} | {r['cudnn_tf32']:.4f} | {by_req('mma_tf32')} | {by_req('mma_tf32_ms')} | "
                  f"{by_req('wgmma_tf32')} | {wgr} | {by_req(r.get('auto_tf32', ''))} | {aur} | "
                  f"{b['ms']:.4f} ({r['best_tf32']}) | "
                  f"{b['ms'] / r['cudnn_tf32']:.2f} | "
                  f"{b['rel']:.2e} / {r['cudnn_rel_tf32']:.2e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
