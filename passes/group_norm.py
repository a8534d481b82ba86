"""group_norm — every GroupNorm subgraph (+ activation) → one ``fuser::FusedGroupNorm<Act>`` node.

Matches three forms of the same computation on X [N, C, *spatial]::

    (a) PyTorch's export (TorchScript and dynamo, any number of groups, groups == channels included):

    X ─► Reshape([0|N|-1, G, -1 …]) ─► InstanceNormalization(s[G], b[G], ε) ─► Reshape(Shape(X) | X's dims) ─► y
        (for X [N, C, L] with G == C the first Reshape is a no-op and dynamo drops the second; an
        InstanceNormalization on its own is GroupNorm with G = C of its input)

    (b) the standard op: GroupNormalization-18 (scale/bias per group) or -21 (per channel) ─► y

    (c) the decomposition (hand-written models, other exporters):

    X ─► Reshape ─► xg ─┬─► ReduceMean ─► μ ─┐
                        └──────────────────► Sub ─► d ─┬─► Pow(d, 2) | Mul(d, d) ─► ReduceMean ─► Add(ε) ─► Sqrt ─┐
                                                       └─► Div(d, ·) | Mul(d, Reciprocal(·)) ◄──────────────────┘
                                                              ─► Reshape(Shape(X) | X's dims) ─► y
        (the Sub may be written twice, once for the variance and once for the division)

    then, on all three:  y ─► [Mul(γ) | Add(β) | Div(c) | Sub(c)]* ─► [Act] ─► z

    When y feeds several such tails (dynamo's CSE merges GroupNorms of one tensor with the same G and ε),
    each tail becomes its own fused node recomputing the statistics from X; other consumers of y get one
    more fused node without affine.

Act is any activation the GroupNorm kernel's epilogue takes: Relu, LeakyRelu, Sigmoid, HardSigmoid,
HardSwish, Tanh, and SiLU as the x·Sigmoid(x) diamond (Clip stays a node: the epilogue has no bounds).

Guards: X is float32 or float16 with a known rank (≥ 2) and a static channel count C; every parameter
(InstanceNormalization's s/b, the op's scale/bias, γ, β, ε) is a constant; the group count G is read
from the first Reshape's constant target (0 copies a dim, -1 is inferred where the shapes allow it) and
divides C; that target keeps N first and G second; the reductions run over every axis after G with
keepdims; the second Reshape restores exactly X's shape (``Shape(X)``, or a constant that can only mean
X's dims: symbolic batch and spatial dims are never pinned); allowzero=1 targets with a 0 are refused;
each swallowed intermediate has no consumer outside the pattern and is not a graph output; every
absorbed Mul/Add constant is per-channel.

Rewrite: γ'[c] = s[g(c)]·∏γ and β'[c] = b[g(c)]·∏γ + … are computed once in float64 (the per-group
scale/bias of opset-18 GroupNormalization and of InstanceNormalization folded into per-channel ones)
and stored as [C] constants of X's type; ``fuser::FusedGroupNorm<Act>(X, gamma, beta[, eps,
group_shape])`` carries ``num_groups``, ``epsilon`` (the float32 the model had, bit for bit) and the
activation's parameters. Before opset 15 the function body needs ε typed like X and the [0, G, -1]
target as inputs (see :func:`fuser.fused.group_norm_constants_as_inputs`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from fuser.activation_match import match_activation_after
from fuser.context import PassContext
from fuser.fused import GROUP_NORM_ACTIVATIONS, FusedOpType, group_norm_constants_as_inputs
from fuser.graph import channel_vector, const_value, input_at, only_consumed_by, producer, single_use_intermediate

NAME = "group_norm"

FLOAT_TYPES = (np.dtype(np.float32), np.dtype(np.float16))


@dataclass
class Core:
    """The normalisation a matcher found, up to the tensor ``out`` that has X's shape again."""

    form: str  # "instance_norm", "op", "decomposed"
    x: gs.Tensor
    out: gs.Tensor
    nodes: list[gs.Node]
    num_groups: int
    epsilon: float
    gamma: np.ndarray  # float64 [C]
    beta: np.ndarray  # float64 [C]


def run(ctx: PassContext) -> int:
    count = 0
    for node in list(ctx.graph.nodes):
        if not node.outputs or not node.inputs:  # retired by an earlier rewrite of this run
            continue
        core = None
        if node.op == "InstanceNormalization":
            core = _match_instance_norm(ctx, node)
        elif node.op == "GroupNormalization" and node.domain in (None, "", "ai.onnx"):
            core = _match_op(ctx, node)
        elif node.op == "ReduceMean":
            core = _match_decomposed(ctx, node)
        if core is not None:
            _rewrite(ctx, core)
            count += 1
    return count


