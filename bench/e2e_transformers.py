"""End to end on the GPU: BERT-base (B=8, S=128 and 512) and ViT-B/16 (B=8), three ways, fp32 and TF32.

1. the original export in onnxruntime's CUDA EP (all graph optimizations; ``use_tf32=0`` for fp32, 1 for TF32);
2. the same model after onnxruntime's transformers optimizer (``optimize_model``, the path users take today:
   it needs model type, head count and hidden size by hand) in the CUDA EP;
3. ours: fused by onnx-fuse (no flags for fp32; `--allow-tf32` for the TF32 rows, which puts fp32 attention on
   TF32 tensor cores) and run in ``fuser.runtime.Session(device="cuda")``; beside it ("before"), the same without
   pack_qkv and with the runtime's layout views off (the plan before both existed).

Random weights (transformers' default BERT config; torchvision's vit_b_16), TorchScript export at opset 17,
inputs on the device, median of 50 after 10 warm-ups. Prints the seed report's block and a table; JSON to --out.

Beside them, the *GEMM floor*: every MatMul/Gemm of the original that multiplies by a weight (projections, MLP,
classifier — not attention's Q·Kᵀ and P·V, which the fused node replaces) at its inferred shapes, run by
PyTorch (cuBLAS, same precision) back to back inside one CUDA graph — the time no fusion of the other ops can
remove. The original's time over this floor bounds the speedup any attention/LayerNorm/GELU fusion can give.
Usage: python bench/e2e_transformers.py [--out DIR] [--cases bert128,bert512,vit]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import tempfile
import time
import warnings

import numpy as np
import onnx

import fuser
from fuser.bench import bench
from fuser.verify import make_inputs


def export_bert(seq: int, batch: int, dynamic: bool = False) -> onnx.ModelProto:
    """BERT-base (random weights, eager attention) by TorchScript at opset 17; ``dynamic``: batch and sequence
    symbolic, as exports for serving are (then measured at ``batch`` x ``seq``)."""
    import torch
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(attn_implementation="eager")).eval()
    for p in bert.parameters():
        p.requires_grad_(False)

    class Wrapped(torch.nn.Module):
        def forward(self, ids, mask):
            return bert(input_ids=ids, attention_mask=mask).last_hidden_state

    ids = torch.randint(0, 30000, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.int64)
    buf = io.BytesIO()
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        axes = {n: {0: "batch", 1: "seq"} for n in ("input_ids", "attention_mask")} if dynamic else None
        torch.onnx.export(Wrapped().eval(), (ids, mask), buf, dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                          dynamic_axes=axes)
    return onnx.load_from_string(buf.getvalue())


def export_vit(batch: int) -> onnx.ModelProto:
    import torch
    import torchvision

    torch.backends.mha.set_fastpath_enabled(False)  # the fused fast path has no ONNX export
    torch.manual_seed(0)
    m = torchvision.models.vit_b_16(weights=None).eval()
    # torchvision zero-initialises the classifier head, which makes every output 0 whatever the encoder computes
    # (the accuracy columns then compare zeros): a random head, so the logits depend on all of it
    torch.nn.init.normal_(m.heads.head.weight, std=0.02)
    torch.nn.init.normal_(m.heads.head.bias, std=0.02)
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.randn(batch, 3, 224, 224),), buf, dynamo=False, opset_version=17,
                          input_names=["x"])
    return onnx.load_from_string(buf.getvalue())


def example_feeds(model: onnx.ModelProto, seq: int | None = None) -> dict:
    """Seeded inputs; a dynamic BERT export (``seq``) at B=8 and that sequence length, as the static cases."""
    return make_inputs(model, 0, shapes={n: [8, seq] for n in ("input_ids", "attention_mask")} if seq else None)


def ort_bound(model_path: str | bytes, feeds: dict, provider_opts: dict,
              disabled_optimizers: list[str] | None = None):
    """A CUDA EP session with its inputs copied to the GPU once and every output bound there: (session, binding),
    run by ``session.run_with_iobinding(binding)``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    kw = {"disabled_optimizers": disabled_optimizers} if disabled_optimizers else {}
    s = ort.InferenceSession(model_path, opts, providers=[("CUDAExecutionProvider", provider_opts)], **kw)
    io_ = s.io_binding()
    for k, v in feeds.items():
        io_.bind_ortvalue_input(k, ort.OrtValue.ortvalue_from_numpy(v, "cuda", 0))
    for o in s.get_outputs():
        io_.bind_output(o.name, "cuda", 0)
    return s, io_


