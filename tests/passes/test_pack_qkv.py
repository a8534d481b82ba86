"""pack_qkv: the Q/K/V projections of a fused attention node that share an input become one MatMul + Split."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from fuser.runtime import Session

from .builders import GraphBuilder, compare, feeds_for, fuse, ops, ort_outputs
from .test_attention import bert_attention, fused_attention


def _split(model: onnx.ModelProto) -> onnx.NodeProto:
    (split,) = [n for n in model.graph.node if n.op_type == "Split"]
    return split


def _split_sizes(model: onnx.ModelProto, split: onnx.NodeProto) -> list[int]:
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    if len(split.input) > 1:
        return [int(x) for x in inits[split.input[1]]]
    return list(next(a.ints for a in split.attribute if a.name == "split"))


def _fused_and_checked(m: onnx.ModelProto, feeds: dict, **kw) -> onnx.ModelProto:
    out = fuse(m, **kw).model
    ref = ort_outputs(m, feeds)
    compare(ref, ort_outputs(out, feeds), None, "onnxruntime")
    compare(ref, Session(out).run(None, feeds), None, "fuser.runtime")
    return out


@pytest.mark.parametrize("kw,sizes", [({}, [16, 16, 16]), ({"qk_hidden": 24, "v_hidden": 16}, [24, 24, 16]),
                                      ({"switch": True}, [16, 16, 16])],
                         ids=["bert", "varied_widths", "bias_first"])
def test_bert_projections_packed(kw, sizes):
    m, feeds = bert_attention(**kw)
    out = _fused_and_checked(m, feeds)
    assert ops(out)["MatMul"] == 2 and "Split" in ops(out)  # QKV packed, then the output projection
    assert ops(out)["Add"] == ops(fuse(m, skip=("pack_qkv",)).model)["Add"] - 2  # two bias Adds gone
    split = _split(out)
    assert _split_sizes(out, split) == sizes
    assert next(a.i for a in split.attribute if a.name == "axis") == -1
    # the packed MatMul keeps the Q projection's name; K's and V's are recorded as folded into it
    mm = next(n for n in out.graph.node if n.op_type == "MatMul" and n.name == "matmul_q")
    folded = next(p.value for p in mm.metadata_props if p.key == "fuser.folded")
    assert "matmul_k" in folded and "matmul_v" in folded


def test_skip_leaves_three_projections():
    m, feeds = bert_attention()
    out = _fused_and_checked(m, feeds, skip=("pack_qkv",))
    assert ops(out)["MatMul"] == 4 and "Split" not in ops(out)


def _bert_with(edit) -> tuple[onnx.ModelProto, dict]:
    """bert_attention with ``edit(graph_builder_model)`` applied to its ModelProto."""
    m, feeds = bert_attention()
    edit(m)
    onnx.checker.check_model(m)
    return m, feeds


def _node(m: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in m.graph.node if n.name == name)


def test_shared_weight_member_is_left_out():
    def edit(m):  # K's weight is also read by a second MatMul whose result is a graph output
        extra = onnx.helper.make_node("MatMul", ["ln_out", "k_w"], ["extra"], name="extra_mm")
        m.graph.node.append(extra)
        m.graph.output.append(onnx.helper.make_tensor_value_info("extra", onnx.TensorProto.FLOAT, [2, 5, 16]))

    m, feeds = _bert_with(edit)
    out = _fused_and_checked(m, feeds)
    assert _split_sizes(out, _split(out)) == [16, 16]  # Q and V only
    assert ops(out)["MatMul"] == 4  # QV packed, K, O, the extra one


def test_projection_output_used_elsewhere_is_left_out():
    def edit(m):  # V's biased projection is also a graph output
        m.graph.output.append(onnx.helper.make_tensor_value_info(_node(m, "add_v").output[0],
                                                                 onnx.TensorProto.FLOAT, [2, 5, 16]))

    m, feeds = _bert_with(edit)
    out = _fused_and_checked(m, feeds)
    # the Add's output stays a graph output: still correct, V's projection is not packed
    assert _split_sizes(out, _split(out)) == [16, 16]


def test_bias_on_some_members_only_packs_alike():
    def edit(m):  # V loses its bias Add: V = MatMul directly
        add_v = _node(m, "add_v")
        mm_out = _node(m, "matmul_v").output[0]
        for n in m.graph.node:
            for i, x in enumerate(n.input):
                if x == add_v.output[0]:
                    n.input[i] = mm_out
        m.graph.node.remove(add_v)

    m, feeds = _bert_with(edit)
    out = _fused_and_checked(m, feeds)
    assert _split_sizes(out, _split(out)) == [16, 16]


def cross_attention(seed: int = 0, opset: int = 17) -> tuple[onnx.ModelProto, dict]:
    """Q from x, K and V from a second sequence y: K and V pack, Q stays."""
    g = GraphBuilder(seed)
    b, sq, skv, hidden, heads = 2, 5, 7, 16, 2
    x = g.input("x", [b, sq, hidden])
    y = g.input("y", [b, skv, hidden])
    shape = g.const("shape", np.array([0, 0, heads, hidden // heads], np.int64))
    t = {}
    for name, src in (("q", x), ("k", y), ("v", y)):
        mm = g.node("MatMul", [src, g.weight(f"{name}_w", [hidden, hidden], -0.5, 0.5)], name=f"matmul_{name}")
        add = g.node("Add", [mm, g.weight(f"{name}_b", [hidden])], name=f"add_{name}")
        r = g.node("Reshape", [add, shape], name=f"reshape_{name}")
        t[name] = g.node("Transpose", [r], name=f"transpose_{name}", perm=[0, 2, 3, 1] if name == "k" else [0, 2, 1, 3])
    qk = g.node("MatMul", [t["q"], t["k"]], name="qk")
    sc = g.node("Mul", [qk, g.const("scale", np.array(0.35, np.float32))], name="scale")
    sm = g.node("Softmax", [sc], name="softmax", axis=-1)
    pv = g.node("MatMul", [sm, t["v"]], name="pv")
    tr = g.node("Transpose", [pv], name="merge", perm=[0, 2, 1, 3])
    g.node("Reshape", [tr, g.const("shape_out", np.array([0, 0, hidden], np.int64))], ["out"], name="reshape_out")
    g.output("out", [b, sq, hidden])
    m = g.model(opset=opset)
    return m, feeds_for(m)


def test_cross_attention_packs_k_and_v():
    m, feeds = cross_attention()
    out = _fused_and_checked(m, feeds)
    assert len(fused_attention(out)) == 1
    split = _split(out)
    assert _split_sizes(out, split) == [16, 16]
    packed_mm = next(n for n in out.graph.node if n.op_type == "MatMul" and n.input[0] == "y")
    assert packed_mm.name == "matmul_k"


def test_fused_model_fed_back_is_unchanged():
    m, feeds = bert_attention()
    once = fuse(m).model
    twice = fuse(once).model
    assert ops(twice) == ops(once)


@pytest.mark.parametrize("opset", [10, 11, 12, 13])
def test_split_form_follows_the_opset(opset):
    """Sizes an attribute before 13, an input from 13; the axis non-negative before 11 (X's rank is known)."""
    m, feeds = cross_attention(opset=opset)
    out = _fused_and_checked(m, feeds)
    if not fused_attention(out):
        pytest.skip(f"attention is not fused at opset {opset}")
    split = _split(out)
    assert (len(split.input) > 1) == (opset >= 13) and _split_sizes(out, split) == [16, 16]
    assert next(a.i for a in split.attribute if a.name == "axis") == (-1 if opset >= 11 else 2)
