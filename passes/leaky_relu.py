"""leaky_relu — a standalone LeakyRelu → one ``fuser::FusedLeakyRelu`` node (float4 branchless kernel).

Matches::

    X ─► LeakyRelu(alpha) ─► z        (any producer that no earlier pass fused it into)

Guards: none beyond the node being a plain single-output LeakyRelu; runs after conv_activation and
standalone_bn, so only LeakyRelus those could not absorb reach it.

Rewrite: ``fuser::FusedLeakyRelu(X)`` with ``alpha`` (and ``activation="LeakyRelu"``) attributes.
"""

from __future__ import annotations

from fuser.context import PassContext
from fuser.fused import FusedOpType

NAME = "leaky_relu"


def run(ctx: PassContext) -> int:
    count = 0
    for node in [n for n in ctx.graph.nodes if n.op == "LeakyRelu" and n.domain in (None, "", "ai.onnx")]:
        if len(node.outputs) != 1 or not node.inputs:
            continue
        alpha = float(node.attrs.get("alpha", 0.01))
        attrs = {"activation": "LeakyRelu", "alpha": alpha, "beta": 0.0,
                 "clip_min": float("-inf"), "clip_max": float("inf")}
        ctx.fused_node(FusedOpType("LeakyRelu"), [node.inputs[0]], node.outputs[0], attrs,
                       "leaky_relu", [node])
        count += 1
    return count
