"""Small helpers over onnx-graphsurgeon graphs that every pass uses.

Kept deliberately few: who consumes a tensor, is it a constant (and its value), may a replaced
intermediate disappear, and deterministic unique names.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs


def consumers(t: gs.Tensor) -> list[gs.Node]:
    return list(t.outputs)


def producer(t: gs.Tensor) -> gs.Node | None:
    return t.inputs[0] if len(t.inputs) == 1 else None


def const_value(t: gs.Tensor | None) -> np.ndarray | None:
    """The value of a constant tensor (initializer), else None. Graph inputs are never constants."""
    if isinstance(t, gs.Constant):
        return np.asarray(t.values)
    return None


def is_const(t: gs.Tensor | None) -> bool:
    return isinstance(t, gs.Constant)


def single_use_intermediate(graph: gs.Graph, t: gs.Tensor) -> bool:
    """``t`` may be swallowed by a fusion: exactly one consumer and not a graph output."""
    return len(t.outputs) == 1 and t not in graph.outputs and not isinstance(t, gs.Constant)


def only_consumed_by(graph: gs.Graph, t: gs.Tensor, nodes: list[gs.Node]) -> bool:
    return t not in graph.outputs and all(any(c is n for n in nodes) for c in t.outputs)


def same_static_shape(a: gs.Tensor, b: gs.Tensor) -> bool:
    """Both shapes known, every dim known (a symbolic dim matches only the same symbol), and equal: what
    an elementwise op reads without broadcasting."""
    return a.shape is not None and b.shape is not None and list(a.shape) == list(b.shape) and all(
        d is not None for d in a.shape)


def input_at(node: gs.Node, i: int) -> gs.Tensor | None:
    """The i-th input, or None where it is absent or given as the empty name."""
    if i >= len(node.inputs):
        return None
    t = node.inputs[i]
    return None if (t is None or (isinstance(t, gs.Variable) and t.name == "")) else t


def channel_vector(value: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """If ``value`` broadcast against an [N, C, ...] tensor of ``rank`` dims gives one number per
    channel (or one number in all), return it as a length-``channels`` float64 vector; else None."""
    v = np.asarray(value, dtype=np.float64)
    if v.ndim > rank:
        return None
    shape = (1,) * (rank - v.ndim) + v.shape
    if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(v.reshape(-1), (channels,)).copy() if v.size == 1 else v.reshape(-1).copy()


class NameScope:
    """Deterministic unique names within one graph."""

    def __init__(self, graph: gs.Graph) -> None:
        self.tensor_names: set[str] = set(graph.tensors().keys())
        self.taken: set[str] = self.tensor_names | {n.name for n in graph.nodes}

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            name = f"{base}_{k}"
            k += 1
        self.taken.add(name)
        return name

    def release(self, name: str) -> None:
        """``name`` belonged to a node that is being replaced: its replacement may take it over (node names
        and tensor names live in separate ONNX namespaces, so a tensor of that name keeps it taken)."""
        if name not in self.tensor_names:
            self.taken.discard(name)

    def constant(self, base: str, values: np.ndarray) -> gs.Constant:
        name = self.fresh(base)
        self.tensor_names.add(name)
        values = np.asarray(values)
        # np.ascontiguousarray would turn a 0-d array (a Clip bound) into shape [1]
        return gs.Constant(name, np.ascontiguousarray(values).reshape(values.shape))


def scaled(w: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """``w · factor`` (``factor`` broadcastable to ``w``) computed in float64 and cast back to ``w``'s
    dtype — in slabs along axis 0, so a 2 GB weight never needs a 4 GB float64 copy."""
    f = np.asarray(factor, dtype=np.float64)
    f = f.reshape((1,) * (w.ndim - f.ndim) + f.shape)
    out = np.empty(w.shape, dtype=w.dtype)
    row_bytes = max(1, int(np.prod(w.shape[1:], dtype=np.int64)) * 8)
    step = max(1, (64 << 20) // row_bytes)
    for i in range(0, w.shape[0], step):
        fi = f if f.shape[0] == 1 else f[i:i + step]
        out[i:i + step] = (w[i:i + step].astype(np.float64) * fi).astype(w.dtype)
    return out


def conv_out_channel_factor(op: str, w: np.ndarray, group: int, per_out: np.ndarray) -> np.ndarray:
    """Broadcast a per-output-channel vector over a Conv ([Cout, Cin/g, k…]) or ConvTranspose
    ([Cin, Cout/g, k…], output channel = g·(Cout/g) + j) weight."""
    tail = (1,) * (w.ndim - 2)
    if op == "Conv":
        return per_out.reshape((-1, 1) + tail)
    cin, cpg = w.shape[0], w.shape[1]
    per_in = np.repeat(per_out.reshape(group, 1, cpg), cin // group, axis=1).reshape(cin, cpg)
    return per_in.reshape((cin, cpg) + tail)
