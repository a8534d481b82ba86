"""Recognise the activations the passes fuse, as single ops or small subgraphs.

    Relu | LeakyRelu | Clip(const bounds) | Sigmoid | HardSigmoid | HardSwish | Tanh
    SiLU:   t ─┬─► Sigmoid ─► g ─┐
               └──────────────► Mul ─► z          (t has exactly these two consumers)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from .graph import const_value, input_at, single_use_intermediate

SIMPLE = ("Relu", "Sigmoid", "Tanh", "HardSwish")


@dataclass
class ActivationMatch:
    activation: str
    x: gs.Tensor  # what the activation reads
    out: gs.Tensor  # what it produces
    nodes: list[gs.Node]  # the nodes it is made of, in order
    params: dict = field(default_factory=dict)  # alpha, beta, clip_min, clip_max

    def attrs(self) -> dict:
        """The fused node's activation attributes (all of them, explicit, as floats)."""
        p = {"alpha": 0.01, "beta": 0.0, "clip_min": float("-inf"), "clip_max": float("inf")}
        p.update(self.params)
        return {"activation": self.activation, **{k: float(v) for k, v in p.items()}}


def match_activation_after(graph: gs.Graph, t: gs.Tensor, opset: int) -> ActivationMatch | None:
    """The activation that is the only consumer of ``t`` (``t`` then may be swallowed)."""
    if t in graph.outputs:
        return None
    users = list(t.outputs)
    if len(users) == 1:
        return match_activation_node(users[0], opset)
    if len(users) == 2:  # the SiLU diamond
        sig = next((u for u in users if u.op == "Sigmoid"), None)
        mul = next((u for u in users if u.op == "Mul"), None)
        if sig is None or mul is None or not sig.outputs:
            return None
        g = sig.outputs[0]
        if not single_use_intermediate(graph, g) or g.outputs[0] is not mul:
            return None
        if {id(i) for i in mul.inputs} != {id(t), id(g)} or len(mul.inputs) != 2:
            return None
        return ActivationMatch("SiLU", t, mul.outputs[0], [sig, mul])
    return None


def match_activation_node(node: gs.Node, opset: int) -> ActivationMatch | None:
    if not node.outputs or not node.inputs:
        return None
    x, out = node.inputs[0], node.outputs[0]
    if node.op in SIMPLE:
        return ActivationMatch(node.op, x, out, [node])
    if node.op == "LeakyRelu":
        return ActivationMatch("LeakyRelu", x, out, [node], {"alpha": float(node.attrs.get("alpha", 0.01))})
    if node.op == "HardSigmoid":
        return ActivationMatch("HardSigmoid", x, out, [node], {
            "alpha": float(node.attrs.get("alpha", 0.2)), "beta": float(node.attrs.get("beta", 0.5))})
    if node.op == "Clip":
        if opset < 11:
            lo = float(node.attrs.get("min", float(np.finfo(np.float32).min)))
            hi = float(node.attrs.get("max", float(np.finfo(np.float32).max)))
        else:
            bounds = []
            for i, default in ((1, float("-inf")), (2, float("inf"))):
                b = input_at(node, i)
                if b is None:
                    bounds.append(default)
                    continue
                v = const_value(b)
                if v is None or v.size != 1:
                    return None
                bounds.append(float(v.reshape(-1)[0]))
            lo, hi = bounds
        return ActivationMatch("Clip", x, out, [node], {"clip_min": lo, "clip_max": hi})
    return None
