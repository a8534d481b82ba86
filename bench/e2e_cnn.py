"""End to end on the GPU: real CNNs, original in onnxruntime's CUDA EP vs fused in our runtime after --tune.

For Darknet-53, CSPDarknet-53 (timm) and ResNet-50 (torchvision), batch 1 and 8, 224×224, random weights
with non-trivial BN statistics (``bench/corpus_cnn.py``), TorchScript export at opset 17: the model is fused
with ``tune=True`` on the GPU, then ``fuser.bench.bench`` times the original in onnxruntime's CUDA EP (all
its graph optimizations) against the fused model in ``fuser.runtime.Session(device="cuda")``, in the same
precision — fp32 (our fp32-accurate tactics vs the CUDA EP with ``use_tf32=0``) and TF32 (``allow_tf32``
tactics vs the CUDA EP's default TF32). Prints the seed report's block per case and a table last; JSON to
--out. Needs onnxruntime-gpu (see bench/gpu_runtime_session.sh for the install).

Usage: python bench/e2e_cnn.py [--out DIR] [--models darknet53,cspdarknet53,resnet50] [--batches 1,8]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from corpus_cnn import build  # noqa: E402

import fuser  # noqa: E402
from fuser.bench import bench  # noqa: E402


def export(module, batch: int):
    import onnx
    import torch

    x = torch.randn(batch, 3, 224, 224)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=17, input_names=["x"])
    m = onnx.load_from_string(buf.getvalue())
    m.ir_version = min(m.ir_version, 10)
    return m


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--models", default="darknet53,cspdarknet53,resnet50")
    ap.add_argument("--batches", default="1,8")
    a = ap.parse_args()
    rows = []
    for name in a.models.split(","):
        module = build(name)
        for batch in (int(b) for b in a.batches.split(",")):
            model = export(module, batch)
            for tf32 in (False, True):
                t = time.perf_counter()
                fused = fuser.optimize(model, None, verify_result=False, tune=True, device="cuda",
                                       allow_tf32=tf32).model
                t_fuse = time.perf_counter() - t
                r = bench(model, fused, device="cuda", warmup=20, iters=100, allow_tf32=tf32)
                step_ms = bench(model, fused, device="cuda", warmup=10, iters=50, allow_tf32=tf32,
                                cuda_graph=False).current_ms
                label = f"{name} b{batch} {'tf32' if tf32 else 'fp32'}"
                print(r.block(label), f"\n  step by step (no CUDA graph): {step_ms:.4f} ms", flush=True)
                tactics = [next((x.s.decode() for x in n.attribute if x.name == "tactic"), "")
                           for n in fused.graph.node if n.domain == "fuser" and n.op_type.startswith("FusedConv")]
                rows.append({"case": label, **r.to_json(), "step_by_step_ms": step_ms, "fuse_tune_s": round(t_fuse, 1),
                             "tactics": {k: tactics.count(k) for k in sorted(set(tactics))}})
    with open(os.path.join(a.out, "e2e_cnn.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print(f"\n{'case':<24} {'ORT ms':>8} {'ORT+graph':>9} {'ours ms':>8} {'no graph':>8} {'speedup':>8} {'SNR dB':>7} "
          f"{'kern/isl':>9} graph")
    for r in rows:
        bg = r["baseline_graph_ms"]
        print(f"{r['case']:<24} {r['baseline_ms']:>8.3f} {bg if bg is None else round(bg, 3)!s:>9} "
              f"{r['current_ms']:>8.3f} {r['step_by_step_ms']:>8.3f} {r['speedup']:>7.2f}x {float(r['snr_db']):>7.1f} "
              f"{r['kernel_steps']:>4}/{r['island_steps']:<4} {r['cuda_graph'][:40]}")


if __name__ == "__main__":
    main()
