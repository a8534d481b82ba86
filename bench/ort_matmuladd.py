"""The original model in onnxruntime's CUDA EP with and without its MatMulAddFusion (which onnx-fuse's islands
turn off): is the end-to-end gain ours, or onnxruntime's own setting? GPU machine only.

Usage: python bench/ort_matmuladd.py [--cases bert128,vit] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.append(os.path.dirname(os.path.abspath(__file__)))
import e2e_transformers as e2e  # noqa: E402

from fuser.verify import make_inputs  # noqa: E402


def time_ms(model_bytes: bytes, feeds: dict, tf32: bool, disabled: list[str] | None) -> float:
    popts = {"device_id": "0", "use_tf32": "1" if tf32 else "0"}
    return e2e.time_ort(model_bytes, feeds, popts, disabled)[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="bert128,vit")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    a = ap.parse_args()
    make = {"bert128": lambda: e2e.export_bert(128, 8), "bert512": lambda: e2e.export_bert(512, 8),
            "vit": lambda: e2e.export_vit(8)}
    rows = []
    for case in a.cases.split(","):
        model = make[case]()
        feeds = make_inputs(model, 0)
        data = model.SerializeToString()
        for tf32 in (False, True):
            on = time_ms(data, feeds, tf32, None)
            off = time_ms(data, feeds, tf32, ["MatMulAddFusion"])
            rows.append({"case": case, "tf32": tf32, "default_ms": on, "matmuladd_off_ms": off})
            print(json.dumps(rows[-1]))
    with open(os.path.join(a.out, "ort_matmuladd.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print(f"\n{'case':10} {'prec':5} {'ORT default':>12} {'MatMulAdd off':>14}")
    for r in rows:
        prec = "tf32" if r["tf32"] else "fp32"
        print(f"{r['case']:10} {prec:5} {r['default_ms']:12.3f} {r['matmuladd_off_ms']:14.3f}")


if __name__ == "__main__":
    main()
