"""Attention kernels against PyTorch on the GPU, measured in the same run (BENCHMARKS.md).

Cases (issue: attention):
- the seed report's shape: B=256, S=128, one head, D=64, fp32 — ours (flash_simt and the seed's
  gemm_softmax tactic) against PyTorch SDPA and the naive matmul-softmax-matmul; goal: <= SDPA;
- B=8, 12 heads, S=512, D=64, fp16 and B=1, 12 heads, S=4096, D=64, fp16 — flash_mma and (Hopper)
  flash_wgmma against SDPA; goal: <= 1.2x SDPA's time;
- info rows: bf16, causal, a BERT padding mask, LLaMA-style GQA (32/8 heads, D=128); fp32 at B8 H12 S128
  (plain and with the padding mask, BERT-base's shape) and S512.

TF32 rows (``--tf32``: only these): fp32 tensors with TF32 allowed, as a model fused with ``onnx-fuse --allow-tf32``
runs — ours on flash_tf32 (TF32 tensor cores; _m2: 32 query rows per warp, _trunc: K/V truncated) against SDPA and
the naive path with ``torch.backends.cuda.matmul.allow_tf32 = True`` — at B=8, 12 heads, D=64, S=512 and 128.

Method (as bench_kernels.py): each call captured 20+ times into a CUDA graph, the replay timed with CUDA
events, median of 25 replays per call; inputs rotate over enough sets to exceed 3x L2 when one set fits.
Accuracy against a float64 reference computed by torch on the GPU: SNR (dB, higher is better) and cosine.
TFLOP/s counts 4·B·H·Sq·Skv·D (halved for causal). The seed report's block is printed per case, then a
table; everything goes to ``--out``/bench_attention.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from timing import time_graph

from fuser.kernels import attention as A
from fuser.kernels.backend import select_backend

L2_FACTOR = 3
OPTIONS = {"tf32_only": False}  # --tf32: run the TF32 rows only
# flash_wgmma (Hopper only; elsewhere these rows run flash_mma): the launch rule's pick, then pinned variants
WGMMA = ["flash_wgmma", "flash_wgmma_2n64q", "flash_wgmma_2n64qp", "flash_wgmma_2n64qs", "flash_wgmma_1n64q3",
         "flash_wgmma_2n64"]
CASES = {"re": None}  # --cases REGEX: only the cases whose name matches


def nsets_for(set_bytes: int, l2: int) -> int:
    return 1 if set_bytes >= L2_FACTOR * l2 else min(32, math.ceil(L2_FACTOR * l2 / set_bytes))


def accuracy(out: torch.Tensor, ref64: torch.Tensor) -> tuple[float, float]:
    o, r = out.double().reshape(-1), ref64.reshape(-1)
    noise, sig = torch.sum((o - r) ** 2).item(), torch.sum(r * r).item()
    snr = float("inf") if noise == 0 else 10 * math.log10(sig / noise)
    cos = (torch.dot(o, r) / (torch.linalg.vector_norm(o) * torch.linalg.vector_norm(r))).item()
    return snr, cos


def ref64(q, k, v, scale, causal=False, bias=None):
    h, hkv = q.shape[1], k.shape[1]
    k64, v64 = k.double(), v.double()
    if hkv != h:
        k64, v64 = k64.repeat_interleave(h // hkv, 1), v64.repeat_interleave(h // hkv, 1)
    s = (q.double() @ k64.transpose(-1, -2)) * scale
    if bias is not None:
        s = s + bias.double()
    if causal:
        sq, skv = s.shape[-2:]
        s = s.masked_fill(torch.ones(sq, skv, dtype=torch.bool, device=s.device).triu(1), float("-inf"))
    return torch.softmax(s, -1) @ v64


def run_case(be, name: str, b: int, h: int, hkv: int, s: int, d: int, dtype: torch.dtype, tactics: list[str],
             causal: bool = False, pad: bool = False, goal: str = "", naive: bool = True,
             tf32: bool = False, sq: int | None = None) -> list[dict]:
    """``sq``: a query length other than the key length ``s`` (non-causal, no padding)."""
    if OPTIONS["tf32_only"] and not tf32:
        return []
    if CASES["re"] is not None and not CASES["re"].search(name):
        return []
    sq = sq or s
    # tf32: PyTorch's matmuls (the naive path, SDPA's math backend) may run on TF32 tensor cores
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    torch.manual_seed(0)
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
    esz = torch.tensor([], dtype=dtype).element_size()
    set_bytes = (2 * b * h * sq * d + 2 * b * hkv * s * d) * esz
    ns = nsets_for(set_bytes, l2)
    qs = [torch.randn(b, h, sq, d, dtype=dtype, device="cuda") for _ in range(ns)]
    ks = [torch.randn(b, hkv, s, d, dtype=dtype, device="cuda") for _ in range(ns)]
    vs = [torch.randn(b, hkv, s, d, dtype=dtype, device="cuda") for _ in range(ns)]
    os_ = [torch.empty(b, h, sq, d, dtype=dtype, device="cuda") for _ in range(ns)]
    scale = 1.0 / math.sqrt(d)
    bias, specs = None, []
    if pad:  # HF's additive padding mask [B, 1, 1, S]: the last quarter of each other sequence padded
        keep = torch.ones(b, 1, 1, s, dtype=torch.bool, device="cuda")
        keep[1::2, ..., 3 * s // 4:] = False
        bias = torch.where(keep, 0.0, torch.finfo(dtype).min).to(dtype)
        specs = [A.TermSpec("bias", str(dtype).replace("torch.", ""), tuple(bias.shape))]
    flops = 4.0 * b * h * sq * s * d * (0.5 if causal else 1.0)
    want = ref64(qs[0], ks[0], vs[0], scale, causal, bias)
    rows = []
    results: dict[str, dict] = {}

    def sdpa(i, st):
        kk, vv = ks[i], vs[i]
        kw = {"is_causal": causal} if bias is None else {"attn_mask": bias}
        if hkv != h:
            kw["enable_gqa"] = True
        return F.scaled_dot_product_attention(qs[i], kk, vv, scale=scale, **kw)

    def naive_fn(i, st):
        kk, vv = ks[i], vs[i]
        if hkv != h:
            kk, vv = kk.repeat_interleave(h // hkv, 1), vv.repeat_interleave(h // hkv, 1)
        sc = (qs[i] @ kk.transpose(-1, -2)) * scale
        if bias is not None:
            sc = sc + bias
        if causal:
            sc = sc.masked_fill(torch.ones(s, s, dtype=torch.bool, device="cuda").triu(1), float("-inf"))
        return torch.softmax(sc, -1) @ vv

    for label, fn in [("sdpa", sdpa)] + ([("naive", naive_fn)] if naive else []):
        try:
            t = time_graph(fn, ns)
            snr, cos = accuracy(fn(0, 0), want)
            results[label] = {**t, "snr_db": snr, "cosine": cos}
        except Exception as e:  # noqa: BLE001 - a torch path that does not take this case
            results[label] = {"error": f"{type(e).__name__}: {str(e)[:120]}"}
    for tac in tactics:
        try:
            r = A.Runner(be, qs[0].shape, ks[0].shape, vs[0].shape, str(dtype).replace("torch.", ""), scale, causal,
                         specs, False, tac)
            extra = [bias.data_ptr()] if bias is not None else []

            def ours(i, st, r=r, extra=extra):
                r([qs[i].data_ptr(), ks[i].data_ptr(), vs[i].data_ptr(), *extra], os_[i].data_ptr(), st)

            t = time_graph(ours, ns)
            os_[0].fill_(float("nan"))
            ours(0, torch.cuda.current_stream().cuda_stream)
            torch.cuda.synchronize()
            snr, cos = accuracy(os_[0], want)
            written = bool(torch.isfinite(os_[0]).all())
            results[f"ours:{tac}"] = {**t, "snr_db": snr, "cosine": cos, "written": written, "tactic": r.tactic,
                                      "family": r.plan.get("family", "")}
        except Exception as e:  # noqa: BLE001
            results[f"ours:{tac}"] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
    base = results.get("naive", {}).get("median_ms") or results.get("sdpa", {}).get("median_ms")
    for label, res in results.items():
        row = {"case": name, "impl": label, "goal": goal, "B": b, "H": h, "Hkv": hkv, "S": s, "Sq": sq, "D": d,
               "dtype": str(dtype).replace("torch.", ""), "causal": causal, "pad": pad, **res}
        if "median_ms" in res:
            row["tflops"] = flops / (res["median_ms"] * 1e-3) / 1e12
            row["vs_sdpa"] = res["median_ms"] / results["sdpa"]["median_ms"] if "median_ms" in results.get(
                "sdpa", {}) else None
        rows.append(row)
        if label.startswith("ours") and "median_ms" in res and base:
            print(f"[Evaluate] attention {name} ({label})\n- Baseline latency (naive torch): {base:.4f} ms\n"
                  f"- Current latency: {res['median_ms']:.4f} ms\n- Speedup: {base / res['median_ms']:.2f}x\n"
                  f"- Accuracy SNR: {res['snr_db']:.1f} dB\n- Accuracy Cosine: {res['cosine']:.9f}")
    sys.stdout.flush()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/out")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tf32", action="store_true", help="only the TF32 rows (fp32 with TF32 allowed)")
    ap.add_argument("--cases", default=None, help="regex: only the cases whose name matches (e.g. 'S512 D64$|S4096')")
    args = ap.parse_args()
    OPTIONS["tf32_only"] = args.tf32
    if args.cases:
        import re
        CASES["re"] = re.compile(args.cases)
    be = select_backend("cuda")
    props = torch.cuda.get_device_properties(0)
    print(f"device {props.name}, {props.multi_processor_count} SMs, torch {torch.__version__}")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rows: list[dict] = []
    t0 = time.time()
    f16, f32, bf16 = torch.float16, torch.float32, torch.bfloat16
    rows += run_case(be, "seed B256 S128 H1 D64", 256, 1, 1, 128, 64, f32,
                     ["auto", "flash_simt", "flash_simt_r128", "flash_simt_kv_r128", "flash_simt_kv_r64",
                      "flash_simt_kv_r32", "gemm_softmax"], goal="<= SDPA fp32")
    rows += run_case(be, "B8 H12 S512 D64", 8, 12, 12, 512, 64, f16,
                     ["flash_mma_n64", "flash_mma_n128", "flash_mma_pp", "flash_simt", *WGMMA], goal="<= 1.2x SDPA")
    rows += run_case(be, "B1 H12 S4096 D64", 1, 12, 12, 4096, 64, f16,
                     ["flash_mma_n64", "flash_mma_n128", "flash_mma_pp", *WGMMA], goal="<= 1.2x SDPA", naive=False)
    # flash_wgmma's waves (H200: 2 blocks of 128 rows per SM, 264 slots): one whole wave of blocks (Sq 2816 x 12
    # heads = 264 query tiles) and half a wave (132: one block per SM), 4096 keys; their ratio says what a
    # half-empty last wave costs (the goal shapes have 1.45 waves)
    rows += run_case(be, "probe wave B1 H12 Sq2816 Skv4096", 1, 12, 12, 4096, 64, f16, ["flash_wgmma_2n64q"],
                     goal="info", naive=False, sq=2816)
    rows += run_case(be, "probe half-wave B1 H12 Sq1408 Skv4096", 1, 12, 12, 4096, 64, f16, ["flash_wgmma_2n64q"],
                     goal="info", naive=False, sq=1408)
    for hh, what in ((6, "wave"), (3, "half-wave")):  # the same at 512 keys (8 key tiles per block)
        rows += run_case(be, f"probe {what} B11 H{hh} S512", 11, hh, hh, 512, 64, f16,
                         ["flash_wgmma_2n64q", "flash_wgmma_2n64qp"], goal="info", naive=False)
    if not args.quick:
        rows += run_case(be, "B8 H12 S512 D64 bf16", 8, 12, 12, 512, 64, bf16,
                         ["flash_mma", "flash_wgmma", "flash_wgmma_2n64q"],
                         goal="info")
        rows += run_case(be, "B8 H12 S512 D64 causal", 8, 12, 12, 512, 64, f16,
                         ["flash_mma", "flash_mma_pp", *WGMMA], causal=True, goal="info")
        rows += run_case(be, "BERT B8 S512 pad mask", 8, 12, 12, 512, 64, f16, ["flash_mma", "flash_mma_pp"], pad=True,
                         goal="info")
        rows += run_case(be, "GQA B2 H32/8 S1024 D128 causal", 2, 32, 8, 1024, 128, f16, ["flash_mma"], causal=True,
                         goal="info", naive=False)
        rows += run_case(be, "B8 H12 S128 D64 fp32", 8, 12, 12, 128, 64, f32,
                         ["auto", "flash_simt", "flash_simt_r128", "flash_simt_kv_r64", "flash_simt_kv_r32",
                          "gemm_softmax"], goal="info")
        rows += run_case(be, "BERT B8 S128 fp32 pad mask", 8, 12, 12, 128, 64, f32,
                         ["auto", "flash_simt", "flash_simt_kv_r128", "flash_simt_kv_r32"], pad=True, goal="info")
        rows += run_case(be, "B8 H12 S512 D64 fp32", 8, 12, 12, 512, 64, f32, ["flash_simt", "flash_simt_r128"],
                         goal="info")
        rows += run_case(be, "ViT-B/16 B8 H12 S197 D64 fp32", 8, 12, 12, 197, 64, f32,
                         ["auto", "flash_simt", "flash_simt_r128", "gemm_softmax"], goal="info")
    # fp32 with TF32 allowed (onnx-fuse --allow-tf32): flash_tf32 against PyTorch's TF32 paths
    tf32 = ["flash_tf32", "flash_tf32_m2", "flash_tf32_trunc"]
    rows += run_case(be, "TF32 B8 H12 S512 D64", 8, 12, 12, 512, 64, f32, [*tf32, "flash_simt"], goal="info",
                     tf32=True)
    rows += run_case(be, "TF32 B8 H12 S128 D64", 8, 12, 12, 128, 64, f32, [*tf32, "auto"], goal="info", tf32=True)
    rows += run_case(be, "TF32 BERT B8 S512 pad mask", 8, 12, 12, 512, 64, f32, tf32[:2], pad=True, goal="info",
                     tf32=True)
    rows += run_case(be, "TF32 BERT B8 S128 pad mask", 8, 12, 12, 128, 64, f32, tf32[:2], pad=True, goal="info",
                     tf32=True)
    if not args.quick:
        rows += run_case(be, "TF32 B8 H12 S512 D64 causal", 8, 12, 12, 512, 64, f32, tf32[:2], causal=True,
                         goal="info", tf32=True)
        rows += run_case(be, "TF32 B4 H16 S1024 D128", 4, 16, 16, 1024, 128, f32, ["flash_tf32"], goal="info",
                         tf32=True, naive=False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_attention.json").write_text(json.dumps({"device": props.name, "torch": torch.__version__,
                                                          "seconds": time.time() - t0, "rows": rows}, indent=1,
                                                         default=str))
    print("\n| case | impl | ms | TFLOP/s | x SDPA time | SNR dB | cosine | goal |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        if "median_ms" not in r:
            print(f"| {r['case']} | {r['impl']} | {r.get('error', '')[:60]} | | | | | |")
            continue
        vs = f"{r['vs_sdpa']:.2f}" if r.get("vs_sdpa") else ""
        impl = r["impl"] + (f" ({r['family']})" if r.get("family") else "")
        print(f"| {r['case']} | {impl} | {r['median_ms']:.4f} | {r['tflops']:.1f} | {vs} | "
              f"{r['snr_db']:.1f} | {r['cosine']:.7f} | {r['goal']} |")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
