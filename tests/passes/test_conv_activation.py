"""conv_activation: Conv (+ residual Add/Sum) + activation → one ``fuser::FusedConv[Add]<Act>`` node,
every activation form, the fused node's attributes and provenance, and every guard."""

from __future__ import annotations

import numpy as np
import pytest

from .builders import (
    GraphBuilder,
    assert_equivalent,
    assert_provenance,
    attrs,
    fuse,
    fused_nodes,
    init,
    ops,
    the_fused,
)

F32_MAX = float(np.finfo(np.float32).max)
INF = float("inf")


def add_activation(g: GraphBuilder, kind: str, x: str, out: str = "Z") -> list[str]:
    """Append activation ``kind`` reading ``x`` and writing ``out``; returns the node names (in order)."""
    dt = g.dtype
    if kind in ("Relu", "Sigmoid", "Tanh", "HardSwish"):
        g.node(kind, [x], [out], name="act")
    elif kind == "LeakyRelu":
        g.node("LeakyRelu", [x], [out], name="act", alpha=0.2)
    elif kind == "HardSigmoid":
        g.node("HardSigmoid", [x], [out], name="act", alpha=0.3, beta=0.4)
    elif kind == "HardSigmoidDefault":
        g.node("HardSigmoid", [x], [out], name="act")
    elif kind == "ClipInputs":
        g.node("Clip", [x, g.const("lo", np.array(0.0, dt)), g.const("hi", np.array(6.0, dt))], [out], name="act")
    elif kind == "ClipOnlyMax":
        g.node("Clip", [x, "", g.const("hi", np.array(6.0, dt))], [out], name="act")
    elif kind == "ClipOnlyMin":
        g.node("Clip", [x, g.const("lo", np.array(-0.5, dt))], [out], name="act")
    elif kind == "ClipAttrs":
        g.node("Clip", [x], [out], name="act", min=0.0, max=6.0)
    elif kind == "ClipAttrsOnlyMax":
        g.node("Clip", [x], [out], name="act", max=1.5)
    elif kind in ("SiLU", "SiLUswapped"):
        s = g.node("Sigmoid", [x], name="sig")
        g.node("Mul", [x, s] if kind == "SiLU" else [s, x], [out], name="mul")
        return ["sig", "mul"]
    else:
        raise ValueError(kind)
    return ["act"]


ACTIVATIONS = [
    # kind, opset, fused activation, expected parameters
    ("Relu", 13, "Relu", {}),
    ("LeakyRelu", 13, "LeakyRelu", {"alpha": 0.2}),
    ("ClipInputs", 13, "Clip", {"clip_min": 0.0, "clip_max": 6.0}),
    ("ClipInputs", 11, "Clip", {"clip_min": 0.0, "clip_max": 6.0}),
    ("ClipOnlyMax", 13, "Clip", {"clip_min": -INF, "clip_max": 6.0}),
    ("ClipOnlyMin", 13, "Clip", {"clip_min": -0.5, "clip_max": INF}),
    ("ClipAttrs", 9, "Clip", {"clip_min": 0.0, "clip_max": 6.0}),  # ReLU6 of the opset-9 era
    ("ClipAttrsOnlyMax", 9, "Clip", {"clip_min": -F32_MAX, "clip_max": 1.5}),
    ("Sigmoid", 13, "Sigmoid", {}),
    ("HardSigmoid", 13, "HardSigmoid", {"alpha": 0.3, "beta": 0.4}),
    ("HardSigmoidDefault", 13, "HardSigmoid", {"alpha": 0.2, "beta": 0.5}),
    ("HardSwish", 14, "HardSwish", {}),
    ("Tanh", 13, "Tanh", {}),
    ("SiLU", 13, "SiLU", {}),
    ("SiLUswapped", 13, "SiLU", {}),
]


def conv_act_model(kind: str, opset: int, dtype=np.float32, seed: int = 0, bias: bool = True, **conv_attrs):
    g = GraphBuilder(seed, dtype)
    y = g.conv(g.input("X", ["N", 3, 6, 6]), 3, 4, bias=bias, **conv_attrs)
    names = add_activation(g, kind, y)
    g.output("Z")
    return g, g.model(opset=opset), names


def check_activation_attrs(n, act: str, params: dict) -> None:
    a = attrs(n)
    assert a["activation"] == act
    defaults = {"alpha": 0.01, "beta": 0.0, "clip_min": -INF, "clip_max": INF}
    for k, v in {**defaults, **params}.items():
        assert np.isclose(a[k], v, rtol=1e-6), (k, a[k], v)
    assert a["kernel"] == "conv" and a["tactic"] == "auto"


