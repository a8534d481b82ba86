"""attention — every scaled-dot-product attention block → one ``fuser::FusedAttention<Variant>`` node.

Anchored on the Softmax (or a standard ``Attention`` op, opset 23+). From the Softmax it walks *up* the
score argument to the Q·Kᵀ product and *down* the probabilities to the P·V product::

            Q ─► [Mul|Div c]* ──────────────────────────┐
                                                        ├─► MatMul ─► [Mul|Div c]* ─► [Cast] ─┐
    Kᵀ-ish ─► [Mul|Div c]* ─► (Transpose(…, ⋯, -1, -2) │
                               | Reshape─Transpose(0,2,1)─Reshape  (the SDPA decomposition's Kᵀ)
                               | Kᵀ as it is: a Transpose(0,2,3,1), Concat(past, k)ᵀ, …) ─────┘
    ┌─────────────────────────────────────────────────────────────────────────────────────────┘
    └─► [Add(bias) | Where(mask, ·, fill) | Where(mask, fill, ·) | Reshape─Add(w)─Reshape | Cast]*
          ─► Softmax(axis=-1) ─► [Cast]* ─► [Where(IsNaN(p), 0, p)] ─► [Cast]* ─► MatMul(·, V) ─► Y

and the same through Einsum for Q·Kᵀ and P·V (tf2onnx's ``aecd,abcd->acbe`` / ``acbe,aecd->abcd``).
The forms real exporters produce all land here: TorchScript and dynamo, eager (``matmul * scale + mask``)
and SDPA (√scale on Q and on Kᵀ, the IsNaN guard), scale as Div or Mul after the product or on Q/K before
it (the constant, or a Shape-computed one that normalize folded), additive float masks ((B,1,1,S),
(B,1,S,S), finfo.min or -inf), boolean masks through Where (either polarity), causal masks of any origin
(Trilu, a sliced ``tril`` buffer, a computed comparison: they are just boolean or additive terms), Swin's
relative-position bias and its shifted-window mask added in a [B/nW, nW, H, N, N] view, LeViT's attention
biases, Casts around the Softmax (upcast/downcast), and K/V heads repeated for grouped-query attention by
``Unsqueeze─Expand─Reshape`` (HF's ``repeat_kv``, absorbed: K/V enter with their own head count) or
by MatMul broadcasting (multi-query). A standard ``Attention`` op (opset 23+: what the dynamo exporter
writes for SDPA) becomes the same fused node.

Guards: the Softmax normalises the last axis; every swallowed intermediate has no consumer outside the
pattern and is not a graph output (this also proves that Q, K, V and the terms do not depend on the
scores); scale factors are scalar constants; a Where's fill is a scalar; terms broadcast *into* the
scores (the Add's result has the scores' shape); once a scale factor has been seen going up, no further
term may appear (``(S + T) * c`` is not canonical); scores have rank 3 or 4 with Q, Kᵀ, V of that rank;
a standard Attention has no past/present or qk outputs, no softcap, 4-D inputs, and an attn_mask whose
last dim is provably the key length. Before opset 15 (no CastLike in the body) the scores, terms and
softmax must share Q's type and the Gqa/NanZero/Causal variants are not used.

Rewrite: ``fuser::FusedAttention<Variant>(Q, K, V, terms…[, scale])`` (see :mod:`fuser.fused_attention`)
with Q, K, V in [B, H, S, D] layout. The head-split Reshape/Transpose stay outside: a K that arrives
transposed gets its producing Transpose's perm fixed in place (BERT's (0,2,3,1) becomes (0,2,1,3)) or one
new Transpose; rank-3 attention ([B·H, S, D], nn.MultiheadAttention's bmm form) gets Unsqueeze(1) on its
inputs and a Squeeze(1) after; Einsum forms get the Transposes their layouts need; an inverted boolean
mask gets a Not. ``num_heads`` / ``kv_num_heads`` come from the shapes (rank 3: from the projection's
split Reshape where it is visible), ``scale`` is the product of every factor found (float64, stored as
float32).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from fuser.context import PassContext
from fuser.fused import FusedOpType
from fuser.fused_attention import MAX_TERMS, AttentionVariant, casts_in_body
from fuser.graph import const_value, input_at, producer

NAME = "attention"

FLOATS = (np.dtype(np.float32), np.dtype(np.float16))
_NP_TO_ONNX = {np.dtype(np.float32): onnx.TensorProto.FLOAT, np.dtype(np.float16): onnx.TensorProto.FLOAT16}


@dataclass
class Term:
    kind: str  # "bias", "mask", "winbias"
    tensor: gs.Tensor
    fill: gs.Tensor | None = None
    invert: bool = False  # Where(mask, fill, S): masked where True


@dataclass
class Match:
    pattern: str
    q: gs.Tensor
    k: gs.Tensor  # [.., Skv, D] unless k_transposed
    v: gs.Tensor
    out: gs.Tensor
    rank: int
    scale: float = 1.0
    k_transposed: bool = False  # k is in [.., D, Skv] layout: the rewrite transposes it
    terms: list[Term] = field(default_factory=list)
    causal: bool = False
    nan_zero: bool = False
    softmax_dtype: np.dtype | None = None
    kv_repeat: int = 1  # K/V heads each serve this many query heads (an absorbed repeat, or Attention-23's GQA)
    repeated: list[gs.Tensor] = field(default_factory=list)  # absorbed repeat outputs (their Shape readers move)
    nodes: list[gs.Node] = field(default_factory=list)
    q_perm: list[int] | None = None  # Einsum layouts: Transposes to [B, H, S, D] ...
    k_perm: list[int] | None = None
    v_perm: list[int] | None = None
    out_perm: list[int] | None = None  # ... and from [B, H, Sq, Dv] back to the output's layout


def run(ctx: PassContext) -> int:
    count = 0
    for node in list(ctx.graph.nodes):
        if not node.outputs or not node.inputs:  # retired by an earlier rewrite of this run
            continue
        m = None
        if node.op == "Softmax" and node.domain in (None, "", "ai.onnx"):
            m = _match_softmax(ctx, node)
        elif node.op == "Attention" and node.domain in (None, "", "ai.onnx"):
            m = _match_standard(ctx, node)
        if m is not None and _supported(ctx, m):
            _rewrite(ctx, m)
            count += 1
    return count


# -- small helpers --------------------------------------------------------------------------------------

def _dtype(t: gs.Tensor | None) -> np.dtype | None:
    if t is None or t.dtype is None:
        return None
    try:
        return np.dtype(t.dtype)
    except TypeError:
        return None


def _shape(t: gs.Tensor | None) -> list | None:
    return None if t is None or t.shape is None else list(t.shape)


def _rank(t: gs.Tensor | None) -> int | None:
    s = _shape(t)
    return None if s is None else len(s)


def _known(d) -> bool:
    return (isinstance(d, (int, np.integer)) and d >= 0) or (isinstance(d, str) and d != "")


def _same_dim(a, b) -> bool:
    """Provably equal dims: the same static size or the same symbolic name."""
    if isinstance(a, (int, np.integer)) and isinstance(b, (int, np.integer)):
        return int(a) == int(b) and a >= 0
    return isinstance(a, str) and isinstance(b, str) and a != "" and a == b


def _static(d) -> int | None:
    return int(d) if isinstance(d, (int, np.integer)) and d >= 0 else None


def _scalar(t: gs.Tensor | None) -> float | None:
    v = const_value(t)
    if v is None or v.size != 1 or v.dtype.kind not in "fiu":
        return None
    return float(v.reshape(-1)[0])


def _internal(ctx: PassContext, t: gs.Tensor, users: int = 1) -> bool:
    """``t`` may disappear inside the fused node: exactly ``users`` consumers, not a graph output."""
    return (isinstance(t, gs.Variable) and t not in ctx.graph.outputs and len(t.outputs) == users)


def _scale_of(ctx: PassContext, node: gs.Node, on: gs.Tensor, rank: int | None) -> float | None:
    """Mul(on, c) / Mul(c, on) / Div(on, c) with c a scalar constant that does not raise the rank: c's
    multiplier (1/c for Div). None if ``node`` is no such scaling."""
    if node.op not in ("Mul", "Div") or len(node.inputs) != 2 or len(node.outputs) != 1:
        return None
    a, b = node.inputs
    if node.op == "Div":
        if a is not on:
            return None
        c = b
    else:
        c = b if a is on else a if b is on else None
    if c is None or c is on:
        return None
    val = _scalar(c)
    if val is None or val == 0.0 or (rank is not None and _rank(c) is not None and _rank(c) > rank):
        return None
    return 1.0 / val if node.op == "Div" else val


def _other(node: gs.Node, t: gs.Tensor) -> gs.Tensor:
    return node.inputs[1] if node.inputs[0] is t else node.inputs[0]


def _softmax_last_axis(node: gs.Node, rank: int | None, opset: int) -> bool:
    axis = node.attrs.get("axis", -1 if opset >= 13 else 1)
    return axis == -1 or (rank is not None and axis == rank - 1)


# -- walking up the scores --------------------------------------------------------------------------------

@dataclass
class _Up:
    qk: gs.Node  # the MatMul / Einsum
    nodes: list[gs.Node]
    terms: list[Term]  # in the order the model applies them (the one nearest the softmax last)
    scale: float


def _walk_scores(ctx: PassContext, t: gs.Tensor, rank: int, seen_scale: bool, depth: int = 0) -> _Up | None:
    """From a tensor feeding the softmax (exclusively) up to the Q·Kᵀ product."""
    if depth > 24 or not _internal(ctx, t):
        return None
    n = producer(t)
    if n is None or len(n.outputs) != 1:
        return None
    if n.op in ("MatMul", "Einsum"):
        return _Up(n, [], [], 1.0)
    if n.op == "Cast":
        if n.attrs.get("to") not in _NP_TO_ONNX.values() or _dtype(n.inputs[0]) not in FLOATS:
            return None
        up = _walk_scores(ctx, n.inputs[0], rank, seen_scale, depth + 1)
        return _prepend(up, n)
    if n.op in ("Mul", "Div"):
        for cand in n.inputs[:1] if n.op == "Div" else n.inputs:
            c = _scale_of(ctx, n, cand, rank)
            if c is None:
                continue
            up = _walk_scores(ctx, cand, rank, True, depth + 1)
            if up is not None:
                up.scale *= c
                return _prepend(up, n)
        return None
    if seen_scale:  # a term applied before a scale factor ((S + T) * c): not the canonical order
        return None
    if n.op == "Add" and len(n.inputs) == 2:
        for cand in n.inputs:
            other = _other(n, cand)
            if other is cand or not _term_broadcasts(other, n.outputs[0], rank) or not _no_growth(cand, t):
                continue
            up = _walk_scores(ctx, cand, rank, seen_scale, depth + 1)
            if up is not None:
                up.terms.append(Term("bias", other))
                return _prepend(up, n)
        return None
    if n.op == "Where" and len(n.inputs) == 3:
        cond, x, y = n.inputs
        if _dtype(cond) not in (None, np.dtype(bool)):
            return None
        for cand, fill, invert in ((x, y, False), (y, x, True)):
            if cand is fill or fill is cond or _scalar_shaped(fill) is False:
                continue
            if not _term_broadcasts(cond, n.outputs[0], rank) or not _no_growth(cand, t):
                continue
            up = _walk_scores(ctx, cand, rank, seen_scale, depth + 1)
            if up is not None:
                up.terms.append(Term("mask", cond, fill, invert))
                return _prepend(up, n)
        return None
    if n.op == "Reshape" and rank == 4:
        return _walk_window(ctx, n, rank, seen_scale, depth)
    return None


def _prepend(up: _Up | None, n: gs.Node) -> _Up | None:
    if up is not None:
        up.nodes.append(n)  # collected bottom-up; order does not matter for retiring
    return up


def _scalar_shaped(t: gs.Tensor) -> bool | None:
    s = _shape(t)
    if s is None:
        v = const_value(t)
        return None if v is None else v.size == 1
    return all(d == 1 for d in s)


def _term_broadcasts(term: gs.Tensor, result: gs.Tensor, rank: int) -> bool:
    """The term broadcasts into the scores without enlarging them: its rank is at most the scores', and
    the op's result has the scores' rank (its dims are checked against the product's in _shape_ok)."""
    tr, rr = _rank(term), _rank(result)
    if tr is None:
        v = const_value(term)
        tr = None if v is None else v.ndim
    return tr is not None and tr <= rank and (rr is None or rr == rank)


def _no_growth(before: gs.Tensor, after: gs.Tensor) -> bool:
    """Adding a term did not enlarge the scores: no dim that was 1 became something else."""
    a, b = _shape(before), _shape(after)
    if a is None or b is None:
        return True
    if len(a) != len(b):
        return False
    return all(not (_static(x) == 1 and _known(y) and _static(y) != 1) for x, y in zip(a, b, strict=True))


def _walk_window(ctx: PassContext, back: gs.Node, rank: int, seen_scale: bool, depth: int) -> _Up | None:
    """Swin's shifted windows: Reshape([B_, H, N, N]) ◄ Add(s5, w[1, nW, ·, N, N]) ◄ Reshape([B_/nW, nW, H, N, N])
    ◄ scores [B_, H, N, N]; the reshape back restores exactly the scores' shape."""
    add = producer(back.inputs[0])
    if add is None or add.op != "Add" or len(add.inputs) != 2 or not _internal(ctx, back.inputs[0]):
        return None
    for s5 in add.inputs:
        w = _other(add, s5)
        fwd = producer(s5)
        if fwd is None or fwd.op != "Reshape" or not _internal(ctx, s5) or w is s5:
            continue
        s4 = fwd.inputs[0]
        sh4, sh5, shw, shb = _shape(s4), _shape(s5), _shape(w), _shape(back.outputs[0])
        if None in (sh4, sh5, shw, shb) or len(sh4) != 4 or len(sh5) != 5 or len(shw) != 5 or len(shb) != 4:
            continue
        nw = _static(sh5[1])
        if nw is None or _static(shw[1]) != nw or _static(shw[0]) != 1:
            continue
        if not all(_same_dim(a, b) for a, b in zip(sh5[2:], sh4[1:], strict=True)):
            continue
        if not all(_same_dim(a, b) for a, b in zip(shb, sh4, strict=True)):
            continue
        if not all(_static(d) == 1 or _same_dim(d, e) for d, e in zip(shw[2:], sh5[2:], strict=True)):
            continue
        up = _walk_scores(ctx, s4, rank, seen_scale, depth + 1)
        if up is not None:
            up.terms.append(Term("winbias", w))
            up.nodes += [fwd, add, back]
            return up
    return None


# -- shape vectors, symbolically -------------------------------------------------------------------------

def _dim_atom(x: gs.Tensor, i: int):
    """Dim ``i`` of ``x`` as an atom: its static size, its symbolic name, or ("dim", x, i)."""
    s = _shape(x)
    d = s[i] if s is not None and -len(s) <= i < len(s) else None
    if _static(d) is not None:
        return int(d)
    if isinstance(d, str) and d:
        return ("sym", d)
    return ("dim", id(x), i % len(s) if s else i)


def _vec(t: gs.Tensor | None, depth: int = 0) -> list | None:
    """The value of a small 1-D (or scalar) int64 shape tensor as atoms (ints, or dims of tensors as
    :func:`_dim_atom` names them, or opaque tuples), following Shape/Gather/Slice/Concat/Unsqueeze/Reshape/
    Cast/ConstantOfShape/Where(Equal(x, -1), 1, x) and elementwise arithmetic; None when it cannot tell."""
    if t is None or depth > 12:
        return None
    v = const_value(t)
    if v is not None:
        return [int(a) for a in v.reshape(-1)] if v.dtype.kind in "iu" and v.size <= 16 else None
    n = producer(t)
    if n is None:
        return None
    op = n.op
    if op == "Shape":
        x = n.inputs[0]
        r = _rank(x)
        if r is None:
            return None
        lo, hi = int(n.attrs.get("start", 0)), n.attrs.get("end")
        idx = list(range(r))[lo:None if hi is None else int(hi)]
        return [_dim_atom(x, i) for i in idx]
    if op in ("Unsqueeze", "Squeeze", "Identity", "Reshape", "Flatten") or (
            op == "Cast" and n.attrs.get("to") in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)):
        return _vec(n.inputs[0], depth + 1)
    if op == "Concat":
        out = []
        for x in n.inputs:
            part = _vec(x, depth + 1)
            if part is None:
                return None
            out += part
        return out
    if op == "Gather" and int(n.attrs.get("axis", 0)) == 0:
        data, idx = _vec(n.inputs[0], depth + 1), const_value(n.inputs[1])
        if data is None or idx is None:
            return None
        try:
            return [data[int(i)] for i in idx.reshape(-1)]
        except IndexError:
            return None
    if op == "Slice":
        data = _vec(n.inputs[0], depth + 1)
        consts = [const_value(input_at(n, i)) for i in range(1, 5)]
        if data is None or consts[0] is None or consts[1] is None:
            return None
        if consts[2] is not None and [int(a) % 1 for a in consts[2].reshape(-1)] != [0]:
            return None
        step = 1 if consts[3] is None else int(consts[3].reshape(-1)[0])
        lo, hi = int(consts[0].reshape(-1)[0]), int(consts[1].reshape(-1)[0])
        hi = min(hi, len(data)) if hi >= 0 else hi
        return data[lo:hi:step] if step else None
    if op == "ConstantOfShape":
        shape = _vec(n.inputs[0], depth + 1)
        val = n.attrs.get("value")
        fill = 0 if val is None else np.asarray(val.values).reshape(-1)[0]
        if shape is None or not all(isinstance(a, int) for a in shape) or len(shape) != 1 or shape[0] > 16:
            return None
        return [int(fill)] * shape[0]
    if op == "Where":
        cond = producer(n.inputs[0])
        a, b = _vec(n.inputs[1], depth + 1), _vec(n.inputs[2], depth + 1)
        if cond is None or cond.op != "Equal" or b is None:
            return None
        x, y = _vec(cond.inputs[0], depth + 1), _vec(cond.inputs[1], depth + 1)
        if x is None or y is None:
            return None
        size = max(len(x), len(y), len(b), len(a) if a is not None else 1)
        x, y, b = (v * size if len(v) == 1 else v for v in (x, y, b))
        out = []
        for xi, yi, bi, i in zip(x, y, b, range(size), strict=False):
            if isinstance(xi, int) and isinstance(yi, int):
                eq = xi == yi
            elif isinstance(yi, int) and yi < 0 or isinstance(xi, int) and xi < 0:
                eq = False  # a dim is never negative
            else:
                return None
            if eq:
                if a is None:
                    return None
                out.append(a[i] if len(a) > 1 else a[0])
            else:
                out.append(bi)
        return out
    if op in ("Mul", "Add", "Sub", "Div") and len(n.inputs) == 2:
        a, b = _vec(n.inputs[0], depth + 1), _vec(n.inputs[1], depth + 1)
        if a is None or b is None or (len(a) != len(b) and 1 not in (len(a), len(b))):
            return None
        size = max(len(a), len(b))
        a, b = (v * size if len(v) == 1 else v for v in (a, b))
        f = {"Mul": lambda p, q: p * q, "Add": lambda p, q: p + q, "Sub": lambda p, q: p - q,
             "Div": lambda p, q: p // q if q else None}[op]
        return [f(p, q) if isinstance(p, int) and isinstance(q, int) else (op, p, q) for p, q in zip(a, b, strict=True)]
    return None


def _target(reshape: gs.Node, src: list) -> list | None:
    """A Reshape's target as atoms with 0 resolved to the source dims (allowzero=0)."""
    tg = _vec(reshape.inputs[1]) if len(reshape.inputs) > 1 else None
    if tg is None:
        return None
    zero_copies = not reshape.attrs.get("allowzero", 0)
    return [src[i] if a == 0 and zero_copies and i < len(src) else a for i, a in enumerate(tg)]


def _reshape_dims(reshape: gs.Node) -> list | None:
    """A Reshape's output dims as atoms, its -1 resolved where the element count decides it (the dims that
    input and target share cancel out; what is left must be static)."""
    src_t = reshape.inputs[0]
    r = _rank(src_t)
    if r is None:
        return None
    src = [_dim_atom(src_t, i) for i in range(r)]
    tg = _target(reshape, src)
    if tg is None or tg.count(-1) > 1:
        return None
    if -1 not in tg:
        return tg
    rest_src, rest_tg = list(src), [a for a in tg if a != -1]
    for a in list(rest_tg):
        if a in rest_src:
            rest_src.remove(a)
            rest_tg.remove(a)
    if not all(isinstance(a, int) and a > 0 for a in rest_src + rest_tg):
        return tg
    num, den = int(np.prod(rest_src, dtype=np.int64)), int(np.prod(rest_tg, dtype=np.int64))
    return [num // den if a == -1 and num % den == 0 else a for a in tg]


_ELEMENTWISE = ("Add", "Sub", "Mul", "Div", "Neg", "Cast", "Where", "Identity", "Relu", "Sqrt", "Reciprocal", "Pow")


def _static_dim(t: gs.Tensor, axis: int, depth: int = 0) -> int | None:
    """Dim ``axis`` of ``t`` when it is static, also where shape inference lost it: followed up through
    Transposes and same-rank elementwise ops to the Reshape that made it (the head split)."""
    d = _static((_shape(t) or [None] * (axis + 1))[axis]) if _rank(t) is not None and axis < _rank(t) else None
    if d is not None or depth > 12:
        return d
    n = producer(t)
    if n is None:
        return None
    if n.op == "Transpose" and "perm" in n.attrs:
        return _static_dim(n.inputs[0], list(n.attrs["perm"])[axis], depth + 1)
    if n.op == "Reshape":
        dims = _reshape_dims(n)
        return dims[axis] if dims is not None and axis < len(dims) and isinstance(dims[axis], int) else None
    if n.op in _ELEMENTWISE or (n.op == "Concat" and int(n.attrs.get("axis", 0)) % max(_rank(t) or 1, 1) != axis):
        for x in n.inputs:
            if _rank(x) == _rank(t) and not isinstance(x, gs.Constant):
                return _static_dim(x, axis, depth + 1)
    return None


def _proves(target: list | None, want: list, free: int) -> bool:
    """``target`` (a Reshape's atoms) produces exactly ``want`` (atoms), except at index ``free`` which the
    element count fixes once every other dim is proven."""
    if target is None or len(target) != len(want):
        return False
    return all(i == free or a == w for i, (a, w) in enumerate(zip(target, want, strict=True)))


# -- the Q and K sides ----------------------------------------------------------------------------------

def _walk_q(ctx: PassContext, q: gs.Tensor, rank: int) -> tuple[gs.Tensor, float, list[gs.Node]]:
    """Absorb scalar scalings of Q that feed only the product."""
    scale, nodes = 1.0, []
    while _internal(ctx, q):
        n = producer(q)
        if n is None:
            break
        c = next(((x, f) for x in n.inputs if (f := _scale_of(ctx, n, x, rank)) is not None), None)
        if c is None:
            break
        q, f = c
        scale *= f
        nodes.append(n)
    return q, scale, nodes


def _swaps_last_two(perm: list[int]) -> bool:
    r = len(perm)
    return r >= 2 and list(perm) == list(range(r - 2)) + [r - 1, r - 2]


def _sdpa_kt(ctx: PassContext, t: gs.Tensor, allow_repeat: bool) -> tuple[gs.Tensor, list[gs.Node], int] | None:
    """Kᵀ = Reshape([B, H, D, S]) ◄ Transpose(0, 2, 1) ◄ Reshape([B·H, S, D]) ◄ k [B, H, S, D]: (k, nodes, 1);
    or, when the merged tensor is a repeat_kv Expand [B, Hkv, r, S, D] of k [B, Hkv, S, D] (the dynamo
    export of SDPA after repeat_kv): (k, nodes, r)."""
    r2 = producer(t)
    if r2 is None or r2.op != "Reshape" or not _internal(ctx, r2.inputs[0]):
        return None
    tr = producer(r2.inputs[0])
    if tr is None or tr.op != "Transpose" or list(tr.attrs.get("perm", [])) != [0, 2, 1]:
        return None
    if not _internal(ctx, tr.inputs[0]):
        return None
    r1 = producer(tr.inputs[0])
    if r1 is None or r1.op != "Reshape":
        return None
    src, nodes, rep = r1.inputs[0], [r2, tr, r1], 1
    if _rank(src) == 5 and allow_repeat:
        found = _expand_repeat(ctx, src)
        if found is None:
            return None
        k, rep, more = found
        nodes += more
        kd = [_dim_atom(k, i) for i in range(4)]
        sd = [kd[0], kd[1], rep, kd[2], kd[3]]
    elif _rank(src) == 4:
        k = src
        kd = [_dim_atom(k, i) for i in range(4)]
        sd = kd
    else:
        return None
    t1 = _target(r1, sd)
    if not _proves(t1, [None, kd[2], kd[3]], 0):
        return None
    t2 = _target(r2, [t1[0], kd[3], kd[2]])
    if t2 is None or len(t2) != 4 or t2[2:] != [kd[3], kd[2]]:
        return None
    # the batch and head dims split back as they merged: one of them proven, the other fixed by the count
    heads = kd[1] if rep == 1 else ("Mul", kd[1], rep)
    if isinstance(kd[1], int) and rep > 1:
        heads = kd[1] * rep
    if not ((t2[0] == kd[0] and t2[1] in (heads, -1) or t2[0] == kd[0] and rep > 1)
            or (t2[1] == heads and t2[0] in (kd[0], -1))):
        return None
    return k, nodes, rep


def _expand_repeat(ctx: PassContext, x5: gs.Tensor) -> tuple[gs.Tensor, int, list[gs.Node]] | None:
    """x5 [B, Hkv, r, S, D] = Expand(Unsqueeze(k [B, Hkv, S, D], axis 2), [B, Hkv, r, S, D]): (k, r, nodes)."""
    if not _internal(ctx, x5):
        return None
    ex = producer(x5)
    if ex is None or ex.op != "Expand" or not _internal(ctx, ex.inputs[0]):
        return None
    un = producer(ex.inputs[0])
    if un is None or un.op != "Unsqueeze":
        return None
    axes = un.attrs.get("axes")
    if axes is None and len(un.inputs) > 1:
        v = const_value(un.inputs[1])
        axes = None if v is None else [int(a) for a in v.reshape(-1)]
    if axes is None or [int(a) % 5 for a in axes] != [2]:
        return None
    k = un.inputs[0]
    if _rank(k) != 4:
        return None
    kd = [_dim_atom(k, i) for i in range(4)]
    e = _vec(ex.inputs[1])
    if e is None or len(e) != 5 or not isinstance(e[2], int) or e[2] < 1:
        return None
    want = [kd[0], kd[1], None, kd[2], kd[3]]
    if any(e[j] not in (1, want[j]) for j in (0, 1, 3, 4)):
        return None
    return k, e[2], [ex, un]


def _walk_k(ctx: PassContext, kt: gs.Tensor, rank: int,
            allow_repeat: bool = True) -> tuple[gs.Tensor, bool, float, list[gs.Node], int]:
    """From the product's second operand (Kᵀ) up through scalings and transpositions of the last two axes.
    Returns (tensor, still_transposed, scale, nodes, kv repeat absorbed on the way)."""
    t, transposed, scale, nodes, rep = kt, True, 1.0, [], 1
    while _internal(ctx, t):
        n = producer(t)
        if n is None:
            break
        c = next(((x, f) for x in n.inputs if (f := _scale_of(ctx, n, x, rank)) is not None), None)
        if c is not None:
            t, f = c
            scale *= f
            nodes.append(n)
            continue
        if n.op == "Transpose" and _swaps_last_two(list(n.attrs.get("perm", []))) and len(n.attrs["perm"]) == rank:
            t, transposed = n.inputs[0], not transposed
            nodes.append(n)
            continue
        sdpa = _sdpa_kt(ctx, t, allow_repeat) if rank == 4 else None
        if sdpa is not None:
            t, transposed, rep = sdpa[0], not transposed, sdpa[2]
            nodes += sdpa[1]
            continue
        break
    return t, transposed, scale, nodes, rep


def _repeat_kv(ctx: PassContext, t: gs.Tensor) -> tuple[gs.Tensor, int, list[gs.Node]] | None:
    """t [B, Hkv·r, S, D] = Reshape(Expand(Unsqueeze(k [B, Hkv, S, D], axis 2), [B, Hkv, r, S, D])): (k, r,
    nodes) — HF's repeat_kv, which gives query head h the kv head h // r. Proven on the Expand shape and the
    Reshape target as atoms (symbolic batch/sequence/head dims welcome)."""
    if not isinstance(t, gs.Variable) or t in ctx.graph.outputs or \
            sum(u.op != "Shape" for u in t.outputs) != 1:  # the product, and Shape readers (rewired)
        return None
    rs = producer(t)
    if rs is None or rs.op != "Reshape":
        return None
    found = _expand_repeat(ctx, rs.inputs[0])
    if found is None:
        return None
    k, r, nodes = found
    kd = [_dim_atom(k, i) for i in range(4)]
    tg = _target(rs, [kd[0], kd[1], r, kd[2], kd[3]])
    if not _proves(tg, [kd[0], None, kd[2], kd[3]], 1):
        return None
    return k, r, [rs, *nodes]


# -- walking down the probabilities -----------------------------------------------------------------------

def _walk_probs(ctx: PassContext, p: gs.Tensor) -> tuple[gs.Node, list[gs.Node], bool] | None:
    """Softmax output → [Cast]* → [Where(IsNaN(p), 0, p)] → [Cast]* → the P·V product (P its first input)."""
    nodes: list[gs.Node] = []
    guard = False
    for _ in range(8):
        if p in ctx.graph.outputs:
            return None
        users = list(p.outputs)
        if len(users) == 1:
            n = users[0]
            if n.op in ("MatMul", "Einsum") and len(n.inputs) == 2 and n.inputs[0] is p and n.inputs[1] is not p:
                return n, nodes, guard
            if n.op == "Cast" and _dtype(n.outputs[0]) in FLOATS:
                nodes.append(n)
                p = n.outputs[0]
                continue
            return None
        if len(users) == 2 and not guard:
            isnan = next((u for u in users if u.op == "IsNaN"), None)
            where = next((u for u in users if u.op == "Where"), None)
            if isnan is None or where is None or len(where.inputs) != 3:
                return None
            flag = isnan.outputs[0]
            if not _internal(ctx, flag) or where.inputs[0] is not flag or where.inputs[2] is not p:
                return None
            if _scalar(where.inputs[1]) != 0.0:
                return None
            nodes += [isnan, where]
            guard = True
            p = where.outputs[0]
            continue
        return None
    return None


# -- the whole pattern -------------------------------------------------------------------------------------

def _match_softmax(ctx: PassContext, sm: gs.Node) -> Match | None:
    x = sm.inputs[0]
    rank = _rank(x)
    if rank is None:
        rank = _rank(sm.outputs[0])
    if rank not in (3, 4) or not _softmax_last_axis(sm, rank, ctx.opset):
        return None
    down = _walk_probs(ctx, sm.outputs[0])
    if down is None:
        return None
    pv, down_nodes, guard = down
    up = _walk_scores(ctx, x, rank, False)
    if up is None or len(up.terms) > MAX_TERMS:
        return None
    m = _product(ctx, up, pv, rank)
    if m is None:
        return None
    m.scale *= up.scale
    m.terms = up.terms
    m.nan_zero = guard
    m.softmax_dtype = _dtype(x)
    m.nodes += up.nodes + [up.qk, sm] + down_nodes + [pv]
    return m


def _product(ctx: PassContext, up: _Up, pv: gs.Node, rank: int) -> Match | None:
    """Q, K, V and the output from the two products (MatMul or Einsum)."""
    qk = up.qk
    if qk.op == "Einsum" or pv.op == "Einsum":
        if qk.op != "Einsum" or pv.op != "Einsum":
            return None
        return _einsum(ctx, qk, pv, rank)
    if len(qk.inputs) != 2 or len(pv.inputs) != 2:
        return None
    a, b = qk.inputs
    v, out = pv.inputs[1], pv.outputs[0]
    if a is b or any(_rank(t) not in (None, rank) for t in (a, b, v)) or _rank(out) not in (None, rank):
        return None
    if _rank(a) is None or _rank(b) is None or _rank(v) is None:
        return None
    q, qs, qn = _walk_q(ctx, a, rank)
    k, transposed, ks, kn, rep = _walk_k(ctx, b, rank)
    rv = _repeat_kv(ctx, v) if rank == 4 and _dim_atom(q, 1) != 1 else None
    if rep > 1 and (rv is None or rv[1] != rep):  # K's repeat went into its Kᵀ chain, V's cannot follow
        k, transposed, ks, kn, rep = _walk_k(ctx, b, rank, allow_repeat=False)
    m = Match("attention", q, k, v, out, rank, qs * ks, transposed, nodes=qn + kn)
    if rep > 1:
        m.repeated = [v]
        m.v, m.kv_repeat = rv[0], rep
        m.nodes += rv[2]
    elif rank == 4 and not transposed and rv is not None:
        rk = _repeat_kv(ctx, k)
        if rk is not None and rk[1] == rv[1] > 1:  # the same r on both: then Hkv(K) == Hkv(V) == H / r
            m.repeated = [k, v]
            m.k, m.v, m.kv_repeat = rk[0], rv[0], rk[1]
            m.nodes += rk[2] + rv[2]
    return m


def _einsum(ctx: PassContext, qk: gs.Node, pv: gs.Node, rank: int) -> Match | None:
    """S = einsum(eq, X, Y) with S [b1, b2, q, k] (4 letters each, one contracted letter d), softmax over k,
    then O = einsum(S-letters, V-letters -> O-letters) contracting k: Transposes bring Q, K, V to
    [b1, b2, S, D] and the output back."""
    if rank != 4 or len(qk.inputs) != 2 or len(pv.inputs) != 2:
        return None
    parsed = [_equation(n) for n in (qk, pv)]
    if None in parsed:
        return None
    (x_l, y_l, s_l), (p_l, v_l, o_l) = parsed
    if any(len(e) != 4 or len(set(e)) != 4 for e in (x_l, y_l, s_l, p_l, v_l, o_l)) or p_l != s_l:
        return None
    b1, b2, ql, kl = s_l
    dl = (set(x_l) & set(y_l)) - set(s_l)
    if len(dl) != 1:
        return None
    d = dl.pop()
    if {b1, b2} - set(x_l) or {b1, b2} - set(y_l):
        return None
    if ql in x_l and kl in y_l:
        q_t, q_l, k_t, k_l = qk.inputs[0], x_l, qk.inputs[1], y_l
    elif ql in y_l and kl in x_l:
        q_t, q_l, k_t, k_l = qk.inputs[1], y_l, qk.inputs[0], x_l
    else:
        return None
    if set(q_l) != {b1, b2, ql, d} or set(k_l) != {b1, b2, kl, d}:
        return None
    dv = (set(v_l) - {b1, b2, kl})
    if len(dv) != 1 or set(o_l) != {b1, b2, ql} | dv or kl in o_l:
        return None
    dvl = dv.pop()
    m = Match("attention_einsum", q_t, k_t, pv.inputs[1], pv.outputs[0], 4)
    m.q_perm = [q_l.index(c) for c in (b1, b2, ql, d)]
    m.k_perm = [k_l.index(c) for c in (b1, b2, kl, d)]
    m.v_perm = [v_l.index(c) for c in (b1, b2, kl, dvl)]
    m.out_perm = [(b1, b2, ql, dvl).index(c) for c in o_l]
    return m


def _equation(n: gs.Node) -> tuple[str, str, str] | None:
    eq = str(n.attrs.get("equation", "")).replace(" ", "")
    if eq.count("->") != 1 or eq.count(",") != 1:
        return None
    ins, out = eq.split("->")
    a, b = ins.split(",")
    return a, b, out


def _match_standard(ctx: PassContext, att: gs.Node) -> Match | None:
    """ONNX Attention (opset 23+) with what our node computes: Y only, no cache, no softcap, 4-D inputs."""
    ins = list(att.inputs) + [None] * (6 - len(att.inputs))
    q, k, v = ins[0], ins[1], ins[2]
    mask = input_at(att, 3)
    if input_at(att, 4) is not None or input_at(att, 5) is not None or len(att.inputs) > 6:
        return None
    outs = att.outputs
    if not outs or any(o.name and (o.outputs or o in ctx.graph.outputs) for o in outs[1:]):
        return None
    if float(att.attrs.get("softcap", 0.0)) != 0.0 or att.attrs.get("q_num_heads") or att.attrs.get("kv_num_heads"):
        return None
    if any(_rank(t) != 4 for t in (q, k, v)):
        return None
    sq, sk = _shape(q), _shape(k)
    scale = att.attrs.get("scale")
    if scale is None:
        d = _static(sq[3])
        if d is None:
            return None
        scale = float(np.float32(1.0 / np.sqrt(d)))
    m = Match("attention_op", q, k, v, outs[0], 4, float(scale))
    m.causal = bool(att.attrs.get("is_causal", 0))
    if mask is not None:
        ms = _shape(mask)
        if ms is None or len(ms) > 4 or not ms or not _same_dim(ms[-1], sk[2]):
            return None
        if _dtype(mask) == np.dtype(bool):
            m.terms = [Term("mask", mask, None)]  # fill -inf: made in the rewrite
        elif _dtype(mask) in FLOATS:
            m.terms = [Term("bias", mask)]
        else:
            return None
        m.nan_zero = True  # Attention-23 gives fully masked rows 0 (onnxruntime does too)
    sp = att.attrs.get("softmax_precision")
    m.softmax_dtype = (np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(sp))) if sp else _dtype(q))
    hq, hk = _static(sq[1]), _static(sk[1])
    if hq is None or hk is None:
        if not _same_dim(sq[1], sk[1]):
            return None
    elif hq != hk:
        if hk == 0 or hq % hk:
            return None
        if hk != 1:
            m.kv_repeat = hq // hk
    m.nodes = [att]
    if m.kv_repeat == 1 and _dim_atom(q, 1) != 1:  # K/V repeated for it in the graph (HF's SDPA path)
        rk, rv = _repeat_kv(ctx, k), _repeat_kv(ctx, v)
        if rk is not None and rv is not None and rk[1] == rv[1] > 1:
            m.repeated = [k, v]
            m.k, m.v, m.kv_repeat = rk[0], rv[0], rk[1]
            m.nodes += rk[2] + rv[2]
    return m


