"""fold_affine: per-channel constant Mul / Div / Add / Sub after a Conv or ConvTranspose folded into its
weights and bias, and the guards that keep it from firing."""

from __future__ import annotations

import numpy as np
import pytest

from .builders import GraphBuilder, assert_equivalent, fuse, init, node, ops, patterns


def conv_then(op: str, c_shape, const_left: bool = False, bias: bool = True, transpose: bool = False,
              group: int = 1, dtype=np.float32, seed: int = 0, c_value=None):
    cin, cout = (4, 6) if group > 1 else (3, 4)
    g = GraphBuilder(seed, dtype)
    y = g.conv(g.input("X", ["N", cin, 5, 5]), cin, cout, group=group, bias=bias, transpose=transpose)
    c = g.const("c", c_value) if c_value is not None else g.weight("c", c_shape, 0.5, 2.0)
    g.node(op, [c, y] if const_left else [y, c], ["Z"], name=op.lower())
    g.output("Z")
    return g, g.model()


def vec(g: GraphBuilder, cout: int) -> np.ndarray:
    return np.broadcast_to(g.values["c"].astype(np.float64).reshape(-1), (cout,))


@pytest.mark.parametrize("op", ["Mul", "Div", "Add", "Sub"])
@pytest.mark.parametrize("c_shape", [(4, 1, 1), (1, 4, 1, 1), (1,), ()])
def test_conv_affine_folds(op, c_shape):
    g, m = conv_then(op, c_shape, seed=len(op) * 10 + len(c_shape))
    res = fuse(m)
    out = res.model
    assert ops(out) == {"Conv": 1}
    conv = node(out, "Conv")
    assert list(conv.output) == ["Z"]
    v = vec(g, 4)
    w64, b64 = g.values["conv.W"].astype(np.float64), g.values["conv.B"].astype(np.float64)
    if op in ("Mul", "Div"):
        f = v if op == "Mul" else 1.0 / v
        np.testing.assert_allclose(init(out, conv.input[1]), w64 * f[:, None, None, None], rtol=2e-7)
        np.testing.assert_allclose(init(out, conv.input[2]), b64 * f, rtol=2e-7)
    else:
        assert conv.input[1] == "conv.W"
        np.testing.assert_allclose(init(out, conv.input[2]), b64 + (v if op == "Add" else -v), rtol=2e-7)
    assert patterns(res) == [f"conv_{op.lower()}_fold"]
    assert res.fusions[0].source_nodes == ["conv", op.lower()]
    assert_equivalent(m, out)


@pytest.mark.parametrize("op", ["Mul", "Add"])
def test_constant_on_the_left_of_commutative_op(op):
    g, m = conv_then(op, (1, 4, 1, 1), const_left=True, seed=3)
    out = fuse(m).model
    assert ops(out) == {"Conv": 1}
    assert_equivalent(m, out)


def test_add_after_biasless_conv_creates_bias():
    g, m = conv_then("Add", (4, 1, 1), bias=False, seed=4)
    out = fuse(m).model
    conv = node(out, "Conv")
    assert ops(out) == {"Conv": 1} and len(conv.input) == 3
    np.testing.assert_array_equal(init(out, conv.input[2]), g.values["c"].reshape(-1))
    assert_equivalent(m, out)


def test_chain_mul_add_sub_div_folds_step_by_step():
    g = GraphBuilder(5)
    y = g.conv(g.input("X", ["N", 3, 5, 5]), 3, 4)
    for i, op in enumerate(["Mul", "Add", "Div", "Sub"]):
        y = g.node(op, [y, g.weight(f"c{i}", (4, 1, 1), 0.5, 2.0)], name=f"{op.lower()}")
    g.node("Relu", [y], ["Z"], name="relu")
    g.output("Z")
    m = g.model()
    res = fuse(m)
    assert ops(res.model) == {"fuser::FusedConvRelu": 1}
    assert patterns(res) == ["conv_mul_fold", "conv_add_fold", "conv_div_fold", "conv_sub_fold", "conv_relu"]
    assert_equivalent(m, res.model)


@pytest.mark.parametrize("op", ["Mul", "Add"])
def test_convtranspose_group_affine_folds(op):
    g, m = conv_then(op, (1, 6, 1, 1), transpose=True, group=2, seed=6)
    out = fuse(m).model
    assert ops(out) == {"ConvTranspose": 1}
    assert_equivalent(m, out)


