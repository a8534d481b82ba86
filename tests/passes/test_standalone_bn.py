"""standalone_bn: a BatchNormalization with no foldable producer (+ per-channel Mul/Add chain) (+ activation)
→ one ``fuser::FusedBatchNorm<Act>`` node; its constants, attributes, provenance and guards."""

from __future__ import annotations

import numpy as np
import pytest

from .builders import (
    GraphBuilder,
    assert_equivalent,
    assert_provenance,
    attrs,
    bn_fold_ref,
    fuse,
    init,
    ops,
    patterns,
    the_fused,
)
from .test_conv_activation import add_activation

EPS = 1e-3
EPS32 = float(np.float32(EPS))


def bn_ref(g: GraphBuilder, name: str = "bn"):
    v = g.values
    return bn_fold_ref(v[f"{name}.gamma"], v[f"{name}.beta"], v[f"{name}.mean"], v[f"{name}.var"], EPS32)


def check_bn_node(out, g, scale, shift, rank: int = 4, dtype=np.float32):
    f = the_fused(out)
    c = scale.size
    sc, sh = init(out, f.input[1]), init(out, f.input[2])
    assert sc.shape == (c,) + (1,) * (rank - 2) and sh.shape == sc.shape
    assert sc.dtype == dtype and sh.dtype == dtype
    np.testing.assert_array_max_ulp(sc.reshape(-1), scale.astype(dtype), maxulp=1)
    np.testing.assert_array_max_ulp(sh.reshape(-1), shift.astype(dtype), maxulp=1)
    a = attrs(f)
    assert np.isclose(a["epsilon"], EPS) and a["kernel"] == "batchnorm"
    return f


def test_bn_after_concat():
    g = GraphBuilder(0)
    cat = g.node("Concat", [g.input("A", ["N", 2, 4, 4]), g.input("B", ["N", 3, 4, 4])], name="cat", axis=1)
    g.bn(cat, 5, outputs=["Z"], epsilon=EPS)
    g.output("Z")
    m = g.model()
    res = fuse(m)
    out = res.model
    assert ops(out) == {"Concat": 1, "fuser::FusedBatchNorm": 1}
    s, t = bn_ref(g)
    f = check_bn_node(out, g, s, t)
    assert attrs(f)["activation"] == "" and list(f.output) == ["Z"] and f.input[0] == "cat_y0"
    assert_provenance(out, f, "bn", ["bn"])
    assert_equivalent(m, out)


@pytest.mark.parametrize("rank", [2, 3, 4, 5])
def test_bn_after_add_relu(rank):
    g = GraphBuilder(1)
    shape = ["N", 4, 3, 3, 2][:rank]
    s_ = g.node("Add", [g.input("A", shape), g.input("B", shape)], name="add")
    z = g.bn(s_, 4, epsilon=EPS)
    g.node("Relu", [z], ["Z"], name="relu")
    g.output("Z")
    m = g.model()
    res = fuse(m)
    out = res.model
    assert ops(out) == {"Add": 1, "fuser::FusedBatchNormRelu": 1}
    s, t = bn_ref(g)
    f = check_bn_node(out, g, s, t, rank)
    assert attrs(f)["activation"] == "Relu"
    assert_provenance(out, f, "bn_relu", ["bn", "relu"])
    assert_equivalent(m, out)


def test_bn_on_graph_input():
    g = GraphBuilder(2)
    g.bn(g.input("X", ["N", 3, 4, 4]), 3, outputs=["Z"], epsilon=EPS)
    g.output("Z")
    m = g.model()
    out = fuse(m).model
    assert ops(out) == {"fuser::FusedBatchNorm": 1}
    assert_equivalent(m, out)


def test_densenet_preactivation_bn_relu_conv():
    """DenseNet: BN → ReLU → Conv; the BN has no producer to fold into, the Conv no activation after it."""
    g = GraphBuilder(3)
    cat = g.node("Concat", [g.input("A", ["N", 2, 5, 5]), g.input("B", ["N", 2, 5, 5])], name="cat", axis=1)
    z = g.bn(cat, 4, epsilon=EPS)
    r = g.node("Relu", [z], name="relu")
    y = g.conv(r, 4, 3, kernel=(1, 1))
    g.node("Concat", [cat, y], ["Z"], name="cat2", axis=1)
    g.output("Z")
    m = g.model()
    res = fuse(m)
    out = res.model
    assert ops(out) == {"Concat": 2, "fuser::FusedBatchNormRelu": 1, "Conv": 1}
    assert patterns(res) == ["bn_relu"]
    assert_equivalent(m, out)


