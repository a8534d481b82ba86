"""conv_shortcut: a shortcut Add/Sum *after* a fused conv's activation (Darknet's order) → one
``fuser::FusedConv<Act>Add`` node; the op type, its body, provenance, every guard, and numerics against
onnxruntime on the original (``assert_equivalent`` also runs fuser.runtime's numpy reference)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from fuser.fused import FusedOpType, parse_op_type
from fuser.kernels.activations import ACTIVATIONS as KERNEL_ACTIVATIONS

from .builders import (
    GraphBuilder,
    assert_equivalent,
    assert_provenance,
    attrs,
    fuse,
    fused_nodes,
    ops,
    patterns,
    props,
    the_fused,
)
from .test_conv_activation import add_activation


def shortcut_model(kind: str = "LeakyRelu", op: str = "Add", conv_first: bool = True, r_shape=None,
                   dtype=np.float32, opset: int = 13, seed: int = 0, identity: bool = False):
    """X ─► Conv ─► act ─► z;  out = op(z, R) (or op(R, z)); R a graph input, or X itself (``identity``)."""
    g = GraphBuilder(seed, dtype)
    x = g.input("X", ["N", 4, 5, 5])
    y = g.conv(x, 4, 4)
    names = add_activation(g, kind, y, out="z")
    r = x if identity else g.input("R", r_shape or ["N", 4, 5, 5])
    g.node(op, ["z", r] if conv_first else [r, "z"], ["S"], name="add")
    g.output("S")
    return g.model(opset=opset), names


def assert_not_shortcut_fused(m, want_ops: dict[str, int]) -> None:
    res = fuse(m)
    assert "conv_shortcut" not in res.pass_counts
    assert not [p for p in patterns(res) if p.endswith("_add") and p.startswith("conv_")]
    assert ops(res.model) == want_ops
    assert_equivalent(m, res.model)


# -- the op type -------------------------------------------------------------------------------------------

def test_op_type_names_round_trip_and_do_not_collide():
    seen = set()
    for act in KERNEL_ACTIVATIONS:
        for residual, after in ((False, False), (True, False), (True, True)):
            if after and not act:
                continue
            ft = FusedOpType("Conv", act, residual, residual_after=after)
            assert parse_op_type(ft.name) == ft
            assert ft.name not in seen
            seen.add(ft.name)
    assert parse_op_type("FusedConvLeakyReluAdd") == FusedOpType("Conv", "LeakyRelu", True, residual_after=True)
    assert parse_op_type("FusedConvAddRelu") == FusedOpType("Conv", "Relu", True)
    assert parse_op_type("FusedConvRelu") == FusedOpType("Conv", "Relu")
    assert parse_op_type("FusedConvAdd") == FusedOpType("Conv", "", True)  # no activation: one order
    assert parse_op_type("FusedConvHardSigmoidAdd").activation == "HardSigmoid"
    for bad in ("FusedConvAddReluAdd", "FusedConvReluAddAdd", "FusedBatchNormReluAdd", "FusedBatchNormAddRelu",
                "FusedConvMishAdd"):
        assert parse_op_type(bad) is None, bad
    with pytest.raises(ValueError):
        FusedOpType("Conv", "", True, residual_after=True)
    with pytest.raises(ValueError):
        FusedOpType("Conv", "Relu", False, residual_after=True)
    with pytest.raises(ValueError):
        FusedOpType("BatchNorm", "Relu", True, residual_after=True)


@pytest.mark.parametrize("opset", [9, 13])
def test_function_body_is_conv_activation_then_add(opset):
    ft = FusedOpType("Conv", "Clip", True, residual_after=True)
    f = ft.function(opset)
    assert [n.op_type for n in f.node] == ["Conv", "Clip", "Add"]
    assert list(f.node[-1].input) == [f.node[1].output[0], "R"] and list(f.node[-1].output) == ["Y"]
    assert list(f.input) == (["X", "W", "B", "R"] + (["clip_min", "clip_max"] if opset >= 11 else []))
    assert "Clip + shortcut Add" in f.doc_string


# -- fusing --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["Add", "Sum"])
@pytest.mark.parametrize("conv_first", [True, False], ids=["z-first", "r-first"])
def test_shortcut_add_fuses(op, conv_first):
    m, names = shortcut_model(op=op, conv_first=conv_first)
    res = fuse(m)
    out = res.model
    assert ops(out) == {"fuser::FusedConvLeakyReluAdd": 1}
    f = the_fused(out)
    assert list(f.input) == ["X", "conv.W", "conv.B", "R"] and list(f.output) == ["S"]
    a = attrs(f)
    assert a["activation"] == "LeakyRelu" and np.isclose(a["alpha"], 0.2) and a["pads"] == [1, 1, 1, 1]
    assert a["kernel"] == "conv" and a["tactic"] == "auto"
    assert_provenance(out, f, "conv_leakyrelu_add", ["conv", *names, "add"])
    assert res.pass_counts == {"conv_activation": 1, "conv_shortcut": 1}
    assert [r.pattern for r in res.fusions] == ["conv_leakyrelu_add"]  # the FusedConvLeakyRelu record gave way
    fn = next(fn for fn in out.functions if fn.name == "FusedConvLeakyReluAdd")
    assert [n.op_type for n in fn.node] == ["Conv", "LeakyRelu", "Add"]
    assert_equivalent(m, out)


def test_identity_shortcut_is_the_conv_input():
    m, _ = shortcut_model(identity=True)
    out = fuse(m).model
    f = the_fused(out)
    assert f.op_type == "FusedConvLeakyReluAdd" and list(f.input) == ["X", "conv.W", "conv.B", "X"]
    assert_equivalent(m, out)


@pytest.mark.parametrize("kind,opset,act", [
    ("Relu", 13, "Relu"), ("ClipInputs", 13, "Clip"), ("ClipAttrs", 9, "Clip"), ("Sigmoid", 13, "Sigmoid"),
    ("HardSigmoid", 13, "HardSigmoid"), ("HardSwish", 14, "HardSwish"), ("Tanh", 13, "Tanh"), ("SiLU", 13, "SiLU"),
])
def test_every_activation(kind, opset, act):
    m, names = shortcut_model(kind, opset=opset, seed=len(kind))
    out = fuse(m).model
    f = the_fused(out)
    assert f.op_type == f"FusedConv{act}Add"
    assert list(f.input[:4]) == ["X", "conv.W", "conv.B", "R"]
    assert len(f.input) == (6 if act == "Clip" and opset >= 11 else 4)  # the clip bounds come after R
    assert_provenance(out, f, f"conv_{act.lower()}_add", ["conv", *names, "add"])
    assert_equivalent(m, out)


@pytest.mark.parametrize("kind,opset", [("LeakyRelu", 13), ("ClipInputs", 13), ("SiLU", 13)])
def test_fp16(kind, opset):
    m, _ = shortcut_model(kind, dtype=np.float16, opset=opset, seed=3)
    out = fuse(m).model
    f = the_fused(out)
    assert f.op_type.endswith("Add") and f.input[3] == "R"
    assert out.graph.input[0].type.tensor_type.elem_type == 10
    assert_equivalent(m, out, tol=1e-2)


def test_darknet_blocks_with_bn():
    """Two Darknet residual blocks (1x1 halves the channels, 3x3 restores them; Conv+BN+LeakyRelu each):
    each block's second conv takes its Add, the block input is its shortcut; BN folds first."""
    g = GraphBuilder(4)
    x = g.input("X", ["N", 8, 6, 6])
    for i in range(2):
        y = g.node("LeakyRelu", [g.bn(g.conv(x, 8, 4, kernel=(1, 1), name=f"b{i}.c1"), 4, name=f"b{i}.bn1")],
                   name=f"b{i}.act1", alpha=0.1)
        y = g.node("LeakyRelu", [g.bn(g.conv(y, 4, 8, name=f"b{i}.c2"), 8, name=f"b{i}.bn2")],
                   name=f"b{i}.act2", alpha=0.1)
        x = g.node("Add", [y, x], ["Y"] if i == 1 else 1, name=f"b{i}.add")
    g.output("Y")
    m = g.model()
    res = fuse(m)
    out = res.model
    assert ops(out) == {"fuser::FusedConvLeakyRelu": 2, "fuser::FusedConvLeakyReluAdd": 2}
    f = next(n for n in fused_nodes(out) if n.name.startswith("b1.c2"))
    assert_provenance(out, f, "conv_leakyrelu_add", ["b1.c2", "b1.act2", "b1.add"])
    assert props(f)["fuser.folded"] == '["b1.bn2"]'
    assert sorted(patterns(res)).count("conv_leakyrelu_add") == 2
    assert_equivalent(m, out)


