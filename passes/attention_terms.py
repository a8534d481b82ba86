"""attention_terms — a fused attention node's bias/mask term read before it was broadcast to [B, 1, Sq, Skv].

Exporters build the padding mask small — [B, 1, 1, Skv] — and then broadcast it up to one full [B, 1, Sq, Skv]
tensor before the softmax (transformers' mask helpers: ``And`` with an all-True constant, ``Expand``, then ``Where``
to 0 / -inf). The fused node adds the term with broadcasting anyway, so it can take the small tensor: the kernels
then read one row of Skv values per batch instead of a full Sq x Skv matrix per head (and the row-broadcast path
keeps it in shared memory). Matches, from each ``bias``/``mask`` term input back::

    c ─► [Cast | Not]… ─► [And(all-True) | Or(all-False)] ─► Expand(·, shape) ─► [Where(·, a, b)] ─► term ─► Fused…
                                                                                     a, b constants

Rewrite rules, applied from the term back while each holds (elementwise ops commute with broadcasting, so every
step keeps the values the node sees once it broadcasts the term to the scores):

- ``Expand(x, shape)`` → x;
- ``And(T, x)`` with T a constant of all True → x; ``Or(F, x)`` with F all False → x;
- ``Where(c, a, b)`` with a, b constants → a new ``Where(c', a, b)`` on the shrunk condition c';
- ``Cast(x)``, ``Not(x)`` → a new node of the same op on the shrunk x.

Guards: the term is a ``bias`` or ``mask`` (not Swin's ``winbias``, whose batch axis is windows); the result's rank is
known, at most 4 and not the term's own shape (the node's broadcasting aligns trailing axes, as Expand's did); at
least one Expand or identity And/Or was dropped (else nothing shrinks). Nodes in the chain are never changed in
place (other consumers keep them); the new ones are named after them. The term input of every fused node that read
the same tensor is rewritten.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from fuser.context import PassContext
from fuser.fused import DOMAIN, parse_op_type
from fuser.graph import const_value, producer

NAME = "attention_terms"
MAX_DEPTH = 8


def run(ctx: PassContext) -> int:
    count = 0
    done: dict[int, gs.Tensor] = {}  # term tensor id → its shrunk replacement (shared masks rewrite once)
    for node in [n for n in ctx.graph.nodes if n.domain == DOMAIN]:
        ftype = ctx.fused_types.get(node.op) or parse_op_type(node.op)
        if ftype is None or ftype.base != "Attention" or ftype.attention_variant() is None:
            continue
        pos = 3
        for kind in ftype.attention_variant().terms:
            if kind in ("bias", "mask") and pos < len(node.inputs):
                t = node.inputs[pos]
                if id(t) not in done:
                    done[id(t)] = _shrink(ctx, t, 0)
                small = done[id(t)]
                if small is not None and small is not t and _rank_ok(small) and small.shape != t.shape:
                    node.inputs[pos] = small
                    count += 1
            pos += 2 if kind == "mask" else 1
    return count


def _rank_ok(t: gs.Tensor) -> bool:
    return t.shape is not None and len(t.shape) <= 4


def _shrink(ctx: PassContext, t: gs.Tensor, depth: int) -> gs.Tensor | None:
    """A tensor that broadcasts to ``t``'s values, smaller; None where no rule shrinks anything."""
    p = producer(t)
    if p is None or depth > MAX_DEPTH or p.domain not in (None, "", "ai.onnx"):
        return None
    if p.op == "Expand" and len(p.inputs) == 2:
        x = p.inputs[0]
        return _shrink(ctx, x, depth + 1) or x
    if p.op in ("And", "Or") and len(p.inputs) == 2:
        for c, x in ((p.inputs[0], p.inputs[1]), (p.inputs[1], p.inputs[0])):
            v = const_value(c)
            if v is not None and const_value(x) is None and v.dtype == np.bool_ and (
                    v.all() if p.op == "And" else not v.any()):
                return _shrink(ctx, x, depth + 1) or x
        return None
    if p.op == "Where" and len(p.inputs) == 3 and all(const_value(x) is not None for x in p.inputs[1:]):
        c = _shrink(ctx, p.inputs[0], depth + 1)
        return None if c is None else _copy(ctx, p, [c, *p.inputs[1:]], t)
    if p.op in ("Cast", "Not") and len(p.inputs) == 1:
        x = _shrink(ctx, p.inputs[0], depth + 1)
        return None if x is None else _copy(ctx, p, [x], t)
    return None


def _copy(ctx: PassContext, p: gs.Node, inputs: list[gs.Tensor], like: gs.Tensor) -> gs.Tensor:
    """A new node like ``p`` on the shrunk inputs; its output's shape follows the inputs' broadcast."""
    shapes = [x.shape for x in inputs]
    shape = None
    if all(s is not None for s in shapes):
        rank = max(len(s) for s in shapes)
        padded = [[1] * (rank - len(s)) + list(s) for s in shapes]
        shape = [next((d for d in dims if d != 1), 1) for dims in zip(*padded, strict=True)]
    out = gs.Variable(ctx.names.fresh(f"{like.name}.small"), dtype=like.dtype, shape=shape)
    ctx.graph.nodes.append(gs.Node(p.op, name=ctx.names.fresh(f"{p.name}.small"), attrs=dict(p.attrs),
                                   inputs=list(inputs), outputs=[out]))
    return out