def test_caffe2_scale_mul_add_absorbed():
    """BN → Mul(γ') → Add(β') → Relu (Caffe2's Scale layer, light densenet121)."""
    g = GraphBuilder(4)
    cat = g.node("Concat", [g.input("A", ["N", 2, 4, 4]), g.input("B", ["N", 3, 4, 4])], name="cat", axis=1)
    z = g.bn(cat, 5, epsilon=EPS)
    mu = g.node("Mul", [z, g.weight("sc", (5, 1, 1))], name="mul")
    ad = g.node("Add", [g.weight("sh", (1, 5, 1, 1)), mu], name="add")
    g.node("Relu", [ad], ["Z"], name="relu")
    g.output("Z")
    m = g.model()
    res = fuse(m)
    out = res.model
    assert ops(out) == {"Concat": 1, "fuser::FusedBatchNormRelu": 1}
    s, t = bn_ref(g)
    c1, c2 = g.values["sc"].astype(np.float64).reshape(-1), g.values["sh"].astype(np.float64).reshape(-1)
    f = check_bn_node(out, g, s * c1, t * c1 + c2)
    assert_provenance(out, f, "bn_affine_relu", ["bn", "mul", "add", "relu"])
    assert_equivalent(m, out)


def test_sub_div_scalar_chain_absorbed():
    g = GraphBuilder(5)
    z = g.bn(g.input("X", ["N", 3, 4, 4]), 3, epsilon=EPS)
    z = g.node("Sub", [z, g.weight("c1", (3, 1, 1))], name="sub")
    z = g.node("Div", [z, g.const("c2", np.array(1.7, np.float32))], name="div")
    g.node("Mul", [g.const("c3", np.array([0.5], np.float32)), z], ["Z"], name="mul")
    g.output("Z")
    m = g.model()
    res = fuse(m)
    assert ops(res.model) == {"fuser::FusedBatchNorm": 1}
    assert patterns(res) == ["bn_affine"]
    assert_equivalent(m, res.model)


ACTS = [("LeakyRelu", 13, "LeakyRelu"), ("ClipInputs", 13, "Clip"), ("ClipAttrs", 9, "Clip"),
        ("Sigmoid", 13, "Sigmoid"), ("HardSigmoid", 13, "HardSigmoid"), ("HardSwish", 14, "HardSwish"),
        ("Tanh", 13, "Tanh"), ("SiLU", 13, "SiLU")]


@pytest.mark.parametrize("kind,opset,act", ACTS, ids=[a[0] for a in ACTS])
def test_bn_activation(kind, opset, act):
    g = GraphBuilder(6)
    s_ = g.node("Add", [g.input("A", ["N", 4, 3, 3]), g.input("B", ["N", 4, 3, 3])], name="add")
    z = g.bn(s_, 4, epsilon=EPS)
    names = add_activation(g, kind, z)
    g.output("Z")
    m = g.model(opset=opset)
    res = fuse(m)
    out = res.model
    assert ops(out) == {"Add": 1, f"fuser::FusedBatchNorm{act}": 1}
    f = the_fused(out)
    assert attrs(f)["activation"] == act
    if kind == "LeakyRelu":
        assert np.isclose(attrs(f)["alpha"], 0.2)
    if act == "Clip":
        assert attrs(f)["clip_min"] == 0.0 and attrs(f)["clip_max"] == 6.0
        assert len(f.input) == (5 if opset >= 11 else 3)
    assert_provenance(out, f, f"bn_{act.lower()}", ["bn", *names])
    assert_equivalent(m, out)


def test_bn_fp16():
    g = GraphBuilder(7, np.float16)
    s_ = g.node("Add", [g.input("A", ["N", 4, 3, 3]), g.input("B", ["N", 4, 3, 3])], name="add")
    z = g.bn(s_, 4, epsilon=EPS)
    g.node("Relu", [z], ["Z"], name="relu")
    g.output("Z")
    m = g.model()
    out = fuse(m).model
    s, t = bn_ref(g)
    check_bn_node(out, g, s, t, dtype=np.float16)
    assert_equivalent(m, out, tol=1e-2)


# -- guards --------------------------------------------------------------------------------------------

def test_guard_unknown_rank():
    g = GraphBuilder(8)
    g.input("X", None)
    g.bn("X", 3, outputs=["Z"], epsilon=EPS)
    g.output("Z")
    m = g.model()
    res = fuse(m)
    assert ops(res.model) == {"BatchNormalization": 1}
    assert_equivalent(m, res.model, shapes={"X": [2, 3, 4, 4]})


@pytest.mark.parametrize("c_shape", [(1, 1, 4, 4), (4,), (1, 1, 1, 4), (3, 4, 4)])
def test_guard_mul_not_per_channel(c_shape):
    g = GraphBuilder(9)
    z = g.bn(g.input("X", ["N", 3, 4, 4]), 3, epsilon=EPS)
    mu = g.node("Mul", [z, g.weight("c", c_shape)], name="mul")
    g.node("Relu", [mu], ["Z"], name="relu")
    g.output("Z")
    m = g.model()
    res = fuse(m)
    assert ops(res.model) == {"fuser::FusedBatchNorm": 1, "Mul": 1, "Relu": 1}
    assert patterns(res) == ["bn"]
    assert_equivalent(m, res.model)


