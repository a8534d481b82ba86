"""fold_affine — fold per-channel constant Mul / Add / Sub / Div that follow a Conv into its weights.

Matches (repeatedly, one op per step)::

    X ─► Conv / ConvTranspose (W, B?) ─► y ─► Mul(c) | Div(c) | Add(c) | Sub(c) ─► z

where ``c`` is a constant holding one number per output channel (shape [C,1,..,1], [1,C,1,..,1]) or one
number in all. Caffe2-era exports (the onnx package's light inception_v2 and densenet121) scale and
shift after BN this way, and TF-style exports add the conv bias as a separate Add.

Guards: y has one consumer and is not a graph output; W, B and c are constants; c broadcasts per
channel (never along a spatial axis); for Sub/Div the Conv output is the left operand; Div by a
channel with c == 0 is refused.

Rewrite: Mul/Div scale filters and bias; Add/Sub shift the bias (created if absent); computed in
float64, cast back; the Mul/Add disappears.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from fuser.context import PassContext
from fuser.graph import (
    channel_vector,
    const_value,
    conv_out_channel_factor,
    input_at,
    producer,
    scaled,
    single_use_intermediate,
)

NAME = "fold_affine"
_OPS = ("Mul", "Div", "Add", "Sub")


def run(ctx: PassContext) -> int:
    count = 0
    for op in [n for n in ctx.graph.nodes if n.op in _OPS]:
        if len(op.inputs) != 2 or not op.outputs:
            continue
        count += int(_fold_one(ctx, op))
    return count


def _fold_one(ctx: PassContext, op: gs.Node) -> bool:
    graph = ctx.graph
    a, b = op.inputs
    if const_value(a) is None and const_value(b) is not None:
        y, c, left = a, const_value(b), True
    elif const_value(b) is None and const_value(a) is not None:
        y, c, left = b, const_value(a), False
    else:
        return False
    if op.op in ("Sub", "Div") and not left:
        return False
    conv = producer(y)
    if conv is None or conv.op not in ("Conv", "ConvTranspose") or not single_use_intermediate(graph, y):
        return False
    w = const_value(input_at(conv, 1))
    b_t = input_at(conv, 2)
    bias = const_value(b_t)
    if w is None or (b_t is not None and bias is None) or w.ndim < 3:
        return False
    group = int(conv.attrs.get("group", 1))
    cout = w.shape[0] if conv.op == "Conv" else w.shape[1] * group
    vec = channel_vector(c, cout, w.ndim)
    if vec is None:
        return False
    bias64 = np.zeros(cout) if bias is None else bias.astype(np.float64).reshape(-1)
    if op.op in ("Mul", "Div"):
        if op.op == "Div":
            if np.any(vec == 0):
                return False
            vec = 1.0 / vec
        bias64 = bias64 * vec
        conv.inputs[1] = ctx.names.constant(f"{conv.name}.weight_{op.op.lower()}",
                                            scaled(w, conv_out_channel_factor(conv.op, w, group, vec)))
    else:
        bias64 = bias64 + (vec if op.op == "Add" else -vec)
    new_b = ctx.names.constant(f"{conv.name}.bias_{op.op.lower()}", bias64.astype(w.dtype))
    if len(conv.inputs) > 2:
        conv.inputs[2] = new_b
    else:
        conv.inputs.append(new_b)
    z = op.outputs[0]
    ctx.retire([op])
    conv.outputs[0] = z
    ctx.record_fold(f"conv_{op.op.lower()}_fold", [conv, op], conv)
    return True
