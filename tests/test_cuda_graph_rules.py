"""When the GPU runtime may replay a model as one CUDA graph (``fuser.device_runtime.data_dependent_shapes``):
only where every output shape is fixed by the input shapes. Runs with no GPU; the replay itself is tested in
tests/gpu/test_runtime_gpu.py."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from fuser.device_runtime import data_dependent_shapes


def _model(nodes, inputs, inits=()):
    g = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


X = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])


def test_constant_shape_reshape_replays() -> None:
    s = numpy_helper.from_array(np.array([-1, 3], np.int64), "s")
    assert data_dependent_shapes(_model([helper.make_node("Reshape", ["x", "s"], ["y"])], [X], [s])) is None


def test_shape_computed_from_shape_ops_replays() -> None:
    """Shape → Gather → Concat → Reshape (how exporters spell a flatten): fixed by the input's shape."""
    idx = numpy_helper.from_array(np.array(0, np.int64), "i0")
    minus1 = numpy_helper.from_array(np.array([-1], np.int64), "m1")
    ax = numpy_helper.from_array(np.array([0], np.int64), "ax")
    nodes = [helper.make_node("Shape", ["x"], ["sh"]), helper.make_node("Gather", ["sh", "i0"], ["n"]),
             helper.make_node("Unsqueeze", ["n", "ax"], ["n1"]),
             helper.make_node("Concat", ["n1", "m1"], ["s"], axis=0),
             helper.make_node("Reshape", ["x", "s"], ["y"])]
    assert data_dependent_shapes(_model(nodes, [X], [idx, minus1, ax])) is None


def test_shape_from_input_values_does_not_replay() -> None:
    s = helper.make_tensor_value_info("s", TensorProto.INT64, [2])
    why = data_dependent_shapes(_model([helper.make_node("Reshape", ["x", "s"], ["y"])], [X, s]))
    assert why is not None and "Reshape" in why and "'s'" in why


def test_shape_from_computed_float_values_does_not_replay() -> None:
    """A shape derived from tensor data (Cast of a reduction) — not from Shape — is data dependent."""
    nodes = [helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0), helper.make_node("Cast", ["m"], ["k"], to=7),
             helper.make_node("Unsqueeze", ["k", "ax"], ["k1"]), helper.make_node("Expand", ["x", "k1"], ["y"])]
    ax = numpy_helper.from_array(np.array([0], np.int64), "ax")
    why = data_dependent_shapes(_model(nodes, [X], [ax]))
    assert why is not None and "Expand" in why


def test_nonzero_does_not_replay() -> None:
    why = data_dependent_shapes(_model([helper.make_node("NonZero", ["x"], ["y"])], [X]))
    assert why is not None and "NonZero" in why
