"""fold_bn: BatchNormalization folded into Conv / ConvTranspose / Gemm / MatMul(+Add)(+Reshape) weights,
and every guard that must keep it from firing."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

from .builders import (
    GraphBuilder,
    assert_equivalent,
    attrs,
    bn_fold_ref,
    compare,
    feeds_for,
    fuse,
    init,
    node,
    ops,
    ort_outputs,
    patterns,
)

EPS = 1e-3
EPS32 = float(np.float32(EPS))  # what the attribute holds after the trip through float32


def bn_ref(g: GraphBuilder, name: str = "bn") -> tuple[np.ndarray, np.ndarray]:
    v = g.values
    return bn_fold_ref(v[f"{name}.gamma"], v[f"{name}.beta"], v[f"{name}.mean"], v[f"{name}.var"], EPS32)


def assert_ulp(got: np.ndarray, want: np.ndarray, maxulp: int = 1) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_max_ulp(got, want, maxulp=maxulp)


# -- Conv ----------------------------------------------------------------------------------------------

def conv_bn_model(dims=2, cin=3, cout=4, group=1, bias=True, transpose=False, dtype=np.float32, seed=0,
                  **conv_attrs):
    g = GraphBuilder(seed, dtype)
    spatial = [5, 4, 3][:dims] if dims < 3 else [4, 3, 3]
    x = g.input("X", ["N", cin, *spatial])
    y = g.conv(x, cin, cout, kernel=(3,) * dims, group=group, bias=bias, transpose=transpose, **conv_attrs)
    g.bn(y, cout, outputs=["Z"], epsilon=EPS)
    g.output("Z")
    return g, g.model()


CONV_CASES = [
    # dims, group, cin, cout, bias
    (1, 1, 3, 4, True), (1, 1, 3, 4, False), (1, 3, 6, 6, True),
    (2, 1, 3, 4, True), (2, 1, 3, 4, False),
    (2, 2, 4, 6, True),  # groups
    (2, 4, 4, 4, False),  # depthwise
    (2, 4, 4, 8, True),  # depthwise, channel multiplier 2
    (3, 1, 2, 4, True), (3, 1, 2, 4, False),
]


@pytest.mark.parametrize("dims,group,cin,cout,bias", CONV_CASES)
def test_conv_bn_folds(dims, group, cin, cout, bias):
    g, m = conv_bn_model(dims, cin, cout, group, bias)
    res = fuse(m)
    out = res.model
    assert ops(out) == {"Conv": 1}
    conv = node(out, "Conv")
    assert conv.name == "conv" and list(conv.output) == ["Z"]
    assert attrs(conv)["kernel_shape"] == [3] * dims and attrs(conv).get("group", 1) == group
    s, t = bn_ref(g)
    w = g.values["conv.W"]
    want_w = (w.astype(np.float64) * s.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
    b = g.values["conv.B"].astype(np.float64) if bias else np.zeros(cout)
    assert conv.input[1] == "conv.weight_bn" and conv.input[2] == "conv.bias_bn"
    assert_ulp(init(out, conv.input[1]), want_w)
    assert_ulp(init(out, conv.input[2]), (b * s + t).astype(np.float32))
    assert patterns(res) == ["conv_bn_fold"]
    assert res.fusions[0].source_nodes == ["conv", "bn"] and res.fusions[0].fused_node == "conv"
    assert not out.functions and [o.domain for o in out.opset_import] == [""]
    assert {t.name for t in out.graph.initializer} == {"conv.weight_bn", "conv.bias_bn"}
    assert_equivalent(m, out)


def convtranspose_ref(w: np.ndarray, s: np.ndarray, group: int) -> np.ndarray:
    """Independent loop: output channel o = gi·(Cout/g) + j scales W[gi·Cin/g:(gi+1)·Cin/g, j]."""
    cin, cpg = w.shape[0], w.shape[1]
    out = w.astype(np.float64).copy()
    for o in range(cpg * group):
        gi, j = divmod(o, cpg)
        out[gi * (cin // group):(gi + 1) * (cin // group), j] *= s[o]
    return out


@pytest.mark.parametrize("dims,group,cin,cout,bias,strides", [
    (2, 2, 4, 6, True, 1),
    (2, 2, 4, 6, False, 2),
    (2, 1, 3, 4, False, 1),
    (1, 3, 6, 3, True, 2),
    (2, 4, 4, 4, True, 1),  # depthwise transpose
    (3, 1, 2, 3, True, 1),
])
def test_convtranspose_bn_folds(dims, group, cin, cout, bias, strides):
    g, m = conv_bn_model(dims, cin, cout, group, bias, transpose=True, strides=[strides] * dims)
    assert g.values["conv.W"].shape == (cin, cout // group) + (3,) * dims
    res = fuse(m)
    out = res.model
    assert ops(out) == {"ConvTranspose": 1}
    ct = node(out, "ConvTranspose")
    assert attrs(ct).get("group", 1) == group and attrs(ct)["strides"] == [strides] * dims
    s, t = bn_ref(g)
    assert_ulp(init(out, ct.input[1]), convtranspose_ref(g.values["conv.W"], s, group).astype(np.float32))
    b = g.values["conv.B"].astype(np.float64) if bias else np.zeros(cout)
    assert_ulp(init(out, ct.input[2]), (b * s + t).astype(np.float32))
    assert patterns(res) == ["conv_bn_fold"]
    assert_equivalent(m, out)


def test_conv_bn_relu_becomes_one_fused_conv():
    g = GraphBuilder(1)
    y = g.conv(g.input("X", ["N", 3, 6, 6]), 3, 8)
    z = g.bn(y, 8, epsilon=EPS)
    g.node("Relu", [z], ["out"], name="relu")
    g.output("out")
    m = g.model()
    res = fuse(m)
    assert ops(res.model) == {"fuser::FusedConvRelu": 1}
    f = res.model.graph.node[0]
    s, t = bn_ref(g)
    assert_ulp(init(res.model, f.input[1]),
               (g.values["conv.W"].astype(np.float64) * s[:, None, None, None]).astype(np.float32))
    assert patterns(res) == ["conv_bn_fold", "conv_relu"]
    assert f.name == "conv+relu"
    assert_equivalent(m, res.model)


def test_bn_default_epsilon_folds():
    """No epsilon attribute: the default 1e-5 (numerics only; the tiny variances make ε matter)."""
    g = GraphBuilder(9)
    y = g.conv(g.input("X", ["N", 3, 5, 5]), 3, 4)
    params = g.bn_params(4)
    g.values[params[3]] = g.rand((4,), 1e-5, 1e-4)
    g.inits[-1].CopyFrom(numpy_helper.from_array(g.values[params[3]], params[3]))
    g.bn(y, 4, outputs=["Z"], params=params)
    g.output("Z")
    m = g.model()
    res = fuse(m)
    assert ops(res.model) == {"Conv": 1}
    assert_equivalent(m, res.model, tol=1e-5)


def test_bn_output_with_two_consumers_still_folds():
    """The BN's *output* may have any number of consumers (and be a graph output): the Conv produces it."""
    g = GraphBuilder(3)
    y = g.conv(g.input("X", ["N", 3, 5, 5]), 3, 4)
    z = g.bn(y, 4, outputs=["Z"], epsilon=EPS)
    g.node("Relu", [z], ["r"], name="relu")
    g.node("Sigmoid", [z], ["s"], name="sig")
    for o in ("Z", "r", "s"):
        g.output(o)
    m = g.model()
    res = fuse(m)
    assert ops(res.model) == {"Conv": 1, "Relu": 1, "Sigmoid": 1}  # Z has 3 uses: no activation fusion
    assert node(res.model, "Conv").output[0] == "Z"
    assert [o.name for o in res.model.graph.output] == ["Z", "r", "s"]
    assert patterns(res) == ["conv_bn_fold"]
    assert_equivalent(m, res.model)


