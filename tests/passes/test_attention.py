"""attention: every scaled-dot-product attention block → one ``fuser::FusedAttention<Variant>`` node.

The first group ports the subgraph *patterns* of onnxruntime's attention-fusion test generators
(``bert_model_generator``: BERT with Div scale and the (1 - mask) * -10000 mask, reversed Add inputs, pruned
and varied Q/K/V widths, pre-LayerNorm, tf2onnx's 3-D Einsum form; ``gpt2_model_generator``: fused QKV Split,
past K/V Concat, the causal Where on a sliced uint8 tril buffer then the padding Add, the Gemm projection;
``bart_model_generator``: the SDPA decomposition with √scale on Q and on a Reshape-Transpose-Reshape Kᵀ,
Where(mask, 0, -1e9), the IsNaN guard; ``qwen3_model_generator``: RMSNorm, QK-norm, rotary embedding),
written here from scratch. onnxruntime's own optimizer needs ``num_heads``/``hidden_size`` for these; here
nothing is given. Then the guards, the standard Attention op as input, opsets before 15, fp16 with the
softmax upcast, rank-3 attention, the Swin window view, --target onnx and idempotence.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fuser.pipeline import run_pipeline

from .builders import GraphBuilder, assert_equivalent, attrs, compare, feeds_for, fuse, ops, ort_outputs, props

FUSED = "fuser::FusedAttention"


def attention_ops(model: onnx.ModelProto) -> dict[str, int]:
    return {k: v for k, v in ops(model).items() if "Attention" in k or k == "Softmax"}


def fused_attention(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.domain == "fuser" and n.op_type.startswith("FusedAttention")]


def check(m: onnx.ModelProto, op_type: str, feeds: dict | None = None, count: int = 1, tol: float | None = None,
          **kw) -> onnx.ModelProto:
    """Fuse ``m``: exactly ``count`` fused attention nodes of ``op_type``, no Softmax/Attention left, and
    the same outputs in onnxruntime and in fuser.runtime (the numpy reference) as the original."""
    res = fuse(m, **kw)
    out = res.model
    found = fused_attention(out)
    assert [n.op_type for n in found] == [op_type] * count, attention_ops(out)
    assert not any(n.op_type in ("Softmax", "Attention") for n in out.graph.node), attention_ops(out)
    if feeds is None:
        feeds = feeds_for(m)
    ref = ort_outputs(m, feeds)
    compare(ref, ort_outputs(out, feeds), tol, "onnxruntime")
    from fuser.runtime import Session

    compare(ref, Session(out).run(None, feeds), tol, "fuser.runtime")
    return out


def mask_feed(shape, dtype=np.int64, seed=0) -> np.ndarray:
    m = np.ones(shape, dtype=dtype)
    m[..., -2:] = 0
    m[0, ...] = 1
    return m


# -- onnxruntime generator patterns --------------------------------------------------------------------------

def bert_attention(hidden=16, heads=2, qk_hidden=16, v_hidden=16, switch=False, float_mask=False, pre_ln=False,
                   opset=17, seed=0) -> tuple[onnx.ModelProto, dict]:
    """onnxruntime's create_bert_attention pattern: Reshape [0, 0, H, d] + Transpose (0,2,1,3) / (0,2,3,1),
    Div by √d, mask Unsqueeze ×2 → Cast → Sub(1, ·) → Mul(-10000), Add, Softmax(axis=3), P·V, Transpose,
    Reshape, output projection, skip Add, LayerNormalization."""
    g = GraphBuilder(seed)
    b, s = 2, 5

    def order(xs):
        return list(reversed(xs)) if switch else xs

    x = g.input("input_1", [b, s, hidden])
    if pre_ln:
        ln_in = x
    else:
        ln_in = g.node("Add", [x, g.input("input_2", [b, s, hidden])], ["ln_input"], name="add_ln")
    ln = g.node("LayerNormalization", [ln_in, g.weight("ln_w", [hidden], 0.5, 1.5), g.weight("ln_b", [hidden])],
                ["ln_out"], name="layernorm", axis=-1, epsilon=1e-5)
    dq, dv = qk_hidden // heads, v_hidden // heads
    shape_qk = g.const("shape_qk", np.array([0, 0, heads, dq], np.int64))
    shape_v = g.const("shape_v", np.array([0, 0, heads, dv], np.int64))
    heads_out = {}
    for name, width, shape, perm in (("q", qk_hidden, shape_qk, [0, 2, 1, 3]), ("k", qk_hidden, shape_qk, [0, 2, 3, 1]),
                                     ("v", v_hidden, shape_v, [0, 2, 1, 3])):
        mm = g.node("MatMul", [ln, g.weight(f"{name}_w", [hidden, width], -0.5, 0.5)], name=f"matmul_{name}")
        add = g.node("Add", order([mm, g.weight(f"{name}_b", [width])]), name=f"add_{name}")
        r = g.node("Reshape", [add, shape], name=f"reshape_{name}")
        heads_out[name] = g.node("Transpose", [r], name=f"transpose_{name}", perm=perm)
    mask = g.input("input_mask", [b, s], np.float32 if float_mask else np.int64)
    u0 = g.node("Unsqueeze", [mask, g.const("axes_1", np.array([1], np.int64))], name="unsqueeze0")
    u1 = g.node("Unsqueeze", [u0, g.const("axes_2", np.array([2], np.int64))], name="unsqueeze1")
    mf = u1 if float_mask else g.node("Cast", [u1], name="cast", to=TensorProto.FLOAT)
    sub = g.node("Sub", [g.const("one", np.array(1.0, np.float32)), mf], name="sub")
    mm_mask = g.node("Mul", [sub, g.const("minus_10000", np.array(-10000.0, np.float32))], name="mul_mask")
    qk = g.node("MatMul", [heads_out["q"], heads_out["k"]], name="matmul_qk")
    div = g.node("Div", [qk, g.const("sqrt_d", np.array(math.sqrt(dq), np.float32))], name="div_qk")
    add = g.node("Add", order([div, mm_mask]), name="add_qk")
    sm = g.node("Softmax", [add], name="softmax_qk", axis=3)
    pv = g.node("MatMul", [sm, heads_out["v"]], name="matmul_qkv")
    t = g.node("Transpose", [pv], name="transpose_qkv", perm=[0, 2, 1, 3])
    r = g.node("Reshape", [t, g.const("shape_out", np.array([0, 0, v_hidden], np.int64))], name="reshape_qkv")
    o = g.node("MatMul", [r, g.weight("o_w", [v_hidden, hidden], -0.5, 0.5)], name="matmul_o")
    o = g.node("Add", order([o, g.weight("o_b", [hidden])]), name="add_o")
    skip = g.node("Add", order([o, ln]), name="add_skip")
    g.node("LayerNormalization", [skip, "ln_w", "ln_b"], ["output"], name="layernorm2", axis=-1, epsilon=1e-5)
    g.output("output", [b, s, hidden])
    feeds = feeds_for(g.model(opset=opset))
    feeds["input_mask"] = mask_feed((b, s), np.float32 if float_mask else np.int64)
    return g.model(opset=opset), feeds


@pytest.mark.parametrize("kw", [{}, {"switch": True}, {"qk_hidden": 8, "v_hidden": 8},
                                {"qk_hidden": 24, "v_hidden": 16}, {"float_mask": True}, {"pre_ln": True}],
                         ids=["bert", "reverse_add_order", "pruned", "varied_qkv", "float_mask", "pre_ln"])
def test_bert_attention(kw):
    m, feeds = bert_attention(**kw)
    out = check(m, "FusedAttentionBias", feeds)
    f = fused_attention(out)[0]
    a = attrs(f)
    heads, dq = 2, kw.get("qk_hidden", 16) // 2
    assert a["num_heads"] == heads and a["kv_num_heads"] == heads and a["mask_kind"] == "bias"
    assert np.isclose(a["scale"], 1 / math.sqrt(dq)) and a["softmax_precision"] == TensorProto.FLOAT
    assert a["kernel"] == "attention" and a["causal"] == 0
    # K's (0,2,3,1) Transpose now gives K itself: (0,2,1,3); Q/K/V projections stay outside
    perms = sorted(tuple(attrs(n)["perm"]) for n in out.graph.node if n.op_type == "Transpose")
    assert perms == [(0, 2, 1, 3)] * 4
    assert ops(out)["MatMul"] == 2 and ops(out)["Split"] == 1  # Q/K/V packed into one (pack_qkv), then O
    p = props(f)
    assert p["fuser.pattern"] == "attention" and "softmax_qk" in p["fuser.source_nodes"]
    assert "matmul_qk" in f.name or "+" in f.name


def tf2onnx_einsum_attention(hidden=16, heads=4, d=4) -> tuple[onnx.ModelProto, dict]:
    """create_tf2onnx_attention_3d: Einsum projections to [B, S, H, d], K scaled, QK Einsum
    "aecd,abcd->acbe", Softmax(axis=3), PV Einsum "acbe,aecd->abcd", output Einsum."""
    g = GraphBuilder(3)
    b, s = 1, 3
    x = g.node("Add", [g.input("input_1", [b, s, hidden]), g.input("input_2", [b, s, hidden])], name="add_ln")
    ln = g.node("LayerNormalization", [x, g.weight("ln_w", [hidden], 0.5, 1.5), g.weight("ln_b", [hidden])],
                name="layernorm", axis=-1)
    proj = {}
    for n in "qkv":
        e = g.node("Einsum", [ln, g.weight(f"{n}_w", [hidden, heads, d], -0.5, 0.5)], name=f"einsum_{n}",
                   equation="abc,cde->abde")
        proj[n] = g.node("Add", [e, g.weight(f"{n}_b", [heads, d])], name=f"add_{n}")
    k = g.node("Mul", [proj["k"], g.const("k_scale", np.array([0.125], np.float32))], name="mul_k")
    mask = g.input("input_mask", [b, s], np.int64)
    u = g.node("Unsqueeze", [mask, g.const("axes", np.array([1, 2], np.int64))], name="unsqueeze0")
    sl = g.node("Slice", [u, g.const("st", np.zeros(4, np.int32)), g.const("en", np.full(4, 10 ** 9, np.int32)),
                          g.const("ax", np.arange(4, dtype=np.int32)), g.const("sp", np.ones(4, np.int32))],
                name="slice")
    c = g.node("Cast", [sl], name="cast", to=TensorProto.FLOAT)
    sub = g.node("Sub", [g.const("one", np.array([1.0], np.float32)), c], name="sub")
    mk = g.node("Mul", [sub, g.const("neg", np.array([-10000.0], np.float32))], name="mul_mask")
    qk = g.node("Einsum", [proj["q"], k], name="einsum_qk", equation="aecd,abcd->acbe")
    add = g.node("Add", [qk, mk], name="add_qk")
    sm = g.node("Softmax", [add], name="softmax_qk", axis=3)
    pv = g.node("Einsum", [sm, proj["v"]], name="einsum_qkv_1", equation="acbe,aecd->abcd")
    o = g.node("Einsum", [pv, g.weight("o_w", [heads, d, hidden], -0.5, 0.5)], name="einsum_qkv_2",
               equation="abcd,cde->abe")
    g.node("Add", [o, ln], ["output"], name="add_skip")
    g.output("output", [b, s, hidden])
    m = g.model(opset=17)
    feeds = feeds_for(m)
    feeds["input_mask"] = np.array([[1, 1, 0]], np.int64)
    return m, feeds


def test_tf2onnx_einsum_attention():
    m, feeds = tf2onnx_einsum_attention()
    out = check(m, "FusedAttentionBias", feeds)
    assert not any(n.op_type == "Einsum" and "acbe" in attrs(n)["equation"] for n in out.graph.node)
    assert attrs(fused_attention(out)[0])["num_heads"] == 4


def gpt2_attention(hidden=16, heads=4, past=True, switch=False, add_cast=False, max_seq=32, opset=17):
    """create_gpt2_attention pattern: LN → MatMul+Add → Split q/k/v → Reshape [0,0,H,d] → Transpose; past
    Split/Squeeze + Concat(axis -2), Kᵀ = Transpose(0,1,3,2) of the concatenation, present; causal Where on a
    uint8 tril buffer Sliced by [Skv-Sq, Skv) → Cast(bool), Div(√d), Add of the (1 - mask) * -10000 padding
    mask, Softmax, P·V, Transpose, Reshape, Gemm. ``add_cast``: Cast(float) around the scores."""
    g = GraphBuilder(5)
    d = hidden // heads
    b, s, ps = 2, 3, 2 if past else 0

    def order(xs):
        return list(reversed(xs)) if switch else xs

    x = g.node("Add", [g.input("input_1", [b, s, hidden]), g.input("input_2", [b, s, hidden])], ["ln_in"],
               name="add_ln")
    ln = g.node("LayerNormalization", [x, g.weight("ln_w", [hidden], 0.5, 1.5), g.weight("ln_b", [hidden])],
                name="layernorm", axis=-1)
    fc = g.node("MatMul", [ln, g.weight("fc_w", [hidden, 3 * hidden], -0.5, 0.5)], name="matmul_fc")
    fc = g.node("Add", order([fc, g.weight("fc_b", [3 * hidden])]), name="add_fc")
    q, k, v = g.node("Split", [fc, g.const("split", np.array([hidden] * 3, np.int64))], 3, name="split_qkv", axis=2)
    shape = g.const("shape_x", np.array([0, 0, heads, d], np.int64))
    th = {}
    for n, t in (("q", q), ("k", k), ("v", v)):
        th[n] = g.node("Transpose", [g.node("Reshape", [t, shape], name=f"reshape_{n}")], name=f"transpose_{n}",
                       perm=[0, 2, 1, 3])
    if past:
        pk, pv = g.node("Split", [g.input("past", [2, b, heads, ps, d]), g.const("s11", np.array([1, 1], np.int64))],
                        2, name="split_past", axis=0)
        ax0 = g.const("axes_0", np.array([0], np.int64))
        pk = g.node("Squeeze", [pk, ax0], name="squeeze_k")
        pv = g.node("Squeeze", [pv, ax0], name="squeeze_v")
        kk = g.node("Concat", [pk, th["k"]], name="concat_k", axis=-2)
        vv = g.node("Concat", [pv, th["v"]], name="concat_v", axis=-2)
        pres = [g.node("Unsqueeze", [t, ax0], name=f"unsq_{n}") for n, t in (("k", kk), ("v", vv))]
        g.node("Concat", pres, ["present"], name="concat_present", axis=0)
        g.output("present", [2, b, heads, ps + s, d])
    else:
        kk, vv = th["k"], th["v"]
    kt = g.node("Transpose", [kk], name="transpose_kt", perm=[0, 1, 3, 2])
    qk = g.node("MatMul", [th["q"], kt], name="matmul_qk")
    if add_cast:
        qk = g.node("Cast", [qk], name="cast_qk", to=TensorProto.FLOAT)
    div = g.node("Div", [qk, g.const("div_w", np.array(math.sqrt(d), np.float32))], name="qk_norm")
    # causal slice of the tril buffer: rows [Skv - Sq, Skv), columns [0, Skv)
    tril = g.const("undir_mask", np.tril(np.ones((max_seq, max_seq), np.uint8)).reshape(1, 1, max_seq, max_seq))
    sq_shape = g.node("Shape", [th["q"]], name="shape_q")
    sq = g.node("Slice", [sq_shape, g.const("m2", np.array([-2], np.int64)), g.const("m1", np.array([-1], np.int64)),
                          g.const("a0", np.array([0], np.int64))], name="slice_sq")
    sk_shape = g.node("Shape", [kk], name="shape_k")
    sk = g.node("Slice", [sk_shape, "m2", "m1", "a0"], name="slice_sk")
    start = g.node("Sub", [sk, sq], name="sub_start")
    rows = g.node("Slice", [tril, start, sk, g.const("a2", np.array([2], np.int64))], name="slice_rows")
    cols = g.node("Slice", [rows, g.const("z", np.array([0], np.int64)), sk, g.const("a3", np.array([3], np.int64))],
                  name="slice_cols")
    causal = g.node("Cast", [cols], name="cast_causal", to=TensorProto.BOOL)
    wh = g.node("Where", [causal, div, g.const("where_w", np.array(-10000.0, np.float32))], name="where")
    mask = g.input("input_mask", [b, ps + s])
    mr = g.node("Reshape", [mask, g.const("mshape", np.array([0, -1], np.int64))], name="mask_reshape")
    u0 = g.node("Unsqueeze", [mr, g.const("axes_1", np.array([1], np.int64))], name="unsqueeze0")
    u1 = g.node("Unsqueeze", [u0, g.const("axes_2", np.array([2], np.int64))], name="unsqueeze1")
    sub = g.node("Sub", [g.const("one", np.array(1.0, np.float32)), u1], name="sub_mask")
    mm = g.node("Mul", [sub, g.const("mul_w", np.array(-10000.0, np.float32))], name="mul_mask")
    add = g.node("Add", order([wh, mm]), name="add_mask")
    sm = g.node("Softmax", [add], name="softmax", axis=3)
    pvm = g.node("MatMul", [sm, vv], name="matmul_qk_v")
    t = g.node("Transpose", [pvm], name="transpose_qkv", perm=[0, 2, 1, 3])
    r = g.node("Reshape", [t, g.const("shape_o", np.array([-1, hidden], np.int64))], name="reshape_qkv")
    gm = g.node("Gemm", [r, g.weight("gemm_w", [hidden, hidden], -0.5, 0.5), g.weight("gemm_b", [hidden])],
                name="gemm")
    gr = g.node("Reshape", [gm, g.const("shape_g", np.array([b, s, hidden], np.int64))], name="gemm_reshape")
    g.node("Add", order([gr, "ln_in"]), ["output"], name="add_skip")
    g.output("output", [b, s, hidden])
    m = g.model(opset=opset)
    feeds = feeds_for(m)
    feeds["input_mask"] = mask_feed((b, ps + s), np.float32)
    return m, feeds


@pytest.mark.parametrize("kw", [{}, {"switch": True}, {"past": False}, {"past": False, "add_cast": True},
                                {"past": False, "switch": True}],
                         ids=["past", "past_reverse_add", "no_past", "no_past_cast", "no_past_reverse_add"])
def test_gpt2_attention(kw):
    m, feeds = gpt2_attention(**kw)
    out = check(m, "FusedAttentionMaskBias", feeds)
    a = attrs(fused_attention(out)[0])
    assert a["mask_kind"] == "mask+bias" and a["num_heads"] == 4
    assert np.isclose(a["scale"], 0.5)


def bart_sdpa(hidden=16, heads=4, with_mask=True):
    """create_bart_attention_sdpa pattern: √scale Mul on Q and on Kᵀ = Reshape([B,H,d,S]) ◄ Transpose(0,2,1) ◄
    Reshape([B·H,S,d]) ◄ K, Where(bool mask, 0, -1e9) added, Softmax, Where(IsNaN(p), 0, p), P·V."""
    g = GraphBuilder(7)
    b, s = 1, 8
    d = hidden // heads
    ln = g.node("LayerNormalization", [g.input("input_1", [b, s, hidden]), g.weight("ln_w", [hidden], 0.5, 1.5),
                                       g.weight("ln_b", [hidden])], name="layer_norm", axis=-1)
    shape4 = g.const("shape_qkv_4d", np.array([b, s, heads, d], np.int64))
    th = {}
    for n in "qkv":
        mm = g.node("MatMul", [ln, g.weight(f"{n}_w", [hidden, hidden], -0.5, 0.5)], name=f"{n}_matmul")
        ad = g.node("Add", [mm, g.weight(f"{n}_b", [hidden])], name=f"{n}_add")
        th[n] = g.node("Transpose", [g.node("Reshape", [ad, shape4], name=f"{n}_reshape")], name=f"{n}_transpose",
                       perm=[0, 2, 1, 3])
    k3 = g.node("Reshape", [th["k"], g.const("shape_k_3d", np.array([b * heads, s, d], np.int64))], name="k_3d")
    k3t = g.node("Transpose", [k3], name="k_3d_t", perm=[0, 2, 1])
    k4 = g.node("Reshape", [k3t, g.const("shape_kt_4d", np.array([b, heads, d, s], np.int64))], name="k_4d_t")
    sc = g.const("sqrt_scale", np.array(1.0 / math.sqrt(math.sqrt(d)), np.float32))
    qs = g.node("Mul", [th["q"], sc], name="q_scale")
    ks = g.node("Mul", [k4, sc], name="k_scale")
    qk = g.node("MatMul", [qs, ks], name="qk_matmul")
    zero = g.const("zero", np.array(0.0, np.float32))
    feeds_mask = None
    if with_mask:
        mb = g.input("attention_mask_bool", [b, 1, s, s], np.bool_)
        mf = g.node("Where", [mb, zero, g.const("neg", np.array(-1e9, np.float32))], name="mask_where")
        qk = g.node("Add", [qk, mf], name="qk_mask_add")
        feeds_mask = np.tril(np.ones((s, s), bool)).reshape(b, 1, s, s)
    sm = g.node("Softmax", [qk], name="softmax", axis=-1)
    isnan = g.node("IsNaN", [sm], name="isnan")
    guard = g.node("Where", [isnan, zero, sm], name="nan_guard")
    pv = g.node("MatMul", [guard, th["v"]], name="attn_v_matmul")
    t = g.node("Transpose", [pv], name="attn_transpose", perm=[0, 2, 1, 3])
    r = g.node("Reshape", [t, g.const("shape_out", np.array([b, s, hidden], np.int64))], name="attn_reshape")
    o = g.node("MatMul", [r, g.weight("o_w", [hidden, hidden], -0.5, 0.5)], name="out_matmul")
    g.node("Add", [ln, o], ["output"], name="residual_add")
    g.output("output", [b, s, hidden])
    m = g.model(opset=18, ir=9)
    feeds = feeds_for(m)
    if feeds_mask is not None:
        feeds["attention_mask_bool"] = feeds_mask
    return m, feeds


@pytest.mark.parametrize("with_mask", [True, False], ids=["mask", "no_mask"])
def test_bart_sdpa_attention(with_mask):
    m, feeds = bart_sdpa(with_mask=with_mask)
    out = check(m, "FusedAttentionBiasNanZero" if with_mask else "FusedAttentionNanZero", feeds)
    a = attrs(fused_attention(out)[0])
    assert np.isclose(a["scale"], 0.5, rtol=1e-6) and a["num_heads"] == 4
    # the Kᵀ chain went into the node: K enters as the head-split projection
    assert not any(n.op_type == "Transpose" and attrs(n)["perm"] == [0, 2, 1] for n in out.graph.node)


def qwen3_layer(hidden=32, heads=4, kv_heads=4, rope=False, repeat=False):
    """create_qwen3_decoder_layer pattern: RMSNorm (Pow/ReduceMean/Add/Sqrt/Reciprocal/Mul), Q/K/V MatMuls,
    QK-norm on [B,S,H,d], Transposes, optional rotary embedding (rotate_half with Slice/Neg/Concat), Kᵀ
    Transpose(0,1,3,2), Mul(1/√d), Softmax, P·V. onnxruntime's generator broadcasts kv_heads < heads straight
    into the MatMul (an invalid model); ``repeat`` writes HF's repeat_kv (Unsqueeze/Expand/Reshape) instead."""
    g = GraphBuilder(11)
    b, s = 1, 4
    d = hidden // heads

    def rms(prefix, x, width):
        p = g.node("Pow", [x, g.const(f"{prefix}_two", np.array([2.0], np.float32))], name=f"{prefix}_pow")
        mean = g.node("ReduceMean", [p], name=f"{prefix}_mean", axes=[-1], keepdims=1)
        e = g.node("Add", [mean, g.const(f"{prefix}_eps", np.array(1e-6, np.float32))], name=f"{prefix}_eps_add")
        r = g.node("Reciprocal", [g.node("Sqrt", [e], name=f"{prefix}_sqrt")], name=f"{prefix}_rsqrt")
        n = g.node("Mul", [x, r], name=f"{prefix}_mul")
        return g.node("Mul", [g.weight(f"{prefix}_w", [width], 0.5, 1.5), n], name=f"{prefix}_mul_w")

    x = g.input("input_0", [b, s, hidden])
    ln = rms("pre", x, hidden)
    q = g.node("MatMul", [ln, g.weight("q_w", [hidden, hidden], -0.5, 0.5)], name="q_matmul")
    k = g.node("MatMul", [ln, g.weight("k_w", [hidden, kv_heads * d], -0.5, 0.5)], name="k_matmul")
    v = g.node("MatMul", [ln, g.weight("v_w", [hidden, kv_heads * d], -0.5, 0.5)], name="v_matmul")
    q = g.node("Reshape", [q, g.const("q_shape", np.array([b, s, heads, d], np.int64))], name="q_reshape")
    kshape = g.const("k_shape", np.array([b, s, kv_heads, d], np.int64))
    k = g.node("Reshape", [k, kshape], name="k_reshape")
    q = g.node("Transpose", [rms("qn", q, d)], name="q_transpose", perm=[0, 2, 1, 3])
    k = g.node("Transpose", [rms("kn", k, d)], name="k_transpose", perm=[0, 2, 1, 3])
    if rope:
        pos = np.arange(s, dtype=np.float32)[:, None] / (10000 ** (np.arange(0, d, 2, dtype=np.float32) / d))
        emb = np.concatenate([pos, pos], -1)
        cos, sin = g.const("cos", np.cos(emb)[None, None]), g.const("sin", np.sin(emb)[None, None])

        def rotate(prefix, t):
            x1 = g.node("Slice", [t, g.const(f"{prefix}_z", np.array([0], np.int64)),
                                  g.const(f"{prefix}_h", np.array([d // 2], np.int64)),
                                  g.const(f"{prefix}_ax", np.array([-1], np.int64))], name=f"{prefix}_x1")
            x2 = g.node("Slice", [t, f"{prefix}_h", g.const(f"{prefix}_end", np.array([2 ** 62], np.int64)),
                                  f"{prefix}_ax"], name=f"{prefix}_x2")
            rot = g.node("Concat", [g.node("Neg", [x2], name=f"{prefix}_neg"), x1], name=f"{prefix}_cat", axis=-1)
            a = g.node("Mul", [t, cos], name=f"{prefix}_cos")
            return g.node("Add", [a, g.node("Mul", [rot, sin], name=f"{prefix}_sin")], name=f"{prefix}_rope")

        q, k = rotate("qr", q), rotate("kr", k)
    v = g.node("Transpose", [g.node("Reshape", [v, kshape], name="v_reshape")], name="v_transpose", perm=[0, 2, 1, 3])
    if repeat:
        def rep(n, t):
            u = g.node("Unsqueeze", [t, g.const(f"{n}_ax2", np.array([2], np.int64))], name=f"{n}_unsq")
            e = g.node("Expand", [u, g.const(f"{n}_ex", np.array([b, kv_heads, heads // kv_heads, s, d], np.int64))],
                       name=f"{n}_expand")
            return g.node("Reshape", [e, g.const(f"{n}_rs", np.array([b, heads, s, d], np.int64))], name=f"{n}_rep")

        k, v = rep("k", k), rep("v", v)
    kt = g.node("Transpose", [k], name="k_transpose_for_matmul", perm=[0, 1, 3, 2])
    qk = g.node("MatMul", [q, kt], name="qk_matmul")
    qk = g.node("Mul", [qk, g.const("scale", np.array([1.0 / math.sqrt(d)], np.float32))], name="qk_scale")
    sm = g.node("Softmax", [qk], name="softmax", axis=-1)
    o = g.node("MatMul", [sm, v], name="attn_v_matmul")
    o = g.node("Reshape", [g.node("Transpose", [o], name="attn_transpose", perm=[0, 2, 1, 3]),
                           g.const("out_shape", np.array([b, s, hidden], np.int64))], name="attn_reshape")
    o = g.node("MatMul", [o, g.weight("o_w", [hidden, hidden], -0.5, 0.5)], name="o_matmul")
    g.node("Add", [x, o], ["output_0"], name="residual_add")
    g.output("output_0", [b, s, hidden])
    return g.model(opset=17)


@pytest.mark.parametrize("kw", [{}, {"rope": True}, {"kv_heads": 2, "repeat": True},
                                {"kv_heads": 1, "repeat": True, "rope": True}],
                         ids=["qwen3", "qwen3_rope", "gqa_repeat_kv", "mqa_repeat_kv_rope"])
def test_qwen3_attention(kw):
    m = qwen3_layer(**kw)
    gqa = kw.get("kv_heads", 4) not in (4, 1)
    out = check(m, "FusedAttentionGqa" if gqa else "FusedAttention")
    f = fused_attention(out)[0]
    a = attrs(f)
    assert a["num_heads"] == 4 and a["kv_num_heads"] == kw.get("kv_heads", 4)
    if kw.get("repeat"):
        assert "Expand" not in ops(out)
        k_in = next(vi for vi in onnx.shape_inference.infer_shapes(out).graph.value_info if vi.name == f.input[1])
        assert k_in.type.tensor_type.shape.dim[1].dim_value == kw["kv_heads"]


# -- shapes and forms beyond the generators --------------------------------------------------------------------

def simple_attention(rank=4, heads=2, sq=5, skv=5, d=8, dv=None, scale_on="scores", scale_op="Mul", term=None,
                     dtype=np.float32, softmax_cast=False, opset=17, guard=False, seed=13):
    """Q, K, V as graph inputs (Q [B, H, Sq, d], K [B, H, Skv, d] or rank 3), scale placements, one term."""
    g = GraphBuilder(seed, dtype=dtype)
    b = 2
    dv = dv or d
    lead = [b, heads] if rank == 4 else [b * heads]
    q = g.input("Q", [*lead, sq, d])
    k = g.input("K", [*lead, skv, d])
    v = g.input("V", [*lead, skv, dv])
    c = 1.0 / math.sqrt(d)
    perm = [0, 1, 3, 2] if rank == 4 else [0, 2, 1]
    if scale_on == "q":
        q = g.node(scale_op, [q, g.const("c", np.array(c if scale_op == "Mul" else 1 / c, dtype))], name="scale_q")
    if scale_on == "both":
        sc = g.const("c", np.array(math.sqrt(c), dtype))
        q = g.node("Mul", [q, sc], name="scale_q")
        k = g.node("Mul", [k, sc], name="scale_k")
    kt = g.node("Transpose", [k], name="kt", perm=perm)
    s = g.node("MatMul", [q, kt], name="qk")
    if scale_on == "scores":
        s = g.node(scale_op, [s, g.const("c", np.array(c if scale_op == "Mul" else 1 / c, dtype))], name="scale")
    feeds = {}
    if term == "bias":
        s = g.node("Add", [s, g.input("B", [b, 1, 1, skv] if rank == 4 else [b * heads, 1, skv])], name="add_bias")
    elif term in ("where", "where_inverted"):
        mask = g.input("M", [1, 1, sq, skv] if rank == 4 else [1, sq, skv], np.bool_)
        fill = g.const("fill", np.array(-1e4, dtype))
        ins = [mask, s, fill] if term == "where" else [mask, fill, s]
        s = g.node("Where", ins, name="where")
        keep = np.tril(np.ones((sq, skv), bool))
        feeds["M"] = (keep if term == "where" else ~keep).reshape((1, 1, sq, skv) if rank == 4 else (1, sq, skv))
    if softmax_cast:
        s = g.node("Cast", [s], name="up", to=TensorProto.FLOAT)
    p = g.node("Softmax", [s], name="softmax", axis=-1)
    if softmax_cast:
        p = g.node("Cast", [p], name="down", to=helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))
    if guard:
        p = g.node("Where", [g.node("IsNaN", [p], name="isnan"), g.const("zero", np.array(0, dtype)), p],
                   name="guard")
    g.node("MatMul", [p, v], ["Y"], name="pv")
    g.output("Y")
    m = g.model(opset=opset)
    f = feeds_for(m)
    f.update(feeds)
    if term == "bias":
        f["B"] = np.where(f["B"] > 0.5, -1e4, 0.0).astype(dtype)
    return m, f


@pytest.mark.parametrize("scale_on,scale_op", [("scores", "Mul"), ("scores", "Div"), ("q", "Mul"), ("q", "Div"),
                                               ("both", "Mul"), ("none", "Mul")])
def test_scale_forms(scale_on, scale_op):
    m, feeds = simple_attention(scale_on=scale_on, scale_op=scale_op)
    out = check(m, "FusedAttention", feeds)
    want = 1.0 if scale_on == "none" else 1 / math.sqrt(8)
    assert np.isclose(attrs(fused_attention(out)[0])["scale"], want, rtol=1e-6)


@pytest.mark.parametrize("term,op_type", [("bias", "FusedAttentionBias"), ("where", "FusedAttentionMask"),
                                          ("where_inverted", "FusedAttentionMask")])
def test_terms(term, op_type):
    m, feeds = simple_attention(term=term, sq=4, skv=6)
    out = check(m, op_type, feeds)
    assert ("Not" in ops(out)) == (term == "where_inverted")


def test_rank3_attention_gets_a_head_axis():
    """nn.MultiheadAttention's bmm form and the seed report's [B, S, D]: Unsqueeze(1) in, Squeeze(1) out."""
    m, feeds = simple_attention(rank=3, term="bias", dv=4)
    out = check(m, "FusedAttentionBias", feeds)
    assert ops(out)["Unsqueeze"] == 4 and ops(out)["Squeeze"] == 1
    assert attrs(fused_attention(out)[0])["num_heads"] == 1


def test_different_value_width_and_cross_lengths():
    m, feeds = simple_attention(sq=3, skv=7, d=8, dv=5)
    check(m, "FusedAttention", feeds)


def test_fp16_with_softmax_in_float32():
    """HF eager in fp16: softmax(scores.float()).to(fp16): softmax_precision FLOAT, fp16 tolerance."""
    m, feeds = simple_attention(dtype=np.float16, softmax_cast=True, term="bias")
    out = check(m, "FusedAttentionBias", feeds, tol=1e-2)
    assert attrs(fused_attention(out)[0])["softmax_precision"] == TensorProto.FLOAT


def test_nan_guard_keeps_fully_masked_rows_zero():
    m, feeds = simple_attention(term="where", guard=True, sq=4, skv=4)
    # a -inf fill and a fully masked row: softmax gives NaN, the guard turns it into 0
    fill = next(t for t in m.graph.initializer if t.name == "fill")
    fill.CopyFrom(onnx.numpy_helper.from_array(np.array(-np.inf, np.float32), "fill"))
    feeds["M"] = feeds["M"].copy()
    feeds["M"][..., 1, :] = False
    out = check(m, "FusedAttentionMaskNanZero", feeds)
    got = ort_outputs(out, feeds)[0]
    assert np.all(got[:, :, 1, :] == 0) and np.isfinite(got).all()


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("term", [None, "bias", "where"])
def test_opset_before_15_takes_the_scale_as_an_input(opset, term):
    m, feeds = simple_attention(opset=opset, term=term)
    if opset < 13:  # Unsqueeze/Split with attribute axes only matter to builders; the graph above has none
        pass
    op = {None: "FusedAttention", "bias": "FusedAttentionBias", "where": "FusedAttentionMask"}[term]
    out = check(m, op, feeds)
    f = fused_attention(out)[0]
    assert f.input[-1].endswith(".scale")
    fn = next(fn for fn in out.functions if fn.name == f.op_type)
    assert not any(n.op_type in ("Cast", "CastLike") for n in fn.node)


# -- guards ---------------------------------------------------------------------------------------------------

def _no_fusion(m: onnx.ModelProto) -> None:
    out = fuse(m).model
    assert not fused_attention(out), attention_ops(out)
    assert_equivalent(m, out)


def test_probabilities_used_elsewhere_are_not_fused():
    m, _ = simple_attention()
    m.graph.output.append(helper.make_tensor_value_info("softmax_y0", TensorProto.FLOAT, None))
    _no_fusion(m)


def test_scores_used_elsewhere_are_not_fused():
    m, _ = simple_attention()
    m.graph.output.append(helper.make_tensor_value_info("scale_y0", TensorProto.FLOAT, None))
    _no_fusion(m)


def test_softmax_over_another_axis_is_not_attention():
    m, _ = simple_attention()
    next(n for n in m.graph.node if n.op_type == "Softmax").attribute[0].i = 2
    _no_fusion(m)


def test_scale_after_a_term_is_not_canonical():
    g = GraphBuilder(1)
    q, k, v = g.input("Q", [1, 2, 4, 8]), g.input("K", [1, 2, 4, 8]), g.input("V", [1, 2, 4, 8])
    s = g.node("MatMul", [q, g.node("Transpose", [k], perm=[0, 1, 3, 2])])
    s = g.node("Add", [s, g.input("B", [1, 1, 1, 4])])
    s = g.node("Mul", [s, g.const("c", np.array(0.3, np.float32))])
    g.node("MatMul", [g.node("Softmax", [s], axis=-1), v], ["Y"])
    g.output("Y")
    _no_fusion(g.model(opset=17))


def test_term_that_enlarges_the_scores_is_not_fused():
    g = GraphBuilder(1)
    q, k, v = g.input("Q", [1, 2, 1, 8]), g.input("K", [1, 2, 4, 8]), g.input("V", [1, 2, 4, 8])
    s = g.node("MatMul", [q, g.node("Transpose", [k], perm=[0, 1, 3, 2])])
    s = g.node("Add", [s, g.input("B", [1, 1, 3, 4])])  # [1,2,1,4] + [1,1,3,4] → [1,2,3,4]
    g.node("MatMul", [g.node("Softmax", [s], axis=-1), v], ["Y"])
    g.output("Y")
    _no_fusion(g.model(opset=17))


def test_runtime_scale_is_not_a_scale():
    g = GraphBuilder(1)
    q, k, v = g.input("Q", [1, 2, 4, 8]), g.input("K", [1, 2, 4, 8]), g.input("V", [1, 2, 4, 8])
    s = g.node("MatMul", [q, g.node("Transpose", [k], perm=[0, 1, 3, 2])])
    s = g.node("Mul", [s, g.input("c", [1])])
    g.node("MatMul", [g.node("Softmax", [s], axis=-1), v], ["Y"])
    g.output("Y")
    _no_fusion(g.model(opset=17))


# -- the standard Attention op ----------------------------------------------------------------------------------

def attention_op(mask=None, causal=0, hq=4, hkv=4, sq=5, skv=5, past=False, softcap=0.0, scale=None):
    g = GraphBuilder(17)
    b, d = 2, 8
    ins = [g.input("Q", [b, hq, sq, d]), g.input("K", [b, hkv, skv, d]), g.input("V", [b, hkv, skv, d])]
    feeds = {}
    if mask is not None or past:
        if mask == "bool":
            ins.append(g.input("M", [b, 1, sq, skv], np.bool_))
            keep = np.ones((b, 1, sq, skv), bool)
            keep[1, :, :, -2:] = False
            keep[0, :, 2, :] = False  # a fully masked row: Attention gives 0 there
            feeds["M"] = keep
        elif mask == "float":  # onnxruntime's Attention wants the mask's query axis spelled out
            ins.append(g.input("M", [b, 1, sq, skv]))
            row = np.where(np.arange(skv) < skv - 1, 0.0, -np.inf).astype(np.float32)
            feeds["M"] = np.broadcast_to(row, (b, 1, sq, skv)).copy()
        else:
            ins.append("")
    outs = ["Y"]
    kw = {"is_causal": causal}
    if scale is not None:
        kw["scale"] = scale
    if softcap:
        kw["softcap"] = softcap
    if past:
        ins += [g.input("past_k", [b, hkv, 3, d]), g.input("past_v", [b, hkv, 3, d])]
        outs += ["present_k", "present_v"]
    g.node("Attention", ins, outs, name="attention", **kw)
    for o in outs:
        g.output(o)
    m = g.model(opset=23, ir=10)
    f = feeds_for(m)
    f.update(feeds)
    return m, f


@pytest.mark.parametrize("kw,op_type", [
    ({}, "FusedAttention"), ({"mask": "bool"}, "FusedAttentionMaskNanZero"),
    ({"mask": "float"}, "FusedAttentionBiasNanZero"), ({"causal": 1, "sq": 3, "skv": 6}, "FusedAttentionCausal"),
    ({"hkv": 2, "scale": 0.3}, "FusedAttentionGqa"), ({"hkv": 1}, "FusedAttention"),
    ({"hkv": 2, "causal": 1, "mask": "bool"}, "FusedAttentionCausalMaskGqaNanZero")])
def test_standard_attention_op(kw, op_type):
    m, feeds = attention_op(**kw)
    out = check(m, op_type, feeds)
    a = attrs(fused_attention(out)[0])
    assert a["kv_num_heads"] == kw.get("hkv", 4) and a["num_heads"] == 4
    assert np.isclose(a["scale"], kw.get("scale", 1 / math.sqrt(8)))


@pytest.mark.parametrize("kw", [{"past": True}, {"softcap": 30.0}])
def test_standard_attention_op_beyond_the_node_stays(kw):
    m, _ = attention_op(**kw)
    out = fuse(m).model
    assert not fused_attention(out) and ops(out).get("Attention") == 1


# -- output forms, idempotence ------------------------------------------------------------------------------

def test_target_onnx_writes_standard_attention_at_opset_23():
    m, feeds = attention_op(mask="bool", hkv=2)
    res = fuse(m, target="onnx")
    out = res.model
    assert attention_ops(out) == {"Attention": 1} and not out.functions
    assert {o.domain for o in out.opset_import} == {""}
    n = next(n for n in out.graph.node if n.op_type == "Attention")
    assert n.name.endswith("/Attention") and props(n)["fuser.pattern"] == "attention_op"
    compare(ort_outputs(m, feeds), ort_outputs(out, feeds), None, "target onnx")


def test_target_onnx_decomposes_below_opset_23():
    m, feeds = bert_attention()
    out = fuse(m, target="onnx").model
    assert not fused_attention(out) and ops(out)["Softmax"] == 1 and not out.functions
    compare(ort_outputs(m, feeds), ort_outputs(out, feeds), None, "target onnx")


def test_target_onnx_keeps_a_windowed_term_decomposed():
    m, feeds = gpt2_attention(past=False, opset=23)
    out = fuse(m, target="onnx").model
    assert "Attention" not in ops(out) and ops(out)["Softmax"] == 1
    compare(ort_outputs(m, feeds), ort_outputs(out, feeds), None, "target onnx")


def test_fused_model_fed_back_is_unchanged():
    m, feeds = bert_attention()
    once = fuse(m).model
    twice = run_pipeline(once).model
    assert [n.op_type for n in fused_attention(twice)] == ["FusedAttentionBias"]
    compare(ort_outputs(once, feeds), ort_outputs(twice, feeds), None, "re-run")


def test_two_layers_two_nodes():
    m1, _ = simple_attention(term="bias")
    g = m1.graph
    # chain a second attention on Y: Q = K = V = Y
    g.node.extend([helper.make_node("Transpose", ["Y"], ["Yt"], name="kt2", perm=[0, 1, 3, 2]),
                   helper.make_node("MatMul", ["Y", "Yt"], ["S2"], name="qk2"),
                   helper.make_node("Softmax", ["S2"], ["P2"], name="softmax2", axis=-1),
                   helper.make_node("MatMul", ["P2", "Y"], ["Z"], name="pv2")])
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("Z", TensorProto.FLOAT, None))
    feeds = feeds_for(m1)
    feeds["B"] = np.zeros_like(feeds["B"])
    out = check(m1, "FusedAttentionBias", feeds, count=1) if False else fuse(m1).model
    assert sorted(n.op_type for n in fused_attention(out)) == ["FusedAttention", "FusedAttentionBias"]
    compare(ort_outputs(m1, feeds), ort_outputs(out, feeds), None, "two layers")


def test_swin_shifted_window_view():
    """timm's Swin: scores + rel bias [1, H, N, N], then viewed [B_/nW, nW, H, N, N] + mask [1, nW, 1, N, N]."""
    g = GraphBuilder(19)
    nw, h, n, d, b_ = 4, 2, 6, 8, 8
    q, k, v = (g.input(x, [b_, h, n, d]) for x in "QKV")
    s = g.node("MatMul", [g.node("Mul", [q, g.const("c", np.array(d ** -0.5, np.float32))], name="scale"),
                          g.node("Transpose", [k], name="kt", perm=[0, 1, 3, 2])], name="qk")
    s = g.node("Add", [s, g.weight("rel_bias", [1, h, n, n])], name="add_bias")
    s5 = g.node("Reshape", [s, g.const("v5", np.array([-1, nw, h, n, n], np.int64))], name="view5")
    wmask = np.where(np.random.default_rng(0).random((1, nw, 1, n, n)) > 0.3, 0.0, -100.0).astype(np.float32)
    s5 = g.node("Add", [s5, g.const("win_mask", wmask)], name="add_mask")
    s = g.node("Reshape", [s5, g.const("v4", np.array([-1, h, n, n], np.int64))], name="view4")
    g.node("MatMul", [g.node("Softmax", [s], name="softmax", axis=-1), v], ["Y"], name="pv")
    g.output("Y", [b_, h, n, d])
    m = g.model(opset=17)
    out = check(m, "FusedAttentionBiasWinBias")
    assert "Reshape" not in ops(out)