def test_fp16_mul_folds():
    g, m = conv_then("Mul", (4, 1, 1), dtype=np.float16, seed=7)
    out = fuse(m).model
    assert ops(out) == {"Conv": 1}
    w = init(out, node(out, "Conv").input[1])
    assert w.dtype == np.float16
    want = (g.values["conv.W"].astype(np.float64) * vec(g, 4)[:, None, None, None]).astype(np.float16)
    np.testing.assert_array_equal(w, want)
    assert_equivalent(m, out, tol=1e-2)


def test_shared_weights_not_mutated_by_affine_fold():
    g = GraphBuilder(8)
    x = g.input("X", ["N", 3, 5, 5])
    w, b = g.weight("W", (4, 3, 3, 3)), g.weight("B", (4,))
    ya = g.node("Conv", [x, w, b], name="convA", pads=[1, 1, 1, 1])
    g.node("Mul", [ya, g.weight("c", (4, 1, 1))], ["ZA"], name="mul")
    g.node("Conv", [x, w, b], ["ZB"], name="convB", pads=[1, 1, 1, 1])
    g.output("ZA")
    g.output("ZB")
    m = g.model()
    out = fuse(m).model
    assert ops(out) == {"Conv": 2}
    assert list(next(n for n in out.graph.node if n.name == "convB").input) == ["X", "W", "B"]
    np.testing.assert_array_equal(init(out, "W"), g.values["W"])
    np.testing.assert_array_equal(init(out, "B"), g.values["B"])
    assert_equivalent(m, out)


# -- guards --------------------------------------------------------------------------------------------

def assert_not_folded(res, m, op: str) -> None:
    out = res.model
    assert not [p for p in patterns(res) if p.startswith("conv_") and p.endswith("_fold")], patterns(res)
    assert ops(out).get(op) == 1
    conv = next(n for n in out.graph.node if n.op_type in ("Conv", "ConvTranspose"))
    for name in conv.input[1:]:
        if name in {t.name for t in m.graph.initializer}:
            np.testing.assert_array_equal(init(out, name), init(m, name))
    assert_equivalent(m, out)


@pytest.mark.parametrize("c_shape", [(1, 1, 5, 5), (1, 1, 1, 5), (5,), (5, 5), (4, 5, 5)])
@pytest.mark.parametrize("op", ["Mul", "Add"])
def test_guard_spatial_broadcast(op, c_shape):
    g, m = conv_then(op, c_shape, seed=9)
    assert_not_folded(fuse(m), m, op)


@pytest.mark.parametrize("op", ["Sub", "Div"])
def test_guard_constant_on_the_left_of_sub_div(op):
    g, m = conv_then(op, (4, 1, 1), const_left=True, seed=10)
    assert_not_folded(fuse(m), m, op)


def test_guard_div_by_zero_channel():
    c = np.array([1.5, 0.0, -2.0, 0.5], np.float32).reshape(4, 1, 1)
    g, m = conv_then("Div", None, c_value=c, seed=11)
    assert_not_folded(fuse(m), m, "Div")


def test_guard_conv_output_two_consumers():
    g = GraphBuilder(12)
    y = g.conv(g.input("X", ["N", 3, 5, 5]), 3, 4)
    g.node("Mul", [y, g.weight("c", (4, 1, 1))], ["Z"], name="mul")
    g.node("Sigmoid", [y], ["S"], name="sig")
    g.output("Z")
    g.output("S")
    m = g.model()
    assert_not_folded(fuse(m), m, "Mul")


def test_guard_conv_output_is_graph_output():
    g = GraphBuilder(13)
    y = g.conv(g.input("X", ["N", 3, 5, 5]), 3, 4)
    g.node("Add", [y, g.weight("c", (4, 1, 1))], ["Z"], name="add")
    g.output(y)
    g.output("Z")
    m = g.model()
    assert_not_folded(fuse(m), m, "Add")


@pytest.mark.parametrize("which", ["W", "B", "c"])
def test_guard_non_constant_operand(which):
    g = GraphBuilder(14)
    x = g.input("X", ["N", 3, 5, 5])
    w = g.input("Wt", [4, 3, 3, 3]) if which == "W" else g.weight("conv.W", (4, 3, 3, 3))
    b = g.input("Bias", [4]) if which == "B" else g.weight("conv.B", (4,))
    y = g.node("Conv", [x, w, b], name="conv", pads=[1, 1, 1, 1])
    c = g.input("scale", [4, 1, 1]) if which == "c" else g.weight("c", (4, 1, 1))
    g.node("Mul", [y, c], ["Z"], name="mul")
    g.output("Z")
    m = g.model()
    assert_not_folded(fuse(m), m, "Mul")
