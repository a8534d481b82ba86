"""Where the GPU time of an end-to-end transformer run goes: every kernel of one run (onnxruntime's and ours,
CUDA-graph replays included) recorded through CUPTI with torch.profiler, summed by kernel name.

For the original model in the CUDA EP, the same after onnxruntime's transformers optimizer, and ours in our
runtime, in one precision. Prints, per path, the GPU time per run split into GEMM kernels / our kernels / other,
and the largest kernels. GPU machine only (needs onnxruntime-gpu and torch).

Usage: python bench/profile_e2e.py [--case bert128|bert512|vit|bert128dyn] [--tf32] [--out DIR]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile

import onnx

sys.path.append(os.path.dirname(os.path.abspath(__file__)))
import e2e_transformers as e2e  # noqa: E402

import fuser  # noqa: E402

RUNS = 5


def _kind(name: str) -> str:
    low = name.lower()
    if low.startswith("fuser_"):
        return "ours"
    if any(k in low for k in ("gemm", "xmma", "cutlass", "cublas", "sm90_", "sm80_", "ampere_", "matmul")):
        return "gemm"
    return "other"


def profile(run, sync) -> dict[str, float]:
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    for _ in range(5):
        run()
    sync()
    with tprofile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(RUNS):
            run()
        sync()
        torch.cuda.synchronize()
    per: dict[str, float] = collections.defaultdict(float)
    for ev in prof.events():
        if ev.device_type.name == "CUDA" and ev.device_time_total > 0 and "Memcpy" not in ev.name \
                and "Memset" not in ev.name:
            per[ev.name] += ev.device_time_total / RUNS  # µs per run
    return dict(per)


def ort_runner(path: str, feeds: dict, tf32: bool):
    s, io_ = e2e.ort_bound(path, feeds, {"device_id": "0", "use_tf32": "1" if tf32 else "0"})
    return (lambda: s.run_with_iobinding(io_)), (lambda: None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", default="bert128")
    ap.add_argument("--tf32", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    a = ap.parse_args()
    from onnxruntime.transformers.optimizer import optimize_model

    from fuser.runtime import Session

    make = {"bert128": lambda: e2e.export_bert(128, 8), "bert512": lambda: e2e.export_bert(512, 8),
            "vit": lambda: e2e.export_vit(8), "bert128dyn": lambda: e2e.export_bert(128, 8, True)}[a.case]
    model = make()
    feeds = e2e.example_feeds(model, 128 if a.case == "bert128dyn" else None)
    tmp = tempfile.mkdtemp()
    src = os.path.join(tmp, "m.onnx")
    onnx.save(model, src)
    paths = {"original": src}
    try:
        opt = optimize_model(src, model_type="vit" if a.case == "vit" else "bert", num_heads=12, hidden_size=768,
                             use_gpu=True)
        paths["ort_optimizer"] = os.path.join(tmp, "opt.onnx")
        opt.save_model_to_file(paths["ort_optimizer"])
    except Exception as e:  # noqa: BLE001
        print("ORT optimizer failed:", e)
    results = {}
    for label, p in paths.items():
        results[label] = profile(*ort_runner(p, feeds, a.tf32))
    fused = fuser.optimize(model, None, verify_result=False, device="cuda", allow_tf32=a.tf32).model
    sess = Session(fused, device="cuda", allow_tf32=a.tf32)
    dev = {k: sess._device.to_device(v) for k, v in feeds.items()}
    results["ours"] = profile(lambda: sess.run_device(dev), sess.synchronize)
    out = {"case": a.case, "tf32": a.tf32, "per_run_us": results}
    with open(os.path.join(a.out, f"profile_e2e_{a.case}_{'tf32' if a.tf32 else 'fp32'}.json"), "w") as f:
        json.dump(out, f, indent=1)
    for label, per in results.items():
        tot = collections.defaultdict(float)
        for n, us in per.items():
            tot[_kind(n)] += us
        print(f"\n== {label}: GPU {sum(per.values()) / 1e3:.3f} ms/run  (gemm {tot['gemm'] / 1e3:.3f}, ours "
              f"{tot['ours'] / 1e3:.3f}, other {tot['other'] / 1e3:.3f})")
        for n, us in sorted(per.items(), key=lambda kv: -kv[1])[:14]:
            print(f"  {us:9.1f} us  {n[:110]}")


if __name__ == "__main__":
    main()