def test_conv_fused_by_an_earlier_run():
    """A model fused without this pass, fed back in: the FusedConvLeakyRelu it has takes its Add now."""
    m, names = shortcut_model()
    first = fuse(m, skip=("conv_shortcut",)).model
    assert ops(first) == {"fuser::FusedConvLeakyRelu": 1, "Add": 1}
    res = fuse(first)
    f = the_fused(res.model)
    assert f.op_type == "FusedConvLeakyReluAdd"
    assert_provenance(res.model, f, "conv_leakyrelu_add", ["+".join(["conv", *names]), "add"])
    assert_equivalent(m, res.model)


def test_idempotent():
    m, _ = shortcut_model()
    first = fuse(m)
    second = fuse(first.model)
    assert second.fusions == [] and ops(second.model) == ops(first.model)
    assert_equivalent(m, second.model)


def test_skip_leaves_the_add():
    m, _ = shortcut_model()
    assert ops(fuse(m, skip=("conv_shortcut",)).model) == {"fuser::FusedConvLeakyRelu": 1, "Add": 1}


def test_target_onnx_inlines_conv_activation_add():
    m, _ = shortcut_model("ClipInputs")
    out = fuse(m, target="onnx").model
    assert not fused_nodes(out) and not out.functions
    assert [(n.op_type, n.name) for n in out.graph.node] == [
        ("Conv", "conv+act+add/Conv"), ("Clip", "conv+act+add/Clip"), ("Add", "conv+act+add/Add")]
    assert list(out.graph.node[-1].output) == ["S"]
    assert_equivalent(m, out)


