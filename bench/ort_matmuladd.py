"""The original model in onnxruntime's CUDA EP with and without its MatMulAddFusion (which onnx-fuse's islands
turn off): is the end-to-end gain ours, or onnxruntime's own setting? GPU machine only.

Usage: python bench/ort_matmuladd.py [--cases bert128,vit] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.append(os.path.dirname(os.path.abspath(__file__)))
import e2e_transformers as e2e  # noqa: E402

from fuser.verify import make_inputs  # noqa: E402


def time_ms(model_bytes: bytes, feeds: dict, tf32: bool, disabled: list[str] | None) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    kw = {"disabled_optimizers": disabled} if disabled else {}
    s = ort.InferenceSession(model_bytes, opts, providers=[("CUDAExecutionProvider",
                                                             {"device_id": "0", "use_tf32": "1" if tf32 else "0"})],
                             **kw)
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
    return statistics.median(ts)


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
