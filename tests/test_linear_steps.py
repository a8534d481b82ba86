"""The runtime's linear-step plan (fuser.linear_steps): what it takes into one FusedLinear node, each guard that
stops it, and that the planned steps compute what the graph does (the kernel family's numpy reference against
onnxruntime on the original). The GPU side is tests/gpu/test_linear_gpu.py."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fuser.kernels import linear
from fuser.layout_views import value_dims
from fuser.linear_steps import LINEAR_OP, MIN_ROWS, linear_op_type, plan_linear_steps
from fuser.runtime import Session, node_inputs
from tests.linear_models import gemm_model, mlp_model, parallel_residual_model


def plan(m: onnx.ModelProto) -> list[onnx.NodeProto]:
    inits = {t.name: t for t in m.graph.initializer}
    return plan_linear_steps(list(m.graph.node), inits, {o.name for o in m.graph.output}, value_dims(m), node_inputs)


def linears(nodes: list[onnx.NodeProto]) -> list[tuple[list[str], str, str]]:
    """(inputs, output, op type name) of each planned linear node."""
    return [(list(n.input), n.output[0], linear_op_type(n).name) for n in nodes if n.op_type == LINEAR_OP]


def with_node_edit(m: onnx.ModelProto, edit) -> onnx.ModelProto:
    c = onnx.ModelProto()
    c.CopyFrom(m)
    edit(c.graph)
    return c


def test_mlp_chain_becomes_three_linear_nodes() -> None:
    nodes = plan(mlp_model())
    assert [n.op_type for n in nodes] == [LINEAR_OP] * 3
    assert linears(nodes) == [(["X", "W1", "b1", ""], "g4", "FusedLinearGelu"),
                              (["g4", "W2", "b2", "X"], "h4", "FusedLinearAdd"),
                              (["h4", "W3", "", ""], "Y", "FusedLinear")]


def flag(n: onnx.NodeProto, name: str) -> int:
    return next((a.i for a in n.attribute if a.name == name), 0)


def test_linear_to_linear_values_pass_in_fp64() -> None:
    # fc1 → fc2 → head: each output's one reader is the next step's X; Y (a graph output) stays fp32
    nodes = plan(mlp_model())
    assert [(flag(n, "in64"), flag(n, "out64")) for n in nodes] == [(0, 1), (1, 1), (1, 0)]
    # h4 read twice (also a graph output): fc2 writes fp32 and head widens it
    nodes = plan(with_node_edit(mlp_model(), _extra_output("h4")))
    assert [(flag(n, "in64"), flag(n, "out64")) for n in nodes] == [(0, 1), (1, 0), (0, 0)]


@pytest.mark.parametrize("make,x_shape", [(mlp_model, (2, 37, 64)), (gemm_model, (80, 64))], ids=["mlp", "gemm"])
def test_planned_steps_compute_what_the_graph_does(make, x_shape) -> None:
    m = make()
    x = np.random.default_rng(3).standard_normal(x_shape).astype(np.float32)
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    consts = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    vals = {"X": x}
    nodes = plan(m)
    assert all(n.op_type == LINEAR_OP for n in nodes)
    for n in nodes:
        ft = linear_op_type(n)
        xi, w, b, r = (vals.get(i, consts.get(i)) if i else None for i in n.input)
        w = w.T if flag(n, "trans_w") else w
        vals[n.output[0]] = linear.reference(xi, w, b, r, ft.activation == "Gelu")
    assert np.abs(vals["Y"] - want).max() <= 1e-5 * np.abs(want).max()


def test_gemm_takes_its_bias_and_transposed_weight() -> None:
    nodes = plan(gemm_model())
    assert linears(nodes) == [(["X", "W1", "C1", ""], "h", "FusedLinear"), (["h", "W2", "", ""], "Y", "FusedLinear")]
    assert [flag(n, "trans_w") for n in nodes] == [1, 0]


@pytest.mark.parametrize("kw", [{"alpha": 2.0}, {"trans_a": 1}, {"c_shape": (80, 96)}],
                         ids=["alpha", "transA", "C-not-a-bias"])
def test_gemm_forms_it_leaves_to_onnxruntime(kw) -> None:
    nodes = plan(gemm_model(**kw))
    assert [n.op_type for n in nodes] == ["Gemm", LINEAR_OP]


def _extra_output(name: str):
    def edit(g: onnx.GraphProto) -> None:
        g.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return edit


def test_intermediate_read_twice_stays_outside() -> None:
    # h0 (MatMul out) is also a graph output: the bias Add (and so GELU/residual) stay out of fc1's node
    lin = linears(plan(with_node_edit(mlp_model(), _extra_output("h0"))))
    assert lin[0] == (["X", "W1", "", ""], "h0", "FusedLinear")


def test_bias_output_read_elsewhere_keeps_the_gelu_outside() -> None:
    lin = linears(plan(with_node_edit(mlp_model(), _extra_output("h1"))))
    assert lin[0] == (["X", "W1", "b1", ""], "h1", "FusedLinear")


def test_gelu_with_another_constant_is_not_gelu() -> None:
    def edit(g):
        for t in g.initializer:
            if t.name == "sqrt2":
                t.CopyFrom(numpy_helper.from_array(np.array(1.5, np.float32), "sqrt2"))
    lin = linears(plan(with_node_edit(mlp_model(), edit)))
    assert lin[0] == (["X", "W1", "b1", ""], "h1", "FusedLinear")


def test_broadcast_residual_stays_outside() -> None:
    def edit(g):
        g.input.append(helper.make_tensor_value_info("R", TensorProto.FLOAT, [1, 1, 64]))
        for n in g.node:
            if n.output[0] == "h4":
                n.input[0] = "R"
        del g.value_info[:]
    m = onnx.shape_inference.infer_shapes(with_node_edit(mlp_model(), edit))
    lin = linears(plan(m))
    assert lin[1] == (["g4", "W2", "b2", ""], "h3", "FusedLinear")


def test_residual_without_known_shapes_stays_outside() -> None:
    lin = linears(plan(with_node_edit(mlp_model(), lambda g: g.value_info.__delitem__(slice(None)))))
    assert lin[1][1] == "h3"


@pytest.mark.parametrize("what", ["computed weight", "fp16 weight", "3-D weight"])
def test_weights_it_does_not_take(what: str) -> None:
    def edit(g):
        w2 = next(t for t in g.initializer if t.name == "W2")
        arr = numpy_helper.to_array(w2)
        if what == "computed weight":
            g.node.insert(0, helper.make_node("Identity", ["W2"], ["W2c"]))
            next(n for n in g.node if n.name == "fc2").input[1] = "W2c"
        elif what == "fp16 weight":
            w2.CopyFrom(numpy_helper.from_array(arr.astype(np.float16), "W2"))
        else:
            w2.CopyFrom(numpy_helper.from_array(arr[None], "W2"))
    nodes = plan(with_node_edit(mlp_model(), edit))
    assert [x[1] for x in linears(nodes)] == ["g4", "Y"]
    assert any(n.name == "fc2" and n.op_type == "MatMul" for n in nodes)


def test_bias_that_is_not_a_vector_initializer_stays_outside() -> None:
    def edit(g):  # b2 as a Constant node, and b1 with the wrong length
        b2 = next(t for t in g.initializer if t.name == "b2")
        g.node.insert(0, helper.make_node("Constant", [], ["b2"], value=b2))
        g.initializer.remove(b2)
        b1 = next(t for t in g.initializer if t.name == "b1")
        b1.CopyFrom(numpy_helper.from_array(np.ones((1,), np.float32), "b1"))
    lin = linears(plan(with_node_edit(mlp_model(), edit)))
    assert lin[0] == (["X", "W1", "", ""], "h0", "FusedLinear")
    assert lin[1] == (["g4", "W2", "", ""], "h2", "FusedLinear")


def test_value_read_by_a_subgraph_is_not_swallowed() -> None:
    def edit(g):
        body = helper.make_graph([helper.make_node("Identity", ["h0"], ["z"])], "then", [],
                                 [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
        g.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
        g.node.append(helper.make_node("If", ["cond"], ["z_out"], then_branch=body, else_branch=body))
        g.output.append(helper.make_tensor_value_info("z_out", TensorProto.FLOAT, None))
    lin = linears(plan(with_node_edit(mlp_model(), edit)))
    assert lin[0] == (["X", "W1", "", ""], "h0", "FusedLinear")


def test_cpu_sessions_plan_no_linear_steps() -> None:
    s = Session(mlp_model(), device="cpu")
    assert not s.linear_steps and s.kernel_steps == 0
    with pytest.raises(ValueError, match="fp64_linear needs the cuda backend"):
        Session(mlp_model(), device="cpu", fp64_linear=True)


def test_few_rows_stay_in_onnxruntime() -> None:
    assert [n.op_type for n in plan(gemm_model(rows=MIN_ROWS - 1))] == ["Gemm", "Gemm"]
    assert [n.op_type for n in plan(gemm_model(rows=MIN_ROWS))] == [LINEAR_OP, LINEAR_OP]


GPUS = [("sm_90", "NVIDIA H200", True), ("sm_90", "NVIDIA H100 80GB HBM3", True),
        ("sm_80", "NVIDIA A100-SXM4-80GB", True), ("sm_90", "NVIDIA H20", False), ("sm_90", "NVIDIA H800", False),
        ("sm_89", "NVIDIA L40S", False), ("sm_86", "NVIDIA GeForce RTX 3090", False), ("sm_100", "NVIDIA B200", False)]


@pytest.mark.parametrize("arch,name,fast", GPUS)
def test_which_gpus_take_linear_steps(arch: str, name: str, fast: bool) -> None:
    assert linear.fp64_tensor_cores(arch, name) is fast


def test_symbolic_rows_are_planned() -> None:
    # the MIN_ROWS guard needs known sizes; with a symbolic batch/sequence every layer is taken
    nodes = plan(mlp_model(lead=("B", "S")))
    assert [n.op_type for n in nodes] == [LINEAR_OP] * 3
    assert linears(nodes)[1] == (["g4", "W2", "b2", "X"], "h4", "FusedLinearAdd")


def evaluate(nodes: list[onnx.NodeProto], m: onnx.ModelProto, feeds: dict) -> dict:
    """Run a plan made only of linear nodes with the family's reference, in dependency order (a linear node sits at
    its MatMul's place, which may come before the node making its residual)."""
    consts = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    vals, todo = dict(feeds), list(nodes)
    while todo:
        n = next(x for x in todo if all(not i or i in vals or i in consts for i in x.input))
        todo.remove(n)
        xi, w, b, r = (vals.get(i, consts.get(i)) if i else None for i in n.input)
        w = w.T if flag(n, "trans_w") else w
        vals[n.output[0]] = linear.reference(xi, w, b, r, linear_op_type(n).activation == "Gelu")
    return vals