@pytest.mark.parametrize("kind,opset,act,params", ACTIVATIONS, ids=[f"{a[0]}-op{a[1]}" for a in ACTIVATIONS])
def test_conv_activation_fuses(kind, opset, act, params):
    g, m, act_nodes = conv_act_model(kind, opset, seed=len(kind) + opset)
    res = fuse(m)
    out = res.model
    op_type = f"FusedConv{act}"
    assert ops(out) == {f"fuser::{op_type}": 1}
    f = the_fused(out)
    assert f.op_type == op_type and list(f.output) == ["Z"]
    check_activation_attrs(f, act, params)
    assert attrs(f)["pads"] == [1, 1, 1, 1] and attrs(f)["kernel_shape"] == [3, 3]
    assert list(f.input[:3]) == ["X", "conv.W", "conv.B"]
    if act == "Clip" and opset >= 11:
        assert len(f.input) == 5
        lo, hi = init(out, f.input[3]), init(out, f.input[4])
        assert lo.shape == () and hi.shape == () and lo.dtype == np.float32
        assert float(lo) == params["clip_min"] and float(hi) == params["clip_max"]
    else:
        assert len(f.input) == 3
    assert_provenance(out, f, f"conv_{act.lower()}", ["conv", *act_nodes])
    fn = next(fn for fn in out.functions if fn.name == op_type)
    assert all(n.domain in ("", "ai.onnx") for n in fn.node)
    assert_equivalent(m, out)