# -- Gemm ----------------------------------------------------------------------------------------------

GEMM_CASES = [
    # transB, C kind, alpha, beta
    (0, None, 1.0, 1.0), (1, None, 1.0, 1.0),
    (0, None, 0.7, 1.3), (1, None, 0.7, 1.3),
    (0, "F", 0.7, 1.3), (1, "F", 0.7, 1.3),
    (0, "1F", 1.0, 1.0), (1, "1F", 0.5, 2.0),
    (0, "MF", 0.7, 1.3), (1, "MF", 1.0, 1.0),
    (0, "1", 0.7, 1.3), (1, "M1", 0.7, 1.3),
]


@pytest.mark.parametrize("trans_b,c_kind,alpha,beta", GEMM_CASES)
def test_gemm_bn_folds(trans_b, c_kind, alpha, beta):
    M, K, F = 3, 5, 6
    g = GraphBuilder(4)
    a = g.input("A", [M, K])
    ins = [a, g.weight("B", (F, K) if trans_b else (K, F))]
    c_shape = {None: None, "F": (F,), "1F": (1, F), "MF": (M, F), "1": (1,), "M1": (M, 1)}[c_kind]
    if c_shape is not None:
        ins.append(g.weight("C", c_shape))
    kw = {"transB": trans_b}
    if (alpha, beta) != (1.0, 1.0):
        kw.update(alpha=alpha, beta=beta)
    y = g.node("Gemm", ins, name="gemm", **kw)
    g.bn(y, F, outputs=["Z"], epsilon=EPS)
    g.output("Z", [M, F])
    m = g.model()
    res = fuse(m)
    out = res.model
    assert ops(out) == {"Gemm": 1}
    gemm = node(out, "Gemm")
    a_ = attrs(gemm)
    assert a_.get("transB", 0) == trans_b and a_.get("beta", 1.0) == 1.0
    assert np.isclose(a_.get("alpha", 1.0), alpha)
    s, t = bn_ref(g)
    b64 = g.values["B"].astype(np.float64)
    want_b = b64 * (s[:, None] if trans_b else s[None, :])
    assert_ulp(init(out, gemm.input[1]), want_b.astype(np.float32))
    c64 = np.float32(beta) * g.values["C"].astype(np.float64) if c_shape else np.zeros(F)
    want_c = np.broadcast_to(c64 * s + t, np.broadcast_shapes(c64.shape, (F,)))
    np.testing.assert_allclose(init(out, gemm.input[2]).astype(np.float64), want_c, rtol=1e-6, atol=1e-7)
    assert patterns(res) == ["gemm_bn_fold"]
    assert_equivalent(m, out)