# -- guards on the whole match -------------------------------------------------------------------------------

def _supported(ctx: PassContext, m: Match) -> bool:
    qd = _dtype(m.q)
    if qd not in FLOATS or _dtype(m.v) not in (None, qd) or _dtype(m.k) not in (None, qd):
        return False
    if m.softmax_dtype is None:
        m.softmax_dtype = qd
    if m.softmax_dtype not in FLOATS:
        return False
    for t in m.terms:
        if t.kind == "mask":
            if _dtype(t.tensor) not in (None, np.dtype(bool)):
                return False
            if t.fill is not None and (_dtype(t.fill) not in FLOATS or _scalar_shaped(t.fill) is False):
                return False
        elif _dtype(t.tensor) not in FLOATS:
            return False
    if not casts_in_body(ctx.opset):
        if m.softmax_dtype != qd or m.nan_zero or m.causal or m.kv_repeat > 1:
            return False
        if any(t.kind != "mask" and _dtype(t.tensor) != qd for t in m.terms):
            return False
        if any(t.fill is not None and _dtype(t.fill) != qd for t in m.terms):
            return False
        if any(_dtype(t.tensor) is None for t in m.terms):
            return False
    # the product's operands must have matching ranks once K is in [.., S, D]
    if m.rank == 3 and any(t.kind == "winbias" for t in m.terms):
        return False
    return not any(t.kind == "winbias" and m.rank != 4 for t in m.terms)