def time_ort(model_path: str | bytes, feeds: dict, provider_opts: dict,
             disabled_optimizers: list[str] | None = None) -> tuple[float, list[np.ndarray]]:
    s, io_ = ort_bound(model_path, feeds, provider_opts, disabled_optimizers)
    for _ in range(10):
        s.run_with_iobinding(io_)
    ts = []
    for _ in range(50):
        t = time.perf_counter()
        s.run_with_iobinding(io_)
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts), [o.numpy() for o in io_.get_outputs()]


def gemm_floor_ms(model: onnx.ModelProto, feeds: dict, tf32: bool) -> float | None:
    """GPU ms of the model's weight MatMul/Gemm nodes alone (shapes from shape inference with the inputs' shapes
    pinned), in one CUDA graph."""
    import torch

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for i in m.graph.input:
        if i.name in feeds:
            for d, n in zip(i.type.tensor_type.shape.dim, feeds[i.name].shape, strict=True):
                d.Clear()
                d.dim_value = int(n)
    m = onnx.shape_inference.infer_shapes(m)
    shapes = {}
    for v in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output):
        dims = [d.dim_value for d in v.type.tensor_type.shape.dim]
        shapes[v.name] = dims
    for t in m.graph.initializer:
        shapes[t.name] = list(t.dims)
    weights = {t.name for t in m.graph.initializer} | {o for n in m.graph.node if n.op_type == "Constant"
                                                       for o in n.output}
    ops = []
    for n in m.graph.node:  # the projections and MLPs (a weight operand); attention's own matmuls are fused away
        if n.op_type not in ("MatMul", "Gemm") or not ({n.input[0], n.input[1]} & weights):
            continue
        a, b = shapes.get(n.input[0]), shapes.get(n.input[1])
        if not a or not b or 0 in a or 0 in b:
            return None
        if n.op_type == "Gemm":
            ta = next((x.i for x in n.attribute if x.name == "transA"), 0)
            tb = next((x.i for x in n.attribute if x.name == "transB"), 0)
            a, b = (a[::-1] if ta else a), (b[::-1] if tb else b)
        ops.append((torch.randn(a, device="cuda"), torch.randn(b, device="cuda")))
    torch.backends.cuda.matmul.allow_tf32 = tf32
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for x, y in ops:
            torch.matmul(x, y)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=stream):
        for x, y in ops:
            torch.matmul(x, y)
    ts = []
    for _ in range(20):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        g.replay()
        e1.record()
        torch.cuda.synchronize()
        ts.append(e0.elapsed_time(e1))
    torch.backends.cuda.matmul.allow_tf32 = False
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--cases", default="bert128,bert512,vit",
                    help="comma-separated: bert128, bert512, vit, bert128dyn, bert512dyn (dynamic batch/sequence "
                         "exports)")
    ap.add_argument("--before", default="linear", choices=("linear", "views"),
                    help="the 'before' column: ours without fp64 linear steps (linear), or without Q/K/V packing "
                         "and layout views (views)")
    a = ap.parse_args()
    from onnxruntime.transformers.optimizer import optimize_model

    # label, export, optimizer model type, sequence length a dynamic export is measured at (None: static)
    cases = {"bert128": ("BERT-base B8 S128", lambda: export_bert(128, 8), "bert", None),
             "bert512": ("BERT-base B8 S512", lambda: export_bert(512, 8), "bert", None),
             "vit": ("ViT-B/16 B8", lambda: export_vit(8), "vit", None),
             "bert128dyn": ("BERT-base B8 S128 dyn", lambda: export_bert(128, 8, True), "bert", 128),
             "bert512dyn": ("BERT-base B8 S512 dyn", lambda: export_bert(512, 8, True), "bert", 512)}
    cases = [cases[c] for c in a.cases.split(",")]
    rows = []
    tmp = tempfile.mkdtemp()
    for label, make, kind, seq in cases:
        model = make()
        feeds = example_feeds(model, seq)
        src = os.path.join(tmp, "m.onnx")
        onnx.save(model, src)
        fused, unpacked, fuse_s = {}, {}, 0.0
        for tf32 in (False, True):  # --allow-tf32 puts fp32 attention on TF32 tensor cores (flash_tf32)
            t = time.perf_counter()
            fused[tf32] = fuser.optimize(model, None, verify_result=False, device="cuda", allow_tf32=tf32)
            fuse_s = max(fuse_s, round(time.perf_counter() - t, 1))
            if a.before == "views":  # the previous plan: Q/K/V not packed, head-split Transposes in islands
                unpacked[tf32] = fuser.optimize(model, None, verify_result=False, device="cuda", allow_tf32=tf32,
                                                skip=("pack_qkv",))
        opt_path = None
        try:
            opt = optimize_model(src, model_type=kind, num_heads=12, hidden_size=768, use_gpu=True)
            opt_path = os.path.join(tmp, "ortopt.onnx")
            opt.save_model_to_file(opt_path)
            ops = [n.op_type for n in onnx.load(opt_path).graph.node]
            opt_nodes = ops.count("Attention") + ops.count("MultiHeadAttention")
        except Exception as e:  # noqa: BLE001 - the optimizer does not handle every export
            opt_err = f"{type(e).__name__}: {str(e)[:160]}"
        for tf32 in (False, True):
            prec = "tf32" if tf32 else "fp32"
            popts = {"device_id": "0", "use_tf32": "1" if tf32 else "0"}
            row = {"case": f"{label} {prec}", "fuse_s": fuse_s}
            if opt_path:
                row["ort_optimizer_attention_nodes"] = opt_nodes
                row["ort_optimizer_ms"], _ = time_ort(opt_path, feeds, popts)
            else:
                row["ort_optimizer_error"] = opt_err
            res = fused[tf32]
            row["fused_attention_nodes"] = sum(1 for n in res.model.graph.node
                                               if n.op_type.startswith("FusedAttention"))
            row["attention_tactics"] = sorted({a.s.decode() for n in res.model.graph.node
                                               if n.op_type.startswith("FusedAttention")
                                               for a in n.attribute if a.name == "tactic"})
            r = bench(model, res.model, device="cuda", warmup=10, iters=50, feeds=feeds, allow_tf32=tf32)
            print(r.block(row["case"]), flush=True)
            row.update(original_ms=r.baseline_ms, original_graph_ms=r.baseline_graph_ms, ours_ms=r.current_ms,
                       speedup=r.speedup, snr_db=r.snr_db, kernel_steps=r.kernel_steps, island_steps=r.island_steps,
                       cuda_graph=r.cuda_graph, gemm_floor_ms=gemm_floor_ms(model, feeds, tf32))
            row["linear_steps"] = r.linear_steps
            if a.before == "views":
                before = bench(model, unpacked[tf32].model, device="cuda", warmup=10, iters=50, feeds=feeds,
                               allow_tf32=tf32, layout_views=False)
            else:  # the same plan with every linear layer in onnxruntime islands (cuBLAS SGEMM)
                before = bench(model, res.model, device="cuda", warmup=10, iters=50, feeds=feeds, allow_tf32=tf32,
                               fp64_linear=False)
            row["before"] = a.before
            row["ours_before_ms"] = before.current_ms
            rows.append(row)
            print(json.dumps(row, default=str), flush=True)
    with open(os.path.join(a.out, f"e2e_transformers_{a.cases.replace(',', '_')}.json"), "w") as f:
        json.dump(rows, f, indent=1, default=str)
    print(f"\n{'case':<25} {'original':>9} {'orig+graph':>10} {'ORT-opt':>8} {'ours':>8} {'vs orig':>8} "
          f"{'vs ORT-opt':>10} {'GEMM floor':>10} {'max possible':>12} {'attn':>5} {'SNR':>6} {'before':>8} graph")
    for r in rows:
        o, ours, fl, og = r.get("ort_optimizer_ms"), r["ours_ms"], r.get("gemm_floor_ms"), r.get("original_graph_ms")
        orig = r["original_ms"]
        print(f"{r['case']:<25} {r['original_ms']:>9.3f} {og if og is None else round(og, 3)!s:>10} "
              f"{(f'{o:.3f}' if o else 'n/a'):>8} {ours:>8.3f} {r['original_ms'] / ours:>7.2f}x "
              f"{(f'{o / ours:.2f}x' if o else 'n/a'):>10} {(f'{fl:.3f}' if fl else 'n/a'):>10} "
              f"{(f'{orig / fl:.2f}x' if fl else 'n/a'):>12} {r['fused_attention_nodes']:>5} "
              f"{float(r['snr_db']):>6.1f} {r['ours_before_ms']:>8.3f} {r['cuda_graph'][:30]}")


if __name__ == "__main__":
    main()
