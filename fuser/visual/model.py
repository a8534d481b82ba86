"""What became what: the correspondence between an original model and its fused output.

Everything here is read from the two models, not re-derived: every node onnx-fuse writes carries its
provenance (DESIGN §3) — a fused node's ``fuser.source_nodes`` (the nodes it replaced) and
``fuser.folded`` (the nodes folded into its weights before, e.g. the BN of its Conv); a plain node that
absorbed a fold carries ``fuser.folded``; with ``--target onnx`` the standard nodes a fused node was
inlined into carry ``fuser.fused_node`` as well. Nodes are named on both sides by
:func:`fuser.normalize.unique_node_names`, the rule the pipeline names nodes by, so an unnamed original
node is found under the name the output uses for it. A node without provenance corresponds to the
original node of the same name (unchanged); the rest are *removed* (left) or *added* (right).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from ..errors import InputError
from ..normalize import unique_node_names

SOURCES_KEY = "fuser.source_nodes"
FOLDED_KEY = "fuser.folded"
PATTERN_KEY = "fuser.pattern"
FUSED_NODE_KEY = "fuser.fused_node"


@dataclass
class Node:
    index: int
    name: str
    op_type: str
    domain: str
    inputs: list[str]
    outputs: list[str]
    doc: str = ""
    props: dict[str, str] = field(default_factory=dict)
    attrs: dict[str, str] = field(default_factory=dict)  # kernel / tactic of fused nodes
    const: bool = False  # computed from constants only (a weight subgraph); normalize folds these

    @property
    def op(self) -> str:
        return f"{self.domain}::{self.op_type}" if self.domain not in ("", "ai.onnx") else self.op_type


@dataclass
class Group:
    """One rewrite as the output shows it: ``fused`` output nodes stand for ``sources`` original nodes."""

    fused: list[int]  # indexes into GraphDiff.fused_nodes (one; several after --target onnx inlining)
    sources: list[int]  # indexes into GraphDiff.original_nodes, in original order (folded ones included)
    folded: list[int]  # the subset of sources that was folded into weights
    pattern: str
    op_type: str
    kernel: str = ""
    tactic: str = ""
    missing: list[str] = field(default_factory=list)  # source names the original does not have
    inlined: bool = False  # --target onnx: the fused node was written as the standard ops of its body

    @property
    def kind(self) -> str:
        return "fused" if self.kernel or self.pattern != "fold" else "fold"


@dataclass
class GraphDiff:
    original_path: str
    fused_path: str
    original_nodes: list[Node]
    fused_nodes: list[Node]
    groups: list[Group]
    original_inputs: list[str]
    original_outputs: list[str]
    fused_inputs: list[str]
    fused_outputs: list[str]
    left_to_right: dict[int, list[int]] = field(default_factory=dict)
    right_to_left: dict[int, list[int]] = field(default_factory=dict)
    left_group: dict[int, int] = field(default_factory=dict)
    right_group: dict[int, int] = field(default_factory=dict)

    @property
    def removed(self) -> list[int]:
        return [n.index for n in self.original_nodes if n.index not in self.left_to_right]

    @property
    def added(self) -> list[int]:
        return [n.index for n in self.fused_nodes if n.index not in self.right_to_left]

    def op_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        return (dict(Counter(n.op for n in self.original_nodes)), dict(Counter(n.op for n in self.fused_nodes)))

    def fused_groups(self) -> list[Group]:
        return [g for g in self.groups if g.kind == "fused"]


def load_graph(path: str | os.PathLike, what: str) -> onnx.ModelProto:
    """The model's graph without its weights' external data (the diff needs names, ops and edges)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file" if not p.exists() else f"{p}: not a file")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        raise InputError(f"{p}: not a valid ONNX model ({str(e).strip()[:200] or type(e).__name__})") from None
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise InputError(f"{p}: not an ONNX model (no graph) — expected the {what} model")
    return model


