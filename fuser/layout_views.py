"""Attention layout views: the runtime reads Q/K/V through strides instead of running the Transposes around a fused
attention node (DESIGN §6: a runtime choice; the fused model itself is unchanged).

Every exporter splits heads and merges them back with layout ops that only move data::

    P [B, S, ΣN] ─► Split(axis -1, sizes N_i)? ─► [B, S, H·D] ─► Reshape [B, S, H, D] ─► Transpose(0, 2, 1, 3)
        ─► Q | K | V [B, H, S, D] ─► FusedAttention ─► O [B, H, S, Dv] ─► Transpose(0, 2, 1, 3) ─► [B, S, H, Dv]
        ─► Reshape [B, S, H·Dv] ─► Y

In onnxruntime each Transpose is a copy (and a Split another). Our attention kernels address Q, K, V and O through
(batch, head, row) strides, so the node can read Q straight out of P (offset Σ_{j<i} N_j, strides S·ΣN, D, ΣN) and
write Y directly (strides S·H·Dv, Dv, H·Dv): those nodes then do not run at all.

:func:`plan_views` finds these chains. An input chain is absorbed when:

- the Transpose has ``perm = [0, 2, 1, 3]`` and its output feeds only this node's Q, K or V input (not a graph
  output); the Reshape's output feeds only that Transpose;
- the Reshape's target is a constant of four entries ``[b, s, H, D]`` with D > 0 a multiple of 8, H a size or -1,
  and b, s each 0 (copy), -1 (infer) or a size (the result is checked at run time against the source's shape),
  ``allowzero`` off — or, for a dynamic batch, ``Concat(·, ·, H, D)`` with H and D constants where shape inference
  (the model's value_info) proved the Reshape keeps its input's first two dims;
- its source is any value (read with row stride H·D), or one output of a ``Split`` along the last axis with
  constant sizes, every size a multiple of 8 (read at that output's column offset with row stride ΣN). The Split
  itself is dropped when every one of its outputs was absorbed, else it keeps running and the view reads its output.

Multiples of 8 elements keep every row 16-byte aligned, as the vector and asynchronous loads need. The output chain
is absorbed when O feeds only a Transpose ``[0, 2, 1, 3]`` whose output feeds only a Reshape with a constant target of
three entries ``[b, s, n]`` (n = -1 or H·Dv, checked at run time; or ``Concat(·, ·, n)`` as above), none of them
graph outputs (a computed target's first two dims are proved against Q's source, so Q needs a view then). Nodes
left without a use once these go (the Shape/Gather/Concat that computed a target) go too.

Where a model's shapes are static, :func:`plan_static_views` then follows *any* chain of layout ops (Reshape,
Transpose, Squeeze, Unsqueeze, Flatten, Gather of one index, Slice, Split) on the operands and the output that
these fixed chains left unviewed — nn.MultiheadAttention's export, for one (see the section below).

At run time (:func:`resolve`) the source's shape must be ``[B, S, row]``: a model whose Reshape would not be this
plain head split (sizes that disagree) raises an error rather than compute something else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

HEAD_SPLIT = [0, 2, 1, 3]
ALIGN = 8  # elements: 16 bytes of fp16, 32 of fp32


@dataclass(frozen=True)
class InputView:
    """Q, K or V [B, H, S, D] read out of ``source`` [B, S, row] at column ``offset``."""

    source: str
    offset: int               # elements from the start of each row of the source
    width: int | None         # the split output's size (None: the whole row)
    target: tuple[int, ...]   # the Reshape's constant target [b, s, H, D]
    nodes: tuple[str, ...]    # the nodes this view replaces (Transpose, Reshape[, Split])
    split_output: str | None = None  # the Split output this view stands for (when it reads through a Split)
    strides: tuple[int, int, int] | None = None  # a static-shape chain's (batch, head, row) strides (then target ())
    source_shape: tuple[int, ...] | None = None  # ... planned for a source of this shape
    shape: tuple[int, ...] | None = None         # ... giving the operand this [B, H, S, D]


@dataclass(frozen=True)
class OutputView:
    """O written as ``value`` [B, S, H·Dv] (the Reshape's output)."""

    value: str
    target: tuple[int, ...]   # the Reshape's constant target [b, s, n]
    nodes: tuple[str, ...]    # Transpose, Reshape
    strides: tuple[int, int, int] | None = None  # a static-shape chain's strides of O in ``value`` (then target ())
    shape: tuple[int, ...] | None = None         # ... and ``value``'s shape


@dataclass
class NodeViews:
    inputs: dict[int, InputView]
    output: OutputView | None


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _const_ints(name: str, inits: dict[str, onnx.TensorProto]) -> list[int] | None:
    t = inits.get(name)
    if t is None:
        return None
    arr = numpy_helper.to_array(t)
    return [int(x) for x in arr.reshape(-1)] if arr.dtype.kind in "iu" else None


def _split_sizes(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> list[int] | None:
    """A Split's constant sizes (attribute before opset 13, input after); None when they come at run time."""
    if len(node.input) > 1 and node.input[1]:
        return _const_ints(node.input[1], inits)
    sizes = _attr(node, "split")
    return [int(x) for x in sizes] if sizes else None


def value_dims(model: onnx.ModelProto) -> dict[str, list[int | str | None]]:
    """Every value's inferred dims (int, symbol, or None) from the model's value_info, inputs and outputs."""
    out: dict[str, list[int | str | None]] = {}
    for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        t = v.type.tensor_type
        if t.HasField("shape"):
            out[v.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
    return out


def _same_leading_dims(a: str, b: str, dims: dict, n: int = 2) -> bool:
    """Shape inference proved the first ``n`` dims of values a and b equal (same size, or the same symbol)."""
    da, db = dims.get(a), dims.get(b)
    return (da is not None and db is not None and len(da) >= n and len(db) >= n
            and all(x is not None and x == y for x, y in zip(da[:n], db[:n], strict=False)))


def _target(rs: onnx.NodeProto, producer: dict, inits: dict, dims: dict, tail: int,
            lead_ref: str | None = None) -> list[int] | None:
    """A Reshape's target: its constant, or — for a target computed as Concat(…, …, c_1 … c_tail) the way exporters
    build it for a dynamic batch — ``[0, 0, c_1 … c_tail]`` where shape inference proved that the Reshape's output
    starts with the same two dims as ``lead_ref`` (default: the Reshape's input)."""
    if len(rs.input) < 2 or _attr(rs, "allowzero", 0):
        return None
    const = _const_ints(rs.input[1], inits)
    if const is not None:
        return const
    cat = producer.get(rs.input[1])
    if cat is None or cat.op_type != "Concat" or len(cat.input) != 2 + tail:
        return None
    parts = [_const_ints(x, inits) for x in cat.input[2:]]
    if any(p is None or len(p) != 1 for p in parts) or not _same_leading_dims(lead_ref or rs.input[0], rs.output[0],
                                                                             dims):
        return None
    return [0, 0, *(p[0] for p in parts)]


def _edges(nodes: list[onnx.NodeProto]) -> tuple[dict[str, onnx.NodeProto], dict[str, list[onnx.NodeProto]]]:
    """Each value's producing node and its consuming nodes."""
    producer = {o: n for n in nodes for o in n.output if o}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for x in n.input:
            if x:
                consumers.setdefault(x, []).append(n)
    return producer, consumers


def plan_views(nodes: list[onnx.NodeProto], inits: dict[str, onnx.TensorProto], graph_outputs: set[str],
               is_attention, dims: dict | None = None) -> tuple[dict[str, NodeViews], set[str]]:
    """Views per attention node (by name) and the names of the nodes they make unnecessary. ``is_attention(node)``:
    the node is a fused attention node that runs as a kernel step; ``dims``: :func:`value_dims` of the model."""
    dims = dims or {}
    names = [n.name for n in nodes]
    if not all(names) or len(set(names)) != len(names):
        return {}, set()  # views are keyed by node name: only a model with unique names (every fused model) gets them
    producer, consumers = _edges(nodes)

    def only_use(value: str, user: onnx.NodeProto) -> bool:
        us = consumers.get(value, [])
        return value not in graph_outputs and len(us) == 1 and us[0] is user

    out: dict[str, NodeViews] = {}
    split_reads: dict[str, list[str]] = {}  # Split node → its outputs that views read through it
    for node in nodes:
        if not is_attention(node):
            continue
        views = NodeViews({}, None)
        for i in range(3):
            v = _input_view(node, i, producer, inits, only_use, dims)
            if v is not None:
                views.inputs[i] = v
                if v.split_output is not None:
                    split_reads.setdefault(v.nodes[2], []).append(v.split_output)
        q = views.inputs.get(0)
        q_ref = (q.split_output or q.source) if q is not None else None  # holds [B, Sq, ·] at run time
        views.output = _output_view(node, consumers, producer, inits, only_use, dims, q_ref)
        if views.inputs or views.output:
            out[node.name] = views
    # a Split goes only when every output of it is read through a view; else it runs, and the views read its outputs
    splits = {n.name: n for n in nodes if n.name in split_reads}
    for name, reads in split_reads.items():
        if sorted(reads) == sorted(o for o in splits[name].output if o):
            continue
        for views in out.values():
            for i, v in list(views.inputs.items()):
                if v.split_output is not None and v.nodes[2] == name:
                    views.inputs[i] = InputView(v.split_output, 0, None, v.target, v.nodes[:2])
    removed = {name for views in out.values() for v in views.inputs.values() for name in v.nodes}
    removed |= {name for views in out.values() if views.output for name in views.output.nodes}
    removed |= plan_static_views(nodes, inits, graph_outputs, is_attention, dims, out, removed)
    return out, removed


def _input_view(node, i, producer, inits, only_use, dims) -> InputView | None:
    if i >= len(node.input) or not node.input[i]:
        return None
    x = node.input[i]
    tr = producer.get(x)
    if tr is None or tr.op_type != "Transpose" or tr.domain not in ("", "ai.onnx"):
        return None
    if list(_attr(tr, "perm", [])) != HEAD_SPLIT or not only_use(x, node) or sum(j == x for j in node.input) != 1:
        return None
    rs = producer.get(tr.input[0])
    if rs is None or rs.op_type != "Reshape" or rs.domain not in ("", "ai.onnx") or not only_use(tr.input[0], tr):
        return None
    target = _target(rs, producer, inits, dims, 2)
    if target is None or len(target) != 4:
        return None
    if target[2] in (0,) or target[2] < -1 or target[3] <= 0 or target[3] % ALIGN or any(t < -1 for t in target[:2]):
        return None
    src = rs.input[0]
    if len(dims.get(src) or ()) != 3:  # the view reads its source as [B, S, row]; a source of another rank keeps
        return None                    # its Reshape (LeViT's dynamo export reshapes [B·S, row] sources)
    sp = producer.get(src)
    if sp is not None and sp.op_type == "Split" and sp.domain in ("", "ai.onnx") and only_use(src, rs):
        sizes = _split_sizes(sp, inits)
        if sizes and _attr(sp, "axis", 0) in (-1, 2) and len(sizes) == len(sp.output) \
                and all(s > 0 and s % ALIGN == 0 for s in sizes):
            k = list(sp.output).index(src)
            return InputView(sp.input[0], sum(sizes[:k]), sizes[k], tuple(target), (tr.name, rs.name, sp.name),
                             src)
    return InputView(src, 0, None, tuple(target), (tr.name, rs.name))


def _output_view(node, consumers, producer, inits, only_use, dims, q_ref) -> OutputView | None:
    o = node.output[0]
    us = consumers.get(o, [])
    if len(us) != 1 or not only_use(o, us[0]):
        return None
    tr = us[0]
    if tr.op_type != "Transpose" or tr.domain not in ("", "ai.onnx") or list(_attr(tr, "perm", [])) != HEAD_SPLIT:
        return None
    us = consumers.get(tr.output[0], [])
    if len(us) != 1 or not only_use(tr.output[0], us[0]):
        return None
    rs = us[0]
    if rs.op_type != "Reshape" or rs.domain not in ("", "ai.onnx") or rs.input[0] != tr.output[0]:
        return None
    # a computed target: [B, Sq] proved by shape inference against Q's source (the value the input view of Q reads;
    # [B, Sq, H, Dv] itself seldom keeps its symbols through the fused node's shape inference)
    target = _target(rs, producer, inits, dims, 1, q_ref) if q_ref or _const_ints(rs.input[1], inits) else None
    if target is None or len(target) != 3 or any(t < -1 for t in target):
        return None
    return OutputView(rs.output[0], tuple(target), (tr.name, rs.name))


# -- run time ---------------------------------------------------------------------------------------------------


def _resolve_reshape(src_shape: tuple[int, ...], target: tuple[int, ...]) -> tuple[int, ...] | None:
    """ONNX Reshape's output shape (allowzero off), or None where the target does not fit."""
    dims = [src_shape[j] if t == 0 and j < len(src_shape) else t for j, t in enumerate(target)]
    total = int(np.prod(src_shape, dtype=np.int64))
    if dims.count(-1) > 1:
        return None
    if -1 in dims:
        known = int(np.prod([d for d in dims if d != -1], dtype=np.int64))
        if known == 0 or total % known:
            return None
        dims[dims.index(-1)] = total // known
    return tuple(dims) if int(np.prod(dims, dtype=np.int64)) == total else None


def resolve_input(view: InputView, source_shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, int, int]]:
    """The logical [B, H, S, D] shape and (batch, head, row) element strides of a view on a source of this shape."""
    if view.strides is not None:
        if tuple(source_shape) != view.source_shape:
            raise RuntimeError(f"layout view: {view.source!r} has shape {list(source_shape)}, planned for "
                               f"{list(view.source_shape or ())}")
        return view.shape, view.strides
    if len(source_shape) != 3:
        raise RuntimeError(f"layout view: {view.source!r} has shape {list(source_shape)}, expected [B, S, row]")
    b, s, row = source_shape
    width = view.width if view.width is not None else row
    got = _resolve_reshape((b, s, width), view.target)
    if got is None or got[:2] != (b, s) or view.offset + width > row:
        raise RuntimeError(f"layout view: Reshape to {list(view.target)} of [{b}, {s}, {width}] is not a head split "
                           "[B, S, H, D]")
    h, d = got[2], got[3]
    return (b, h, s, d), (s * row, d, row)


def resolve_output(view: OutputView, o_shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, int, int]]:
    """The written value's [B, S, H·Dv] shape and O's (batch, head, row) strides in it, for O of shape [B, H, S, Dv]."""
    if view.strides is not None:
        if int(np.prod(o_shape)) != int(np.prod(view.shape)):
            raise RuntimeError(f"layout view: O of shape {list(o_shape)} does not fill {view.value!r} "
                               f"{list(view.shape)}")
        return view.shape, view.strides
    b, h, s, dv = o_shape
    got = _resolve_reshape((b, s, h, dv), view.target)
    if got != (b, s, h * dv):
        raise RuntimeError(f"layout view: Reshape to {list(view.target)} of [{b}, {s}, {h}, {dv}] does not merge "
                           "the heads")
    return got, (s * h * dv, dv, h * dv)


def numpy_input(view: InputView, source: np.ndarray) -> np.ndarray:
    """The CPU runtime's version of a view: the [B, H, S, D] array it stands for."""
    if view.strides is not None:
        shape, strides = resolve_input(view, tuple(source.shape))
        flat = np.ascontiguousarray(source).reshape(-1)[view.offset:]
        st = (*strides, 1) if shape[3] != 1 else (*strides, 0)
        return np.lib.stride_tricks.as_strided(flat, shape, [x * flat.itemsize for x in st], writeable=False).copy()
    (b, h, s, d), _ = resolve_input(view, tuple(source.shape))
    width = view.width if view.width is not None else source.shape[2]
    return source[:, :, view.offset:view.offset + width].reshape(b, s, h, d).transpose(0, 2, 1, 3)


def numpy_output(view: OutputView, o: np.ndarray) -> np.ndarray:
    if view.strides is not None:
        out = np.empty(view.shape, dtype=o.dtype)
        st = (*view.strides, 1)
        np.lib.stride_tricks.as_strided(out.reshape(-1), o.shape, [x * o.itemsize for x in st])[...] = o
        return out
    shape, _ = resolve_output(view, tuple(o.shape))
    return np.ascontiguousarray(o.transpose(0, 2, 1, 3)).reshape(shape)


# -- any chain of layout ops, for models whose shapes are static ------------------------------------------------
#
# torchvision's nn.MultiheadAttention export splits heads with a chain the plan above does not know:
#
#   P [S, B, 3E] ─► Reshape [S, B, 3, E] ─► Unsqueeze ─► Transpose ─► Squeeze [3, S, B, E] ─► Gather(0, i)
#     ─► [S, B, E] ─► Reshape [S, B·H, D] ─► Transpose(1, 0, 2) ─► Reshape [B, H, S, D] ─► FusedAttention
#     ─► Transpose(2, 0, 1, 3) [S, B, H, D] ─► Reshape [S·B, E] ─► Gemm
#
# Where every value on such a chain has a static shape, the chain is followed through a *layout*: each logical
# dim is a list of (size, stride) modes, outer to inner (a dim that merged two non-adjacent dims keeps both
# modes: [S, B·H, D] above is [[S], [B, H], [D]]). Reshape regroups the modes (splitting one where a new dim
# ends inside it), Transpose permutes dims, Gather/Slice/Split move the offset; the chain is a view when every
# dim of the attention operand ends as one mode (or size 1) with the head dim at stride 1. The output chain is
# followed backwards from its last value, taken as contiguous: O's strides are what makes the chain's result
# that contiguous array.

Mode = tuple[int, int]          # (size, stride)
Layout = list[list[Mode]]       # per logical dim, its modes outer → inner

_CHAIN_OPS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Gather", "Slice", "Split", "Identity")


def _contiguous(shape: tuple[int, ...]) -> Layout:
    out, stride = [], 1
    for n in reversed(shape):
        out.append([(n, stride)] if n != 1 else [])
        stride *= n
    return out[::-1]


def _dim_size(modes: list[Mode]) -> int:
    return int(np.prod([s for s, _ in modes], dtype=np.int64)) if modes else 1


def _regroup(layout: Layout, shape: tuple[int, ...]) -> Layout | None:
    """The same elements in the same order, grouped as ``shape`` (a Reshape); None where a new dim would end inside
    a mode that does not split there."""
    modes = [m for dim in layout for m in dim if m[0] != 1]
    out: Layout = []
    for n in shape:
        dim: list[Mode] = []
        while n > 1:
            if not modes:
                return None
            s, st = modes[0]
            if n % s == 0:
                dim.append(modes.pop(0))
                n //= s
            elif s % n == 0:
                dim.append((n, st * (s // n)))
                modes[0] = (s // n, st)
                n = 1
            else:
                return None
        out.append(dim)
    return out if not modes else None


def _coalesce(modes: list[Mode]) -> Mode | None:
    """One (size, stride) for a dim, or None where its modes are not evenly spaced (size 1: stride 0)."""
    modes = [m for m in modes if m[0] != 1]
    if not modes:
        return (1, 0)
    size, stride = modes[-1]
    for s, st in reversed(modes[:-1]):
        if st != size * stride:
            return None
        size *= s
    return (size, stride)


def _axes(node: onnx.NodeProto, inits: dict, rank: int, attr: str = "axes") -> list[int] | None:
    axes = _const_ints(node.input[1], inits) if len(node.input) > 1 and node.input[1] else _attr(node, attr)
    return None if axes is None else [int(a) % rank for a in axes]


def _forward(node: onnx.NodeProto, out_name: str, layout: Layout, offset: int, inits: dict,
             dims: dict) -> tuple[Layout, int] | None:
    """The layout and element offset of ``out_name`` (an output of ``node``) given its data input's."""
    op, rank = node.op_type, len(layout)
    out_shape = dims.get(out_name)
    if out_shape is None or not all(isinstance(d, int) and d > 0 for d in out_shape):
        return None
    if op == "Identity":
        return layout, offset
    if op == "Transpose":
        perm = list(_attr(node, "perm", range(rank - 1, -1, -1)))
        return [layout[p] for p in perm], offset
    if op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
        got = _regroup(layout, tuple(out_shape))
        return (got, offset) if got is not None else None
    if op == "Gather":
        idx = _const_ints(node.input[1], inits)
        t = inits.get(node.input[1])
        axis = int(_attr(node, "axis", 0)) % rank
        if idx is None or len(idx) != 1 or t is None or len(t.dims) != 0:
            return None
        modes, i = layout[axis], idx[0] % _dim_size(layout[axis])
        for s, st in reversed(modes):  # the index's digits in the dim's modes, inner first
            offset += (i % s) * st
            i //= s
        return layout[:axis] + layout[axis + 1:], offset
    if op in ("Slice", "Split"):
        if op == "Split":
            axis = int(_attr(node, "axis", 0)) % rank
            sizes = _split_sizes(node, inits)
            k = list(node.output).index(out_name)
            if not sizes or len(sizes) != len(node.output):
                return None
            start, count, step = sum(sizes[:k]), sizes[k], 1
        else:
            starts, ends = (_const_ints(x, inits) if x else None for x in node.input[1:3])
            axes = _const_ints(node.input[3], inits) if len(node.input) > 3 and node.input[3] else None
            steps = _const_ints(node.input[4], inits) if len(node.input) > 4 and node.input[4] else None
            if starts is None or ends is None or len(starts) != 1 or (steps and steps != [1]):
                return None
            axis = (axes[0] if axes else 0) % rank
            n = _dim_size(layout[axis])
            start = starts[0] + n if starts[0] < 0 else min(starts[0], n)
            count, step = out_shape[axis], 1
        one = _coalesce(layout[axis])
        if one is None:
            return None
        out = list(layout)
        out[axis] = [(count, one[1] * step)] if count != 1 else []
        return out, offset + start * one[1]
    return None


def _backward(node: onnx.NodeProto, in_shape: tuple[int, ...], layout: Layout) -> Layout | None:
    """The layout of ``node``'s data input that makes its output have ``layout`` (output chains: reshapes and
    transposes only)."""
    op = node.op_type
    if op == "Identity":
        return layout
    if op == "Transpose":
        perm = list(_attr(node, "perm", range(len(layout) - 1, -1, -1)))
        out: Layout = [[] for _ in perm]
        for i, p in enumerate(perm):
            out[p] = layout[i]
        return out
    if op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
        return _regroup(layout, in_shape)
    return None


def _static(shape) -> tuple[int, ...] | None:
    return tuple(shape) if shape is not None and all(isinstance(d, int) and d > 0 for d in shape) else None


def _as_view(layout: Layout, offset: int, shape: tuple[int, ...] | None) -> tuple[int, int, int] | None:
    """(batch, head, row) strides of a [B, H, S, D] operand laid out so, or None where that is no aligned view."""
    if len(layout) != 4 or shape is None or tuple(_dim_size(d) for d in layout) != shape:
        return None
    one = [_coalesce(d) for d in layout]
    if any(m is None for m in one) or (shape[3] != 1 and one[3][1] != 1) or shape[3] % ALIGN or offset % ALIGN:
        return None
    strides = tuple(m[1] for m in one[:3])
    return strides if all(st % ALIGN == 0 for st in strides) else None


def plan_static_views(nodes: list[onnx.NodeProto], inits: dict, graph_outputs: set[str], is_attention,
                      dims: dict, planned: dict[str, NodeViews], taken: set[str]) -> set[str]:
    """Views through any chain of layout ops (static shapes only) for the attention operands and outputs
    :func:`plan_views`' fixed chains left unviewed; adds them to ``planned`` and returns the nodes they make
    unnecessary (none of ``taken``)."""
    producer, consumers = _edges(nodes)

    def layout_node(n: onnx.NodeProto | None) -> bool:
        return n is not None and n.op_type in _CHAIN_OPS and n.domain in ("", "ai.onnx") and n.name not in taken

    # input chains: attention node → [(node, its output on the chain)], nearest first
    chains: dict[tuple[str, int], list[tuple[onnx.NodeProto, str]]] = {}
    att = {n.name: n for n in nodes if is_attention(n)}
    for node in att.values():
        have = planned.get(node.name)
        for i in range(min(3, len(node.input))):
            if not node.input[i] or (have is not None and i in have.inputs):
                continue
            chain, x = [], node.input[i]
            while layout_node(producer.get(x)) and x not in graph_outputs:
                p = producer[x]
                chain.append((p, x))
                x = p.input[0]
            if chain:
                chains[(node.name, i)] = chain

    def view_of(chain) -> tuple[str, int, tuple[int, int, int]] | None:
        """The view through the whole chain: (source, offset, strides)."""
        src = chain[-1][0].input[0]
        shape = _static(dims.get(src))
        if shape is None or src in inits:  # a constant operand is the runner's, not a runtime value
            return None
        layout, offset = _contiguous(shape), 0
        for p, y in reversed(chain):
            got = _forward(p, y, layout, offset, inits, dims)
            if got is None:
                return None
            layout, offset = got
        strides = _as_view(layout, offset, _static(dims.get(chain[0][1])))
        return (src, offset, strides) if strides is not None else None

    # the longest viewable chain of each operand; then nodes that other users still need are kept, and the chains
    # through them end there (a kept node keeps what feeds it), until nothing changes
    viewable: dict[tuple[str, int], int] = {}
    for key, chain in chains.items():
        n = len(chain)
        while n and view_of(chain[:n]) is None:
            n -= 1
        if n:
            viewable[key] = n
    while True:
        members = {id(p): p for key, n in viewable.items() for p, _ in chains[key][:n]}
        readers = {(key[0], chains[key][0][1]) for key in viewable}  # (attention node, value it reads by a view)
        kept = set()
        for p in members.values():
            for o in p.output:
                if not o:
                    continue
                if o in graph_outputs or any(id(c) not in members and (c.name, o) not in readers
                                             for c in consumers.get(o, [])):
                    kept.add(id(p))
                # an attention node that also reads o in a slot without a view needs o itself
                for c in consumers.get(o, []):
                    if (c.name, o) in readers and any(
                            x == o and (c.name, j) not in viewable for j, x in enumerate(c.input)):
                        kept.add(id(p))
        if not kept:
            break
        for key in list(viewable):
            chain = chains[key][:viewable[key]]
            cut = next((j for j, (p, _) in enumerate(chain) if id(p) in kept), None)
            if cut is None:
                continue
            n = cut
            while n and view_of(chain[:n]) is None:
                n -= 1
            if n:
                viewable[key] = n
            else:
                del viewable[key]
    removed: set[str] = set()
    for (name, i), n in viewable.items():
        chain = chains[(name, i)][:n]
        src, offset, strides = view_of(chain)
        views = planned.setdefault(name, NodeViews({}, None))
        views.inputs[i] = InputView(src, offset, None, (), tuple(p.name for p, _ in chain),
                                    strides=strides, source_shape=_static(dims.get(src)),
                                    shape=_static(dims.get(chain[0][1])))
        removed |= {p.name for p, _ in chain}
    # output chains: O's single consumer, while it is a reshape or transpose of it alone
    for name, node in att.items():
        have = planned.get(name)
        if have is not None and have.output is not None:
            continue
        chain, o = [], node.output[0]
        while o not in graph_outputs and len(consumers.get(o, [])) == 1:
            c = consumers[o][0]
            if c.op_type not in ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity") \
                    or c.domain not in ("", "ai.onnx") or c.name in taken or c.input[0] != o \
                    or sum(x == o for x in c.input) != 1:
                break
            chain.append(c)
            o = c.output[0]
        o_shape = _static(dims.get(node.output[0]))
        while chain and o_shape is not None:
            end = chain[-1].output[0]
            end_shape = _static(dims.get(end))
            layout = _contiguous(end_shape) if end_shape is not None else None
            for c in reversed(chain):
                shape_in = _static(dims.get(c.input[0]))
                layout = _backward(c, shape_in, layout) if layout is not None and shape_in is not None else None
            strides = _as_view(layout, 0, o_shape) if layout is not None else None
            if strides is not None and end not in graph_outputs:
                views = planned.setdefault(name, NodeViews({}, None))
                views.output = OutputView(end, (), tuple(c.name for c in chain), strides=strides, shape=end_shape)
                removed |= {c.name for c in chain}
                break
            chain.pop()
    return removed
