"""standalone_bn — a BatchNormalization with no foldable producer (+ activation) → one affine kernel.

Matches (what fold_bn left: pre-activation BN→ReLU→Conv as in DenseNet, BN after Add or Concat)::

    X ─► BatchNormalization(γ, β, μ, σ², ε) ─► [Mul(c) | Div(c) | Add(c) | Sub(c)]* ─► [Act] ─► z

The per-channel constant Mul/Add chain after the BN (Caffe2's Scale layer, as in the onnx package's
light densenet121) is absorbed into the same affine map.

Guards: inference-mode BN with constant parameters and no extra outputs (declared mean/var outputs
mean training mode before opset 14, see fold_bn); X's rank known (≥ 2); each intermediate has one
consumer (the last may have the SiLU diamond's two) and is not a graph output; every absorbed constant
is per-channel.

Rewrite: scale = γ/sqrt(σ²+ε)·∏c, shift = (β − μ·γ/sqrt(σ²+ε))·… computed once in float64 (the seed
report's parameter fusion) and stored as [C, 1, …, 1] constants that broadcast in the function body;
``fuser::FusedBatchNorm<Act>(X, scale, shift[, clip_min, clip_max])`` with ``epsilon`` kept for the record.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from fuser.activation_match import match_activation_after
from fuser.context import PassContext
from fuser.fused import FusedOpType, clip_bounds_as_inputs
from fuser.graph import channel_vector, const_value, single_use_intermediate
from fuser.passes.fold_bn import bn_scale_shift

NAME = "standalone_bn"


def run(ctx: PassContext) -> int:
    graph = ctx.graph
    count = 0
    for bn in [n for n in graph.nodes if n.op == "BatchNormalization"]:
        if not bn.outputs or any(o.outputs or o in graph.outputs for o in bn.outputs[1:]):
            continue
        x = bn.inputs[0]
        if x.shape is None or len(x.shape) < 2:
            continue
        st = bn_scale_shift(bn)
        if st is None:
            continue
        scale, shift = st
        rank = len(x.shape)
        sources = [bn]
        out = bn.outputs[0]
        while single_use_intermediate(graph, out):
            nxt = out.outputs[0]
            if nxt.op not in ("Mul", "Div", "Add", "Sub") or len(nxt.inputs) != 2 or not nxt.outputs:
                break
            other = nxt.inputs[1] if nxt.inputs[0] is out else nxt.inputs[0]
            c = const_value(other)
            if c is None or (nxt.op in ("Sub", "Div") and nxt.inputs[0] is not out):
                break
            vec = channel_vector(c, scale.size, rank)
            if vec is None or (nxt.op == "Div" and np.any(vec == 0)):
                break
            if nxt.op == "Mul":
                scale, shift = scale * vec, shift * vec
            elif nxt.op == "Div":
                scale, shift = scale / vec, shift / vec
            else:
                shift = shift + (vec if nxt.op == "Add" else -vec)
            sources.append(nxt)
            out = nxt.outputs[0]
        act = match_activation_after(graph, out, ctx.opset)  # one consumer, or the SiLU diamond's two
        dtype = _dtype_of(bn)
        bshape = (scale.size,) + (1,) * (rank - 2)
        inputs: list[gs.Tensor] = [
            x,
            ctx.names.constant(f"{bn.name}.scale", scale.reshape(bshape).astype(dtype)),
            ctx.names.constant(f"{bn.name}.shift", shift.reshape(bshape).astype(dtype)),
        ]
        attrs = {"activation": "", "alpha": 0.01, "beta": 0.0, "clip_min": float("-inf"),
                 "clip_max": float("inf")}
        if act is not None:
            attrs.update(act.attrs())
            sources += act.nodes
            out = act.out
            if act.activation == "Clip" and clip_bounds_as_inputs(ctx.opset):
                for key in ("clip_min", "clip_max"):
                    inputs.append(ctx.names.constant(f"{bn.name}.{key}", np.array(attrs[key], dtype=dtype)))
        attrs["epsilon"] = float(bn.attrs.get("epsilon", 1e-5))
        activation = act.activation if act is not None else ""
        pattern = "bn" + ("_affine" if len(sources) > 1 + len(act.nodes if act else []) else "") + (
            "_" + activation.lower() if activation else "")
        ctx.fused_node(FusedOpType("BatchNorm", activation), inputs, out, attrs, pattern, sources)
        count += 1
    return count


def _dtype_of(bn: gs.Node) -> np.dtype:
    v = const_value(bn.inputs[1])
    x = bn.inputs[0]
    if getattr(x, "dtype", None) is not None and np.dtype(x.dtype) in (np.float16, np.float32, np.float64):
        return np.dtype(x.dtype)
    return np.dtype(v.dtype) if v is not None else np.dtype(np.float32)