# -- guards --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("r_shape", [[1, 4, 1, 1], ["N", 4, 1, 1], [1, 4, 5, 5], [4, 5, 5], [5], ["M", 4, 5, 5]])
def test_guard_broadcast_residual(r_shape):
    m, _ = shortcut_model(r_shape=r_shape)
    assert_not_shortcut_fused(m, {"fuser::FusedConvLeakyRelu": 1, "Add": 1})


def test_guard_add_of_the_conv_output_with_itself():
    g = GraphBuilder(5)
    y = g.conv(g.input("X", ["N", 4, 5, 5]), 4, 4)
    z = g.node("Relu", [y], name="act")
    g.node("Add", [z, z], ["S"], name="add")
    g.output("S")
    assert_not_shortcut_fused(g.model(), {"fuser::FusedConvRelu": 1, "Add": 1})


def test_guard_conv_output_has_two_consumers():
    g = GraphBuilder(6)
    y = g.conv(g.input("X", ["N", 4, 5, 5]), 4, 4)
    z = g.node("Relu", [y], name="act")
    g.node("Add", [z, g.input("R", ["N", 4, 5, 5])], ["S"], name="add")
    g.node("Neg", [z], ["T"], name="other")
    g.output("S")
    g.output("T")
    assert_not_shortcut_fused(g.model(), {"fuser::FusedConvRelu": 1, "Add": 1, "Neg": 1})


def test_guard_conv_output_is_a_graph_output():
    g = GraphBuilder(7)
    y = g.conv(g.input("X", ["N", 4, 5, 5]), 4, 4)
    g.node("Relu", [y], ["Z"], name="act")
    g.node("Add", ["Z", g.input("R", ["N", 4, 5, 5])], ["S"], name="add")
    g.output("Z")
    g.output("S")
    assert_not_shortcut_fused(g.model(), {"fuser::FusedConvRelu": 1, "Add": 1})


def test_guard_pre_activation_residual_is_not_fused_again():
    """FusedConvAddRelu (ResNet's) followed by another Add: the kernel takes one residual."""
    g = GraphBuilder(8)
    x = g.input("X", ["N", 4, 5, 5])
    s = g.node("Add", [g.conv(x, 4, 4), x], name="res")
    z = g.node("Relu", [s], name="act")
    g.node("Add", [z, g.input("R", ["N", 4, 5, 5])], ["S"], name="add")
    g.output("S")
    assert_not_shortcut_fused(g.model(), {"fuser::FusedConvAddRelu": 1, "Add": 1})