# -- rewrite --------------------------------------------------------------------------------------------------

def _fresh_tensor(ctx: PassContext, base: str, like: gs.Tensor | None, shape=None, dtype=None) -> gs.Variable:
    name = ctx.names.fresh(base)
    ctx.names.tensor_names.add(name)
    return gs.Variable(name, dtype=dtype if dtype is not None else (like.dtype if like is not None else None),
                       shape=shape)


def _add_node(ctx: PassContext, op: str, base: str, inputs: list[gs.Tensor], out: gs.Tensor, **attrs) -> gs.Node:
    n = gs.Node(op=op, name=ctx.names.fresh(base), attrs=attrs, inputs=inputs, outputs=[out])
    ctx.graph.nodes.append(n)
    return n


def _axes_const(ctx: PassContext, base: str, axes: list[int]) -> gs.Constant:
    return ctx.names.constant(base, np.array(axes, dtype=np.int64))


def _unsqueeze1(ctx: PassContext, t: gs.Tensor, base: str) -> gs.Tensor:
    s = _shape(t)
    out = _fresh_tensor(ctx, f"{base}_4d", t, None if s is None else [s[0], 1, *s[1:]])
    if ctx.opset >= 13:
        _add_node(ctx, "Unsqueeze", f"{base}/Unsqueeze", [t, _axes_const(ctx, f"{base}.axes", [1])], out)
    else:
        _add_node(ctx, "Unsqueeze", f"{base}/Unsqueeze", [t], out, axes=[1])
    return out