def test_gemm_bn_float64_matches_float64_reference():
    M, K, F = 4, 7, 5
    g = GraphBuilder(5, np.float64)
    y = g.node("Gemm", [g.input("A", [M, K]), g.weight("B", (F, K)), g.weight("C", (F,))], name="gemm",
               transB=1, alpha=0.5, beta=1.5)
    g.bn(y, F, outputs=["Z"], epsilon=EPS)
    g.output("Z")
    m = g.model()
    res = fuse(m)
    out = res.model
    assert ops(out) == {"Gemm": 1}
    s, t = bn_ref(g)
    gemm = node(out, "Gemm")
    assert init(out, gemm.input[1]).dtype == np.float64
    np.testing.assert_allclose(init(out, gemm.input[1]), g.values["B"] * s[:, None], rtol=1e-15)
    np.testing.assert_allclose(init(out, gemm.input[2]), np.float32(1.5) * g.values["C"] * s + t, rtol=1e-14)
    assert_equivalent(m, out, tol=1e-12)
    # and against a float64 numpy reference computed without onnxruntime
    a = np.random.default_rng(9).standard_normal((M, K))
    ref = (0.5 * a @ g.values["B"].T + 1.5 * g.values["C"]) * s + t
    np.testing.assert_allclose(ort_outputs(out, {"A": a})[0], ref, rtol=1e-12)


# -- MatMul (+Add) (+Reshape/Flatten) -------------------------------------------------------------------