def test_two_chains_meeting_in_one_add_take_it_once() -> None:
    m = parallel_residual_model()
    nodes = plan(m)
    lin = linears(nodes)
    assert [n.op_type for n in nodes] == [LINEAR_OP] * 2
    # the first chain takes the Add (R = the second's value), the second writes that value
    assert [(ins[3], out) for ins, out, _ in lin] == [("v2", "Y"), ("", "v2")]
    # two MatMuls both named "proj": the steps' names (the runtime's runner keys) still differ
    assert len({n.name for n in plan(parallel_residual_model(same_names=True))}) == 2
    rng = np.random.default_rng(1)
    feeds = {k: rng.standard_normal((80, 32)).astype(np.float32) for k in ("X1", "X2")}
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert np.abs(evaluate(nodes, m, feeds)["Y"] - want).max() <= 1e-5 * np.abs(want).max()


def test_residual_that_broadcasts_the_linear_value_stays_outside() -> None:
    def edit(g):  # R [2, 80, 32] + v [80, 32]: Y and R agree, the linear's own value does not
        g.input[1].CopyFrom(helper.make_tensor_value_info("X2", TensorProto.FLOAT, [2, 80, 32]))
        g.node.remove(next(n for n in g.node if n.output[0] == "t2"))
        g.node.remove(next(n for n in g.node if n.output[0] == "v2"))
        next(n for n in g.node if n.output[0] == "Y").input[1] = "X2"
        g.output[0].CopyFrom(helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 80, 32]))
        del g.value_info[:]
    m = onnx.shape_inference.infer_shapes(with_node_edit(parallel_residual_model(), edit))
    assert linears(plan(m)) == [(["X1", "W1", "b1", ""], "v1", "FusedLinear")]


def test_constants_that_would_raise_the_rank_are_not_taken() -> None:
    def edit(g):  # b1 as [1, 1, 96] on a rank-3 X is fine; [1, 1, 1, 96] would make Y rank 4
        b1 = next(t for t in g.initializer if t.name == "b1")
        b1.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(b1).reshape(1, 1, 1, 96), "b1"))
    lin = linears(plan(with_node_edit(mlp_model(), edit)))
    assert lin[0] == (["X", "W1", "", ""], "h0", "FusedLinear")

    def edit_gelu(g):  # a 2-D 0.5 raises nothing on rank 3, but the planner only takes scalars and 1-D constants
        half = next(t for t in g.initializer if t.name == "half")
        half.CopyFrom(numpy_helper.from_array(np.full((1, 1), 0.5, np.float32), "half"))
    lin = linears(plan(with_node_edit(mlp_model(), edit_gelu)))
    assert lin[0] == (["X", "W1", "b1", ""], "h1", "FusedLinear")
