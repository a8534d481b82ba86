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
                label = f"{name} b{batch} {'tf32' if tf32 else 'fp32'}"
                print(r.block(label), flush=True)
                tactics = [next((x.s.decode() for x in n.attribute if x.name == "tactic"), "")
                           for n in fused.graph.node if n.domain == "fuser" and n.op_type.startswith("FusedConv")]
                rows.append({"case": label, **r.to_json(), "fuse_tune_s": round(t_fuse, 1),
                             "tactics": {k: tactics.count(k) for k in sorted(set(tactics))}})
    with open(os.path.join(a.out, "e2e_cnn.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print(f"\n{'case':<26} {'baseline ms':>11} {'ours ms':>9} {'speedup':>8} {'SNR dB':>7} {'kern/isl':>9}")
    for r in rows:
        print(f"{r['case']:<26} {r['baseline_ms']:>11.3f} {r['current_ms']:>9.3f} {r['speedup']:>7.2f}x "
              f"{float(r['snr_db']):>7.1f} {r['kernel_steps']:>4}/{r['island_steps']:<4}")


if __name__ == "__main__":
    main()