@pytest.mark.parametrize("bias", ["right", "left", None])
def test_matmul_add_bn_2d_folds(bias):
    K, F = 6, 5
    g = GraphBuilder(6)
    y = g.node("MatMul", [g.input("X", ["N", K]), g.weight("W", (K, F))], name="mm")
    if bias:
        b = g.weight("b", (F,))
        y = g.node("Add", [y, b] if bias == "right" else [b, y], name="add")
    g.bn(y, F, outputs=["Z"], epsilon=EPS)
    g.output("Z", ["N", F])
    m = g.model()
    res = fuse(m)
    out = res.model
    assert ops(out) == {"MatMul": 1, "Add": 1}
    s, t = bn_ref(g)
    mm = node(out, "MatMul")
    assert_ulp(init(out, mm.input[1]), (g.values["W"].astype(np.float64) * s).astype(np.float32))
    add = node(out, "Add")
    assert list(add.output) == ["Z"]
    cname = next(i for i in add.input if i != mm.output[0])
    want_b = (g.values["b"].astype(np.float64) * s + t) if bias else t
    assert_ulp(init(out, cname), want_b.astype(np.float32))
    if not bias:
        assert add.name == "bn.shift"
    assert patterns(res) == ["matmul_bn_fold"]
    assert_equivalent(m, out)


@pytest.mark.parametrize("reshape", ["Reshape", "Flatten"])
@pytest.mark.parametrize("with_add", [True, False])
def test_levit_matmul_add_reshape_bn_folds(reshape, with_add):
    """LeViT: MatMul+Add on [B, T, K] → Reshape(-1, F) → BN1d → Reshape back."""
    T, K, F = 5, 8, 6
    g = GraphBuilder(7)
    y = g.node("MatMul", [g.input("X", ["B", T, K]), g.weight("W", (K, F))], name="mm")
    if with_add:
        y = g.node("Add", [y, g.weight("b", (F,))], name="add")
    if reshape == "Reshape":
        y = g.node("Reshape", [y, g.const("flat", np.array([-1, F], np.int64))], name="flat")
    else:
        y = g.node("Flatten", [y], name="flat", axis=2)
    z = g.bn(y, F, epsilon=EPS)
    g.node("Reshape", [z, g.const("back", np.array([-1, T, F], np.int64))], ["out"], name="unflat")
    g.output("out", ["B", T, F])
    m = g.model()
    res = fuse(m)
    out = res.model
    assert "BatchNormalization" not in ops(out) and not [n for n in out.graph.node if n.domain]
    want = {"MatMul": 1, "Add": 1, "Reshape": 1}
    want[reshape] = want.get(reshape, 0) + 1
    assert ops(out) == want
    s, _ = bn_ref(g)
    assert_ulp(init(out, node(out, "MatMul").input[1]), (g.values["W"].astype(np.float64) * s).astype(np.float32))
    assert patterns(res) == ["matmul_bn_fold"]
    assert res.fusions[0].source_nodes == ["mm", *(["add"] if with_add else []), "flat", "bn"]
    assert_equivalent(m, out, shapes={"X": [3, T, K]})


def test_matmul_add_bn_float64():
    K, F = 4, 3
    g = GraphBuilder(8, np.float64)
    y = g.node("MatMul", [g.input("X", ["N", K]), g.weight("W", (K, F))], name="mm")
    y = g.node("Add", [y, g.weight("b", (F,))], name="add")
    g.bn(y, F, outputs=["Z"], epsilon=EPS)
    g.output("Z")
    m = g.model()
    out = fuse(m).model
    assert ops(out) == {"MatMul": 1, "Add": 1}
    s, t = bn_ref(g)
    np.testing.assert_allclose(init(out, node(out, "MatMul").input[1]), g.values["W"] * s, rtol=1e-15)
    assert init(out, node(out, "MatMul").input[1]).dtype == np.float64
    assert_equivalent(m, out, tol=1e-12)


# -- dtypes --------------------------------------------------------------------------------------------

