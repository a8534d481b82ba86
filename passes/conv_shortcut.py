"""conv_shortcut — a shortcut Add after a fused conv's activation → one ``FusedConv<Act>Add`` node.

Darknet-53 and CSPDarknet-53 add the shortcut *after* the activation (ResNet adds it before, which
conv_activation already fuses). conv_activation has turned Conv(+BN)+Act into ``FusedConv<Act>`` by the
time this pass runs, so it matches::

    X ─► FusedConv<Act>(W, B[, clip_min, clip_max]) ─► z ─► Add / Sum(z, R) ─► s        (either order)

Guards:

- the fused conv has an activation and no residual yet (``FusedConvAdd<Act>`` takes one R only; without
  an activation the Add is a residual *before* it, which conv_activation leaves alone on purpose);
- z has exactly this one consumer and is not a graph output (it disappears into the kernel);
- the Add is a standard ``Add`` or a two-input ``Sum``; R is not z itself (``Add(z, z)`` is 2·z, no
  shortcut) and not a constant (a constant operand is a bias, and the device runtime binds only computed
  residuals);
- R and s have z's static shape (every dim known; a symbolic dim matches only itself) — no broadcasting:
  the kernel reads R element for element — and R has z's dtype.

Rewrite: ``fuser::FusedConv<Act>Add(X, W, B, R[, clip_min, clip_max])`` with the fused conv's attributes
(activation parameters, kernel, tactic) unchanged; the kernel runs it as ``act(conv(X) + B) + R``
(``residual_after``). The node writes s. Its provenance lists the original nodes (the Conv, its
activation and the Add; a BN folded into the Conv stays in ``fuser.folded``), and its name joins them.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from fuser.context import PassContext
from fuser.fused import DOMAIN, FusedOpType, parse_op_type
from fuser.graph import is_const, same_static_shape

NAME = "conv_shortcut"


def run(ctx: PassContext) -> int:
    graph = ctx.graph
    count = 0
    for node in [n for n in graph.nodes if n.domain == DOMAIN]:
        ftype = ctx.fused_types.get(node.op) or parse_op_type(node.op)  # fused by an earlier run, too
        if ftype is None or ftype.base != "Conv" or ftype.residual or not ftype.activation:
            continue
        match = _match_shortcut(graph, node)
        if match is None:
            continue
        add, r = match
        inputs = [*node.inputs[:3], r, *node.inputs[3:]]  # R sits before the clip bounds, as in FusedConvAdd
        after = FusedOpType("Conv", ftype.activation, True, residual_after=True)
        ctx.fused_node(after, inputs, add.outputs[0], dict(node.attrs), f"conv_{ftype.activation.lower()}_add",
                       [node, add])
        count += 1
    return count


def _match_shortcut(graph: gs.Graph, node: gs.Node) -> tuple[gs.Node, gs.Tensor] | None:
    """The Add that is the fused conv's only consumer, and its other operand R; None where a guard fails."""
    if len(node.outputs) != 1 or len(node.inputs) < 3:
        return None
    z = node.outputs[0]
    if z in graph.outputs or len(z.outputs) != 1:  # Add(z, z) lists its node twice: two consumers
        return None
    add = z.outputs[0]
    if add.op not in ("Add", "Sum") or add.domain not in (None, "", "ai.onnx"):
        return None
    if len(add.inputs) != 2 or len(add.outputs) != 1:
        return None
    r = add.inputs[1] if add.inputs[0] is z else add.inputs[0]
    if r is z or is_const(r):
        return None
    s = add.outputs[0]
    if not same_static_shape(z, r) or not same_static_shape(z, s):
        return None
    if z.dtype is None or r.dtype is None or z.dtype != r.dtype:
        return None
    return add, r