def _transpose(ctx: PassContext, t: gs.Tensor, perm: list[int], base: str) -> gs.Tensor:
    s = _shape(t)
    out = _fresh_tensor(ctx, f"{base}_t", t, None if s is None else [s[p] for p in perm])
    _add_node(ctx, "Transpose", f"{base}/Transpose", [t], out, perm=list(perm))
    return out


def _fix_k(ctx: PassContext, m: Match) -> gs.Tensor:
    """K in [.., S, D]: the Transpose that produced Kᵀ gets its last two axes swapped in place when nothing
    else reads it; otherwise a new Transpose."""
    kt = m.k
    n = producer(kt)
    r = _rank(kt) or m.rank
    if n is not None and n.op == "Transpose" and _internal(ctx, kt) and "perm" in n.attrs \
            and len(n.attrs["perm"]) == r and kt not in ctx.graph.outputs:
        perm = list(n.attrs["perm"])
        n.attrs["perm"] = perm[:-2] + [perm[-1], perm[-2]]
        s = _shape(kt)
        if s is not None:
            kt.shape = s[:-2] + [s[-1], s[-2]]
        return kt
    return _transpose(ctx, kt, list(range(r - 2)) + [r - 1, r - 2], f"{kt.name}_k")


def _heads_of(m: Match, q4: gs.Tensor) -> int:
    """The query head count: dim 1 of the 4-D Q; for [B·H, S, D] attention, read off the projection's head
    split (a Reshape from [.., E] to [.., D] on the way up from Q), else 1."""
    if m.rank == 4:
        return _static_dim(q4, 1) or 0
    t = m.q
    for _ in range(6):
        n = producer(t)
        if n is None or not n.inputs:
            break
        if n.op == "Reshape":
            src, dst = _shape(n.inputs[0]), _shape(n.outputs[0])
            e, d = (_static(src[-1]), _static(dst[-1])) if src and dst else (None, None)
            if e and d and e % d == 0 and e != d:
                return e // d
            break
        t = n.inputs[0]
    return 1


