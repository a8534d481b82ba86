"""Breadth and determinism: opsets 7–23 (BatchNormalization 7/9/14/15, Clip attributes vs inputs,
Unsqueeze axes attribute vs input), fp16, symbolic dims, ir_version never raised, byte-identical reruns
under any PYTHONHASHSEED, and idempotence (fusing a fused model changes nothing)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import fuser
from fuser.ortcompat import ort_limits

from .conftest import EXAMPLES, LIGHT


def versioned_model(opset: int, dtype=np.float32) -> onnx.ModelProto:
    """Conv→BN→Clip(0,6) → Conv(+Unsqueeze'd bias Add)→Relu → Concat → BN→LeakyRelu, at ``opset``."""
    rng = np.random.default_rng(opset)
    et = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))

    def const(name, shape, scale=0.3, offset=0.0):
        return numpy_helper.from_array((offset + scale * rng.standard_normal(shape)).astype(dtype), name)

    inits = [const("w1", (8, 3, 3, 3)), const("g1", 8, 0.2, 1.0), const("b1", 8), const("m1", 8),
             const("v1", 8, 0.1, 1.0), const("w2", (8, 8, 1, 1)), const("bias2", 8),
             const("g3", 16, 0.2, 1.0), const("b3", 16), const("m3", 16), const("v3", 16, 0.1, 1.0)]
    inits[4] = numpy_helper.from_array(np.abs(numpy_helper.to_array(inits[4])).astype(dtype), "v1")
    inits[10] = numpy_helper.from_array(np.abs(numpy_helper.to_array(inits[10])).astype(dtype), "v3")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("BatchNormalization", ["c1", "g1", "b1", "m1", "v1"], ["n1"], name="bn1")]
    if opset < 11:
        nodes.append(helper.make_node("Clip", ["n1"], ["a1"], min=0.0, max=6.0, name="relu6"))
    else:
        inits += [numpy_helper.from_array(np.array(0, dtype), "lo"), numpy_helper.from_array(np.array(6, dtype), "hi")]
        nodes.append(helper.make_node("Clip", ["n1", "lo", "hi"], ["a1"], name="relu6"))
    nodes.append(helper.make_node("Conv", ["a1", "w2"], ["c2"], name="conv2"))
    if opset < 13:
        nodes.append(helper.make_node("Unsqueeze", ["bias2"], ["bias2u"], axes=[1, 2], name="unsq"))
    else:
        inits.append(numpy_helper.from_array(np.array([1, 2], np.int64), "axes"))
        nodes.append(helper.make_node("Unsqueeze", ["bias2", "axes"], ["bias2u"], name="unsq"))
    nodes += [helper.make_node("Add", ["c2", "bias2u"], ["s2"], name="addbias"),
              helper.make_node("Relu", ["s2"], ["a2"], name="relu2"),
              helper.make_node("Concat", ["a1", "a2"], ["cat"], axis=1, name="cat"),
              helper.make_node("BatchNormalization", ["cat", "g3", "b3", "m3", "v3"], ["n3"], name="bn3"),
              helper.make_node("LeakyRelu", ["n3"], ["y"], alpha=0.1, name="lrelu")]
    g = helper.make_graph(nodes, "versioned", [helper.make_tensor_value_info("x", et, ["N", 3, "H", "W"])],
                          [helper.make_tensor_value_info("y", et, ["N", 16, "H", "W"])], inits)
    ir = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    if ir < 4:  # IR 3 lists every initializer among the graph inputs
        g.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir)


OPSETS = [o for o in range(7, 24) if o <= ort_limits()[1]]


@pytest.mark.parametrize("opset", OPSETS)
def test_opsets(opset: int) -> None:
    m = versioned_model(opset)
    res = fuser.optimize(m, None, shapes={"x": [2, 3, 9, 7]})
    assert res.verification.passed, res.verification.first_failure()
    c = Counter(n.op_type for n in res.model.graph.node)
    assert c == {"FusedConvClip": 1, "FusedConvRelu": 1, "Concat": 1, "FusedBatchNormLeakyRelu": 1}, c
    assert res.model.ir_version == m.ir_version
    assert [o.version for o in res.model.opset_import if o.domain == ""] == [opset]
    x = res.model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in x] == ["N", 3, "H", "W"]


def test_fp16_model() -> None:
    m = versioned_model(17, np.float16)
    res = fuser.optimize(m, None)
    assert res.verification.passed and all(c.rtol == 1e-2 for c in res.verification.checks)
    w = {t.name: t for t in res.model.graph.initializer}
    conv = next(n for n in res.model.graph.node if n.op_type == "FusedConvClip")
    assert w[conv.input[1]].data_type == TensorProto.FLOAT16
    assert Counter(n.op_type for n in res.model.graph.node)["BatchNormalization"] == 0


def _cli(*args, seed: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONHASHSEED=seed)
    return subprocess.run([sys.executable, "-m", "fuser.cli.main", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("model", [EXAMPLES / "darknet_tiny.onnx", LIGHT / "light_densenet121.onnx"],
                         ids=["darknet_tiny", "densenet121"])
def test_deterministic_and_idempotent(tmp_path: Path, model: Path) -> None:
    a, b, c = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "c.onnx"
    assert _cli(model, "-o", a, "-q", seed="0").returncode == 0
    assert _cli(model, "-o", b, "-q", "--no-verify", seed="12345").returncode == 0
    assert a.read_bytes() == b.read_bytes()
    p = _cli(a, "-o", c, "-q", seed="7")  # the tool on its own output
    assert p.returncode == 0, p.stderr
    assert c.read_bytes() == a.read_bytes()
