"""Layout views (fuser.layout_views): attention kernel steps read Q/K/V out of the projections and write the merged
heads directly; the head-split Reshape/Transpose/Split nodes do not run. Planned here on CPU (the numpy runtime
applies the same views), run on the GPU in tests/gpu/test_layout_views_gpu.py."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from fuser.layout_views import InputView, OutputView, numpy_input, resolve_input, resolve_output
from fuser.pipeline import run_pipeline
from fuser.runtime import KernelStep, Session

from .passes.builders import compare, ort_outputs
from .passes.test_attention import bert_attention, simple_attention
from .passes.test_pack_qkv import cross_attention


def _plan_nodes(s: Session) -> list[str]:
    return [n.op_type for st in s.steps for n in ([st.node] if isinstance(st, KernelStep) else st.nodes)]


def _views(s: Session):
    (v,) = s.views.values()
    return v


def _check_same(m: onnx.ModelProto, fused: onnx.ModelProto, feeds: dict) -> None:
    ref = ort_outputs(m, feeds)
    compare(ref, Session(fused).run(None, feeds), None, "views")
    compare(ref, Session(fused, layout_views=False).run(None, feeds), None, "no views")


def test_bert_reads_the_packed_projection():
    m, feeds = bert_attention()
    fused = run_pipeline(m).model
    s = Session(fused)
    v = _views(s)
    split = next(n for n in fused.graph.node if n.op_type == "Split")
    assert sorted(v.inputs) == [0, 1, 2] and {x.source for x in v.inputs.values()} == {split.input[0]}
    assert [v.inputs[i].offset for i in range(3)] == [0, 16, 32] and v.output is not None
    plan = _plan_nodes(s)
    assert "Split" not in plan and "Transpose" not in plan  # all four Transposes and the Split are gone
    assert len(plan) == len(_plan_nodes(Session(fused, layout_views=False))) - 9
    _check_same(m, fused, feeds)


def test_unpacked_projections_are_read_directly():
    m, feeds = bert_attention()
    fused = run_pipeline(m, skip=("pack_qkv",)).model
    v = _views(Session(fused))
    assert all(x.offset == 0 and x.width is None for x in v.inputs.values())
    assert {x.source for x in v.inputs.values()} == {"add_q_y0", "add_k_y0", "add_v_y0"}
    _check_same(m, fused, feeds)


def test_cross_lengths():
    m, feeds = cross_attention()
    fused = run_pipeline(m).model
    v = _views(Session(fused))
    assert sorted(v.inputs) == [0, 1, 2] and v.output is not None
    _check_same(m, fused, feeds)


def test_a_split_output_used_elsewhere_keeps_the_split():
    m, feeds = bert_attention()
    fused = run_pipeline(m).model
    split = next(n for n in fused.graph.node if n.op_type == "Split")
    fused.graph.output.append(onnx.helper.make_tensor_value_info(split.output[2], onnx.TensorProto.FLOAT, [2, 5, 16]))
    s = Session(fused)
    v = _views(s)
    # one Split output is needed as it is: the Split runs, and every view reads its output as a whole row
    assert all(v.inputs[i].source == split.output[i] and v.inputs[i].offset == 0 for i in range(3))
    assert "Split" in _plan_nodes(s) and "Transpose" not in _plan_nodes(s)
    feeds_out = Session(fused).run(None, feeds)
    ref = ort_outputs(fused, feeds)
    compare(ref, feeds_out, None, "views")


def test_a_transpose_that_is_a_graph_output_stays():
    m, feeds = bert_attention()
    fused = run_pipeline(m).model
    att = next(n for n in fused.graph.node if n.op_type.startswith("FusedAttention"))
    fused.graph.output.append(onnx.helper.make_tensor_value_info(att.input[0], onnx.TensorProto.FLOAT, [2, 2, 5, 8]))
    fused.graph.output.append(onnx.helper.make_tensor_value_info(att.output[0], onnx.TensorProto.FLOAT, [2, 2, 5, 8]))
    v = _views(Session(fused))
    assert sorted(v.inputs) == [1, 2] and v.output is None
    compare(ort_outputs(fused, feeds), Session(fused).run(None, feeds), None, "views")


def test_head_dims_off_the_alignment_get_no_views():
    m, feeds = bert_attention(qk_hidden=12, v_hidden=12)  # D = 6
    fused = run_pipeline(m).model
    assert Session(fused).views == {} or not _views(Session(fused)).inputs
    _check_same(m, fused, feeds)


def test_rank3_attention_reads_through_its_unsqueeze():
    m = simple_attention(rank=3)[0] if isinstance(simple_attention(rank=3), tuple) else simple_attention(rank=3)
    fused = run_pipeline(m).model
    s = Session(fused)
    # no head split: only the static-shape chains apply, through the pass's Unsqueeze(1) (one head, stride 0)
    (v,) = s.views.values()
    assert sorted(v.inputs) == [0, 1, 2] and all(x.strides == (40, 0, 8) for x in v.inputs.values())
    assert "Unsqueeze" not in _plan_nodes(s)
    assert v.output is None  # the Squeeze after it makes a graph output: it runs


def test_resolve_checks_the_source_shape():
    view = InputView("p", 16, 16, (0, 0, -1, 8), ("t", "r", "s"), "q")
    assert resolve_input(view, (2, 5, 48)) == ((2, 2, 5, 8), (5 * 48, 8, 48))
    with pytest.raises(RuntimeError, match="expected \\[B, S, row\\]"):
        resolve_input(view, (10, 48))
    with pytest.raises(RuntimeError, match="not a head split"):
        resolve_input(InputView("p", 0, None, (2, 5, 3, 8), ("t", "r")), (2, 5, 16))
    with pytest.raises(RuntimeError, match="not a head split"):
        resolve_input(InputView("p", 40, 16, (0, 0, 2, 8), ("t", "r", "s")), (2, 5, 48))  # past the row
    out = OutputView("y", (0, 0, -1), ("t", "r"))
    assert resolve_output(out, (2, 3, 5, 8)) == ((2, 5, 24), (5 * 24, 8, 24))
    with pytest.raises(RuntimeError, match="does not merge"):
        resolve_output(OutputView("y", (2, 5, 12), ("t", "r")), (2, 3, 5, 8))


def test_numpy_view_matches_split_reshape_transpose():
    rng = np.random.default_rng(0)
    p = rng.standard_normal((2, 5, 48)).astype(np.float32)
    view = InputView("p", 16, 16, (0, 0, 2, 8), ("t", "r", "s"), "k")
    want = p[:, :, 16:32].reshape(2, 5, 2, 8).transpose(0, 2, 1, 3)
    assert np.array_equal(numpy_input(view, p), want)


@pytest.mark.parametrize("family", ["bert", "vit", "distilbert"])
def test_real_exports_get_views_and_match(family):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from .attention_zoo import build, export

    module, args, names = build(family, "eager")
    m = export(module, args, names, dynamo=False, opset=17)
    fused = run_pipeline(m).model
    s = Session(fused)
    assert s.views and all(len(v.inputs) == 3 and v.output is not None for v in s.views.values())
    feeds = {n: a.numpy() for n, a in zip(names, args, strict=True)}
    ref = ort_outputs(m, feeds)
    compare(ref, s.run(None, feeds), 1e-5, "views")
    del torch


# -- any chain of layout ops, static shapes (layout_views.plan_static_views) ------------------------------------

def mha_chain_attention(s: int = 7, b: int = 2, heads: int = 2, d: int = 8, out_graph_output: str | None = None,
                        dynamic: bool = False):
    """nn.MultiheadAttention's export, by hand (``dynamic``: a symbolic S, targets with 0 and -1):
    x [S, B, E] ─► packed in_proj ─► Reshape [S, B, 3, E] ─► Unsqueeze 0 ─► Transpose(3, 1, 2, 0, 4) ─► Squeeze 3
    ─► Gather(0, i) ─► Reshape [S, B·H, D] ─► Transpose(1, 0, 2) ─► Reshape [B, H, S, D] ─► attention
    ─► Transpose(2, 0, 1, 3) ─► Reshape [S·B, E] ─► MatMul."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    e = heads * d
    inits = [numpy_helper.from_array(rng.standard_normal((e, 3 * e)).astype(np.float32) * 0.3, "w_in"),
             numpy_helper.from_array(rng.standard_normal(3 * e).astype(np.float32) * 0.1, "b_in"),
             numpy_helper.from_array(rng.standard_normal((e, e)).astype(np.float32) * 0.3, "w_out"),
             numpy_helper.from_array(np.array([0 if dynamic else s, b, 3, e], np.int64), "t_split3"),
             numpy_helper.from_array(np.array([0], np.int64), "ax0"),
             numpy_helper.from_array(np.array([3], np.int64), "ax3"),
             numpy_helper.from_array(np.array([-1 if dynamic else s, b * heads, d], np.int64), "t_bh"),
             numpy_helper.from_array(np.array([b, heads, -1 if dynamic else s, d], np.int64), "t_bhsd"),
             numpy_helper.from_array(np.array([-1 if dynamic else s * b, e], np.int64), "t_merge"),
             numpy_helper.from_array(np.array(d ** -0.5, np.float32), "scale")]
    inits += [numpy_helper.from_array(np.array(i, np.int64), f"i{i}") for i in range(3)]
    nodes = [helper.make_node("MatMul", ["x", "w_in"], ["proj"], name="in_proj"),
             helper.make_node("Add", ["proj", "b_in"], ["p"], name="in_bias"),
             helper.make_node("Reshape", ["p", "t_split3"], ["p4"], name="unflatten"),
             helper.make_node("Unsqueeze", ["p4", "ax0"], ["p5"], name="unsq"),
             helper.make_node("Transpose", ["p5"], ["p5t"], name="tr5", perm=[3, 1, 2, 0, 4]),
             helper.make_node("Squeeze", ["p5t", "ax3"], ["qkv"], name="sq")]
    for i, n in enumerate("qkv"):
        nodes += [helper.make_node("Gather", ["qkv", f"i{i}"], [f"{n}0"], name=f"gather_{n}", axis=0),
                  helper.make_node("Reshape", [f"{n}0", "t_bh"], [f"{n}1"], name=f"rs_{n}"),
                  helper.make_node("Transpose", [f"{n}1"], [f"{n}2"], name=f"tr_{n}", perm=[1, 0, 2]),
                  helper.make_node("Reshape", [f"{n}2", "t_bhsd"], [n], name=f"heads_{n}")]
    nodes += [helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 1, 3, 2]),
              helper.make_node("MatMul", ["q", "kt"], ["qk"], name="qk"),
              helper.make_node("Mul", ["qk", "scale"], ["sc"], name="scale_mul"),
              helper.make_node("Softmax", ["sc"], ["pr"], name="softmax", axis=-1),
              helper.make_node("MatMul", ["pr", "v"], ["o"], name="pv"),
              helper.make_node("Transpose", ["o"], ["o2"], name="tr_o", perm=[2, 0, 1, 3]),
              helper.make_node("Reshape", ["o2", "t_merge"], ["o3"], name="merge"),
              helper.make_node("MatMul", ["o3", "w_out"], ["y"], name="out_proj")]
    x_shape = ["s", b, e] if dynamic else [s, b, e]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["sb" if dynamic else s * b, e])]
    if out_graph_output:
        outs.append(helper.make_tensor_value_info(out_graph_output, TensorProto.FLOAT, [3, s, b, e]))
    g = helper.make_graph(nodes, "mha_chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                          outs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return m, {"x": rng.standard_normal((s, b, e)).astype(np.float32)}


def test_mha_chain_is_read_through_strides():
    m, feeds = mha_chain_attention()
    fused = run_pipeline(m).model
    s = Session(fused)
    v = _views(s)
    assert sorted(v.inputs) == [0, 1, 2] and v.output is not None
    assert {x.source for x in v.inputs.values()} == {"p"} and [v.inputs[i].offset for i in range(3)] == [0, 16, 32]
    # Q[b, h, s, d] = p[s, b, h·D + d]: batch stride 3E, head stride D, row stride B·3E
    assert v.inputs[0].strides == (48, 8, 96) and v.inputs[0].shape == (2, 2, 7, 8)
    assert v.output.strides == (16, 8, 32) and v.output.shape == (14, 16)  # O[b, h, s] lands at row s·B + b
    plan = _plan_nodes(s)
    assert plan == ["MatMul", "Add", "FusedAttention", "MatMul"], plan
    _check_same(m, fused, feeds)


def test_mha_chain_value_used_elsewhere_cuts_the_chain_there():
    m, feeds = mha_chain_attention(out_graph_output="qkv")  # the stacked [3, S, B, E] is also a graph output
    fused = run_pipeline(m).model
    s = Session(fused)
    v = _views(s)
    assert {x.source for x in v.inputs.values()} == {"qkv"}  # Reshape…Squeeze run; the views start after them
    assert [v.inputs[i].offset for i in range(3)] == [0, 7 * 2 * 16, 2 * 7 * 2 * 16]
    assert "Squeeze" in _plan_nodes(s) and "Gather" not in _plan_nodes(s)
    _check_same(m, fused, feeds)


def test_mha_chain_with_unaligned_heads_is_not_viewed():
    m, feeds = mha_chain_attention(d=6)
    fused = run_pipeline(m).model
    assert not Session(fused).views
    _check_same(m, fused, feeds)


def test_mha_chain_with_dynamic_shapes_is_not_viewed():
    m, feeds = mha_chain_attention(dynamic=True)
    fused = run_pipeline(m).model
    s = Session(fused)
    assert all(x.strides is None for v in s.views.values() for x in v.inputs.values())
    _check_same(m, fused, feeds)


def test_static_view_checks_the_source_shape():
    m, feeds = mha_chain_attention()
    fused = run_pipeline(m).model
    v = _views(Session(fused))
    with pytest.raises(RuntimeError, match="planned for"):
        resolve_input(v.inputs[0], (7, 2, 40))


@pytest.mark.parametrize("seed", range(40))
def test_layout_algebra_matches_numpy(seed):
    """Random chains of transposes and reshapes: where the layout says "a view", the strided read is the array."""
    from fuser.layout_views import _coalesce, _contiguous, _regroup

    rng = np.random.default_rng(seed)
    shape = tuple(int(x) for x in rng.choice([1, 2, 3, 4, 6], size=rng.integers(2, 5)))
    a = np.arange(int(np.prod(shape))).reshape(shape)
    layout, cur = _contiguous(shape), a
    for _ in range(4):
        if rng.random() < 0.5:
            perm = rng.permutation(cur.ndim)
            layout, cur = [layout[p] for p in perm], cur.transpose(perm)
        else:
            flat = [f for d in cur.shape for f in _factors(d)]
            rng.shuffle(flat) if rng.random() < 0.2 else None
            cut = sorted(rng.choice(len(flat) + 1, size=min(2, len(flat)), replace=False)) if flat else []
            new = tuple(int(np.prod(p)) for p in np.split(np.array(flat, dtype=np.int64), cut)) if flat else (1,)
            if int(np.prod(new)) != cur.size:
                continue
            got = _regroup(layout, new)
            cur = cur.reshape(new)
            if got is None:
                return  # not expressible as modes: the planner would stop here
            layout = got
        ones = [_coalesce(d) for d in layout]
        if any(o is None for o in ones):
            continue
        strided = np.lib.stride_tricks.as_strided(a.reshape(-1), cur.shape, [o[1] * a.itemsize for o in ones])
        assert np.array_equal(strided, cur)


def _factors(n: int) -> list[int]:
    out, p = [], 2
    while n > 1:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out


def test_torch_mha_static_export_gets_views():
    torch = pytest.importorskip("torch")
    from .attention_zoo import build, export

    module, _, _ = build("mha_vit_block")
    block = type(module)(False, 64, 4)
    block.static_batch = True
    x = torch.randn(3, 11, 64)
    m = export(block, (x,), ["x"], dynamo=False, opset=17)
    fused = run_pipeline(m).model
    att = [n for n in fused.graph.node if n.op_type.startswith("FusedAttention")]
    assert len(att) == 1 and not any(n.op_type in ("Sqrt", "Softmax") for n in fused.graph.node)  # √scale folded
    s = Session(fused)
    v = _views(s)
    assert sorted(v.inputs) == [0, 1, 2] and v.output is not None
    assert not any(op in ("Gather", "Squeeze") for op in _plan_nodes(s))
    feeds = {"x": x.numpy()}
    compare(ort_outputs(m, feeds), s.run(None, feeds), 1e-5, "views")