@pytest.mark.parametrize("conv_attrs", [
    {"strides": [2, 1], "dilations": [1, 2], "pads": [1, 2, 0, 1]},
    {"group": 3, "pads": [0, 0, 0, 0], "strides": [2, 2]},
    {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
    {"auto_pad": "VALID"},
], ids=["strides-dilations-pads", "group", "same_upper", "valid"])
def test_conv_attributes_carried(conv_attrs):
    g = GraphBuilder(1)
    cin, cout = (3, 6) if conv_attrs.get("group") else (3, 4)
    y = g.conv(g.input("X", ["N", cin, 7, 6]), cin, cout, **conv_attrs)
    g.node("Relu", [y], ["Z"], name="act")
    g.output("Z")
    m = g.model()
    out = fuse(m).model
    f = the_fused(out)
    a = attrs(f)
    for k, v in conv_attrs.items():
        assert a[k] == v
    assert a["kernel_shape"] == [3, 3]
    assert_equivalent(m, out)


@pytest.mark.parametrize("dims", [1, 3])
def test_conv_1d_3d_relu(dims):
    g = GraphBuilder(2)
    y = g.conv(g.input("X", ["N", 2, *([5] * dims)]), 2, 3, kernel=(3,) * dims)
    g.node("Relu", [y], ["Z"], name="act")
    g.output("Z")
    m = g.model()
    out = fuse(m).model
    assert ops(out) == {"fuser::FusedConvRelu": 1}
    assert attrs(the_fused(out))["kernel_shape"] == [3] * dims
    assert_equivalent(m, out)


def test_biasless_conv_gets_explicit_zero_bias():
    g, m, _ = conv_act_model("Relu", 13, bias=False, seed=3)
    out = fuse(m).model
    f = the_fused(out)
    assert len(f.input) == 3 and f.input[2] == "conv.bias_zero"
    b = init(out, "conv.bias_zero")
    assert b.shape == (4,) and b.dtype == np.float32 and not b.any()
    assert_equivalent(m, out)


@pytest.mark.parametrize("kind,opset", [("Relu", 13), ("ClipInputs", 13), ("SiLU", 13), ("HardSwish", 14),
                                        ("LeakyRelu", 13), ("ClipAttrs", 9)])
def test_fp16(kind, opset):
    g, m, _ = conv_act_model(kind, opset, dtype=np.float16, seed=4)
    out = fuse(m).model
    f = the_fused(out)
    if kind == "ClipInputs":
        assert init(out, f.input[3]).dtype == np.float16
    assert out.graph.input[0].type.tensor_type.elem_type == 10
    assert_equivalent(m, out, tol=1e-2)


# -- residual --------------------------------------------------------------------------------------

def residual_model(op: str = "Add", conv_first: bool = True, kind: str = "Relu", r_shape=None, seed: int = 5,
                   opset: int = 13, identity: bool = False):
    g = GraphBuilder(seed)
    x = g.input("X", ["N", 4, 5, 5])
    y = g.conv(x, 4, 4)
    r = x if identity else g.input("R", r_shape or ["N", 4, 5, 5])
    s = g.node(op, [y, r] if conv_first else [r, y], name="add")
    names = add_activation(g, kind, s)
    g.output("Z")
    return g, g.model(opset=opset), names


@pytest.mark.parametrize("op", ["Add", "Sum"])
@pytest.mark.parametrize("conv_first", [True, False])
def test_residual_add_relu(op, conv_first):
    g, m, _ = residual_model(op, conv_first)
    res = fuse(m)
    out = res.model
    assert ops(out) == {"fuser::FusedConvAddRelu": 1}
    f = the_fused(out)
    assert list(f.input) == ["X", "conv.W", "conv.B", "R"]
    check_activation_attrs(f, "Relu", {})
    assert_provenance(out, f, "conv_add_relu", ["conv", "add", "act"])
    assert_equivalent(m, out)


def test_residual_identity_shortcut():
    g, m, _ = residual_model(identity=True)
    out = fuse(m).model
    f = the_fused(out)
    assert f.op_type == "FusedConvAddRelu" and list(f.input) == ["X", "conv.W", "conv.B", "X"]
    assert_equivalent(m, out)


@pytest.mark.parametrize("kind,act", [("ClipInputs", "Clip"), ("LeakyRelu", "LeakyRelu"), ("SiLU", "SiLU")])
def test_residual_other_activations(kind, act):
    g, m, names = residual_model(kind=kind)
    out = fuse(m).model
    f = the_fused(out)
    assert f.op_type == f"FusedConvAdd{act}"
    assert list(f.input[:4]) == ["X", "conv.W", "conv.B", "R"]
    assert len(f.input) == (6 if act == "Clip" else 4)
    assert_provenance(out, f, f"conv_add_{act.lower()}", ["conv", "add", *names])
    assert_equivalent(m, out)


def test_resnet_downsample_block():
    """Add(conv_a(X), conv_b(X)) → Relu: one conv takes the other's output as its residual."""
    g = GraphBuilder(6)
    x = g.input("X", ["N", 3, 6, 6])
    a = g.conv(x, 3, 4, name="conv_a", strides=[2, 2])
    b = g.conv(x, 3, 4, kernel=(1, 1), name="conv_b", strides=[2, 2])
    s = g.node("Add", [a, b], name="add")
    g.node("Relu", [s], ["Z"], name="relu")
    g.output("Z")
    m = g.model()
    out = fuse(m).model
    assert ops(out) == {"Conv": 1, "fuser::FusedConvAddRelu": 1}
    assert_equivalent(m, out)


# -- guards ----------------------------------------------------------------------------------------

def assert_no_conv_fusion(m, want_ops: dict[str, int]) -> None:
    res = fuse(m)
    assert not [p for p in (f.pattern for f in res.fusions) if p.startswith("conv_") and not p.endswith("_fold")]
    assert ops(res.model) == want_ops
    assert_equivalent(m, res.model)


@pytest.mark.parametrize("r_shape", [[1, 4, 1, 1], ["N", 4, 1, 1], [1, 4, 5, 5], [4, 5, 5], [5]])
def test_guard_residual_broadcast(r_shape):
    g, m, _ = residual_model(r_shape=r_shape)
    assert_no_conv_fusion(m, {"Conv": 1, "Add": 1, "Relu": 1})


def test_guard_sum_of_three():
    g = GraphBuilder(7)
    x = g.input("X", ["N", 4, 5, 5])
    y = g.conv(x, 4, 4)
    s = g.node("Sum", [y, g.input("R", ["N", 4, 5, 5]), x], name="add")
    g.node("Relu", [s], ["Z"], name="act")
    g.output("Z")
    assert_no_conv_fusion(g.model(), {"Conv": 1, "Sum": 1, "Relu": 1})


def test_guard_add_of_conv_output_with_itself():
    g = GraphBuilder(8)
    y = g.conv(g.input("X", ["N", 4, 5, 5]), 4, 4)
    s = g.node("Add", [y, y], name="add")
    g.node("Relu", [s], ["Z"], name="act")
    g.output("Z")
    assert_no_conv_fusion(g.model(), {"Conv": 1, "Add": 1, "Relu": 1})


def test_guard_residual_without_activation_is_left_alone():
    g = GraphBuilder(9)
    y = g.conv(g.input("X", ["N", 4, 5, 5]), 4, 4)
    g.node("Add", [y, g.input("R", ["N", 4, 5, 5])], ["Z"], name="add")
    g.output("Z")
    assert_no_conv_fusion(g.model(), {"Conv": 1, "Add": 1})


def test_guard_activation_input_has_extra_consumer():
    g = GraphBuilder(10)
    y = g.conv(g.input("X", ["N", 3, 5, 5]), 3, 4)
    g.node("Relu", [y], ["Z"], name="act")
    g.node("Sigmoid", [y], ["S"], name="other")
    g.output("Z")
    g.output("S")
    assert_no_conv_fusion(g.model(), {"Conv": 1, "Relu": 1, "Sigmoid": 1})


def test_guard_residual_sum_has_extra_consumer():
    g = GraphBuilder(11)
    y = g.conv(g.input("X", ["N", 4, 5, 5]), 4, 4)
    s = g.node("Add", [y, g.input("R", ["N", 4, 5, 5])], name="add")
    g.node("Relu", [s], ["Z"], name="act")
    g.node("Tanh", [s], ["T"], name="other")
    g.output("Z")
    g.output("T")
    assert_no_conv_fusion(g.model(), {"Conv": 1, "Add": 1, "Relu": 1, "Tanh": 1})


def test_guard_residual_sum_is_graph_output():
    g = GraphBuilder(12)
    y = g.conv(g.input("X", ["N", 4, 5, 5]), 4, 4)
    s = g.node("Add", [y, g.input("R", ["N", 4, 5, 5])], name="add")
    g.node("Relu", [s], ["Z"], name="act")
    g.output(s)
    g.output("Z")
    assert_no_conv_fusion(g.model(), {"Conv": 1, "Add": 1, "Relu": 1})


def test_guard_silu_input_has_third_consumer():
    g = GraphBuilder(13)
    y = g.conv(g.input("X", ["N", 3, 5, 5]), 3, 4)
    add_activation(g, "SiLU", y)
    g.node("Neg", [y], ["E"], name="extra")
    g.output("Z")
    g.output("E")
    assert_no_conv_fusion(g.model(), {"Conv": 1, "Sigmoid": 1, "Mul": 1, "Neg": 1})


def test_guard_silu_gate_has_extra_consumer():
    g = GraphBuilder(14)
    y = g.conv(g.input("X", ["N", 3, 5, 5]), 3, 4)
    add_activation(g, "SiLU", y)
    g.output("sig_y0")
    g.output("Z")
    assert_no_conv_fusion(g.model(), {"Conv": 1, "Sigmoid": 1, "Mul": 1})


def test_guard_not_a_silu_diamond():
    """Sigmoid(y) and Mul(y, other): two consumers but no x·sigmoid(x)."""
    g = GraphBuilder(15)
    y = g.conv(g.input("X", ["N", 3, 5, 5]), 3, 4)
    g.node("Sigmoid", [y], ["S"], name="sig")
    g.node("Mul", [y, g.input("G", ["N", 4, 5, 5])], ["Z"], name="mul")
    g.output("S")
    g.output("Z")
    assert_no_conv_fusion(g.model(), {"Conv": 1, "Sigmoid": 1, "Mul": 1})


@pytest.mark.parametrize("which", ["min", "max"])
def test_guard_clip_non_constant_bounds(which):
    g = GraphBuilder(16)
    y = g.conv(g.input("X", ["N", 3, 5, 5]), 3, 4)
    lo = g.input("lo", []) if which == "min" else g.const("lo", np.array(0.0, np.float32))
    hi = g.input("hi", []) if which == "max" else g.const("hi", np.array(6.0, np.float32))
    g.node("Clip", [y, lo, hi], ["Z"], name="act")
    g.output("Z")
    assert_no_conv_fusion(g.model(), {"Conv": 1, "Clip": 1})


def test_guard_conv_output_is_graph_output():
    g = GraphBuilder(17)
    y = g.conv(g.input("X", ["N", 3, 5, 5]), 3, 4)
    g.node("Relu", [y], ["Z"], name="act")
    g.output(y)
    g.output("Z")
    assert_no_conv_fusion(g.model(), {"Conv": 1, "Relu": 1})


@pytest.mark.parametrize("which", ["W", "B"])
def test_guard_weight_or_bias_is_graph_input(which):
    g = GraphBuilder(18)
    x = g.input("X", ["N", 3, 5, 5])
    w = g.input("Wt", [4, 3, 3, 3]) if which == "W" else g.weight("W", (4, 3, 3, 3))
    b = g.input("Bias", [4]) if which == "B" else g.weight("B", (4,))
    y = g.node("Conv", [x, w, b], name="conv", pads=[1, 1, 1, 1])
    g.node("Relu", [y], ["Z"], name="act")
    g.output("Z")
    assert_no_conv_fusion(g.model(), {"Conv": 1, "Relu": 1})


def test_convtranspose_activation_not_fused():
    g = GraphBuilder(19)
    y = g.conv(g.input("X", ["N", 3, 5, 5]), 3, 4, transpose=True)
    g.node("Relu", [y], ["Z"], name="act")
    g.output("Z")
    m = g.model()
    res = fuse(m)
    assert ops(res.model) == {"ConvTranspose": 1, "Relu": 1} and not fused_nodes(res.model)
    assert_equivalent(m, res.model)
