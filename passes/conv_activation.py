"""conv_activation — Conv (+ residual Add) + activation → one fused ``FusedConv[Add]<Act>`` node.

Matches::

    X ─► Conv(W, B?) ─► y ─────────────────────────► Act ─► z
    X ─► Conv(W, B?) ─► y ─► Add / Sum(y, R) ─► s ─► Act ─► z        (ResNet's residual)

Act is Relu, LeakyRelu, Clip with constant bounds (ReLU6), Sigmoid, HardSigmoid, HardSwish, Tanh, or the
SiLU diamond x·Sigmoid(x). Runs after fold_bn/fold_affine, so a Conv+BN+Act chain arrives here as
Conv+Act with BN already in the weights. A shortcut Add *after* Act (Darknet's) is conv_shortcut's, next.

Guards: y (and s) have one consumer (or exactly the SiLU diamond's two) and are not graph outputs; W and B
are constants; the Add has exactly two inputs and R has the same static shape as y (a broadcasting Add is
not a residual).

Rewrite: ``fuser::FusedConv[Add]<Act>(X, W, B[, R][, clip_min, clip_max])`` carrying the Conv's
attributes and the activation's parameters; a missing bias becomes an explicit zero bias (the kernel
always reads one). The node keeps z's name.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from fuser.activation_match import ActivationMatch, match_activation_after
from fuser.context import PassContext
from fuser.fused import CONV_ATTRS, FusedOpType, clip_bounds_as_inputs
from fuser.graph import const_value, input_at, same_static_shape

NAME = "conv_activation"


def run(ctx: PassContext) -> int:
    graph = ctx.graph
    count = 0
    for conv in [n for n in graph.nodes if n.op == "Conv"]:
        if not conv.outputs or len(conv.outputs) != 1:
            continue
        w = const_value(input_at(conv, 1))
        b_t = input_at(conv, 2)
        if w is None or (b_t is not None and const_value(b_t) is None):
            continue
        y = conv.outputs[0]
        if y in graph.outputs or not y.outputs:
            continue
        # one consumer (Act or the residual Add), or the two of the SiLU diamond (checked by the matcher)
        residual, after = _match_residual(graph, y) if len(y.outputs) == 1 else (None, y)
        act = match_activation_after(graph, after, ctx.opset)
        if act is None:
            continue
        _rewrite(ctx, conv, w, residual, act)
        count += 1
    return count


def _match_residual(graph: gs.Graph, y: gs.Tensor) -> tuple[tuple[gs.Node, gs.Tensor] | None, gs.Tensor]:
    add = y.outputs[0]
    if add.op not in ("Add", "Sum") or len(add.inputs) != 2 or not add.outputs:
        return None, y
    r = add.inputs[1] if add.inputs[0] is y else add.inputs[0]
    s = add.outputs[0]
    if r is y or not same_static_shape(y, r) or not same_static_shape(y, s):
        return None, y
    if s in graph.outputs or not s.outputs:  # one consumer, or the SiLU diamond's two (the matcher checks)
        return None, y
    return (add, r), s


def _rewrite(ctx: PassContext, conv: gs.Node, w: np.ndarray, residual: tuple[gs.Node, gs.Tensor] | None,
             act: ActivationMatch) -> None:
    inputs: list[gs.Tensor] = [conv.inputs[0], conv.inputs[1]]
    b_t = input_at(conv, 2)
    inputs.append(b_t if b_t is not None else ctx.names.constant(f"{conv.name}.bias_zero",
                                                                 np.zeros(w.shape[0], dtype=w.dtype)))
    sources = [conv]
    if residual is not None:
        inputs.append(residual[1])
        sources.append(residual[0])
    sources += act.nodes
    attrs = {k: v for k, v in conv.attrs.items() if k in CONV_ATTRS}
    attrs.update(act.attrs())
    if act.activation == "Clip" and clip_bounds_as_inputs(ctx.opset):
        for key in ("clip_min", "clip_max"):
            inputs.append(ctx.names.constant(f"{conv.name}.{key}", np.array(attrs[key], dtype=w.dtype)))
    ftype = FusedOpType("Conv", act.activation, residual is not None)
    pattern = "conv_" + ("add_" if residual else "") + act.activation.lower()
    ctx.fused_node(ftype, inputs, act.out, attrs, pattern, sources)
