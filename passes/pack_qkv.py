"""pack_qkv — the Q, K and V projections of a fused attention node that read the same input → one MatMul.

Runs after attention fusion, so it matches from each ``FusedAttention*`` node back through the head split::

    X ─┬─► MatMul(Wq) ─► Add(bq) ─► q ─► [Reshape / Transpose]… ─► Q ─┐
       ├─► MatMul(Wk) ─► Add(bk) ─► k ─► [Reshape / Transpose]… ─► K ─┼─► FusedAttention*
       └─► MatMul(Wv) ─► Add(bv) ─► v ─► [Reshape / Transpose]… ─► V ─┘

Three GEMMs of N columns become one of 3N (the Q/K/V GEMMs of BERT-base at 1024 tokens fill 48 of 132 SMs' tiles
alone), two bias Adds go, and the runtime's layout views (:mod:`fuser.layout_views`) read Q, K and V straight out
of the packed result, so the Split this pass adds does not run on the GPU either. The projections stay outside the
fused node, as ONNX's Attention op defines it. Self-attention packs all three; cross-attention packs the two that
share an input (K and V).

Guards (a member that fails one is left out; fewer than two members, no rewrite):

- from the node's Q/K/V input back to the projection only Reshape and Transpose (at most four of them), each
  output used once and not a graph output;
- the projection is a standard ``MatMul`` whose second input is a constant 2-D weight used by it alone, whose first
  input X is computed (not a constant), optionally followed by an ``Add`` of a constant bias of shape ``[N]`` or
  ``[1, …, N]`` used by it alone — the MatMul's output used only by that Add, not a graph output;
- members share X (the same tensor), the weights' dtype and row count; all have a bias or none has;
- opset 7–10 (Split's axis must be non-negative there): X's rank is known.

Rewrite: the first member's MatMul takes ``concat(W, axis=1)`` (and its Add ``concat(b)``); a ``Split`` along the
last axis with constant sizes writes the members' old outputs (q, k, v keep their names). Recorded as a fold
into that MatMul (``qkv_pack``). Numerically the same products: each output column is still one row of X times
one column of W.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from fuser.context import PassContext
from fuser.fused import DOMAIN, parse_op_type
from fuser.graph import const_value, producer, single_use_intermediate

NAME = "pack_qkv"
MAX_LAYOUT_OPS = 4


def run(ctx: PassContext) -> int:
    graph = ctx.graph
    count = 0
    for node in [n for n in graph.nodes if n.domain == DOMAIN]:
        ftype = ctx.fused_types.get(node.op) or parse_op_type(node.op)
        if ftype is None or ftype.base != "Attention" or len(node.inputs) < 3:
            continue
        members: list[tuple[gs.Node, gs.Node | None, np.ndarray, np.ndarray | None]] = []
        seen: set[int] = set()
        for i in range(3):
            m = _projection(graph, node.inputs[i])
            if m is not None and id(m[0]) not in seen:
                seen.add(id(m[0]))
                members.append(m)
        group = _shared_group(ctx, members)
        if len(group) >= 2:
            _pack(ctx, group)
            count += 1
    return count


def _projection(graph: gs.Graph, t: gs.Tensor) -> tuple[gs.Node, gs.Node | None, np.ndarray, np.ndarray | None] | None:
    """(MatMul, Add or None, W, b or None) feeding ``t`` through layout ops only; None where a guard fails."""
    cur = t
    for _ in range(MAX_LAYOUT_OPS + 1):
        p = producer(cur)
        if p is None or p.domain not in (None, "", "ai.onnx"):
            return None
        if p.op in ("Reshape", "Transpose"):
            cur = p.inputs[0]
            if not single_use_intermediate(graph, cur):
                return None
            continue
        break
    else:
        return None
    add = None
    if p.op == "Add" and len(p.inputs) == 2:
        add = p
        bias_in = next((x for x in add.inputs if const_value(x) is not None), None)
        cur = next((x for x in add.inputs if const_value(x) is None), None)
        if bias_in is None or cur is None or len(bias_in.outputs) != 1 or not single_use_intermediate(graph, cur):
            return None
        p = producer(cur)
        if p is None:
            return None
    if p.op != "MatMul" or p.domain not in (None, "", "ai.onnx") or len(p.inputs) != 2:
        return None
    x, w_in = p.inputs
    w = const_value(w_in)
    if w is None or w.ndim != 2 or const_value(x) is not None or len(w_in.outputs) != 1:
        return None
    b = None
    if add is not None:
        b = const_value(next(x for x in add.inputs if const_value(x) is not None))
        if b.dtype != w.dtype or b.size != w.shape[1] or any(d != 1 for d in b.shape[:-1]):
            return None
    return p, add, w, b


def _shared_group(ctx: PassContext, members: list) -> list:
    """The largest set of members that read one X, with matching weights and bias presence."""
    best: list = []
    for first in members:
        x = first[0].inputs[0]
        group = [m for m in members if m[0].inputs[0] is x and m[2].dtype == first[2].dtype
                 and m[2].shape[0] == first[2].shape[0] and (m[1] is None) == (first[1] is None)]
        if len(group) > len(best):
            best = group
    if best and ctx.opset < 11 and (best[0][0].inputs[0].shape is None):
        return []  # Split's axis must be non-negative before opset 11: X's rank must be known
    return best


def _pack(ctx: PassContext, group: list) -> None:
    graph = ctx.graph
    mm0, add0 = group[0][0], group[0][1]
    sizes = [int(m[2].shape[1]) for m in group]
    outs = [(m[1] if m[1] is not None else m[0]).outputs[0] for m in group]
    mm0.inputs[1] = ctx.names.constant(f"{mm0.name}.weight_qkv", np.concatenate([m[2] for m in group], axis=1))
    last = mm0
    if add0 is not None:
        bias = np.concatenate([m[3].reshape(-1) for m in group])
        i = next(k for k, x in enumerate(add0.inputs) if const_value(x) is not None)
        add0.inputs[i] = ctx.names.constant(f"{add0.name}.bias_qkv", bias)
        last = add0
    packed = gs.Variable(ctx.names.fresh(f"{mm0.name}.qkv"), dtype=outs[0].dtype)
    if add0 is not None:
        mm0.outputs[0].shape = None  # it is [.., ΣN] now: no stale shape in the exported value_info
    rank = len(mm0.inputs[0].shape) if mm0.inputs[0].shape is not None else None
    axis = -1 if ctx.opset >= 11 else rank - 1
    others = [n for m in group[1:] for n in (m[0], m[1]) if n is not None]
    ctx.retire(others)
    last.outputs.clear()
    last.outputs.append(packed)
    split_name = ctx.names.fresh(f"{mm0.name}.split_qkv")
    if ctx.opset >= 13:
        split = gs.Node("Split", name=split_name, attrs={"axis": axis},
                        inputs=[packed, ctx.names.constant(f"{split_name}.sizes", np.array(sizes, np.int64))],
                        outputs=outs)
    else:
        split = gs.Node("Split", name=split_name, attrs={"axis": axis, "split": sizes}, inputs=[packed],
                        outputs=outs)
    graph.nodes.append(split)
    ctx.record_fold("qkv_pack", [mm0, *others], mm0)