def test_conv_bn_fp16_folds_in_float64():
    g, m = conv_bn_model(2, 4, 6, dtype=np.float16, seed=11)
    res = fuse(m)
    out = res.model
    assert ops(out) == {"Conv": 1}
    s, t = bn_ref(g)
    w = init(out, "conv.weight_bn")
    assert w.dtype == np.float16
    # float64 arithmetic, one rounding at the end (an fp16 computation would be off by several ulps)
    assert_ulp(w, (g.values["conv.W"].astype(np.float64) * s[:, None, None, None]).astype(np.float16), 0)
    assert_ulp(init(out, "conv.bias_bn"), (g.values["conv.B"].astype(np.float64) * s + t).astype(np.float16), 0)
    assert [i.type.tensor_type.elem_type for i in out.graph.input] == [10]
    assert_equivalent(m, out, tol=1e-2)


def test_conv_bn_float64_weights_stay_float64():
    """onnxruntime has no float64 Conv: the fold is checked against a float64 numpy reference only."""
    g, m = conv_bn_model(2, 3, 4, dtype=np.float64, seed=12)
    out = fuse(m).model
    s, t = bn_ref(g)
    w = init(out, "conv.weight_bn")
    assert w.dtype == np.float64
    np.testing.assert_array_equal(w, g.values["conv.W"] * s[:, None, None, None])
    np.testing.assert_array_equal(init(out, "conv.bias_bn"), g.values["conv.B"] * s + t)


# -- shared weights ------------------------------------------------------------------------------------

def test_shared_conv_weights_are_cloned_not_mutated():
    g = GraphBuilder(13)
    x = g.input("X", ["N", 3, 5, 5])
    w = g.weight("W", (4, 3, 3, 3))
    b = g.weight("B", (4,))
    ya = g.node("Conv", [x, w, b], name="convA", pads=[1, 1, 1, 1])
    g.bn(ya, 4, outputs=["ZA"], epsilon=EPS)
    g.node("Conv", [x, w, b], ["ZB"], name="convB", pads=[1, 1, 1, 1])
    g.output("ZA")
    g.output("ZB")
    m = g.model()
    res = fuse(m)
    out = res.model
    assert ops(out) == {"Conv": 2}
    by = {n.name: n for n in out.graph.node}
    assert list(by["convB"].input) == ["X", "W", "B"]
    np.testing.assert_array_equal(init(out, "W"), g.values["W"])
    np.testing.assert_array_equal(init(out, "B"), g.values["B"])
    assert by["convA"].input[1] != "W" and by["convA"].input[2] != "B"
    assert_equivalent(m, out)


def test_shared_weights_two_bns_get_separate_clones():
    g = GraphBuilder(14)
    x = g.input("X", ["N", 3, 5, 5])
    w = g.weight("W", (4, 3, 3, 3))
    for k in ("A", "B"):
        y = g.node("Conv", [x, w], name=f"conv{k}", pads=[1, 1, 1, 1])
        g.bn(y, 4, name=f"bn{k}", outputs=[f"Z{k}"], epsilon=EPS)
        g.output(f"Z{k}")
    m = g.model()
    res = fuse(m)
    out = res.model
    assert ops(out) == {"Conv": 2}
    by = {n.name: n for n in out.graph.node}
    wa, wb = init(out, by["convA"].input[1]), init(out, by["convB"].input[1])
    sa, _ = bn_ref(g, "bnA")
    sb, _ = bn_ref(g, "bnB")
    assert_ulp(wa, (g.values["W"].astype(np.float64) * sa[:, None, None, None]).astype(np.float32))
    assert_ulp(wb, (g.values["W"].astype(np.float64) * sb[:, None, None, None]).astype(np.float32))
    assert "W" not in {t.name for t in out.graph.initializer}  # no user left
    assert_equivalent(m, out)