def test_guard_no_activation():
    """Conv + Add alone is a residual before (no) activation: conv_activation leaves it, so does this pass."""
    g = GraphBuilder(9)
    y = g.conv(g.input("X", ["N", 4, 5, 5]), 4, 4)
    g.node("Add", [y, g.input("R", ["N", 4, 5, 5])], ["S"], name="add")
    g.output("S")
    assert_not_shortcut_fused(g.model(), {"Conv": 1, "Add": 1})


def test_guard_constant_residual():
    g = GraphBuilder(10)
    y = g.conv(g.input("X", [1, 4, 5, 5]), 4, 4)
    z = g.node("Relu", [y], name="act")
    g.node("Add", [z, g.weight("table", (1, 4, 5, 5))], ["S"], name="add")
    g.output("S")
    assert_not_shortcut_fused(g.model(), {"fuser::FusedConvRelu": 1, "Add": 1})


def test_guard_sum_of_three():
    g = GraphBuilder(11)
    x = g.input("X", ["N", 4, 5, 5])
    z = g.node("Relu", [g.conv(x, 4, 4)], name="act")
    g.node("Sum", [z, g.input("R", ["N", 4, 5, 5]), x], ["S"], name="add")
    g.output("S")
    assert_not_shortcut_fused(g.model(), {"fuser::FusedConvRelu": 1, "Sum": 1})


def test_guard_not_an_add():
    g = GraphBuilder(12)
    z = g.node("Relu", [g.conv(g.input("X", ["N", 4, 5, 5]), 4, 4)], name="act")
    g.node("Mul", [z, g.input("R", ["N", 4, 5, 5])], ["S"], name="mul")
    g.output("S")
    assert_not_shortcut_fused(g.model(), {"fuser::FusedConvRelu": 1, "Mul": 1})


def test_guard_add_in_another_domain():
    g = GraphBuilder(13)
    z = g.node("Relu", [g.conv(g.input("X", ["N", 4, 5, 5]), 4, 4)], name="act")
    g.nodes.append(helper.make_node("Add", [z, g.input("R", ["N", 4, 5, 5])], ["S"], name="add", domain="custom"))
    g.output("S", ["N", 4, 5, 5])  # S's shape known: only the domain stands in the way
    m = g.model(extra_opsets={"custom": 1})
    res = fuse(m, check=False)
    assert "conv_shortcut" not in res.pass_counts
    assert ops(res.model) == {"fuser::FusedConvRelu": 1, "custom::Add": 1}


def test_guard_unknown_residual_shape():
    """R's shape unknown (no value info, nothing to infer it from): the Add might broadcast."""
    g = GraphBuilder(14)
    z = g.node("Relu", [g.conv(g.input("X", ["N", 4, 5, 5]), 4, 4)], name="act")
    r = g.node("Identity", [g.input("R", None)], name="rid")
    g.node("Add", [z, r], ["S"], name="add")
    g.output("S")
    res = fuse(g.model())
    assert "conv_shortcut" not in res.pass_counts
    assert ops(res.model) == {"fuser::FusedConvRelu": 1, "Identity": 1, "Add": 1}


@pytest.mark.parametrize("target", ["hip", "onnx"])
def test_visual_diff_maps_every_original_node(target):
    """The diff reads provenance only: Conv, BN (folded), LeakyRelu and Add all map to the one fused node
    (or, with --target onnx, to the standard ops it was inlined into)."""
    from fuser.visual.model import build_diff

    g = GraphBuilder(15)
    x = g.input("X", ["N", 4, 5, 5])
    y = g.node("LeakyRelu", [g.bn(g.conv(x, 4, 4), 4)], name="act", alpha=0.1)
    g.node("Add", [y, x], ["S"], name="add")
    g.output("S")
    m = g.model()
    d = build_diff(m, fuse(m, target=target).model)
    assert d.removed == [] and d.added == []
    (group,) = d.groups
    assert group.pattern == "conv_leakyrelu_add" and group.sources == [0, 1, 2, 3] and group.folded == [1]
    assert group.op_type == ("fuser::FusedConvLeakyReluAdd" if target == "hip" else "Conv+LeakyRelu+Add")