def _node_name(ctx: PassContext, sources: list[gs.Node]) -> str:
    """``<common scope>/Attention`` (a TorchScript export's ``/encoder/layer.0/attention/self/Attention``),
    else ``<first>+<last>`` of the replaced nodes."""
    names = [n.name for n in sources]
    prefix = names[0]
    for n in names[1:]:
        while not n.startswith(prefix):
            prefix = prefix[:-1]
    scope = prefix[: prefix.rfind("/") + 1] if "/" in prefix else ""
    return ctx.names.fresh(f"{scope}Attention" if scope.strip("/") else f"{names[0]}+{names[-1]}")


def _rewrite(ctx: PassContext, m: Match) -> None:
    sources = _unique(m.nodes)
    base = sources[0].name
    q, k, v = m.q, m.k, m.v
    if m.k_transposed:
        k = _fix_k(ctx, m)
    if m.q_perm is not None:
        q = _transpose(ctx, q, m.q_perm, f"{q.name}_q")
        k = _transpose(ctx, k, m.k_perm, f"{k.name}_k")
        v = _transpose(ctx, v, m.v_perm, f"{v.name}_v")
    if m.rank == 3:
        q, k, v = (_unsqueeze1(ctx, t, t.name) for t in (q, k, v))
    inputs: list[gs.Tensor] = [q, k, v]
    qd = _dtype(m.q)
    for t in m.terms:
        x = t.tensor
        if m.rank == 3 and _rank(x) == 3:
            x = _unsqueeze1(ctx, x, x.name)
        if t.kind == "mask":
            if t.invert:
                inv = _fresh_tensor(ctx, f"{x.name}_not", x, _shape(x), np.dtype(bool))
                _add_node(ctx, "Not", f"{x.name}/Not", [x], inv)
                x = inv
            fill = t.fill if t.fill is not None else ctx.names.constant(f"{base}.fill", np.array(-np.inf, dtype=qd))
            inputs += [x, fill]
        else:
            inputs.append(x)
    if not casts_in_body(ctx.opset):
        inputs.append(ctx.names.constant(f"{base}.scale", np.array(m.scale, dtype=qd)))
    heads = _heads_of(m, q)
    kv = (_static_dim(k, 1) if m.rank == 4 else None) or (heads // m.kv_repeat if heads else 0)
    # one kv head (multi-query) broadcasts in the body's MatMuls: no repeat needed there
    variant = AttentionVariant(m.causal, tuple(t.kind for t in m.terms), m.kv_repeat > 1 and kv != 1, m.nan_zero)
    attrs = {"num_heads": int(heads), "kv_num_heads": int(kv), "scale": float(np.float32(m.scale)),
             "softmax_precision": int(_NP_TO_ONNX[m.softmax_dtype]), "causal": int(m.causal),
             "mask_kind": variant.mask_kind}
    out, final = m.out, None
    if m.rank == 3 or m.out_perm is not None:
        final = out
        out = _fresh_tensor(ctx, f"{out.name}_bhsd", out, None)
    for rep_t, src in zip(m.repeated, [k, v][2 - len(m.repeated):], strict=True):
        _rewire_shapes(ctx, rep_t, src, q)
    node = ctx.fused_node(FusedOpType("Attention", variant=variant.suffix), inputs, out, attrs, m.pattern, sources)
    ctx.names.taken.discard(node.name)
    node.name = _node_name(ctx, sources)
    ctx.fusions[-1].fused_node = node.name
    ctx.fusions[-1].detail = {"num_heads": attrs["num_heads"], "kv_num_heads": attrs["kv_num_heads"],
                              "mask_kind": attrs["mask_kind"], "variant": variant.suffix or "plain"}
    if final is not None:
        if m.out_perm is not None:
            _add_node(ctx, "Transpose", f"{final.name}/Transpose", [out], final, perm=list(m.out_perm))
        elif ctx.opset >= 13:
            _add_node(ctx, "Squeeze", f"{final.name}/Squeeze", [out, _axes_const(ctx, f"{final.name}.axes", [1])],
                      final)
        else:
            _add_node(ctx, "Squeeze", f"{final.name}/Squeeze", [out], final, axes=[1])


def _rewire_shapes(ctx: PassContext, rep: gs.Tensor, src: gs.Tensor, q: gs.Tensor) -> None:
    """Shape(rep) where rep = repeat_kv(src) disappears: it is [B, H, S, D] = Shape(src) with Q's head count,
    computed from ``src`` and ``q`` without materialising the repeat."""
    for shape in [u for u in rep.outputs if u.op == "Shape"]:
        base = shape.name
        i64 = np.dtype(np.int64)
        sv, qv = (_fresh_tensor(ctx, f"{base}_{w}", None, [4], i64) for w in ("src", "q"))
        _add_node(ctx, "Shape", f"{base}/src", [src], sv)
        _add_node(ctx, "Shape", f"{base}/q", [q], qv)
        parts = []
        for name, vec, lo, hi in (("b", sv, 0, 1), ("h", qv, 1, 2), ("sd", sv, 2, 4)):
            t = _fresh_tensor(ctx, f"{base}_{name}", None, [hi - lo], i64)
            _add_node(ctx, "Slice", f"{base}/{name}", [vec, _axes_const(ctx, f"{base}.{name}_lo", [lo]),
                                                      _axes_const(ctx, f"{base}.{name}_hi", [hi])], t)
            parts.append(t)
        out = shape.outputs[0]
        lo, hi = int(shape.attrs.get("start", 0)), shape.attrs.get("end")
        full = out if (lo == 0 and hi is None) else _fresh_tensor(ctx, f"{base}_full", None, [4], i64)
        shape.inputs.clear()
        shape.outputs.clear()
        _add_node(ctx, "Concat", f"{base}/Concat", parts, full, axis=0)
        if full is not out:
            _add_node(ctx, "Slice", f"{base}/Slice", [full, _axes_const(ctx, f"{base}.lo", [lo]),
                                                      _axes_const(ctx, f"{base}.hi", [4 if hi is None else int(hi)])],
                      out)


def _unique(nodes: list[gs.Node]) -> list[gs.Node]:
    seen, out = set(), []
    for n in nodes:
        if id(n) not in seen:
            seen.add(id(n))
            out.append(n)
    return out
