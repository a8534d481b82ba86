"""Verification inputs for symbolic dims: the defaults grow where the original model refuses them.

A wav2vec2 export with a dynamic length (TorchScript ``dynamic_axes``) cannot run on a 16-sample waveform (its
conv stack's receptive field is 400): the generated non-batch dims then grow through SYMBOLIC_RETRY_SIZES until
the original runs, and the fused model is verified at that size. Where no size works, one clear error names
--shape; user-given shapes and inputs are never changed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import fuser
from fuser.errors import InputError
from fuser.verify import DEFAULT_SYMBOLIC_OTHER, SYMBOLIC_RETRY_SIZES, has_generated_symbolic, make_inputs


def conv_stack(length: str | int = "T", kernel: int = 10, stride: int = 5, layers: int = 2,
               batch: str | int = "B") -> onnx.ModelProto:
    """x [B, 1, T] -> ``layers`` x (Conv1d k/s + BatchNormalization + Relu): needs T >= the stack's receptive field
    (k = 10, s = 5, two layers: T >= 55). The BNs fold and the Relus fuse, so the pipeline has work to verify."""
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        w = rng.standard_normal((4, 1 if i == 0 else 4, kernel)).astype(np.float32) * 0.3
        inits += [numpy_helper.from_array(w, f"w{i}")]
        for name, val in (("s", 1.0 + 0.1 * rng.random(4)), ("b", rng.random(4) * 0.1), ("m", rng.random(4) * 0.1),
                          ("v", 1.0 + rng.random(4))):
            inits.append(numpy_helper.from_array(val.astype(np.float32), f"{name}{i}"))
        nodes += [helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], kernel_shape=[kernel], strides=[stride]),
                  helper.make_node("BatchNormalization", [f"c{i}", f"s{i}", f"b{i}", f"m{i}", f"v{i}"], [f"n{i}"]),
                  helper.make_node("Relu", [f"n{i}"], [f"r{i}"])]
        prev = f"r{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    g = helper.make_graph(nodes, "stack", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, length])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4, None])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_grows_until_the_original_runs(tmp_path: Path):
    """16 samples are refused, 64 run: the fused model is written, verified on [1, 1, 64]."""
    src = tmp_path / "stack.onnx"
    onnx.save(conv_stack(), src)
    res = fuser.optimize(str(src), str(tmp_path / "out.onnx"))
    assert res.verification is not None and res.verification.passed
    assert res.verification.input_shapes == {"x": [1, 1, SYMBOLIC_RETRY_SIZES[0]]}
    assert res.ops_after.get("BatchNormalization", 0) == 0  # the pipeline did run


def test_default_size_kept_where_it_runs(tmp_path: Path):
    src = tmp_path / "short.onnx"
    onnx.save(conv_stack(kernel=3, stride=1), src)
    res = fuser.optimize(str(src), str(tmp_path / "out.onnx"))
    assert res.verification.input_shapes == {"x": [1, 1, DEFAULT_SYMBOLIC_OTHER]}


def test_no_size_works_names_shape(tmp_path: Path):
    """A receptive field past every retry size: one InputError naming --shape and the sizes tried; nothing written;
    through the CLI exit code 2, one line, no traceback."""
    src = tmp_path / "deep.onnx"
    onnx.save(conv_stack(kernel=10, stride=5, layers=7), src)  # needs T of about 2e5 samples
    out = tmp_path / "out.onnx"
    with pytest.raises(InputError, match=r"tried at 16, 64, 256, 1024, 4096: give real sizes with --shape NAME:d0"):
        fuser.optimize(str(src), str(out))
    assert not out.exists()
    p = subprocess.run([sys.executable, "-m", "fuser.cli.main", str(src), "-o", str(out)], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    errs = [ln for ln in p.stderr.splitlines() if ln.startswith("onnx-fuse: error:")]
    assert len(errs) == 1 and "--shape" in errs[0] and "16, 64, 256, 1024, 4096" in errs[0], p.stderr
    assert not out.exists()


def test_user_shapes_are_not_grown(tmp_path: Path):
    """--shape fixes the dims: a refused size is an error at once (no retries, no hint of sizes tried)."""
    src = tmp_path / "stack.onnx"
    onnx.save(conv_stack(), src)
    with pytest.raises(InputError) as e:
        fuser.optimize(str(src), str(tmp_path / "out.onnx"), shapes={"x": [1, 1, 20]})
    assert "tried at" not in str(e.value)
    res = fuser.optimize(str(src), str(tmp_path / "out.onnx"), shapes={"x": [2, 1, 300]})
    assert res.verification.input_shapes == {"x": [2, 1, 300]}


def test_has_generated_symbolic():
    assert has_generated_symbolic(conv_stack())
    assert not has_generated_symbolic(conv_stack(length=64))          # only the batch is symbolic
    assert not has_generated_symbolic(conv_stack(), shapes={"x": [1, 1, 64]})
    feeds = make_inputs(conv_stack(), other=256)
    assert feeds["x"].shape == (1, 1, 256)


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fuser.cli.main", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_run_and_bench_grow_sizes_too(tmp_path: Path):
    """`onnx-fuse run` and `onnx-fuse bench` size generated symbolic dims as verification does: the 16-sample
    waveform the stack refuses grows to 64 (y: [1, 4, 1]); a size given with --shape is used as given."""
    src, out = tmp_path / "stack.onnx", tmp_path / "fused.onnx"
    onnx.save(conv_stack(), src)
    assert cli(src, "-o", out, "-q").returncode == 0
    p = cli("run", out, "--device", "cpu")
    assert p.returncode == 0, p.stderr
    assert "y: float32 [1, 4, 1]" in p.stdout, p.stdout
    p = cli("run", out, "--device", "cpu", "--shape", "x:2,1,100")  # (100 - 10) / 5 + 1 = 19, then 2
    assert p.returncode == 0 and "y: float32 [2, 4, 2]" in p.stdout, p.stdout + p.stderr
    rep = tmp_path / "bench.json"
    p = cli("bench", src, out, "--device", "cpu", "--warmup", "1", "--iters", "2", "--json", rep)
    assert p.returncode == 0, p.stderr
    assert json.loads(rep.read_text())["input_shapes"] == {"x": [1, 1, SYMBOLIC_RETRY_SIZES[0]]}
    assert "onnxruntime" not in p.stderr  # the refused size is retried quietly


def test_run_names_shape_where_no_size_works(tmp_path: Path):
    """A stack no retry size satisfies: `onnx-fuse run` fails with exit 2 and one line naming --shape and the sizes."""
    src = tmp_path / "deep.onnx"
    onnx.save(conv_stack(kernel=10, stride=5, layers=7), src)
    p = cli("run", src, "--device", "cpu")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    errs = [ln for ln in p.stderr.splitlines() if ln.startswith("onnx-fuse: error:")]
    assert len(errs) == 1 and "--shape" in errs[0] and "16, 64, 256, 1024, 4096" in errs[0], p.stderr
