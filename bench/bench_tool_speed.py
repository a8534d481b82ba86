"""Wall time of the tool itself on ResNet-50 and BERT-base, beside onnxslim and onnxsim on the same files.

Models: the onnx package's light ResNet-50 with its ConstantOfShape weights materialised into
initializers (25.5 M parameters, 102 MB — the real ResNet-50 graph and size), and BERT-base (110 M
parameters, random weights from transformers' default config, TorchScript export at opset 17, sequence
128) when torch and transformers are installed. Each tool runs as a user runs it, a fresh process per
run (imports included), median of N runs; onnx-fuse with --no-verify and with verification.

Usage: python bench/bench_tool_speed.py [--runs 3] [--models resnet50,bert]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs


def materialise_resnet50(path: Path) -> None:
    src = Path(os.path.dirname(onnx.__file__)) / "backend/test/data/light/light_resnet50.onnx"
    g = gs.import_onnx(onnx.load(src))
    g.fold_constants().cleanup().toposort()
    m = gs.export_onnx(g)
    m.ir_version = 8
    onnx.save(m, path)


def export_bert(path: Path) -> bool:
    try:
        import torch
        from transformers import BertConfig, BertModel
    except ImportError:
        return False
    bert = BertModel(BertConfig(attn_implementation="eager")).eval()

    class Wrapped(torch.nn.Module):
        def forward(self, ids, mask):
            return bert(input_ids=ids, attention_mask=mask).last_hidden_state

    ids = torch.randint(0, 30000, (1, 128))
    mask = torch.ones(1, 128, dtype=torch.int64)
    for p in bert.parameters():
        p.requires_grad_(False)
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(Wrapped().eval(), (ids, mask), str(path), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}})
    return True


def timed(cmd: list[str], runs: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        times.append(time.perf_counter() - t)
        if p.returncode != 0:
            raise SystemExit(f"{cmd[0]} failed: {p.stderr[-500:]}")
    return statistics.median(times), times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--models", default="resnet50,bert")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    models: list[tuple[str, Path, list[str]]] = []
    if "resnet50" in args.models:
        materialise_resnet50(tmp / "resnet50.onnx")
        models.append(("ResNet-50", tmp / "resnet50.onnx", []))
    if "bert" in args.models and export_bert(tmp / "bert.onnx"):
        models.append(("BERT-base", tmp / "bert.onnx", ["--shape", "input_ids:1,128", "--shape",
                                                          "attention_mask:1,128"]))
    print(f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(f"{'model':<10} {'MB':>5} {'tool':<24} {'median s':>9}   runs")
    for label, model, extra in models:
        rows = []
        fuse = [sys.executable, "-m", "fuser.cli.main", str(model), "-o", str(tmp / "fused.onnx"), "-q", *extra]
        rows.append(("onnx-fuse --no-verify", *timed([*fuse, "--no-verify"], args.runs)))
        rows.append(("onnx-fuse (verified)", *timed(fuse, args.runs)))
        slim = shutil.which("onnxslim")
        if slim:
            rows.append(("onnxslim", *timed([slim, str(model), str(tmp / "slim.onnx")], args.runs)))
        try:
            import onnxsim  # noqa: F401

            rows.append(("onnxsim", *timed([sys.executable, "-m", "onnxsim", str(model), str(tmp / "sim.onnx")],
                                           args.runs)))
        except ImportError:
            pass
        mb = model.stat().st_size / 1e6
        for name, med, ts in rows:
            print(f"{label:<10} {mb:>5.0f} {name:<24} {med:>9.2f}   {', '.join(f'{t:.2f}' for t in ts)}")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
