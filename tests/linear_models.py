"""Small fp32 models with linear chains, for the linear-step plan (CPU) and runtime (GPU) tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def mlp_model(lead=(2, 37), d=64, hidden=96) -> onnx.ModelProto:
    """X → Linear+GELU (erf form, as torch exports nn.GELU) → Linear → + X → MatMul (no bias) → Y."""
    rng = np.random.default_rng(7)
    shapes = (("W1", (d, hidden), d ** -0.5), ("b1", (hidden,), 0.1), ("W2", (hidden, d), hidden ** -0.5),
              ("b2", (d,), 0.1), ("W3", (d, 5), d ** -0.5))
    inits = [numpy_helper.from_array((rng.standard_normal(s) * sc).astype(np.float32), name)
             for name, s, sc in shapes]
    inits += [numpy_helper.from_array(np.array(v, np.float32), nm) for nm, v in
              (("sqrt2", 1.4142135381698608), ("one", 1.0), ("half", 0.5))]
    nodes = [helper.make_node("MatMul", ["X", "W1"], ["h0"], name="fc1"),
             helper.make_node("Add", ["h0", "b1"], ["h1"]),
             helper.make_node("Div", ["h1", "sqrt2"], ["g0"]), helper.make_node("Erf", ["g0"], ["g1"]),
             helper.make_node("Add", ["g1", "one"], ["g2"]), helper.make_node("Mul", ["h1", "g2"], ["g3"]),
             helper.make_node("Mul", ["g3", "half"], ["g4"]),
             helper.make_node("MatMul", ["g4", "W2"], ["h2"], name="fc2"),
             helper.make_node("Add", ["b2", "h2"], ["h3"]),
             helper.make_node("Add", ["X", "h3"], ["h4"]),
             helper.make_node("MatMul", ["h4", "W3"], ["Y"], name="head")]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [*lead, d])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [*lead, 5])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8  # what the onnxruntime releases in use load
    return onnx.shape_inference.infer_shapes(m)


def gemm_model(alpha: float = 1.0, trans_a: int = 0, c_shape: tuple[int, ...] = (96,),
               rows: int = 80) -> onnx.ModelProto:
    """X [rows, 64] → Gemm(W1ᵀ: W1 stored [96, 64], C) → Gemm(W2 [96, 32], no C) → Y, as torch exports F.linear on
    2-D inputs (transB=1)."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * np.float32(0.1), name)
             for name, s in (("W1", (96, 64)), ("C1", c_shape), ("W2", (96, 32)))]
    nodes = [helper.make_node("Gemm", ["X", "W1", "C1"], ["h"], name="g1", transB=1, alpha=alpha, transA=trans_a),
             helper.make_node("Gemm", ["h", "W2"], ["Y"], name="g2")]
    x_shape = [64, rows] if trans_a else [rows, 64]
    g = helper.make_graph(nodes, "gemm", [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [rows, 32])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return onnx.shape_inference.infer_shapes(m)


def parallel_residual_model(rows: int = 80, d: int = 32, same_names: bool = False) -> onnx.ModelProto:
    """Y = (X1·W1 + b1) + (X2·W2 + b2): two linear chains meeting in one Add (GPT-NeoX's parallel block).
    ``same_names``: both MatMuls named "proj" (onnx.checker allows it; onnxruntime refuses such a model)."""
    rng = np.random.default_rng(9)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * np.float32(0.2), name)
             for name, s in (("W1", (d, d)), ("b1", (d,)), ("W2", (d, d)), ("b2", (d,)))]
    nodes = [helper.make_node("MatMul", ["X1", "W1"], ["t1"], name="proj"),
             helper.make_node("Add", ["t1", "b1"], ["v1"]),
             helper.make_node("MatMul", ["X2", "W2"], ["t2"], name="proj" if same_names else "proj2"),
             helper.make_node("Add", ["t2", "b2"], ["v2"]),
             helper.make_node("Add", ["v1", "v2"], ["Y"])]
    ins = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [rows, d]) for x in ("X1", "X2")]
    g = helper.make_graph(nodes, "parallel", ins, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [rows, d])],
                          inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return onnx.shape_inference.infer_shapes(m)