# -- shapes and constants -------------------------------------------------------------------------------

def _x_info(x: gs.Tensor) -> tuple[list, int] | None:
    """(X's shape, C) when X is a float32/float16 variable of known rank >= 2 with a static channel count."""
    if not isinstance(x, gs.Variable) or x.shape is None or len(x.shape) < 2 or x.dtype is None:
        return None
    try:
        if np.dtype(x.dtype) not in FLOAT_TYPES:
            return None
    except TypeError:
        return None
    c = x.shape[1]
    if not isinstance(c, (int, np.integer)) or c <= 0:
        return None
    return list(x.shape), int(c)


def _static(d) -> bool:
    return isinstance(d, (int, np.integer)) and d >= 0


def _target(reshape: gs.Node) -> list[int] | None:
    """A Reshape's constant target as ints; None when it is not constant or uses allowzero=1 with a 0."""
    if reshape.op != "Reshape" or len(reshape.inputs) != 2 or len(reshape.outputs) != 1:
        return None
    v = const_value(reshape.inputs[1])
    if v is None or v.ndim != 1 or v.dtype.kind not in "iu":
        return None
    t = [int(a) for a in v]
    if reshape.attrs.get("allowzero", 0) and 0 in t:
        return None
    return t


def _groups_of(reshape: gs.Node, shape: list, c: int) -> int | None:
    """G when ``reshape`` views X [N, C, *S] as [N, G, …] (contiguous channel groups), else None."""
    t = _target(reshape)
    if t is None or len(t) < 3 or t.count(-1) > 1 or any(v < -1 for v in t):
        return None
    spatial = shape[2:]
    cs = c * int(np.prod(spatial, dtype=np.int64)) if all(_static(d) for d in spatial) else None
    dims: list = []
    for i, v in enumerate(t):
        if v == 0:
            if i >= len(shape):
                return None
            dims.append("N" if i == 0 else shape[i])
        elif v == -1:
            dims.append(None)
        elif i == 0:
            dims.append("N" if _static(shape[0]) and v == shape[0] else v)
        else:
            dims.append(v)
    rest = dims[2:]
    if dims[0] is None:  # -1 first: it is N only if the others hold exactly C·S per sample
        if cs is None or not all(_static(d) for d in dims[1:]) or int(np.prod(dims[1:], dtype=np.int64)) != cs:
            return None
        dims[0] = "N"
    if dims[0] != "N":
        return None
    g = dims[1]
    if g is None:  # -1 second: G = C·S / (the rest)
        if cs is None or not all(_static(d) and d > 0 for d in rest):
            return None
        per = int(np.prod(rest, dtype=np.int64))
        if cs % per:
            return None
        g = cs // per
    if not _static(g) or g <= 0 or c % int(g):
        return None
    if cs is not None and all(_static(d) for d in rest) and int(np.prod(rest, dtype=np.int64)) * int(g) != cs:
        return None
    return int(g)


def _restores(ctx: PassContext, reshape: gs.Node, x: gs.Tensor, shape: list) -> list[gs.Node] | None:
    """The nodes that make ``reshape`` give back exactly X's shape ([] or [its Shape(X) node]), else None."""
    if reshape.op != "Reshape" or len(reshape.inputs) != 2 or len(reshape.outputs) != 1:
        return None
    tgt = reshape.inputs[1]
    shp = producer(tgt)
    if shp is not None and shp.op == "Shape" and shp.inputs and shp.inputs[0] is x:
        if shp.attrs.get("start", 0) not in (0, -len(shape)) or shp.attrs.get("end", len(shape)) < len(shape):
            return None
        return [shp] if only_consumed_by(ctx.graph, tgt, [reshape]) else []
    t = _target(reshape)
    if t is None or len(t) != len(shape) or t.count(-1) > 1:
        return None
    for i, (v, d) in enumerate(zip(t, shape, strict=True)):
        if v == -1 or (v == 0 and i == 0) or (_static(d) and v == d):
            continue
        return None
    return []


def _axes(node: gs.Node) -> list[int] | None:
    """ReduceMean's axes (attribute before opset 18, input from 18), None when absent or not constant."""
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    a = input_at(node, 1)
    v = const_value(a)
    return None if v is None else [int(i) for i in np.asarray(v).reshape(-1)]


