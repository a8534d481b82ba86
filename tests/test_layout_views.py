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


def test_rank3_attention_without_head_split_gets_no_input_views():
    m = simple_attention(rank=3)[0] if isinstance(simple_attention(rank=3), tuple) else simple_attention(rank=3)
    fused = run_pipeline(m).model
    s = Session(fused)
    assert all(not v.inputs for v in s.views.values())


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
