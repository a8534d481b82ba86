"""End to end on the GPU: BERT-base (B=8, S=128 and 512) and ViT-B/16 (B=8), three ways, fp32.

1. the original export in onnxruntime's CUDA EP (all graph optimizations, ``use_tf32=0``);
2. the same model after onnxruntime's transformers optimizer (``optimize_model``, the path users take today:
   it needs model type, head count and hidden size by hand) in the CUDA EP;
3. ours: fused by onnx-fuse (no flags) and run in ``fuser.runtime.Session(device="cuda")``.

Random weights (transformers' default BERT config; torchvision's vit_b_16), TorchScript export at opset 17,
inputs on the device, median of 50 after 10 warm-ups. Prints the seed report's block and a table; JSON to --out.
Usage: python bench/e2e_transformers.py [--out DIR]
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


def export_bert(seq: int, batch: int) -> onnx.ModelProto:
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
        torch.onnx.export(Wrapped().eval(), (ids, mask), buf, dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"])
    return onnx.load_from_string(buf.getvalue())


def export_vit(batch: int) -> onnx.ModelProto:
    import torch
    import torchvision

    torch.backends.mha.set_fastpath_enabled(False)  # the fused fast path has no ONNX export
    m = torchvision.models.vit_b_16(weights=None).eval()
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.randn(batch, 3, 224, 224),), buf, dynamo=False, opset_version=17,
                          input_names=["x"])
    return onnx.load_from_string(buf.getvalue())


def time_ort(model_path: str, feeds: dict, provider_opts: dict) -> tuple[float, list[np.ndarray]]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    s = ort.InferenceSession(model_path, opts, providers=[("CUDAExecutionProvider", provider_opts)])
    io_ = s.io_binding()
    for k, v in feeds.items():
        io_.bind_ortvalue_input(k, ort.OrtValue.ortvalue_from_numpy(v, "cuda", 0))
    for o in s.get_outputs():
        io_.bind_output(o.name, "cuda", 0)
    for _ in range(10):
        s.run_with_iobinding(io_)
    ts = []
    for _ in range(50):
        t = time.perf_counter()
        s.run_with_iobinding(io_)
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts), [o.numpy() for o in io_.get_outputs()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    a = ap.parse_args()
    from onnxruntime.transformers.optimizer import optimize_model

    cases = [("BERT-base B8 S128", lambda: export_bert(128, 8), "bert"),
             ("BERT-base B8 S512", lambda: export_bert(512, 8), "bert"),
             ("ViT-B/16 B8", lambda: export_vit(8), "vit")]
    rows = []
    tmp = tempfile.mkdtemp()
    for label, make, kind in cases:
        model = make()
        feeds = make_inputs(model, 0)
        src = os.path.join(tmp, "m.onnx")
        onnx.save(model, src)
        popts = {"device_id": "0", "use_tf32": "0"}
        row = {"case": label}
        try:
            opt = optimize_model(src, model_type=kind, num_heads=12, hidden_size=768, use_gpu=True)
            opt_path = os.path.join(tmp, "ortopt.onnx")
            opt.save_model_to_file(opt_path)
            ops = [n.op_type for n in onnx.load(opt_path).graph.node]
            row["ort_optimizer_attention_nodes"] = ops.count("Attention") + ops.count("MultiHeadAttention")
            row["ort_optimizer_ms"], _ = time_ort(opt_path, feeds, popts)
        except Exception as e:  # noqa: BLE001 - the optimizer does not handle every export
            row["ort_optimizer_error"] = f"{type(e).__name__}: {str(e)[:160]}"
        t = time.perf_counter()
        res = fuser.optimize(model, None, verify_result=False, device="cuda")
        row["fuse_s"] = round(time.perf_counter() - t, 1)
        row["fused_attention_nodes"] = sum(1 for n in res.model.graph.node if n.op_type.startswith("FusedAttention"))
        r = bench(model, res.model, device="cuda", warmup=10, iters=50, feeds=feeds)
        print(r.block(label), flush=True)
        row.update(original_ms=r.baseline_ms, ours_ms=r.current_ms, speedup=r.speedup, snr_db=r.snr_db,
                   kernel_steps=r.kernel_steps, island_steps=r.island_steps)
        rows.append(row)
        print(json.dumps(row, default=str), flush=True)
    with open(os.path.join(a.out, "e2e_transformers.json"), "w") as f:
        json.dump(rows, f, indent=1, default=str)
    print(f"\n{'case':<20} {'original':>9} {'ORT-optimizer':>14} {'ours':>8} {'vs orig':>8} {'vs ORT-opt':>10} "
          f"{'fused attn':>10} {'SNR':>6}")
    for r in rows:
        o, ours = r.get("ort_optimizer_ms"), r["ours_ms"]
        o_ms = f"{o:.3f}" if o else "n/a"
        vs_opt = f"{o / ours:.2f}x" if o else "n/a"
        print(f"{r['case']:<20} {r['original_ms']:>9.3f} {o_ms:>14} {ours:>8.3f} {r['original_ms'] / ours:>7.2f}x "
              f"{vs_opt:>10} {r['fused_attention_nodes']:>10} {float(r['snr_db']):>6.1f}")


if __name__ == "__main__":
    main()
