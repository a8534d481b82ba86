"""Wall time of the tool itself on a ResNet-50-size model, beside onnxslim on the same file.

The model: the onnx package's light ResNet-50 with its ConstantOfShape weights materialised into
initializers (25.5 M parameters, 102 MB — the real ResNet-50 graph and size). Each tool runs as a user
runs it, a fresh process per run (imports included), median of N runs; onnx-fuse with --no-verify
(the issue's yardstick) and with verification.

Usage: python bench/bench_tool_speed.py [--runs 3]
"""

from __future__ import annotations

import argparse
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
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    model = tmp / "resnet50.onnx"
    materialise_resnet50(model)
    rows = []
    fuse = [sys.executable, "-m", "fuser.cli.main", str(model), "-o", str(tmp / "fused.onnx"), "-q"]
    rows.append(("onnx-fuse --no-verify", *timed([*fuse, "--no-verify"], args.runs)))
    rows.append(("onnx-fuse (verified)", *timed(fuse, args.runs)))
    slim = shutil.which("onnxslim")
    if slim:
        rows.append(("onnxslim", *timed([slim, str(model), str(tmp / "slim.onnx")], args.runs)))
    print(f"model: ResNet-50 ({model.stat().st_size / 1e6:.0f} MB), {os.cpu_count()} cores, "
          f"{platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(f"{'tool':<24} {'median s':>9}   runs")
    for name, med, ts in rows:
        print(f"{name:<24} {med:>9.2f}   {', '.join(f'{t:.2f}' for t in ts)}")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
