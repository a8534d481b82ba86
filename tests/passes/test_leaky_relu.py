"""leaky_relu: a standalone LeakyRelu → ``fuser::FusedLeakyRelu``; one that an earlier pass can absorb
(after a Conv or a BN) becomes part of that fused node instead."""

from __future__ import annotations

import numpy as np
import pytest

from .builders import GraphBuilder, assert_equivalent, assert_provenance, attrs, fuse, ops, patterns, the_fused


@pytest.mark.parametrize("alpha", [0.2, None])
def test_standalone_leaky_relu(alpha):
    g = GraphBuilder(0)
    kw = {} if alpha is None else {"alpha": alpha}
    g.node("LeakyRelu", [g.input("X", ["N", 3, 4, 4])], ["Z"], name="lrelu", **kw)
    g.output("Z")
    m = g.model()
    res = fuse(m)
    out = res.model
    assert ops(out) == {"fuser::FusedLeakyRelu": 1}
    f = the_fused(out)
    a = attrs(f)
    assert a["activation"] == "LeakyRelu" and np.isclose(a["alpha"], 0.01 if alpha is None else alpha)
    assert a["kernel"] == "leaky_relu" and list(f.input) == ["X"] and list(f.output) == ["Z"]
    assert_provenance(out, f, "leaky_relu", ["lrelu"])
    assert patterns(res) == ["leaky_relu"]
    assert_equivalent(m, out)


def test_leaky_relu_after_conv_joins_the_conv():
    g = GraphBuilder(1)
    y = g.conv(g.input("X", ["N", 3, 5, 5]), 3, 4)
    g.node("LeakyRelu", [y], ["Z"], name="lrelu", alpha=0.2)
    g.output("Z")
    m = g.model()
    res = fuse(m)
    out = res.model
    assert ops(out) == {"fuser::FusedConvLeakyRelu": 1}
    assert np.isclose(attrs(the_fused(out))["alpha"], 0.2)
    assert patterns(res) == ["conv_leakyrelu"]
    assert_equivalent(m, out)


def test_leaky_relu_after_conv_bn_joins_the_conv():
    g = GraphBuilder(2)
    y = g.conv(g.input("X", ["N", 3, 5, 5]), 3, 4)
    z = g.bn(y, 4, epsilon=1e-3)
    g.node("LeakyRelu", [z], ["Z"], name="lrelu", alpha=0.1)
    g.output("Z")
    m = g.model()
    out = fuse(m).model
    assert ops(out) == {"fuser::FusedConvLeakyRelu": 1}
    assert_equivalent(m, out)


def test_leaky_relu_after_standalone_bn_joins_the_bn():
    g = GraphBuilder(3)
    z = g.bn(g.input("X", ["N", 3, 4, 4]), 3, epsilon=1e-3)
    g.node("LeakyRelu", [z], ["Z"], name="lrelu", alpha=0.3)
    g.output("Z")
    m = g.model()
    out = fuse(m).model
    assert ops(out) == {"fuser::FusedBatchNormLeakyRelu": 1}
    assert_equivalent(m, out)


def test_leaky_relu_after_conv_with_shared_output_stays_standalone():
    """Conv output with two consumers: no Conv fusion, but the LeakyRelu still becomes one kernel."""
    g = GraphBuilder(4)
    y = g.conv(g.input("X", ["N", 3, 5, 5]), 3, 4)
    g.node("LeakyRelu", [y], ["Z"], name="lrelu", alpha=0.2)
    g.node("Sigmoid", [y], ["S"], name="sig")
    g.output("Z")
    g.output("S")
    m = g.model()
    out = fuse(m).model
    assert ops(out) == {"Conv": 1, "fuser::FusedLeakyRelu": 1, "Sigmoid": 1}
    assert_equivalent(m, out)


def test_leaky_relu_after_convtranspose_and_chain():
    g = GraphBuilder(5)
    y = g.conv(g.input("X", ["N", 3, 4, 4]), 3, 4, transpose=True)
    a = g.node("LeakyRelu", [y], name="lrelu1", alpha=0.2)
    g.node("LeakyRelu", [a], ["Z"], name="lrelu2", alpha=0.05)
    g.output(a)
    g.output("Z")
    m = g.model()
    res = fuse(m)
    out = res.model
    assert ops(out) == {"ConvTranspose": 1, "fuser::FusedLeakyRelu": 2}
    assert sorted(n.name for n in out.graph.node if n.domain) == ["lrelu1", "lrelu2"]
    assert [o.name for o in out.graph.output] == [a, "Z"]
    assert_equivalent(m, out)


def test_leaky_relu_fp16():
    g = GraphBuilder(6, np.float16)
    g.node("LeakyRelu", [g.input("X", ["N", 8, 3, 3])], ["Z"], name="lrelu", alpha=0.2)
    g.output("Z")
    m = g.model()
    out = fuse(m).model
    assert ops(out) == {"fuser::FusedLeakyRelu": 1}
    assert_equivalent(m, out, tol=1e-2)


def test_leaky_relu_opset6_and_target_onnx():
    g = GraphBuilder(7)
    g.node("LeakyRelu", [g.input("X", [2, 5])], ["Z"], name="lrelu", alpha=0.25)
    g.output("Z")
    m = g.model(opset=7, ir=3)
    hip = fuse(m).model
    assert ops(hip) == {"fuser::FusedLeakyRelu": 1}
    assert_equivalent(m, hip)
    onnx_ = fuse(m, target="onnx").model
    assert ops(onnx_) == {"LeakyRelu": 1} and not onnx_.functions
    assert_equivalent(m, onnx_)