def test_shared_gemm_and_matmul_weights_are_cloned():
    g = GraphBuilder(15)
    x = g.input("X", [3, 4])
    w = g.weight("W", (4, 5))
    y = g.node("Gemm", [x, w], name="gemm")
    g.bn(y, 5, outputs=["Z1"], epsilon=EPS)
    g.node("MatMul", [x, w], ["Z2"], name="mm")
    y3 = g.node("MatMul", [x, w], name="mm3")
    g.bn(y3, 5, name="bn3", outputs=["Z3"], epsilon=EPS)
    for o in ("Z1", "Z2", "Z3"):
        g.output(o)
    m = g.model()
    out = fuse(m).model
    assert "BatchNormalization" not in ops(out)
    assert list(next(n for n in out.graph.node if n.name == "mm").input) == ["X", "W"]
    np.testing.assert_array_equal(init(out, "W"), g.values["W"])
    assert_equivalent(m, out)


# -- guards --------------------------------------------------------------------------------------------

def assert_not_folded(res, original, weight: str = "conv.W", tol=None, shapes=None):
    out = res.model
    assert not [p for p in patterns(res) if p.endswith("_bn_fold")], patterns(res)
    c = ops(out)
    assert c.get("BatchNormalization", 0) + c.get("fuser::FusedBatchNorm", 0) == 1, c
    assert weight in {t.name for t in out.graph.initializer} or weight in {i.name for i in out.graph.input}
    if weight in {t.name for t in original.graph.initializer}:
        np.testing.assert_array_equal(init(out, weight), init(original, weight))
    assert_equivalent(original, out, tol=tol, shapes=shapes)


def test_guard_conv_output_is_graph_output():
    g = GraphBuilder(20)
    y = g.conv(g.input("X", ["N", 3, 5, 5]), 3, 4)
    g.bn(y, 4, outputs=["Z"], epsilon=EPS)
    g.output(y)
    g.output("Z")
    m = g.model()
    res = fuse(m)
    assert_not_folded(res, m)
    assert node(res.model, "Conv").output[0] == y


def test_guard_conv_output_with_two_consumers():
    g = GraphBuilder(21)
    y = g.conv(g.input("X", ["N", 3, 5, 5]), 3, 4)
    g.bn(y, 4, outputs=["Z"], epsilon=EPS)
    g.node("Sigmoid", [y], ["S"], name="sig")
    g.output("Z")
    g.output("S")
    m = g.model()
    assert_not_folded(fuse(m), m)


def test_guard_weight_is_graph_input():
    g = GraphBuilder(22)
    x = g.input("X", ["N", 3, 5, 5])
    w = g.input("Wt", [4, 3, 3, 3])
    y = g.node("Conv", [x, w, g.weight("conv.B", (4,))], name="conv", pads=[1, 1, 1, 1])
    g.bn(y, 4, outputs=["Z"], epsilon=EPS)
    g.output("Z")
    m = g.model()
    res = fuse(m)
    assert_not_folded(res, m, weight="Wt")
    assert node(res.model, "Conv").input[1] == "Wt"


def test_guard_weight_is_overridable_initializer():
    """From IR 4 on an initializer also listed as a graph input is a default the caller may override:
    it is not a constant, so nothing may be folded into it (and the input must stay declared)."""
    g = GraphBuilder(23)
    x = g.input("X", ["N", 3, 5, 5])
    y = g.conv(x, 3, 4)
    g.input("conv.W", [4, 3, 3, 3])
    g.bn(y, 4, outputs=["Z"], epsilon=EPS)
    g.output("Z")
    m = g.model()
    res = fuse(m)
    assert [i.name for i in res.model.graph.input] == ["X", "conv.W"]
    assert_not_folded(res, m)
    assert node(res.model, "Conv").input[1] == "conv.W"
    # overriding the weight at run time still works and matches the original
    feeds = feeds_for(m, seed=5)
    feeds["conv.W"] = np.random.default_rng(6).standard_normal((4, 3, 3, 3)).astype(np.float32)
    compare(ort_outputs(m, feeds), ort_outputs(res.model, feeds))


