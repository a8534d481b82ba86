"""Normalization before the passes: names, constant weight subgraphs folded, shapes inferred.

- Unnamed nodes get deterministic names (``<op_type>_<index>``), a repeated name gets ``_<k>``, so node
  names are unique and fused-node names and the report are stable from run to run.
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

import numpy as np
import onnx
import onnx_graphsurgeon as gs

gs.logger.severity = 40  # errors only: folding warnings would flood the user's terminal


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
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:
        return model


_SMALL = 4096  # constants up to this many elements travel with their values (Reshape targets, axes…)


def infer_into(graph: gs.Graph, opset_imports: list, functions: list) -> None:
    """Infer shapes/dtypes of ``graph``'s variables in place.

    Inference runs on a light copy: large constants are declared as typed graph inputs instead of
    carrying their data, so a 100 MB model infers in milliseconds, not seconds of serialisation.
    """
    from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
    from onnx_graphsurgeon.importers.onnx_importer import get_onnx_tensor_dtype, get_onnx_tensor_shape

    tensors = graph.tensors()
    inputs = [OnnxExporter.export_value_info_proto(t, do_type_check=False) for t in graph.inputs]
    inits = []
    for t in tensors.values():
        if isinstance(t, gs.Constant):
            if t.values.size <= _SMALL:
                inits.append(OnnxExporter.export_tensor_proto(t))
            else:
                inputs.append(onnx.helper.make_tensor_value_info(
                    t.name, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype)), list(t.shape)))
    light = onnx.helper.make_model(
        onnx.helper.make_graph([OnnxExporter.export_node(n) for n in graph.nodes], graph.name or "g", inputs,
                               [OnnxExporter.export_value_info_proto(t, do_type_check=False) for t in graph.outputs],
                               inits),
        opset_imports=opset_imports, functions=functions, ir_version=8)
    inferred = infer_shapes(light)
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        t = tensors.get(vi.name)
        if isinstance(t, gs.Variable) and vi.type.HasField("tensor_type"):
            shape = get_onnx_tensor_shape(vi)
            dtype = get_onnx_tensor_dtype(vi)
            if t.shape is None and shape is not None:
                t.shape = shape
            if t.dtype is None and dtype is not None:
                t.dtype = dtype


def normalize(model: onnx.ModelProto, base_dir: str | None = None) -> gs.Graph:
    """Return a graphsurgeon graph of ``model`` with names given, constants folded and shapes inferred."""
    graph = import_graph(model, base_dir)
    name_graph_nodes(graph)
    if has_foldable(graph):
        detach_attribute_tensors(graph)
        # shapes first: folding replaces Shape(x) (or its Gather/Slice of static dims) by a constant only where
        # x's shape is known, and exporters seldom write value_info for intermediates (TorchScript's SDPA
        # decomposition computes its scale from Shape(q): folded, the attention pass absorbs it)
        infer_into(graph, list(model.opset_import), list(model.functions))
        try:
            graph = fold_constants(graph)
        except Exception:  # noqa: BLE001 - folding is an optimisation: a graph it cannot export stays as is
            pass
    infer_into(graph, list(model.opset_import), list(model.functions))
    return graph


def detach_attribute_tensors(graph: gs.Graph) -> None:
    """Give tensor-valued attributes (a Constant node's ``value``) their own copy of the TensorProto.

    graphsurgeon exports a lazily loaded constant by renaming the TensorProto it came from to the tensor's
    name; once folding has turned ``Constant(value=t) → y`` into the constant ``y``, that would rename ``t``
    inside the caller's model. Initializers need no copy: their proto already has the tensor's name.
    """
    from onnx_graphsurgeon.ir.tensor import LazyValues

    for n in graph.nodes:
        for v in n.attrs.values():
            if isinstance(v, gs.Constant) and isinstance(v._values, LazyValues):
                t = onnx.TensorProto()
                t.CopyFrom(v._values.tensor)
                v._values = LazyValues(t)


def unique_node_names(nodes: list[tuple[str, str]]) -> list[str]:
    """Deterministic, unique names for ``(name, op_type)`` pairs in graph order: an unnamed node becomes
    ``<op_type>_<index>`` (index in the original order), a name already used by an earlier node becomes
    ``<name>_<k>``; every other name is kept. The pipeline names the graph with this, and the visual diff
    (``fuser.visual``) names the original model with it, so both sides agree on every node's name."""
    taken = {name for name, _ in nodes if name}
    seen: set[str] = set()
    out: list[str] = []
    for i, (name, op) in enumerate(nodes):
        if name and name not in seen:
            seen.add(name)
            out.append(name)
            continue
        base = name or f"{op}_{i}"
        cand, k = base, 1
        while cand in taken:
            cand, k = f"{base}_{k}", k + 1
        taken.add(cand)
        seen.add(cand)
        out.append(cand)
    return out


def import_graph(model: onnx.ModelProto, base_dir: str | None = None) -> gs.Graph:
    """gs.import_onnx, with tensors whose data was left on disk (large external data, see
    :func:`fuser.io.load_model`) memory-mapped from ``base_dir`` instead of read into memory."""
    graph = gs.import_onnx(model)
    if base_dir is None:
        return graph
    from .io import external_array

    for t in graph.tensors().values():
        lazy = getattr(t, "_values", None) if isinstance(t, gs.Constant) else None
        proto = getattr(lazy, "tensor", None)
        if proto is not None and proto.data_location == onnx.TensorProto.EXTERNAL and not proto.raw_data:
            t.values = external_array(proto, base_dir)
    return graph


def name_graph_nodes(graph: gs.Graph) -> None:
    """Deterministic unique names (:func:`unique_node_names`) for unnamed and duplicate-named nodes."""
    for n, name in zip(graph.nodes, unique_node_names([(n.name, n.op) for n in graph.nodes]), strict=True):
        n.name = name


def has_foldable(graph: gs.Graph) -> bool:
    """Is there any node whose inputs are all constant (so constant folding has work to do)?"""
    const: set[str] = {t.name for t in graph.tensors().values() if isinstance(t, gs.Constant)}
    for n in graph.nodes:
        if n.domain not in (None, "", "ai.onnx"):
            continue
        ins = [t for t in n.inputs if t.name]
        if any(isinstance(v, gs.Graph) for v in n.attrs.values()) or n.op.startswith("Random"):
            continue
        if all(t.name in const for t in ins) and (ins or n.op == "Constant"):
            return True
    return False
