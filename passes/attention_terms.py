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
- ``And(R, x)`` with R provably all True though computed → x: transformers' bidirectional mask function
  (``q_idx >= 0``) exported with dynamic shapes is ``GreaterOrEqual(Unsqueeze…(Range(0, S, 1)), 0)``, a [1, 1, S, 1]
  tensor that only broadcasts the [B, 1, 1, S] padding mask up to [B, 1, S, S] (see ``_all_true``);
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
from onnx import TensorProto

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
            if p.op == "And" and v is None and _all_true(c, depth + 1) and not _all_true(x, depth + 1):
                return _shrink(ctx, x, depth + 1) or x
        return None
    if p.op == "Where" and len(p.inputs) == 3 and all(const_value(x) is not None for x in p.inputs[1:]):
        c = _shrink(ctx, p.inputs[0], depth + 1)
        return None if c is None else _copy(ctx, p, [c, *p.inputs[1:]], t)
    if p.op in ("Cast", "Not") and len(p.inputs) == 1:
        x = _shrink(ctx, p.inputs[0], depth + 1)
        return None if x is None else _copy(ctx, p, [x], t)
    return None


# value-preserving for the index ranges below (Cast between number types keeps small integers exactly)
_PASS_THROUGH = ("Unsqueeze", "Squeeze", "Reshape", "Expand", "Identity", "Flatten")
_COMPARE = {"GreaterOrEqual": (False, False), "Greater": (False, True), "LessOrEqual": (True, False),
            "Less": (True, True)}  # op -> (operands swapped, strict)


def _all_true(t: gs.Tensor, depth: int) -> bool:
    """``t`` is True everywhere, provably: a bool constant of all True; ``And`` of two such; a shape/Cast-to-bool op
    on one; or an increasing index range compared with a constant it never crosses: ``R >= c`` / ``R > c`` (or
    ``c <= R`` / ``c < R``) with R a ``Range(start, limit, delta)`` of constant start and delta > 0 (through shape
    ops and Casts) and c <= start (c < start when strict). Anything else, or deeper than MAX_DEPTH: False."""
    v = const_value(t)
    if v is not None:
        return v.dtype == np.bool_ and bool(v.all())
    p = producer(t)
    if p is None or depth > MAX_DEPTH or p.domain not in (None, "", "ai.onnx") or not p.inputs:
        return False
    if p.op == "And" and len(p.inputs) == 2:
        return all(_all_true(x, depth + 1) for x in p.inputs)
    if p.op in _PASS_THROUGH or (p.op == "Cast" and p.attrs.get("to") == TensorProto.BOOL):
        return _all_true(p.inputs[0], depth + 1)
    if p.op in _COMPARE and len(p.inputs) == 2:
        swapped, strict = _COMPARE[p.op]
        r, c = (p.inputs[1], p.inputs[0]) if swapped else (p.inputs[0], p.inputs[1])
        lo, bound = _range_min(r, depth + 1), const_value(c)
        if lo is not None and bound is not None and bound.size and np.issubdtype(bound.dtype, np.number):
            return bool(np.all(lo > bound) if strict else np.all(lo >= bound))
    return False


def _range_min(t: gs.Tensor, depth: int) -> float | None:
    """The least value of an increasing ``Range`` (constant start, constant delta > 0), through shape ops and Casts
    to number types; None where ``t`` is not one."""
    p = producer(t)
    if p is None or depth > MAX_DEPTH or p.domain not in (None, "", "ai.onnx") or not p.inputs:
        return None
    if p.op in _PASS_THROUGH or (p.op == "Cast" and p.attrs.get("to") in (
            TensorProto.INT32, TensorProto.INT64, TensorProto.FLOAT, TensorProto.DOUBLE)):
        return _range_min(p.inputs[0], depth + 1)
    if p.op == "Range" and len(p.inputs) == 3:
        start, delta = const_value(p.inputs[0]), const_value(p.inputs[2])
        if start is not None and delta is not None and start.size == 1 and delta.size == 1 and float(delta) > 0:
            return float(start.reshape(()))
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