def test_guard_training_mode():
    g = GraphBuilder(10)
    g.bn(g.input("X", [2, 3, 4, 4]), 3, outputs=["Z", "rm", "rv"], epsilon=EPS, training_mode=1)
    g.output("Z")
    m = g.model(opset=15)
    res = fuse(m)
    assert ops(res.model) == {"BatchNormalization": 1}
    assert_equivalent(m, res.model)


@pytest.mark.parametrize("used", [None, "sm"])
def test_guard_extra_outputs(used):
    g = GraphBuilder(11)
    g.bn(g.input("X", [2, 3, 4, 4]), 3, outputs=["Z", "rm", "rv", "sm", "sv"], epsilon=EPS)
    g.output("Z")
    if used:
        g.output(used)
    m = g.model(opset=9)
    res = fuse(m)
    assert ops(res.model) == {"BatchNormalization": 1}
    assert_equivalent(m, res.model)


def test_guard_params_are_graph_inputs():
    g = GraphBuilder(12)
    params = g.bn_params(3)
    params[1] = g.input("beta", [3])
    g.bn(g.input("X", ["N", 3, 4, 4]), 3, outputs=["Z"], params=params, epsilon=EPS)
    g.output("Z")
    m = g.model()
    res = fuse(m)
    assert ops(res.model) == {"BatchNormalization": 1}
    assert_equivalent(m, res.model)


def test_guard_bn_output_is_graph_output_keeps_name():
    g = GraphBuilder(13)
    z = g.bn(g.input("X", ["N", 3, 4, 4]), 3, outputs=["Y"], epsilon=EPS)
    g.node("Mul", [z, g.weight("c", (3, 1, 1))], name="mul")
    g.node("Relu", ["mul_y0"], ["Z"], name="relu")
    g.output("Y")
    g.output("Z")
    m = g.model()
    res = fuse(m)
    out = res.model
    assert ops(out) == {"fuser::FusedBatchNorm": 1, "Mul": 1, "Relu": 1}
    assert list(the_fused(out).output) == ["Y"]
    assert [o.name for o in out.graph.output] == ["Y", "Z"]
    assert_equivalent(m, out)


def test_guard_intermediate_with_two_consumers():
    g = GraphBuilder(14)
    z = g.bn(g.input("X", ["N", 3, 4, 4]), 3, epsilon=EPS)
    mu = g.node("Mul", [z, g.weight("c", (3, 1, 1))], name="mul")
    g.node("Relu", [mu], ["Z"], name="relu")
    g.node("Tanh", [mu], ["T"], name="tanh")
    g.output("Z")
    g.output("T")
    m = g.model()
    res = fuse(m)
    assert ops(res.model) == {"fuser::FusedBatchNorm": 1, "Relu": 1, "Tanh": 1}
    assert patterns(res) == ["bn_affine"]
    assert_equivalent(m, res.model)


@pytest.mark.parametrize("op", ["Sub", "Div"])
def test_guard_constant_left_of_sub_div(op):
    g = GraphBuilder(15)
    z = g.bn(g.input("X", ["N", 3, 4, 4]), 3, epsilon=EPS)
    g.node(op, [g.weight("c", (3, 1, 1), 0.5, 2.0), z], ["Z"], name="op")
    g.output("Z")
    m = g.model()
    res = fuse(m)
    assert ops(res.model) == {"fuser::FusedBatchNorm": 1, op: 1}
    assert_equivalent(m, res.model)


def test_guard_div_by_zero_channel():
    g = GraphBuilder(16)
    z = g.bn(g.input("X", ["N", 3, 4, 4]), 3, epsilon=EPS)
    g.node("Div", [z, g.const("c", np.array([2.0, 0.0, 1.0], np.float32).reshape(3, 1, 1))], ["Z"], name="div")
    g.output("Z")
    m = g.model()
    res = fuse(m)
    assert ops(res.model) == {"fuser::FusedBatchNorm": 1, "Div": 1}
    assert_equivalent(m, res.model)


def test_guard_mul_by_non_constant():
    g = GraphBuilder(17)
    z = g.bn(g.input("X", ["N", 3, 4, 4]), 3, epsilon=EPS)
    g.node("Mul", [z, g.input("G", [3, 1, 1])], ["Z"], name="mul")
    g.output("Z")
    m = g.model()
    res = fuse(m)
    assert ops(res.model) == {"fuser::FusedBatchNorm": 1, "Mul": 1}
    assert_equivalent(m, res.model)