def test_guard_bias_is_graph_input():
    g = GraphBuilder(24)
    x = g.input("X", ["N", 3, 5, 5])
    y = g.node("Conv", [x, g.weight("conv.W", (4, 3, 3, 3)), g.input("Bias", [4])], name="conv",
               pads=[1, 1, 1, 1])
    g.bn(y, 4, outputs=["Z"], epsilon=EPS)
    g.output("Z")
    m = g.model()
    assert_not_folded(fuse(m), m)


@pytest.mark.parametrize("which", [0, 1, 2, 3])
def test_guard_bn_param_is_graph_input(which):
    g = GraphBuilder(25)
    y = g.conv(g.input("X", ["N", 3, 5, 5]), 3, 4)
    params = g.bn_params(4)
    names = ["gamma", "beta", "mean", "var"]
    params[which] = g.input(f"p_{names[which]}", [4])
    g.bn(y, 4, outputs=["Z"], params=params, epsilon=EPS)
    g.output("Z")
    m = g.model()
    feeds_shape = {f"p_{names[which]}": [4]}
    res = fuse(m)
    assert ops(res.model) == {"Conv": 1, "BatchNormalization": 1}  # standalone_bn refuses it too
    if which == 3:  # a variance must be positive
        feeds = feeds_for(m)
        feeds["p_var"] = np.abs(feeds["p_var"]) + 0.5
        compare(ort_outputs(m, feeds), ort_outputs(res.model, feeds))
    else:
        assert_not_folded(res, m, shapes=feeds_shape)


def test_guard_bn_training_mode():
    g = GraphBuilder(26)
    y = g.conv(g.input("X", [2, 3, 5, 5]), 3, 4)
    g.bn(y, 4, outputs=["Z", "rm", "rv"], epsilon=EPS, training_mode=1)
    g.output("Z")
    m = g.model(opset=15)
    res = fuse(m)
    assert ops(res.model) == {"Conv": 1, "BatchNormalization": 1}
    assert_not_folded(res, m)


@pytest.mark.parametrize("used", ["rm", "sv", None])
def test_guard_bn_extra_outputs(used):
    """Opset < 14: a BN that declares its mean/var outputs is in training mode (onnxruntime then
    normalises with the batch statistics) — whether or not anything reads them."""
    g = GraphBuilder(27)
    y = g.conv(g.input("X", [2, 3, 5, 5]), 3, 4)
    g.bn(y, 4, outputs=["Z", "rm", "rv", "sm", "sv"], epsilon=EPS)
    g.output("Z")
    if used:
        g.output(used)
    m = g.model(opset=9)
    res = fuse(m)
    assert ops(res.model) == {"Conv": 1, "BatchNormalization": 1}
    assert_not_folded(res, m)


def test_guard_bn_spatial0_opset7():
    g = GraphBuilder(28)
    y = g.conv(g.input("X", [2, 3, 5, 5]), 3, 4)
    g.bn(y, 4, outputs=["Z"], params=g.bn_params(4, shape=(4, 5, 5)), epsilon=EPS, spatial=0)
    g.output("Z")
    m = g.model(opset=7, ir=3)
    res = fuse(m)
    assert ops(res.model) == {"Conv": 1, "BatchNormalization": 1}
    assert_not_folded(res, m)


def test_guard_channel_mismatch_conv_structural():
    """BN with 2 channels after a 4-channel Conv: an invalid model (no numerics), but fold_bn must not
    touch the weights."""
    g = GraphBuilder(29)
    y = g.conv(g.input("X", [1, 3, 5, 5]), 3, 4)
    g.bn(y, 2, outputs=["Z"], epsilon=EPS)
    g.output("Z")
    m = g.model()
    res = fuse(m, check=False)
    assert not [p for p in patterns(res) if p.endswith("_bn_fold")]
    np.testing.assert_array_equal(init(res.model, "conv.W"), g.values["conv.W"])


