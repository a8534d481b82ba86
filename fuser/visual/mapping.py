"""The fused-node → source-nodes map for Google's Model Explorer split-pane view (synchronized navigation).

Format followed (read from the Model Explorer sources, google-ai-edge/model-explorer):
``src/ui/src/components/visualizer/common/sync_navigation.ts`` defines ``SyncNavigationData`` — the JSON
the "Sync navigation → Upload mapping from computer" button of the split view parses
(``sync_navigation_service.ts``, ``processJsonData``): ``{"mappingEntries": [{"leftNodeIds": [...],
"rightNodeIds": [...]}], "disableMappingFallback": bool}``; ``mappingEntries`` supports one-to-many and
many-to-one mappings and supersedes the older one-to-one ``"mapping": {left: right}``. A node id may
appear in one entry only. Left pane = the original model, right pane = the fused one.

Node ids: Model Explorer's ONNX adapter (justinchuby/model-explorer-onnx,
``src/model_explorer_onnx/main.py``) uses ``onnx_node.name`` as the node id after running
onnx_ir's ``NameFixPass`` (``_passes.process_model``), which names unnamed nodes and renames duplicates.
Our output names every node uniquely, so there the id is the name. For an original with unnamed or
duplicate-named nodes we run that same pass (when ``onnx_ir`` is installed — the adapter depends on it)
to get the ids the adapter will show; without onnx_ir those nodes fall back to our own names.
"""

from __future__ import annotations

import json
import os

import onnx

from .model import GraphDiff


def model_explorer_ids(model: onnx.ModelProto, fallback: list[str]) -> list[str]:
    """The node ids Model Explorer's ONNX adapter gives the top-level nodes of ``model``, in order."""
    names = [n.name for n in model.graph.node]
    if all(names) and len(set(names)) == len(names):
        return names
    try:
        import onnx_ir as ir
        from onnx_ir.passes.common import NameFixPass
    except ImportError:  # pragma: no cover - onnx_ir comes with the [view] extra
        return list(fallback)
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    light.graph.CopyFrom(model.graph)
    del light.graph.initializer[:]  # names only: the weights are not needed (nor copied)
    try:
        m = ir.serde.deserialize_model(light)
        NameFixPass()(m)
        ids = [n.name for n in m.graph]
    except Exception:  # pragma: no cover - an adapter-incompatible model: keep our names
        return list(fallback)
    return ids if len(ids) == len(fallback) else list(fallback)


def model_explorer_mapping(d: GraphDiff, original: onnx.ModelProto | None = None,
                           fused: onnx.ModelProto | None = None) -> dict:
    """``SyncNavigationData`` for Model Explorer: every rewrite as one entry (original nodes ↔ the fused
    node(s) that replaced them), every unchanged node as a one-to-one entry."""
    left_ids = [n.name for n in d.original_nodes]
    right_ids = [n.name for n in d.fused_nodes]
    if original is not None:
        left_ids = model_explorer_ids(original, left_ids)
    if fused is not None:
        right_ids = model_explorer_ids(fused, right_ids)
    entries = []
    for g in d.groups:
        if g.sources:
            entries.append({"leftNodeIds": [left_ids[i] for i in g.sources],
                            "rightNodeIds": [right_ids[i] for i in g.fused]})
    for r, ls in sorted(d.right_to_left.items()):
        if r not in d.right_group:
            entries.append({"leftNodeIds": [left_ids[i] for i in ls], "rightNodeIds": [right_ids[r]]})
    return {
        "type": "sync_navigation",
        "mappingEntries": entries,
        # our map is complete: a node without an entry (a constant subgraph folded into initializers)
        # has no counterpart, so do not fall back to "same id on the other side"
        "disableMappingFallback": True,
    }


def write_mapping(d: GraphDiff, path: str | os.PathLike, original: onnx.ModelProto | None = None,
                  fused: onnx.ModelProto | None = None) -> dict:
    data = model_explorer_mapping(d, original, fused)
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)
    return data
