"""The runtime's onnxruntime islands: the session options they run with (fuser.runtime.island_session)."""

from __future__ import annotations

import numpy as np
import onnx

from .passes.builders import compare, ort_outputs


def test_islands_keep_matmul_bias_for_the_fusions_that_take_it(monkeypatch, tmp_path):
    """Islands run without onnxruntime's MatMulAddFusion (a Gemm whose bias is broadcast over the output first), so
    MatMul + bias + GELU becomes MatMul + BiasGelu there — and the result is still the original's."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    import fuser.runtime as rt

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "B"),
             numpy_helper.from_array(np.array(2 ** 0.5, np.float32), "r2"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    nodes = [helper.make_node("MatMul", ["X", "W"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "B"], ["h"], name="b"),
             helper.make_node("Div", ["h", "r2"], ["d"], name="d"), helper.make_node("Erf", ["d"], ["e"], name="e"),
             helper.make_node("Add", ["e", "one"], ["f"], name="f"),
             helper.make_node("Mul", ["h", "f"], ["g"], name="g"),
             helper.make_node("Mul", ["g", "half"], ["Y"], name="y")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4, 8, 16])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [4, 8, 32])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    seen = []
    real = ort.InferenceSession

    def spy(model, opts=None, **kw):
        opts.optimized_model_filepath = str(tmp_path / f"island{len(seen)}.onnx")
        seen.append(kw.get("disabled_optimizers"))
        return real(model, opts, **kw)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    feeds = {"X": rng.standard_normal((4, 8, 16)).astype(np.float32)}
    got = rt.Session(m).run(None, feeds)
    monkeypatch.setattr(ort, "InferenceSession", real)
    assert seen == [rt.ISLAND_DISABLED_OPTIMIZERS] and "MatMulAddFusion" in seen[0]
    ops = [n.op_type for n in onnx.load(str(tmp_path / "island0.onnx")).graph.node]
    assert "Gemm" not in ops and "BiasGelu" in ops, ops
    compare(ort_outputs(m, feeds), got, None, "island")