@pytest.mark.parametrize("target_f", [3, 10])
def test_guard_channel_mismatch_matmul_reshape(target_f):
    """MatMul to F=6 features, reshaped to rows of 3 or 10 (= T·F/...) before a BN over those: the BN's
    channels are not the weight's columns."""
    T, K, F = 5, 4, 6
    g = GraphBuilder(30)
    y = g.node("MatMul", [g.input("X", [2, T, K]), g.weight("W", (K, F))], name="mm")
    y = g.node("Add", [y, g.weight("b", (F,))], name="add")
    y = g.node("Reshape", [y, g.const("shape", np.array([-1, target_f], np.int64))], name="flat")
    g.bn(y, target_f, outputs=["Z"], epsilon=EPS)
    g.output("Z")
    m = g.model()
    assert_not_folded(fuse(m), m, weight="W")


def test_guard_matmul_bn_over_3d_input():
    """MatMul output [B, T, F] straight into BN normalises axis 1 (T), not the features: no fold."""
    T, K, F = 4, 3, 5
    g = GraphBuilder(31)
    y = g.node("MatMul", [g.input("X", [2, T, K]), g.weight("W", (K, F))], name="mm")
    g.bn(y, T, outputs=["Z"], epsilon=EPS)
    g.output("Z")
    m = g.model()
    assert_not_folded(fuse(m), m, weight="W")


def test_guard_matmul_batched_3d_weight():
    B, N, K, F = 2, 3, 4, 5
    g = GraphBuilder(32)
    y = g.node("MatMul", [g.input("X", [B, N, K]), g.weight("W", (B, K, F))], name="mm")
    y = g.node("Reshape", [y, g.const("shape", np.array([-1, F], np.int64))], name="flat")
    g.bn(y, F, outputs=["Z"], epsilon=EPS)
    g.output("Z")
    m = g.model()
    assert_not_folded(fuse(m), m, weight="W")


def test_guard_matmul_add_bias_not_per_feature():
    """An Add bias of shape [F, 1] broadcasts along the rows: it is not a per-feature bias (here rows ==
    F, so sizes alone cannot tell)."""
    F, K = 4, 3
    g = GraphBuilder(33)
    y = g.node("MatMul", [g.input("X", [F, K]), g.weight("W", (K, F))], name="mm")
    y = g.node("Add", [y, g.weight("b", (F, 1))], name="add")
    g.bn(y, F, outputs=["Z"], epsilon=EPS)
    g.output("Z")
    m = g.model()
    assert_not_folded(fuse(m), m, weight="W")


def test_guard_matmul_add_bias_is_graph_input():
    F, K = 4, 3
    g = GraphBuilder(34)
    y = g.node("MatMul", [g.input("X", ["N", K]), g.weight("W", (K, F))], name="mm")
    y = g.node("Add", [y, g.input("bias", [F])], name="add")
    g.bn(y, F, outputs=["Z"], epsilon=EPS)
    g.output("Z")
    m = g.model()
    assert_not_folded(fuse(m), m, weight="W")


def test_guard_matmul_intermediate_with_second_consumer():
    """LeViT chain whose pre-reshape tensor is also used elsewhere: nothing may be rewritten."""
    T, K, F = 3, 4, 5
    g = GraphBuilder(35)
    y = g.node("MatMul", [g.input("X", [2, T, K]), g.weight("W", (K, F))], name="mm")
    a = g.node("Add", [y, g.weight("b", (F,))], name="add")
    r = g.node("Reshape", [a, g.const("shape", np.array([-1, F], np.int64))], name="flat")
    g.bn(r, F, outputs=["Z"], epsilon=EPS)
    g.node("Relu", [a], ["R"], name="relu")
    g.output("Z")
    g.output("R")
    m = g.model()
    assert_not_folded(fuse(m), m, weight="W")


def test_guard_gemm_weight_or_c_is_graph_input():
    for which in ("B", "C"):
        g = GraphBuilder(36)
        b = g.input("B", [4, 5]) if which == "B" else g.weight("B", (4, 5))
        c = g.input("C", [5]) if which == "C" else g.weight("C", (5,))
        y = g.node("Gemm", [g.input("A", [3, 4]), b, c], name="gemm")
        g.bn(y, 5, outputs=["Z"], epsilon=EPS)
        g.output("Z")
        m = g.model()
        assert_not_folded(fuse(m), m, weight="B")
