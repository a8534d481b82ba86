"""``onnx-fuse --tune`` on real CNNs (run on the GPU machine, where torchvision/timm are installed).

Exports each model (TorchScript exporter, opset 17, batch 1, random weights with non-trivial BN
statistics: ``bench/corpus_cnn.py``), fuses it with ``fuser.optimize(..., tune=True)`` (no verification:
onnxruntime-gpu is not installed there) and reports every fused conv node's tactic, how the tactics
are distributed, the tuning time, and for each node the tuner's timings (in the JSON).

Usage: python bench/tune_cnn.py [--out DIR] [--allow-tf32] [MODEL ...]   (default: resnet50 darknet53 cspdarknet53)
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from corpus_cnn import build, export  # noqa: E402

from fuser.api import optimize  # noqa: E402
from fuser.fused import parse_op_type  # noqa: E402
from fuser.tune import tune_tactics  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*", default=["resnet50", "darknet53", "cspdarknet53"])
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    ap.add_argument("--allow-tf32", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for name in args.models:
        t0 = time.perf_counter()
        model = export(build(name), dynamo=False)
        t_export = time.perf_counter() - t0
        res = optimize(model, None, verify_result=False, device="cuda", allow_tf32=args.allow_tf32)
        t1 = time.perf_counter()
        infos = tune_tactics(res.model, args.allow_tf32, "cuda")
        t_tune = time.perf_counter() - t1
        convs = [n for n in res.model.graph.node if n.domain == "fuser" and parse_op_type(n.op_type)
                 and parse_op_type(n.op_type).base == "Conv"]
        named = [i.tactic for i in infos]
        hist = collections.Counter(t.rsplit("_", 1)[0] if "x" in t.rsplit("_", 1)[-1] else t for t in named)
        gain = [min(v for k, v in i.timings_ms.items() if k != "library") / i.timings_ms["library"]
                for i in infos if "library" in i.timings_ms and len(i.timings_ms) > 1]
        row = {"model": name, "tf32": args.allow_tf32, "fused_convs": len(convs), "tuned": len(infos),
               "unnamed": sum(1 for t in named if t in ("", "auto")), "tactics": dict(hist),
               "export_s": round(t_export, 1), "tune_s": round(t_tune, 1),
               "sum_best_ms": round(sum(i.timings_ms.get(i.tactic, 0.0) for i in infos), 4),
               "sum_library_ms": round(sum(i.timings_ms.get("library", 0.0) for i in infos), 4),
               "median_ours_over_library": round(sorted(gain)[len(gain) // 2], 3) if gain else None,
               "library_timed_as": infos[0].note.split("library timed as ")[-1] if infos else "",
               "nodes": [{"node": i.node.name, "x": i.x_shape, "w": i.w_shape, "tactic": i.tactic,
                          "timings_ms": i.timings_ms} for i in infos]}
        rows.append(row)
        print(f"{name}: {row['fused_convs']} fused convs, {row['unnamed']} without a tactic, {dict(hist)}, "
              f"tuned in {t_tune:.1f} s", flush=True)
        assert len(convs) == len(infos) and row["unnamed"] == 0
    with open(os.path.join(args.out, f"tune_cnn{'_tf32' if args.allow_tf32 else ''}.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print("\n| model | TF32 | fused convs | tactics | sum of per-node best ms | sum library ms | tune s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} | {'yes' if r['tf32'] else 'no'} | {r['fused_convs']} | "
              f"{', '.join(f'{k} {v}' for k, v in sorted(r['tactics'].items()))} | {r['sum_best_ms']} | "
              f"{r['sum_library_ms']} | {r['tune_s']} |")
    print(f"library timed as: {rows[0]['library_timed_as'] if rows else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
