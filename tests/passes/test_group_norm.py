"""group_norm: PyTorch's Reshape → InstanceNormalization → Reshape (→ Mul/Add), GroupNormalization-18/21
and the ReduceMean decomposition (+ activation) → one ``fuser::FusedGroupNorm<Act>`` node; its constants,
attributes, function body at every opset, provenance, ``--target onnx`` and every guard."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from fuser.fused import GROUP_NORM_ACTIVATIONS, FusedOpType, parse_op_type
from fuser.passes import group_norm as gn_pass

from .builders import (
    GraphBuilder,
    assert_equivalent,
    assert_provenance,
    attrs,
    fuse,
    init,
    ops,
    patterns,
    the_fused,
)
from .test_conv_activation import add_activation

EPS = 1e-5
GN = "fuser::FusedGroupNorm"


def spatial_shape(rank: int, c: int, symbolic: bool = True) -> list:
    """[N, C, *spatial] with symbolic batch and spatial dims (or static ones)."""
    if symbolic:
        return ["N", c, *[f"S{i}" for i in range(rank - 2)]]
    return [2, c, *[5, 4, 3][: rank - 2]]


def torch_gn(g: GraphBuilder, x: str, c: int, groups: int, rank: int, eps: float = EPS, name: str = "gn",
             first=None, second=None, s=None, b=None, affine: bool = True, gamma=None,
             beta=None) -> tuple[str, list[str]]:
    """PyTorch's export of nn.GroupNorm: Reshape([0, G, -1]) → InstanceNormalization(1, 0) → Reshape(Shape(X))
    → Mul(γ[C,1..]) → Add(β[C,1..]). Returns the output and the node names in pattern order."""
    dt = g.dtype
    t1 = g.const(f"{name}.t1", np.array([0, groups, -1] if first is None else first, np.int64))
    r1 = g.node("Reshape", [x, t1], name=f"{name}.r1")
    sc = g.const(f"{name}.s", np.ones(groups, dt) if s is None else np.asarray(s, dt))
    bi = g.const(f"{name}.b", np.zeros(groups, dt) if b is None else np.asarray(b, dt))
    inn = g.node("InstanceNormalization", [r1, sc, bi], name=f"{name}.in", epsilon=eps)
    names = [f"{name}.r1", f"{name}.in"]
    if second is None:
        sh = g.node("Shape", [x], name=f"{name}.shape")
        names.append(f"{name}.shape")
    else:
        sh = g.const(f"{name}.t2", np.array(second, np.int64))
    y = g.node("Reshape", [inn, sh], name=f"{name}.r2")
    names.append(f"{name}.r2")
    if affine:
        cshape = (c,) + (1,) * (rank - 2)
        gm = g.weight(f"{name}.gamma", cshape, 0.5, 1.5) if gamma is None else gamma
        bt = g.weight(f"{name}.beta", cshape) if beta is None else beta
        y = g.node("Add", [g.node("Mul", [y, gm], name=f"{name}.mul"), bt], name=f"{name}.add")
        names += [f"{name}.mul", f"{name}.add"]
    return y, names


def reduce_mean(g: GraphBuilder, x: str, axes: list[int], opset: int, name: str, **kw) -> str:
    if opset >= 18:
        return g.node("ReduceMean", [x, g.const(f"{name}.axes", np.array(axes, np.int64))], name=name, **kw)
    return g.node("ReduceMean", [x], name=name, axes=axes, **kw)


def decomposed_gn(g: GraphBuilder, x: str, c: int, groups: int, rank: int, opset: int, eps: float = EPS,
                  square: str = "pow", div: str = "div", two_subs: bool = False, axes=None, target=None,
                  name: str = "gn", keepdims: int = 1, eps_outside: bool = False) -> tuple[str, list[str]]:
    """The ReduceMean / Sub / Pow / ReduceMean / Add / Sqrt / Div decomposition, then Mul(γ) / Add(β)."""
    dt = g.dtype
    target = [0, groups, -1] if target is None else target
    axes = list(range(2, len(target))) if axes is None else axes
    xg = g.node("Reshape", [x, g.const(f"{name}.t1", np.array(target, np.int64))], name=f"{name}.r1")
    mean = reduce_mean(g, xg, axes, opset, f"{name}.mean", **({"keepdims": keepdims} if keepdims != 1 else {}))
    d = g.node("Sub", [xg, mean], name=f"{name}.sub")
    names = [f"{name}.r1", f"{name}.mean", f"{name}.sub"]
    if square == "pow":
        sq = g.node("Pow", [d, g.const(f"{name}.two", np.array(2.0, dt))], name=f"{name}.sq")
    else:
        sq = g.node("Mul", [d, d], name=f"{name}.sq")
    var = reduce_mean(g, sq, axes, opset, f"{name}.var")
    epsc = g.const(f"{name}.eps", np.array(eps, dt))
    if eps_outside:
        std = g.node("Add", [g.node("Sqrt", [var], name=f"{name}.sqrt"), epsc], name=f"{name}.addeps")
    else:
        std = g.node("Sqrt", [g.node("Add", [var, epsc], name=f"{name}.addeps")], name=f"{name}.sqrt")
    num = g.node("Sub", [xg, mean], name=f"{name}.sub2") if two_subs else d
    if div == "div":
        xn = g.node("Div", [num, std], name=f"{name}.div")
        tail = [f"{name}.div"]
    else:
        rec = g.node("Reciprocal", [std], name=f"{name}.rec")
        xn = g.node("Mul", [rec, num], name=f"{name}.div")
        tail = [f"{name}.rec", f"{name}.div"]
    y = g.node("Reshape", [xn, g.node("Shape", [x], name=f"{name}.shape")], name=f"{name}.r2")
    names += ([f"{name}.sub2"] if two_subs else []) + [f"{name}.sq", f"{name}.var", f"{name}.addeps",
                                                       f"{name}.sqrt", *tail, f"{name}.shape", f"{name}.r2"]
    cshape = (c,) + (1,) * (rank - 2)
    y = g.node("Add", [g.node("Mul", [y, g.weight(f"{name}.gamma", cshape, 0.5, 1.5)], name=f"{name}.mul"),
                       g.weight(f"{name}.beta", cshape)], name=f"{name}.add")
    return y, names + [f"{name}.mul", f"{name}.add"]


def check_gn_node(out: onnx.ModelProto, gamma, beta, groups: int, eps: float, opset: int, dtype=np.float32,
                  activation: str = "") -> onnx.NodeProto:
    f = the_fused(out)
    assert f.op_type == "FusedGroupNorm" + activation
    c = np.asarray(gamma).size
    gm, bt = init(out, f.input[1]), init(out, f.input[2])
    assert gm.shape == (c,) and bt.shape == (c,) and gm.dtype == dtype and bt.dtype == dtype
    np.testing.assert_array_max_ulp(gm, np.asarray(gamma, np.float64).astype(dtype), maxulp=1)
    np.testing.assert_array_max_ulp(bt, np.asarray(beta, np.float64).astype(dtype), maxulp=1)
    a = attrs(f)
    assert a["num_groups"] == groups and a["kernel"] == "group_norm" and a["activation"] == activation
    assert np.float32(a["epsilon"]) == np.float32(eps)  # the float32 the model had, bit for bit
    if opset < 15:
        assert len(f.input) == 5
        assert init(out, f.input[3]).dtype == dtype and np.isclose(init(out, f.input[3]), eps, rtol=1e-3)
        assert list(init(out, f.input[4])) == [0, groups, -1]
    else:
        assert len(f.input) == 3
    return f


def affine_of(g: GraphBuilder, name: str = "gn") -> tuple[np.ndarray, np.ndarray]:
    v = g.values
    return v[f"{name}.gamma"].reshape(-1).astype(np.float64), v[f"{name}.beta"].reshape(-1).astype(np.float64)


# -- (a) PyTorch's export ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("rank,c,groups,opset", [
    (4, 8, 2, 17), (4, 8, 1, 13), (4, 8, 8, 18), (3, 6, 3, 11), (3, 16, 16, 17), (5, 4, 2, 15), (2, 8, 4, 17),
    (4, 8, 4, 9),
])
def test_torch_export_form(rank, c, groups, opset):
    g = GraphBuilder(rank + groups)
    y, names = torch_gn(g, g.input("X", spatial_shape(rank, c)), c, groups, rank)
    g.node("Identity", [y], ["Z"], name="id")
    g.output("Z", spatial_shape(rank, c))
    m = g.model(opset=opset)
    res = fuse(m)
    out = res.model
    assert ops(out) == {GN: 1, "Identity": 1}
    f = check_gn_node(out, *affine_of(g), groups, EPS, opset)
    assert f.input[0] == "X"
    assert_provenance(out, f, "group_norm_instance_norm", names)
    assert out.graph.output[0] == m.graph.output[0]  # symbolic dims kept
    assert_equivalent(m, out)
    assert_equivalent(m, out, shapes={"X": [3, c, *[7, 2, 5][: rank - 2]]})  # other sizes of the same model


@pytest.mark.parametrize("first,second", [
    ([2, 4, -1], [2, 8, 5, 4]),   # static N in the target, a folded Shape(X) as the second target
    ([-1, 4, 40], [0, 8, 5, -1]),  # -1 first: it is N because 4·40 = C·S
    ([0, -1, 40], None),          # G inferred: 8·20 / 40 = 4
    ([0, 4, 2, -1], None),        # [N, G, C/G, S]: InstanceNorm over the last two axes
])
def test_torch_form_static_targets(first, second):
    g = GraphBuilder(3)
    y, names = torch_gn(g, g.input("X", [2, 8, 5, 4]), 8, 4, 4, first=first, second=second)
    g.node("Identity", [y], ["Z"], name="id")
    g.output("Z", [2, 8, 5, 4])
    m = g.model(opset=17)
    out = fuse(m).model
    assert ops(out) == {GN: 1, "Identity": 1}
    check_gn_node(out, *affine_of(g), 4, EPS, 17)
    assert_equivalent(m, out)


def test_instance_norm_scale_and_bias_fold_into_gamma_beta():
    g = GraphBuilder(4)
    s, b = g.rand((4,), 0.5, 1.5), g.rand((4,))
    y, _ = torch_gn(g, g.input("X", ["N", 8, "H", "W"]), 8, 4, 4, s=s, b=b)
    g.output(y)
    m = g.model(opset=17)
    out = fuse(m).model
    gm, bt = affine_of(g)
    sc, bc = np.repeat(s.astype(np.float64), 2), np.repeat(b.astype(np.float64), 2)
    check_gn_node(out, sc * gm, bc * gm + bt, 4, EPS, 17)
    assert_equivalent(m, out)


def test_groups_equal_channels_dynamo_form_without_second_reshape():
    """wav2vec2 by dynamo: [N, C, L] viewed as [N, C, -1] (a no-op) → InstanceNormalization → Mul → Add."""
    g = GraphBuilder(5)
    x = g.input("X", ["N", 16, "L"])
    r1 = g.node("Reshape", [x, g.const("t1", np.array([0, 16, -1], np.int64))], name="r1")
    inn = g.node("InstanceNormalization", [r1, g.const("s", np.ones(16, np.float32)),
                                           g.const("b", np.zeros(16, np.float32))], name="in", epsilon=EPS)
    y = g.node("Add", [g.node("Mul", [inn, g.weight("gn.gamma", (16, 1), 0.5, 1.5)], name="mul"),
                       g.weight("gn.beta", (16, 1))], name="add")
    g.output(y)
    m = g.model(opset=18)
    out = fuse(m).model
    assert ops(out) == {GN: 1}
    f = check_gn_node(out, *affine_of(g), 16, EPS, 18)
    assert_provenance(out, f, "group_norm_instance_norm", ["r1", "in", "mul", "add"])
    assert_equivalent(m, out)


def test_bare_instance_normalization_is_group_norm_with_g_equal_c():
    g = GraphBuilder(6)
    s, b = g.rand((6,), 0.5, 1.5), g.rand((6,))
    g.node("InstanceNormalization", [g.input("X", ["N", 6, "H", "W"]), g.const("s", s), g.const("b", b)], ["Y"],
           name="in", epsilon=1e-3)
    g.node("Relu", ["Y"], ["Z"], name="relu")
    g.output("Z")
    m = g.model(opset=13)
    out = fuse(m).model
    check_gn_node(out, s, b, 6, 1e-3, 13, activation="Relu")
    assert_equivalent(m, out)


def test_shared_constants_between_group_norms():
    """dynamo shares one [0, G, -1] target and one ones/zeros pair among the GroupNorms; both fuse, the
    shared constants are left as they were."""
    g = GraphBuilder(7)
    x = g.input("X", ["N", 8, 4, 4])
    y1, _ = torch_gn(g, x, 8, 2, 4, name="a")
    t1 = "a.t1"
    r1 = g.node("Reshape", [y1, t1], name="b.r1")
    inn = g.node("InstanceNormalization", [r1, "a.s", "a.b"], name="b.in", epsilon=EPS)
    y2 = g.node("Reshape", [inn, g.node("Shape", [y1], name="b.shape")], name="b.r2")
    g.node("Add", [y2, x], ["Z"], name="res")
    g.output("Z")
    m = g.model(opset=17)
    out = fuse(m).model
    assert ops(out) == {GN: 2, "Add": 1}
    assert_equivalent(m, out)


@pytest.mark.parametrize("raw_consumer", [False, True])
def test_shared_normalisation_splits_into_one_node_per_group_norm(raw_consumer):
    """dynamo's CSE merges two GroupNorms of the same X into one normalisation with two Mul/Add tails;
    each becomes its own fused node (a consumer of the plain normalisation gets one more)."""
    g = GraphBuilder(30)
    y, _ = torch_gn(g, g.input("X", ["N", 8, "H", "W"]), 8, 4, 4, affine=False)
    for k in ("a", "b"):
        z = g.node("Add", [g.node("Mul", [y, g.weight(f"{k}.gamma", (8, 1, 1), 0.5, 1.5)], name=f"{k}.mul"),
                           g.weight(f"{k}.beta", (8, 1, 1))], name=f"{k}.add")
        g.node("Relu", [z], [f"Z{k}"], name=f"{k}.relu")
        g.output(f"Z{k}")
    if raw_consumer:
        g.node("Neg", [y], ["Zn"], name="neg")
        g.output("Zn")
    m = g.model(opset=18)
    out = fuse(m).model
    want = {"fuser::FusedGroupNormRelu": 2}
    if raw_consumer:
        want.update({GN: 1, "Neg": 1})
    assert ops(out) == want
    assert_equivalent(m, out)


# -- (b) GroupNormalization-18 / -21 ----------------------------------------------------------------------------

@pytest.mark.parametrize("opset", [18, 21])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_group_normalization_op(opset, dtype):
    g = GraphBuilder(8, dtype)
    c, groups = 8, 4
    per = c if opset >= 21 else groups
    scale, bias = g.rand((per,), 0.5, 1.5), g.rand((per,))
    y = g.node("GroupNormalization", [g.input("X", ["N", c, "H", "W"]), g.const("scale", scale),
                                      g.const("bias", bias)], name="gn", num_groups=groups, epsilon=1e-4)
    names = ["gn", *add_activation(g, "SiLU", y)]
    g.output("Z")
    m = g.model(opset=opset, ir=10 if opset >= 21 else 8)
    out = fuse(m).model
    rep = c // per
    f = check_gn_node(out, np.repeat(scale.astype(np.float64), rep), np.repeat(bias.astype(np.float64), rep), groups,
                      1e-4, opset, dtype, "SiLU")
    assert_provenance(out, f, "group_norm_op_silu", names)
    assert_equivalent(m, out)


# -- (c) the decomposition --------------------------------------------------------------------------------------

@pytest.mark.parametrize("square,div,two_subs,axes,target,opset", [
    ("pow", "div", False, None, None, 13),
    ("mul", "div", False, [-1], None, 17),
    ("pow", "recip", True, None, None, 18),
    ("mul", "recip", False, [-1], None, 18),
    ("pow", "div", True, [2, 3], [0, 2, 4, -1], 17),
    ("pow", "div", False, [-2, -1], [0, 2, 4, -1], 11),
])
def test_decomposed(square, div, two_subs, axes, target, opset):
    g = GraphBuilder(9)
    y, names = decomposed_gn(g, g.input("X", ["N", 8, "H", "W"]), 8, 2, 4, opset, square=square, div=div,
                             two_subs=two_subs, axes=axes, target=target, eps=1e-6)
    names += add_activation(g, "Relu", y)
    g.output("Z", ["N", 8, "H", "W"])
    m = g.model(opset=opset)
    out = fuse(m).model
    assert ops(out) == {"fuser::FusedGroupNormRelu": 1}
    f = check_gn_node(out, *affine_of(g), 2, 1e-6, opset, activation="Relu")
    assert_provenance(out, f, "group_norm_decomposed_relu", names)
    assert_equivalent(m, out)


def test_decomposed_fp16_epsilon_captured_exactly():
    g = GraphBuilder(10, np.float16)
    y, _ = decomposed_gn(g, g.input("X", ["N", 8, 6, 6]), 8, 4, 4, 17, eps=1e-5)
    g.output(y)
    m = g.model(opset=17)
    out = fuse(m).model
    f = check_gn_node(out, *affine_of(g), 4, float(np.float16(1e-5)), 17, np.float16)
    assert attrs(f)["epsilon"] == float(np.float16(1e-5))
    assert_equivalent(m, out)


# -- activations and the affine chain ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind,opset,act,params", [
    ("SiLU", 17, "SiLU", {}), ("SiLUswapped", 17, "SiLU", {}), ("Relu", 17, "Relu", {}),
    ("LeakyRelu", 17, "LeakyRelu", {"alpha": 0.2}), ("Sigmoid", 13, "Sigmoid", {}), ("Tanh", 13, "Tanh", {}),
    ("HardSigmoid", 13, "HardSigmoid", {"alpha": 0.3, "beta": 0.4}), ("HardSwish", 14, "HardSwish", {}),
])
def test_activation_folded(kind, opset, act, params):
    g = GraphBuilder(11)
    y, names = torch_gn(g, g.input("X", ["N", 8, "H", "W"]), 8, 4, 4)
    names += add_activation(g, kind, y)
    g.output("Z")
    m = g.model(opset=opset)
    out = fuse(m).model
    assert ops(out) == {f"fuser::FusedGroupNorm{act}": 1}
    f = check_gn_node(out, *affine_of(g), 4, EPS, opset, activation=act)
    a = attrs(f)
    for k, v in params.items():
        assert np.isclose(a[k], v), k
    assert_provenance(out, f, f"group_norm_instance_norm_{act.lower()}", names)
    assert_equivalent(m, out)


def test_clip_is_not_folded():
    """The GroupNorm epilogue takes no Clip bounds: Clip stays a node after the fused GroupNorm."""
    g = GraphBuilder(12)
    y, _ = torch_gn(g, g.input("X", ["N", 8, "H", "W"]), 8, 4, 4)
    add_activation(g, "ClipInputs", y)
    g.output("Z")
    m = g.model(opset=13)
    out = fuse(m).model
    assert ops(out) == {GN: 1, "Clip": 1}
    assert_equivalent(m, out)


def test_affine_chain_variants():
    """No affine (affine=False), then Div, Sub, Mul, Add chains: all per-channel, all absorbed."""
    g = GraphBuilder(13)
    y, _ = torch_gn(g, g.input("X", ["N", 8, "L"]), 8, 2, 3, affine=False)
    d = g.rand((8, 1), 0.5, 1.5)
    k = g.rand((1,))
    y = g.node("Div", [y, g.const("d", d)], name="div")
    y = g.node("Sub", [y, g.const("k", k)], name="sub")
    g.node("Tanh", [y], ["Z"], name="tanh")
    g.output("Z")
    m = g.model(opset=17)
    out = fuse(m).model
    assert ops(out) == {"fuser::FusedGroupNormTanh": 1}
    gm = 1.0 / d.reshape(-1).astype(np.float64)
    check_gn_node(out, gm, np.full(8, -k.astype(np.float64)[0]), 2, EPS, 17, activation="Tanh")
    assert_equivalent(m, out)


def test_gamma_from_graph_input_stays_a_mul():
    g = GraphBuilder(14)
    y, _ = torch_gn(g, g.input("X", ["N", 8, "H", "W"]), 8, 4, 4, gamma=g.input("G", [8, 1, 1]))
    g.output(y)
    m = g.model(opset=17)
    out = fuse(m).model
    assert ops(out) == {GN: 1, "Mul": 1, "Add": 1}  # γ is not a constant: neither it nor β (after it) folds
    assert_equivalent(m, out)


def test_non_per_channel_constant_stays():
    g = GraphBuilder(15)
    y, _ = torch_gn(g, g.input("X", ["N", 8, 4, 4]), 8, 4, 4, affine=False)
    g.node("Mul", [y, g.weight("full", (8, 4, 4))], ["Z"], name="mul")
    g.output("Z")
    m = g.model(opset=17)
    out = fuse(m).model
    assert ops(out) == {GN: 1, "Mul": 1}
    assert_equivalent(m, out)


# -- fp16 ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("opset", [11, 13, 17, 18])
def test_fp16_torch_form(opset):
    g = GraphBuilder(16, np.float16)
    y, _ = torch_gn(g, g.input("X", ["N", 8, "H", "W"]), 8, 4, 4)
    add_activation(g, "SiLU", y)
    g.output("Z")
    m = g.model(opset=opset)
    out = fuse(m).model
    check_gn_node(out, *affine_of(g), 4, EPS, opset, np.float16, "SiLU")
    assert_equivalent(m, out)


# -- guards -----------------------------------------------------------------------------------------------------

def _no_group_norm_fusion(m: onnx.ModelProto, left: str, **kw) -> None:
    out = fuse(m).model
    assert left in ops(out), ops(out)
    assert not any(n.op_type.startswith("FusedGroupNorm") and "X" in n.input for n in out.graph.node), ops(out)
    assert_equivalent(m, out, **kw)


def test_guard_instance_norm_scale_not_constant():
    g = GraphBuilder(17)
    x = g.input("X", ["N", 8, "H", "W"])
    r1 = g.node("Reshape", [x, g.const("t1", np.array([0, 4, -1], np.int64))], name="r1")
    inn = g.node("InstanceNormalization", [r1, g.input("S", [4]), g.const("b", np.zeros(4, np.float32))],
                 name="in")
    g.node("Reshape", [inn, g.node("Shape", [x], name="shape")], ["Z"], name="r2")
    g.output("Z")
    _no_group_norm_fusion(g.model(opset=17), "InstanceNormalization")


def test_guard_group_normalization_scale_not_constant():
    g = GraphBuilder(18)
    g.node("GroupNormalization", [g.input("X", ["N", 8, 3, 3]), g.input("S", [8]), g.const("b", g.rand((8,)))],
           ["Z"], name="gn", num_groups=2)
    g.output("Z")
    _no_group_norm_fusion(g.model(opset=21, ir=10), "GroupNormalization")


def test_guard_target_not_constant():
    """The group count must come from a constant Reshape target."""
    g = GraphBuilder(19)
    x = g.input("X", ["N", 8, "H", "W"])
    y, _ = decomposed_gn(g, x, 8, 2, 4, 17)
    g.output(y)
    m = g.model(opset=17)
    t1 = next(t for t in m.graph.initializer if t.name == "gn.t1")
    m.graph.initializer.remove(t1)
    m.graph.input.append(helper.make_tensor_value_info("gn.t1", onnx.TensorProto.INT64, [3]))
    out = fuse(m).model
    assert "ReduceMean" in ops(out) and not any(n.op_type.startswith("FusedGroupNorm") for n in out.graph.node)


@pytest.mark.parametrize("first", [[1, 8, -1], [0, 16, -1]])
def test_guard_grouping_must_keep_n_first_and_g_second(first):
    """[1, 2G, -1] on N = 2 folds the batch into the groups; [0, 2C, -1] splits channels. The Reshapes
    stay (at most the InstanceNormalization alone fuses, as GroupNorm with G = C of its own input)."""
    g = GraphBuilder(20)
    y, _ = torch_gn(g, g.input("X", [2, 8, 5, 4]), 8, 4, 4, first=first, affine=False,
                    s=np.ones(first[1]), b=np.zeros(first[1]))
    g.output(y)
    m = g.model(opset=17)
    out = fuse(m).model
    assert ops(out).get("Reshape") == 2
    assert_equivalent(m, out)


def test_guard_second_reshape_must_restore_x():
    g = GraphBuilder(21)
    y, _ = torch_gn(g, g.input("X", [2, 8, 5, 4]), 8, 4, 4, second=[2, 8, 20], affine=False)
    g.output(y)
    m = g.model(opset=17)
    out = fuse(m).model
    assert ops(out).get("Reshape") == 2
    assert_equivalent(m, out)


def test_guard_intermediate_is_graph_output():
    g = GraphBuilder(22)
    y, _ = decomposed_gn(g, g.input("X", ["N", 8, "H", "W"]), 8, 2, 4, 17)
    g.output(y)
    g.output("gn.mean_y0")
    _no_group_norm_fusion(g.model(opset=17), "ReduceMean")


def test_guard_mean_has_another_consumer():
    g = GraphBuilder(23)
    y, _ = decomposed_gn(g, g.input("X", ["N", 8, "H", "W"]), 8, 2, 4, 17)
    g.output(y)
    g.node("Neg", ["gn.mean_y0"], ["M"], name="neg")
    g.output("M")
    _no_group_norm_fusion(g.model(opset=17), "ReduceMean")


@pytest.mark.parametrize("variant", ["eps_outside", "keepdims0", "axes_with_groups", "axes_partial"])
def test_guard_decomposition_shapes(variant):
    g = GraphBuilder(24)
    kw = {"eps_outside": {"eps_outside": True}, "axes_with_groups": {"axes": [1, 2]},
          "axes_partial": {"axes": [3], "target": [0, 2, 4, -1]}}.get(variant, {})
    x = g.input("X", ["N", 8, 6, 6])
    if variant == "keepdims0":  # mean without keepdims, broadcast back by an Unsqueeze: not our pattern
        xg = g.node("Reshape", [x, g.const("t1", np.array([0, 2, -1], np.int64))], name="r1")
        mean = g.node("ReduceMean", [xg], name="mean", axes=[2], keepdims=0)
        d = g.node("Sub", [xg, g.node("Unsqueeze", [mean], name="unsq", axes=[2])], name="sub")
        var = g.node("ReduceMean", [g.node("Mul", [d, d], name="sq")], name="var", axes=[2])
        xn = g.node("Div", [d, g.node("Sqrt", [g.node("Add", [var, g.const("eps", np.array(EPS, np.float32))],
                                                       name="addeps")], name="sqrt")], name="div")
        g.node("Reshape", [xn, g.node("Shape", [x], name="shape")], ["Z"], name="r2")
        y = "Z"
    else:
        y, _ = decomposed_gn(g, x, 8, 2, 4, 12, **kw)
    g.output(y)
    _no_group_norm_fusion(g.model(opset=12), "ReduceMean")


def test_guard_float64():
    g = GraphBuilder(25, np.float64)
    y, _ = decomposed_gn(g, g.input("X", ["N", 8, "H", "W"]), 8, 2, 4, 17)
    g.output(y)
    _no_group_norm_fusion(g.model(opset=17), "ReduceMean")


def test_guard_symbolic_channels():
    g = GraphBuilder(26)
    x = g.input("X", ["N", "C", "H", "W"])
    g.node("GroupNormalization", [x, g.const("s", g.rand((8,))), g.const("b", g.rand((8,)))], ["Z"], name="gn",
           num_groups=8)
    g.output("Z")
    _no_group_norm_fusion(g.model(opset=21, ir=10), "GroupNormalization", shapes={"X": [2, 8, 3, 3]})


def test_target_helper_refuses_allowzero_with_zero():
    import onnx_graphsurgeon as gs

    for allowzero, target, want in ((1, [0, 4, -1], None), (1, [2, 4, -1], [2, 4, -1]), (0, [0, 4, -1], [0, 4, -1])):
        x = gs.Variable("x", np.float32, [2, 8, 4])
        node = gs.Node("Reshape", inputs=[x, gs.Constant("t", np.array(target, np.int64))],
                       outputs=[gs.Variable("y")], attrs={"allowzero": allowzero})
        assert gn_pass._target(node) == want


# -- function bodies, target onnx, runtime ------------------------------------------------------------------------

@pytest.mark.parametrize("opset", [9, 11, 13, 14, 15, 17, 18, 20, 21, 22])
def test_function_body_valid_at_every_opset(opset):
    for act in GROUP_NORM_ACTIVATIONS:
        if act == "HardSwish" and opset < 14:
            continue
        f = FusedOpType("GroupNorm", act).function(opset)
        ops_in = {n.op_type for n in f.node}
        assert ("CastLike" in ops_in) == (opset >= 15)
        assert ("eps" in f.input and "group_shape" in f.input) == (opset < 15)
        means = [n for n in f.node if n.op_type == "ReduceMean"]
        assert all((len(n.input) == 2) == (opset >= 18) for n in means) and len(means) == 2
        for n in f.node:
            schema = onnx.defs.get_schema(n.op_type, opset)
            assert schema.since_version <= opset and not schema.deprecated, (n.op_type, opset)
        assert {a for a in f.attribute} >= {"num_groups", "epsilon", "activation", "kernel", "tactic"}


def test_parse_op_type_round_trip():
    for act in GROUP_NORM_ACTIVATIONS:
        ft = FusedOpType("GroupNorm", act)
        assert parse_op_type(ft.name) == ft and ft.kernel == "group_norm"
    assert parse_op_type("FusedGroupNormClip") is None and parse_op_type("FusedGroupNormAddRelu") is None


@pytest.mark.parametrize("opset", [13, 17, 21])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_target_onnx(opset, dtype):
    g = GraphBuilder(27, dtype)
    y, _ = torch_gn(g, g.input("X", ["N", 8, "H", "W"]), 8, 4, 4, eps=1e-6)
    add_activation(g, "SiLU", y)
    g.output("Z")
    m = g.model(opset=opset, ir=10 if opset >= 21 else 8)
    out = fuse(m, target="onnx").model
    assert not out.functions and all(n.domain in ("", "ai.onnx") for n in out.graph.node)
    o = ops(out)
    if opset >= 21:
        assert o == {"GroupNormalization": 1, "Sigmoid": 1, "Mul": 1}
        n = next(n for n in out.graph.node if n.op_type == "GroupNormalization")
        a = attrs(n)
        assert a["num_groups"] == 4 and np.float32(a["epsilon"]) == np.float32(1e-6) and a["stash_type"] == 1
    else:
        assert "GroupNormalization" not in o and "InstanceNormalization" not in o and o["ReduceMean"] == 2
    assert_equivalent(m, out)


def test_refusing_a_fused_model_changes_nothing():
    g = GraphBuilder(28)
    y, _ = torch_gn(g, g.input("X", ["N", 8, "H", "W"]), 8, 4, 4)
    add_activation(g, "SiLU", y)
    g.output("Z")
    m = g.model(opset=17)
    first = fuse(m)
    second = fuse(first.model)
    assert second.fusions == [] and ops(second.model) == ops(first.model)
    assert_equivalent(m, second.model)


def test_pass_can_be_skipped():
    g = GraphBuilder(29)
    y, _ = torch_gn(g, g.input("X", ["N", 8, "H", "W"]), 8, 4, 4)
    g.output(y)
    m = g.model(opset=17)
    res = fuse(m, skip=("group_norm",))
    assert "InstanceNormalization" in ops(res.model) and not patterns(res)