def _reduces_groups(node: gs.Node, rank: int) -> bool:
    """A keepdims ReduceMean over every axis after G of a rank-``rank`` [N, G, …] tensor."""
    if node.op != "ReduceMean" or len(node.outputs) != 1 or not node.attrs.get("keepdims", 1):
        return False
    axes = _axes(node)
    return axes is not None and sorted(a % rank for a in axes) == list(range(2, rank)) and len(set(axes)) == len(axes)


def _scalar(t: gs.Tensor | None) -> float | None:
    v = const_value(t)
    if v is None or v.size != 1 or v.dtype.kind != "f":
        return None
    return float(v.reshape(-1)[0])


def _per_channel(v: np.ndarray | None, g: int, c: int) -> np.ndarray | None:
    """A per-group (size G) or per-channel (size C) or scalar constant, expanded to C float64 values."""
    if v is None or v.dtype.kind != "f":
        return None
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    if v.size == 1:
        return np.full(c, v[0])
    if v.size == g:
        return np.repeat(v, c // g)
    return v.copy() if v.size == c else None


def _unique(nodes) -> list[gs.Node]:
    """Consumers without repeats (a node reading a tensor twice, as Mul(d, d), is listed twice)."""
    seen: dict[int, gs.Node] = {}
    for n in nodes:
        seen.setdefault(id(n), n)
    return list(seen.values())


def _sole_consumer(ctx: PassContext, t: gs.Tensor) -> gs.Node | None:
    return t.outputs[0] if single_use_intermediate(ctx.graph, t) else None


# -- (a) Reshape → InstanceNormalization → Reshape ------------------------------------------------------------

def _grouping(ctx: PassContext, xg: gs.Tensor) -> tuple[gs.Node, gs.Tensor, list, int, int] | None:
    """(the Reshape, X, X's shape, C, G) when ``xg`` is X viewed as [N, G, …] by a constant Reshape."""
    r1 = producer(xg)
    if r1 is None or r1.op != "Reshape" or xg in ctx.graph.outputs:
        return None
    x = r1.inputs[0]
    info = _x_info(x)
    if info is None:
        return None
    shape, c = info
    g = _groups_of(r1, shape, c)
    return None if g is None else (r1, x, shape, c, g)


def _back_to_x(ctx: PassContext, r1: gs.Node, y: gs.Tensor, x: gs.Tensor, shape: list, g: int
               ) -> tuple[list[gs.Node], gs.Tensor] | None:
    """The Reshape (and its Shape(X)) that turns the grouped result ``y`` back into X's shape, and the
    tensor it makes. None of it when the grouping was no reshape at all ([N, C, L] viewed as [N, C, -1]):
    dynamo drops the second Reshape then."""
    r2 = _sole_consumer(ctx, y)
    extra = _restores(ctx, r2, x, shape) if r2 is not None else None
    if extra is not None:
        return [*extra, r2], r2.outputs[0]
    if len(shape) == 3 and len(_target(r1) or []) == 3 and g == shape[1]:
        return [], y
    return None


# -- (a) [Reshape →] InstanceNormalization [→ Reshape] --------------------------------------------------------

def _match_instance_norm(ctx: PassContext, inorm: gs.Node) -> Core | None:
    """PyTorch's GroupNorm export; without the Reshapes an InstanceNormalization is GroupNorm with G = C."""
    if len(inorm.inputs) != 3 or len(inorm.outputs) != 1:
        return None
    xg = inorm.inputs[0]
    sv, bv = const_value(inorm.inputs[1]), const_value(inorm.inputs[2])
    eps = float(inorm.attrs.get("epsilon", 1e-5))
    grouping = _grouping(ctx, xg) if single_use_intermediate(ctx.graph, xg) else None
    if grouping is not None:
        r1, x, shape, c, g = grouping
        back = _back_to_x(ctx, r1, inorm.outputs[0], x, shape, g)
        s, b = _per_channel(sv, g, c), _per_channel(bv, g, c)
        if back is not None and s is not None and b is not None and sv.size == g and bv.size == g:
            tail, out = back
            return Core("instance_norm", x, out, [r1, inorm, *tail], g, eps, s, b)
    # otherwise the InstanceNormalization alone, on its own input [N, C, *spatial]: GroupNorm with G = C
    info = _x_info(xg)
    if info is None or len(info[0]) < 3:
        return None
    c = info[1]
    s, b = _per_channel(sv, c, c), _per_channel(bv, c, c)
    if s is None or b is None or sv.size != c or bv.size != c:
        return None
    return Core("instance_norm", xg, inorm.outputs[0], [inorm], c, eps, s, b)


# -- (b) GroupNormalization-18 / -21 ------------------------------------------------------------------------

def _match_op(ctx: PassContext, gn: gs.Node) -> Core | None:
    if len(gn.inputs) != 3 or len(gn.outputs) != 1 or "num_groups" not in gn.attrs:
        return None
    x = gn.inputs[0]
    info = _x_info(x)
    if info is None:
        return None
    _, c = info
    g = int(gn.attrs["num_groups"])
    if g <= 0 or c % g:
        return None
    want = c if ctx.opset >= 21 else g  # scale/bias per channel from opset 21, per group in 18–20
    s, b = const_value(gn.inputs[1]), const_value(gn.inputs[2])
    if s is None or b is None or s.size != want or b.size != want:
        return None
    s, b = _per_channel(s, g, c), _per_channel(b, g, c)
    if s is None or b is None:
        return None
    return Core("op", x, gn.outputs[0], [gn], g, float(gn.attrs.get("epsilon", 1e-5)), s, b)


# -- (c) the ReduceMean / Sub / Pow / ReduceMean / Add / Sqrt / Div decomposition ------------------------------

def _match_decomposed(ctx: PassContext, rm1: gs.Node) -> Core | None:
    graph = ctx.graph
    if not rm1.inputs or len(rm1.outputs) != 1:
        return None
    xg = rm1.inputs[0]
    grouping = _grouping(ctx, xg)
    if grouping is None:
        return None
    r1, x, shape, c, g = grouping
    rank = len(_target(r1))
    if not _reduces_groups(rm1, rank):
        return None
    mean = rm1.outputs[0]
    subs = _unique(mean.outputs)
    if mean in graph.outputs or not 1 <= len(subs) <= 2:
        return None
    if any(s.op != "Sub" or len(s.inputs) != 2 or s.inputs[0] is not xg or s.inputs[1] is not mean
           or len(s.outputs) != 1 for s in subs):
        return None
    ds = [s.outputs[0] for s in subs]
    sq = None
    for d in ds:
        for u in _unique(d.outputs):
            if u.op == "Pow" and len(u.inputs) == 2 and u.inputs[0] is d and _scalar(u.inputs[1]) == 2.0:
                sq = (u, d) if sq is None else False
            elif u.op == "Mul" and len(u.inputs) == 2 and u.inputs[0] is d and u.inputs[1] is d:
                sq = (u, d) if sq is None else False
    if not sq:
        return None
    sq_node, _ = sq
    rm2 = _sole_consumer(ctx, sq_node.outputs[0])
    if rm2 is None or not _reduces_groups(rm2, rank) or rm2.inputs[0] is not sq_node.outputs[0]:
        return None
    add = _sole_consumer(ctx, rm2.outputs[0])
    if add is None or add.op != "Add" or len(add.inputs) != 2:
        return None
    var = rm2.outputs[0]
    eps = _scalar(add.inputs[1] if add.inputs[0] is var else add.inputs[0])
    if eps is None or not np.isfinite(eps) or eps < 0:
        return None
    sqrt = _sole_consumer(ctx, add.outputs[0])
    if sqrt is None or sqrt.op != "Sqrt":
        return None
    nxt = _sole_consumer(ctx, sqrt.outputs[0])
    if nxt is None:
        return None
    std = sqrt.outputs[0]
    tail = [nxt]
    if nxt.op == "Div" and len(nxt.inputs) == 2 and nxt.inputs[1] is std:
        num = nxt.inputs[0]
    elif nxt.op == "Reciprocal":
        mul = _sole_consumer(ctx, nxt.outputs[0])
        rec = nxt.outputs[0]
        if mul is None or mul.op != "Mul" or len(mul.inputs) != 2 or rec not in mul.inputs:
            return None
        num = mul.inputs[1] if mul.inputs[0] is rec else mul.inputs[0]
        tail.append(mul)
    else:
        return None
    if not any(num is d for d in ds):
        return None
    div = tail[-1]
    nodes = [r1, rm1, *subs, sq_node, rm2, add, sqrt, *tail]
    # every d is used (by the square, the division or both) and by nothing else
    if any(not only_consumed_by(graph, d, nodes) or not d.outputs for d in ds):
        return None
    if not only_consumed_by(graph, xg, nodes):
        return None
    back = _back_to_x(ctx, r1, div.outputs[0], x, shape, g)
    if back is None:
        return None
    tail, out = back
    return Core("decomposed", x, out, [*nodes, *tail], g, eps, np.ones(c), np.zeros(c))


# -- rewrite --------------------------------------------------------------------------------------------------

@dataclass
class Branch:
    """One fused node's worth: the affine folded so far, the nodes absorbed after the core, the result."""

    gamma: np.ndarray
    beta: np.ndarray
    nodes: list[gs.Node]
    out: gs.Tensor
    activation: object = None  # ActivationMatch


def _affine_step(node: gs.Node, t: gs.Tensor, c: int, rank: int) -> tuple[str, np.ndarray] | None:
    """(op, per-channel vector) when ``node`` applies a constant per-channel Mul/Div/Add/Sub to ``t``."""
    if node.op not in ("Mul", "Div", "Add", "Sub") or len(node.inputs) != 2 or len(node.outputs) != 1:
        return None
    if node.inputs[0] is t and node.inputs[1] is t:
        return None
    other = node.inputs[1] if node.inputs[0] is t else node.inputs[0]
    v = const_value(other)
    if v is None or (node.op in ("Sub", "Div") and node.inputs[0] is not t):
        return None
    vec = channel_vector(v, c, rank)
    if vec is None or (node.op == "Div" and np.any(vec == 0)):
        return None
    return node.op, vec


def _branch(ctx: PassContext, core: Core, first: gs.Node | None) -> Branch:
    """Fold the per-channel affine chain (Mul(γ) → Add(β) in any mix) and the activation after the core
    (starting with ``first`` when the core's result has several consumers)."""
    graph = ctx.graph
    shape, c = _x_info(core.x)
    b = Branch(core.gamma.copy(), core.beta.copy(), [], core.out)
    nxt = first
    while nxt is not None:
        step = _affine_step(nxt, b.out, c, len(shape))
        if step is None:
            break
        op, vec = step
        if op == "Mul":
            b.gamma, b.beta = b.gamma * vec, b.beta * vec
        elif op == "Div":
            b.gamma, b.beta = b.gamma / vec, b.beta / vec
        else:
            b.beta = b.beta + (vec if op == "Add" else -vec)
        b.nodes.append(nxt)
        b.out = nxt.outputs[0]
        nxt = b.out.outputs[0] if single_use_intermediate(graph, b.out) else None
    act = match_activation_after(graph, b.out, ctx.opset)  # one consumer, or the SiLU diamond's two
    if act is not None and act.activation in GROUP_NORM_ACTIVATIONS:
        b.activation = act
        b.nodes += act.nodes
        b.out = act.out
    return b


def _rewrite(ctx: PassContext, core: Core) -> None:
    graph = ctx.graph
    out = core.out
    users = _unique(out.outputs)
    if out in graph.outputs or len(users) < 2:
        _emit(ctx, core, _branch(ctx, core, users[0] if users and out not in graph.outputs else None))
        return
    # Several GroupNorms of the same X share one normalisation (dynamo's CSE merges them): each affine
    # branch becomes its own fused node that recomputes the statistics from X (one read of X instead of
    # writing and re-reading the normalised tensor); any other consumer gets the plain normalisation.
    shape, c = _x_info(core.x)
    starts = [u for u in users if _affine_step(u, out, c, len(shape)) is not None]
    if not starts or any(u.op in ("Sigmoid", "Mul") for u in users if u not in starts):
        _emit(ctx, core, _branch(ctx, core, None))  # the SiLU diamond, or nothing to split
        return
    branches = [_branch(ctx, core, u) for u in starts]
    if len(starts) < len(users):
        branches.append(Branch(core.gamma.copy(), core.beta.copy(), [], out))
    for b in branches:
        _emit(ctx, core, b)


def _emit(ctx: PassContext, core: Core, b: Branch) -> None:
    sources = [*core.nodes, *b.nodes]
    dtype = np.dtype(core.x.dtype)
    base = core.nodes[0].name
    inputs: list[gs.Tensor] = [core.x, ctx.names.constant(f"{base}.gamma", b.gamma.astype(dtype)),
                               ctx.names.constant(f"{base}.beta", b.beta.astype(dtype))]
    if group_norm_constants_as_inputs(ctx.opset):
        inputs.append(ctx.names.constant(f"{base}.epsilon", np.array(core.epsilon, dtype=dtype)))
        inputs.append(ctx.names.constant(f"{base}.group_shape", np.array([0, core.num_groups, -1], dtype=np.int64)))
    attrs = {"num_groups": int(core.num_groups), "epsilon": float(np.float32(core.epsilon)), "activation": "",
             "alpha": 0.01, "beta": 0.0, "clip_min": float("-inf"), "clip_max": float("inf")}
    activation = ""
    if b.activation is not None:
        attrs.update(b.activation.attrs())
        activation = b.activation.activation
    pattern = f"group_norm_{core.form}" + ("_" + activation.lower() if activation else "")
    ctx.fused_node(FusedOpType("GroupNorm", activation), inputs, b.out, attrs, pattern, sources)