def _nodes(model: onnx.ModelProto) -> list[Node]:
    g = model.graph
    names = unique_node_names([(n.name, n.op_type) for n in g.node])
    declared = {i.name for i in g.input}
    # From IR 4 on, an initializer that is also a graph input is an overridable default, not a constant
    consts = {t.name for t in g.initializer if model.ir_version < 4 or t.name not in declared}
    consts |= {t.name for t in g.sparse_initializer}
    out: list[Node] = []
    for i, (n, name) in enumerate(zip(g.node, names, strict=True)):
        attrs = {}
        for a in n.attribute:
            if a.name in ("kernel", "tactic") and a.type == onnx.AttributeProto.STRING:
                attrs[a.name] = a.s.decode("utf-8", "replace")
        ins = [x for x in n.input if x]
        is_const = (not n.op_type.startswith("Random") and n.domain in ("", "ai.onnx")
                    and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                for a in n.attribute)
                    and all(x in consts for x in ins) and (bool(ins) or n.op_type == "Constant"))
        if is_const:
            consts.update(o for o in n.output if o)
        out.append(Node(i, name, n.op_type, n.domain, ins, [o for o in n.output if o], n.doc_string,
                        {p.key: p.value for p in n.metadata_props}, attrs, is_const))
    return out


def _io(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits], [o.name for o in model.graph.output]


def _json_list(s: str | None) -> list[str]:
    if not s:
        return []
    try:
        v = json.loads(s)
    except ValueError:
        return []
    return [str(x) for x in v] if isinstance(v, list) else []


def build_diff(original: onnx.ModelProto, fused: onnx.ModelProto, original_path: str = "original",
               fused_path: str = "fused") -> GraphDiff:
    left, right = _nodes(original), _nodes(fused)
    li, lo = _io(original)
    ri, ro = _io(fused)
    d = GraphDiff(str(original_path), str(fused_path), left, right, [], li, lo, ri, ro)
    by_name_left = {n.name: n.index for n in left}
    groups: dict[str, Group] = {}  # keyed by the fused node's name
    for n in right:
        key = n.props.get(FUSED_NODE_KEY) or n.name
        has_prov = any(k in n.props for k in (SOURCES_KEY, FOLDED_KEY, PATTERN_KEY))
        if not has_prov:
            continue
        g = groups.get(key)
        if g is None:
            folded = _json_list(n.props.get(FOLDED_KEY))
            sources = _json_list(n.props.get(SOURCES_KEY)) or [key]  # a plain node that absorbed folds
            names = list(dict.fromkeys([*sources, *folded]))
            idx = sorted({by_name_left[s] for s in names if s in by_name_left})
            g = Group([], idx, sorted(by_name_left[s] for s in folded if s in by_name_left),
                      n.props.get(PATTERN_KEY) or "fold", n.op, n.attrs.get("kernel", ""),
                      n.attrs.get("tactic", ""), [s for s in names if s not in by_name_left],
                      inlined=FUSED_NODE_KEY in n.props)
            groups[key] = g
        elif g.inlined:
            g.op_type += f"+{n.op}"  # --target onnx: the standard ops the fused node was inlined into
        g.fused.append(n.index)
    d.groups = sorted(groups.values(), key=lambda g: g.fused[0])
    for gi, g in enumerate(d.groups):
        for r in g.fused:
            d.right_group[r] = gi
            d.right_to_left[r] = list(g.sources)
        for s in g.sources:
            d.left_group[s] = gi
            d.left_to_right.setdefault(s, []).extend(g.fused)
    # unchanged nodes: same name on both sides, no provenance of their own
    for n in right:
        if n.index in d.right_group:
            continue
        j = by_name_left.get(n.name)
        if j is not None and j not in d.left_group:
            d.right_to_left[n.index] = [j]
            d.left_to_right.setdefault(j, []).append(n.index)
    return d


def diff_files(original: str | os.PathLike, fused: str | os.PathLike) -> GraphDiff:
    return build_diff(load_graph(original, "original"), load_graph(fused, "fused"), str(original), str(fused))
