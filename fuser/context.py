"""The state a pass run shares: the graph, the opset, names, and the record of every rewrite."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import onnx_graphsurgeon as gs

from .fused import DOMAIN, FusedOpType, FusionRecord
from .graph import NameScope


@dataclass
class PassContext:
    graph: gs.Graph
    opset: int
    names: NameScope = field(init=False)
    fusions: list[FusionRecord] = field(default_factory=list)
    fused_types: dict[str, FusedOpType] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.names = NameScope(self.graph)

    def retire(self, nodes: list[gs.Node]) -> None:
        """Disconnect replaced nodes; ``cleanup()`` drops them and their dead tensors."""
        for n in nodes:
            n.inputs.clear()
            n.outputs.clear()

    def fused_node(self, ftype: FusedOpType, inputs: list[gs.Tensor], output: gs.Tensor,
                   attrs: dict, pattern: str, sources: list[gs.Node]) -> gs.Node:
        """Replace ``sources`` by one fused node producing ``output`` (the last source's output).

        A source that is itself a fused node of this run (conv_shortcut grows a ``FusedConv<Act>``) stands
        for the nodes it replaced: its record gives way to this one, which lists those original nodes, so
        the name, the report and the visual diff name original nodes only."""
        source_names = []
        for n in sources:
            rec = next((r for r in self.fusions if r.kernel and r.fused_node == n.name), None)
            if rec is not None and n.domain == DOMAIN:
                self.fusions.remove(rec)
                source_names += rec.source_nodes
            else:
                source_names.append(n.name)
        self.retire(sources)
        if len(source_names) == 1:  # one node replaced by one: the replacement keeps its name
            self.names.release(source_names[0])
        name = self.names.fresh("+".join(source_names))
        attrs = dict(attrs)
        attrs.setdefault("kernel", ftype.kernel)
        attrs.setdefault("tactic", "auto")
        node = gs.Node(op=ftype.name, name=name, attrs=attrs, inputs=list(inputs), outputs=[output],
                       domain=DOMAIN)
        self.graph.nodes.append(node)
        self.fused_types[ftype.name] = ftype
        self.fusions.append(FusionRecord(pattern, source_names, name, ftype.name, ftype.kernel,
                                         str(attrs.get("tactic", ""))))
        return node

    def record_fold(self, pattern: str, sources: list[gs.Node], into: gs.Node) -> None:
        """Folds change weights instead of adding a node: recorded against the node they landed in."""
        self.fusions.append(FusionRecord(pattern, [n.name for n in sources], into.name, into.op, ""))


def provenance_props(rec: FusionRecord) -> dict[str, str]:
    return {"fuser.pattern": rec.pattern, "fuser.source_nodes": json.dumps(rec.source_nodes)}
