"""Normalization before the passes: names, constant weight subgraphs folded, shapes inferred.

- Unnamed nodes get deterministic names (``<op_type>_<index>``), so fused-node names and the report
  are stable from run to run.
- Constant subgraphs (Constant, ConstantOfShape, Identity, Cast, Reshape/Unsqueeze of constants, the
  bias a dynamo export computes for a bias-less Conv, …) are evaluated once by onnx-graphsurgeon's
  ``fold_constants`` (onnxruntime underneath) and become initializers.
- Initializers that an IR<4 model also lists among its graph inputs are treated as what the exporter
  meant: weights, not runtime inputs.
- Shapes are inferred (symbolic dims kept) so that guards can compare shapes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os

import onnx
import onnx_graphsurgeon as gs

gs.logger.severity = 40  # errors only: folding warnings would flood the user's terminal


def name_nodes(model: onnx.ModelProto) -> None:
    taken = {n.name for n in model.graph.node if n.name}
    for i, n in enumerate(model.graph.node):
        if not n.name:
            base = f"{n.op_type}_{i}"
            name, k = base, 1
            while name in taken:
                name, k = f"{base}_{k}", k + 1
            n.name = name
            taken.add(name)


@contextlib.contextmanager
def quiet():
    """Silence onnxruntime's and graphsurgeon's chatter during folding."""
    try:
        import onnxruntime as ort

        ort.set_default_logger_severity(3)
    except ImportError:
        pass
    logging.getLogger("onnx_graphsurgeon").setLevel(logging.ERROR)
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(io.StringIO()):
        old = os.dup(2)
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(old, 2)
            os.close(old)


def fold_constants(graph: gs.Graph) -> gs.Graph:
    with quiet():
        graph.fold_constants(error_ok=True)
    return graph.cleanup(remove_unused_graph_inputs=False).toposort()


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference that never fails the run: a model onnx cannot infer keeps what it has."""
    try:
        if model.ByteSize() < 2**31 - 1:
            return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:
        pass
    return model


def normalize(model: onnx.ModelProto) -> gs.Graph:
    """Return a graphsurgeon graph of ``model`` with constants folded and shapes inferred."""
    name_nodes(model)
    graph = gs.import_onnx(model)
    graph = fold_constants(graph)
    exported = gs.export_onnx(graph, do_type_check=False)
    # internal copy only: at IR<4 onnx infers initializer types from graph inputs, which gs dropped
    exported.ir_version = max(exported.ir_version, 8)
    shaped = infer_shapes(exported)
    return gs.import_onnx(shaped)
