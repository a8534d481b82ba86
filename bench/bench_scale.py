"""Scale: a model over 2 GiB (external data) through the tool; peak memory relative to the model size.

Builds X[1,F] → MatMul(W[F,F]) → BatchNormalization over F (a Linear+BatchNorm1d, what fold_bn folds
into W) with F chosen so W is ``--gib`` GiB, saved with external data; then runs
``onnx-fuse MODEL -o OUT`` as a user would (verification on unless --no-verify), and reports wall time
and peak resident memory (``ru_maxrss`` of the child) against the model size.

Usage: python bench/bench_scale.py [--gib 2.2] [--no-verify] [--keep DIR]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build(path: Path, gib: float) -> int:
    """Write the model with W as external data directly (protobuf cannot hold it in memory)."""
    f = int((gib * 2**30 / 4) ** 0.5)
    rng = np.random.default_rng(0)
    data = path.parent / (path.name + ".data")
    with open(data, "wb") as fh:
        for r0 in range(0, f, 2048):  # in slabs: never the whole matrix in memory twice
            rows = min(2048, f - r0)
            fh.write((rng.standard_normal((rows, f), dtype=np.float32) * np.float32(1.0 / np.sqrt(f))).tobytes())
    w = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[f, f], data_location=TensorProto.EXTERNAL)
    for k, v in (("location", data.name), ("offset", "0"), ("length", str(4 * f * f))):
        w.external_data.add(key=k, value=v)
    inits = [w]
    for name, v in (("g", 1 + 0.1 * rng.standard_normal(f)), ("b", 0.1 * rng.standard_normal(f)),
                    ("m", 0.1 * rng.standard_normal(f)), ("v", 0.5 + rng.random(f))):
        inits.append(numpy_helper.from_array(v.astype(np.float32), name))
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["h"], name="linear"),
                           helper.make_node("BatchNormalization", ["h", "g", "b", "m", "v"], ["y"], name="bn")],
                          "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, f])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, f])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path.write_bytes(m.SerializeToString())
    return path.stat().st_size + data.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=2.2)
    ap.add_argument("--no-verify", action="store_true")
    ap.add_argument("--keep", default="")
    a = ap.parse_args()
    d = Path(a.keep) if a.keep else Path(tempfile.mkdtemp())
    d.mkdir(parents=True, exist_ok=True)
    src = d / "big.onnx"
    size = build(src, a.gib)
    out = d / "big.fused.onnx"
    cmd = [sys.executable, "-m", "fuser.cli.main", str(src), "-o", str(out), "-q"] + (["--no-verify"] if a.no_verify
                                                                                     else [])
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    ok = p.returncode == 0
    if ok:
        m = onnx.load(out)
        ops = [n.op_type for n in m.graph.node]
        written = sum(q.stat().st_size for q in d.iterdir() if q.name.startswith(out.name))
    print(f"model {size / 2**30:.2f} GiB (external data); rc={p.returncode} {p.stderr.strip()[-600:]}")
    if ok:
        ext = (d / (out.name + ".data")).exists()
        print(f"ops after: {ops}; output {written / 2**30:.2f} GiB (external data: {ext})")
    print(f"wall {wall:.1f} s, peak RSS {peak / 2**30:.2f} GiB = {peak / size:.2f}x the model size "
          f"({'verified' if not a.no_verify else 'no verification'})")
    if not a.keep:
        shutil.rmtree(d)


if __name__ == "__main__":
    main()
