"""Corpus check on real CNN exports (run where torchvision/timm are installed, e.g. the GPU machine).

For each model and each PyTorch exporter (TorchScript opset 17, dynamo opset 18): export with random
weights (eval mode, non-trivial BN statistics), run ``fuser.optimize`` with verification, and count what
the judge counts: BatchNormalization left at top level, Conv→activation pairs left unfused, rel-L2 of
every output against the original in onnxruntime, tool time. Prints a table; writes JSON to --out.

Usage: python bench/corpus_cnn.py [--out DIR] [--jobs 8] [--models a,b,c]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
import traceback
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed

TORCHVISION = ["resnet50", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "densenet121",
               "regnet_y_400mf", "shufflenet_v2_x1_0", "squeezenet1_1", "googlenet", "vgg11_bn",
               "resnext50_32x4d", "mnasnet1_0"]
TIMM = ["darknet53", "cspdarknet53", "cspresnet50", "levit_128s", "repvgg_a2", "rexnet_100",
        "efficientnet_lite0", "hardcorenas_a", "ghostnet_100", "dla34"]
ACTS = {"Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh"}


def build(name: str):
    import torch

    if name in TIMM:
        import timm

        m = timm.create_model(name, pretrained=False)
    else:
        import torchvision

        m = getattr(torchvision.models, name)(weights=None)
    torch.manual_seed(0)
    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) and mod.running_mean is not None:
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


def export(m, dynamo: bool):
    import onnx
    import torch

    res = 224
    x = torch.randn(1, 3, res, res)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            model = torch.onnx.export(m, (x,), dynamo=True, opset_version=18, verbose=False).model_proto
        else:
            buf = io.BytesIO()
            torch.onnx.export(m, (x,), buf, dynamo=False, opset_version=17, input_names=["x"])
            model = onnx.load_from_string(buf.getvalue())
    model.ir_version = min(model.ir_version, 10)
    return model


def conv_act_pairs(model) -> int:
    users: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    pairs = 0
    for n in model.graph.node:
        if n.op_type != "Conv" or n.domain:
            continue
        out = n.output[0]
        nxt = users.get(out, [])
        if len(nxt) == 1 and nxt[0].op_type == "BatchNormalization":
            out, nxt = nxt[0].output[0], users.get(nxt[0].output[0], [])
        if any(u.op_type in ACTS for u in nxt) or {u.op_type for u in nxt} == {"Sigmoid", "Mul"}:
            pairs += 1
    return pairs


def one(name: str, dynamo: bool) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    import fuser

    row = {"model": name, "exporter": "dynamo" if dynamo else "torchscript"}
    try:
        t = time.perf_counter()
        model = export(build(name), dynamo)
        row["export_s"] = round(time.perf_counter() - t, 1)
    except Exception as e:
        row["error"] = f"export failed: {type(e).__name__}: {str(e)[:120]}"
        return row
    c0 = Counter(n.op_type for n in model.graph.node)
    row.update(nodes_before=len(model.graph.node), bn_before=c0.get("BatchNormalization", 0),
               pairs_before=conv_act_pairs(model))
    try:
        t = time.perf_counter()
        res = fuser.optimize(model, None, verify_result=False)
        row["tool_s"] = round(time.perf_counter() - t, 2)
        res_v = fuser.optimize(model, None)
        v = res_v.verification
        row["rel_l2"] = max(c.rel_l2 for c in v.checks)
        row["verified"] = v.passed
    except Exception as e:
        row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
        row["trace"] = traceback.format_exc()[-800:]
        return row
    c1 = Counter((n.domain + "::" if n.domain else "") + n.op_type for n in res.model.graph.node)
    row.update(nodes_after=len(res.model.graph.node), bn_after=c1.get("BatchNormalization", 0),
               pairs_after=conv_act_pairs(res.model),
               fused=sum(v for k, v in c1.items() if k.startswith("fuser::")))
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--models", default="")
    a = ap.parse_args()
    names = a.models.split(",") if a.models else TORCHVISION + TIMM
    rows = []
    with ProcessPoolExecutor(a.jobs) as ex:
        futs = [ex.submit(one, n, d) for n in names for d in (False, True)]
        for f in as_completed(futs):
            r = f.result()
            rows.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "trace"}), flush=True)
    rows.sort(key=lambda r: (r["model"], r["exporter"]))
    with open(os.path.join(a.out, "corpus_cnn.json"), "w") as f:
        json.dump(rows, f, indent=1)
    ok = [r for r in rows if "error" not in r]
    print(f"\n{'model':<20} {'exporter':<11} {'nodes':>11} {'BN':>7} {'conv-act':>9} {'fused':>5} "
          f"{'rel-L2':>8} {'ok':>3} {'tool s':>6}")
    for r in rows:
        if "error" in r:
            print(f"{r['model']:<20} {r['exporter']:<11} ERROR {r['error'][:90]}")
            continue
        print(f"{r['model']:<20} {r['exporter']:<11} {r['nodes_before']:>5}→{r['nodes_after']:<5} "
              f"{r['bn_before']:>3}→{r['bn_after']:<3} {r['pairs_before']:>4}→{r['pairs_after']:<4} {r['fused']:>5} "
              f"{r['rel_l2']:>8.1e} {'y' if r['verified'] else 'N':>3} {r['tool_s']:>6}")
    bn0 = sum(r["bn_before"] for r in ok)
    bn1 = sum(r["bn_after"] for r in ok)
    p0 = sum(r["pairs_before"] for r in ok)
    p1 = sum(r["pairs_after"] for r in ok)
    print(f"\nTOTAL {len(ok)}/{len(rows)} exported+fused; BN removed {bn0 - bn1}/{bn0}; conv-act pairs fused "
          f"{p0 - p1}/{p0}; verified {sum(r['verified'] for r in ok)}/{len(ok)}")


if __name__ == "__main__":
    main()
