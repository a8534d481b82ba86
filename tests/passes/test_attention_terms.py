"""attention_terms: a bias/mask term broadcast up to [B, 1, Sq, Skv] before the softmax is read small instead."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from .builders import GraphBuilder, fuse, ops
from .test_attention import check, fused_attention

B, H, S, D = 2, 2, 6, 8


def masked_attention(chain: str, layers: int = 1, seed: int = 3) -> tuple[onnx.ModelProto, dict]:
    """Q/K/V inputs [B, H, S, D] and an int padding mask [B, S], made into a term the way transformers does:

    - ``and_expand_where``: Unsqueeze → Cast(bool) → And(all-True [1, 1, S, S]) → Expand [B, 1, S, S] → Where(0, min)
    - ``expand_bias``: a float bias [B, 1, 1, S] (Sub/Mul of the mask) → Expand [B, 1, S, S] → Add
    - ``expand_bool_mask``: bool [B, 1, 1, S] → Expand [B, 1, S, S] → Where(mask, scores, -inf)
    - ``and_causal``: And with a lower-triangular constant (not an identity) → Expand → Where
    """
    g = GraphBuilder(seed)
    q, k, v = (g.input(n, [B, H, S, D]) for n in "QKV")
    mask = g.input("mask", [B, S], np.int64)
    u = g.node("Unsqueeze", [mask, g.const("axes", np.array([1, 2], np.int64))], name="unsq")
    full = g.const("full_shape", np.array([B, 1, S, S], np.int64))
    minf = g.const("minf", np.array(np.finfo(np.float32).min, np.float32))
    zero = g.const("zero", np.array(0.0, np.float32))
    if chain in ("and_expand_where", "and_causal"):
        keep = g.node("Cast", [u], name="to_bool", to=TensorProto.BOOL)
        const = np.ones((1, 1, S, S), bool) if chain == "and_expand_where" else np.tril(np.ones((1, 1, S, S), bool))
        both = g.node("And", [g.const("base", const), keep], name="and")
        e = g.node("Expand", [both, full], name="expand")
        term = g.node("Where", [e, zero, minf], name="to_bias")
    elif chain == "expand_bias":
        f = g.node("Cast", [u], name="to_float", to=TensorProto.FLOAT)
        sub = g.node("Sub", [g.const("one", np.array(1.0, np.float32)), f], name="sub")
        small = g.node("Mul", [sub, g.const("big", np.array(-1e4, np.float32))], name="mul")
        term = g.node("Expand", [small, full], name="expand")
    else:
        keep = g.node("Cast", [u], name="to_bool", to=TensorProto.BOOL)
        term = g.node("Expand", [keep, full], name="expand")
    x = q
    for layer in range(layers):
        kt = g.node("Transpose", [k], name=f"kt{layer}", perm=[0, 1, 3, 2])
        s = g.node("MatMul", [x, kt], name=f"qk{layer}")
        s = g.node("Mul", [s, g.const(f"scale{layer}", np.array(D ** -0.5, np.float32))], name=f"scale{layer}")
        if chain == "expand_bool_mask":
            s = g.node("Where", [term, s, g.const(f"ninf{layer}", np.array(-np.inf, np.float32))], name=f"mask{layer}")
        else:
            s = g.node("Add", [s, term], name=f"add_mask{layer}")
        p = g.node("Softmax", [s], name=f"softmax{layer}", axis=-1)
        x = g.node("MatMul", [p, v], name=f"pv{layer}")
    g.node("Identity", [x], ["Y"], name="out")
    g.output("Y", [B, H, S, D])
    m = g.model(opset=17)
    rng = np.random.default_rng(seed)
    feeds = {n: rng.standard_normal((B, H, S, D)).astype(np.float32) for n in "QKV"}
    mk = np.ones((B, S), np.int64)
    mk[1, -2:] = 0
    feeds["mask"] = mk
    return m, feeds


def _term_shape(out: onnx.ModelProto, node: onnx.NodeProto) -> list:
    m = onnx.shape_inference.infer_shapes(out)
    vi = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim] for v in m.graph.value_info}
    return vi.get(node.input[3])


@pytest.mark.parametrize("chain,op_type", [("and_expand_where", "FusedAttentionBias"),
                                           ("expand_bias", "FusedAttentionBias"),
                                           ("expand_bool_mask", "FusedAttentionMask")])
def test_broadcast_term_is_read_small(chain, op_type):
    m, feeds = masked_attention(chain)
    out = check(m, op_type, feeds)
    (node,) = fused_attention(out)
    assert _term_shape(out, node) == [B, 1, 1, S]
    assert "Expand" not in ops(out)


def test_non_identity_and_keeps_its_shape():
    m, feeds = masked_attention("and_causal")
    out = check(m, "FusedAttentionBias", feeds)
    (node,) = fused_attention(out)
    # Expand([1, 1, S, S] & [B, 1, 1, S]) is [B, 1, S, S] already: dropping only the Expand shrinks nothing
    assert _term_shape(out, node) == [B, 1, S, S]
    assert not any(n.name.endswith(".small") for n in out.graph.node)


def test_shared_term_is_rewritten_once_for_every_layer():
    m, feeds = masked_attention("and_expand_where", layers=2)
    out = check(m, "FusedAttentionBias", feeds, count=2)
    nodes = fused_attention(out)
    assert nodes[0].input[3] == nodes[1].input[3]
    assert sum(n.op_type == "Where" for n in out.graph.node) == 1  # one small Where, the full one gone


def test_skip_keeps_the_full_term():
    m, feeds = masked_attention("and_expand_where")
    out = fuse(m, skip=("attention_terms",)).model
    (node,) = fused_attention(out)
    assert _term_shape(out, node) == [B, 1, S, S] and "Expand" in ops(out)


def range_masked_attention(start: int = 0, bound: int = 0, op: str = "GreaterOrEqual", delta: int = 1):
    """transformers' bidirectional mask exported with dynamic shapes: the padding mask [B, 1, 1, S] (bool) And
    ``q_idx >= 0`` — ``op(Unsqueeze(Range(start, S, delta), [0, 1, 3]), bound)``, [1, 1, S, 1], S read from the
    mask's symbolic shape — then Where(0, min) as the additive bias (the default call: an identity that only
    broadcasts the term to [B, 1, S, S])."""
    g = GraphBuilder(5)
    q, k, v = (g.input(n, [B, H, S, D]) for n in "QKV")
    mask = g.input("mask", ["batch", "seq"], np.int64)
    keep = g.node("Cast", [g.node("Unsqueeze", [mask, g.const("axes", np.array([1, 2], np.int64))], name="unsq")],
                  name="to_bool", to=TensorProto.BOOL)
    seq = g.node("Gather", [g.node("Shape", [mask], name="shape"), g.const("one_i", np.array(1, np.int64))],
                 name="seq_len", axis=0)
    idx = g.node("Range", [g.const("start", np.array(start, np.int64)), seq,
                           g.const("delta", np.array(delta, np.int64))], name="q_idx")
    idx4 = g.node("Unsqueeze", [idx, g.const("axes3", np.array([0, 1, 3], np.int64))], name="q_idx4")
    cmp = g.node(op, [idx4, g.const("bound", np.array(bound, np.int64))], name="always")
    both = g.node("And", [keep, cmp], name="and")
    term = g.node("Where", [both, g.const("zero", np.array(0.0, np.float32)),
                            g.const("minf", np.array(np.finfo(np.float32).min, np.float32))], name="to_bias")
    kt = g.node("Transpose", [k], name="kt", perm=[0, 1, 3, 2])
    s = g.node("Mul", [g.node("MatMul", [q, kt], name="qk"), g.const("scale", np.array(D ** -0.5, np.float32))],
               name="scale_mul")
    p = g.node("Softmax", [g.node("Add", [s, term], name="add_mask")], name="softmax", axis=-1)
    g.node("MatMul", [p, v], ["Y"], name="pv")
    g.output("Y", [B, H, S, D])
    m = g.model(opset=17)
    rng = np.random.default_rng(5)
    feeds = {n: rng.standard_normal((B, H, S, D)).astype(np.float32) for n in "QKV"}
    mk = np.ones((B, S), np.int64)
    mk[1, -2:] = 0
    feeds["mask"] = mk
    return m, feeds


def test_computed_all_true_range_is_dropped():
    """``Range(0, S, 1) >= 0`` is True everywhere: the term is read as the padding mask's [B, 1, 1, S]."""
    m, feeds = range_masked_attention()
    out = check(m, "FusedAttentionBias", feeds)
    (node,) = fused_attention(out)
    shape = _term_shape(out, node)
    assert shape is not None and len(shape) == 4 and shape[1:3] == [1, 1], shape


@pytest.mark.parametrize("kw", [dict(bound=1), dict(op="Greater"), dict(op="LessOrEqual", bound=3)],
                         ids=["start_below_bound", "strict_at_start", "upper_bound"])
def test_range_compare_that_can_be_false_keeps_its_shape(kw):
    """A compare the range can fail (its start under the bound, strict at the start, R <= c) is a real mask over the
    query rows: the term keeps its [B, 1, S, S] broadcast (no `.small` term), and the result verifies."""
    m, feeds = range_masked_attention(**kw)
    out = check(m, "FusedAttentionBias", feeds)
    assert not any(n.name.endswith(".small") for n in out.graph.node)
