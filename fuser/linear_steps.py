"""Runtime plan: fp32 linear layers as kernel steps on the FP64 tensor cores (:mod:`fuser.kernels.linear`).

Not a graph pass: the written model keeps its standard MatMul/Add nodes. The GPU runtime, in fp32 sessions on
GPUs whose fp64 tensor cores are as fast as their fp32 CUDA cores, replaces each chain it matches by one
synthetic ``FusedLinear`` node of its own plan::

    X ─► MatMul(·, W) ─► t ─► Add(·, b) ─► u ─► [GELU] ─► v ─► [Add(·, R)] ─► Y
    X ─► Gemm(·, W[ᵀ], b) ──────────────► u ─► [GELU] ─► v ─► [Add(·, R)] ─► Y
         W: 2-D fp32 initializer        b: fp32 initializer of N elements (any leading 1s), Add on either side
         Gemm: alpha 1, no transA, beta 1 (or no C), C a bias as above
         GELU: the exported erf form    v·(Erf(v / √2) + 1)·0.5  as  Div, Erf, Add, Mul, Mul
         R: a computed value of exactly Y's shape (shape inference's dims, equal sizes or symbols), either side

Guards: X has at least ``MIN_ROWS`` rows where shape inference knows them (a classifier's last Gemm at batch 1
stays in onnxruntime); every intermediate (t, u, the GELU's values, v) has only the consumers of the chain and is
not a graph output; the bias is optional, the GELU and the residual only follow a bias. The node's inputs are
``[X, W, b or "", R or ""]``, its attributes ``gelu``, ``residual`` and ``trans_w`` (W stored as [N, K], a Gemm's
transB) (0/1); its output is the chain's last value, so what reads it (islands, layout views) is unchanged.
A linear output whose one reader is the next linear step's X gets ``out64`` there and ``in64`` on the reader: it
passes between them in fp64 (the same fp32 values, widened), which saves the reader's widen pass.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .fused import DOMAIN, FusedOpType, node_attrs

LINEAR_OP = "FusedLinear"
# Below this many rows (M = X's leading dims, where shape inference knows them) a GEMM is memory-bound on its
# weights, which fp64 doubles: H200's fp64 tensor peak over its bandwidth is ~14 FLOP/byte, M/4 with fp64 weights.
MIN_ROWS = 64
_SQRT2_F32 = float(np.float32(np.sqrt(2.0)))


def linear_op_type(node: onnx.NodeProto) -> FusedOpType | None:
    """The step's op type, for a node this module made (else None)."""
    if node.domain != DOMAIN or node.op_type != LINEAR_OP:
        return None
    a = node_attrs(node)
    return FusedOpType("Linear", "Gelu" if a.get("gelu") else "", bool(a.get("residual")))


def _constants(nodes: list[onnx.NodeProto], inits: dict) -> dict[str, np.ndarray]:
    out = {}
    for n in nodes:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


def plan_linear_steps(nodes: list[onnx.NodeProto], inits: dict, outputs: set[str], dims: dict,
                      inputs_of: Callable[[onnx.NodeProto], list[str]] | None = None) -> list[onnx.NodeProto]:
    """``nodes`` with every matched chain replaced by one ``FusedLinear`` node (at the MatMul's place).
    ``inputs_of``: every name a node reads, subgraph bodies' outer-scope names included (default: its inputs)."""
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in nodes:
        for x in dict.fromkeys(inputs_of(n) if inputs_of else n.input):
            if x:
                consumers[x].append(n)
    consts = _constants(nodes, inits)

    def const(name: str) -> np.ndarray | None:
        if name in consts:
            return consts[name]
        t = inits.get(name)
        if t is None or t.data_location == onnx.TensorProto.EXTERNAL:
            return None
        return numpy_helper.to_array(t)

    dropped: set[int] = set()  # chain nodes already taken into a linear node

    def only_use(name: str) -> onnx.NodeProto | None:
        """The one reader of ``name``, a standard node no other chain has taken (else None)."""
        users = consumers.get(name, [])
        if len(users) != 1 or name in outputs or id(users[0]) in dropped or users[0].domain not in ("", "ai.onnx"):
            return None
        return users[0]

    def scalar(name: str, value: float) -> bool:
        v = const(name)  # at most 1-D: a [1, 1, 1] constant would raise the output's rank
        return (v is not None and v.size == 1 and v.ndim <= 1 and v.dtype.kind == "f"
                and float(v.reshape(-1)[0]) == value)

    def other(node: onnx.NodeProto, name: str) -> str | None:
        if len(node.input) != 2 or list(node.input).count(name) != 1:
            return None
        return node.input[1] if node.input[0] == name else node.input[0]

    def gelu_after(u: str) -> tuple[list[onnx.NodeProto], str] | None:
        users = consumers.get(u, [])
        if u in outputs or len(users) != 2 or any(id(x) in dropped or x.domain not in ("", "ai.onnx") for x in users):
            return None
        div = next((x for x in users if x.op_type == "Div" and x.input[0] == u), None)
        mul = next((x for x in users if x.op_type == "Mul"), None)
        if div is None or mul is None or not scalar(div.input[1], _SQRT2_F32):
            return None
        erf = only_use(div.output[0])
        if erf is None or erf.op_type != "Erf":
            return None
        add = only_use(erf.output[0])
        if add is None or add.op_type != "Add" or not scalar(other(add, erf.output[0]) or "", 1.0):
            return None
        if only_use(add.output[0]) is not mul or other(mul, add.output[0]) != u:
            return None
        half = only_use(mul.output[0])
        if half is None or half.op_type != "Mul" or not scalar(other(half, mul.output[0]) or "", 0.5):
            return None
        return [div, erf, add, mul, half], half.output[0]

    def is_bias(name: str, n_cols: int, rank: int) -> bool:
        """An fp32 initializer of N elements that broadcasts over the rows without raising the product's rank."""
        b = const(name) if name in inits else None
        return (b is not None and b.dtype == np.float32 and 1 <= b.ndim <= max(rank, 1) and b.size == n_cols
                and b.shape[-1] == n_cols)

    replaced: dict[int, onnx.NodeProto] = {}  # id(MatMul or Gemm) → its linear node
    for n in nodes:
        if n.domain not in ("", "ai.onnx") or len(n.input) < 2 or n.input[0] in inits:
            continue
        w = inits.get(n.input[1])
        if w is None or len(w.dims) != 2 or w.data_type != onnx.TensorProto.FLOAT or 0 in w.dims:
            continue
        if w.data_location == onnx.TensorProto.EXTERNAL:
            continue  # weights on disk: leave them to onnxruntime
        if n.op_type == "MatMul" and len(n.input) == 2:
            trans_w, bias = 0, ""
        elif n.op_type == "Gemm":
            a = node_attrs(n)
            trans_w, bias = int(a.get("transB", 0)), (n.input[2] if len(n.input) > 2 else "")
            if a.get("transA", 0) or float(a.get("alpha", 1.0)) != 1.0:
                continue
            if bias and (float(a.get("beta", 1.0)) != 1.0 or not is_bias(bias, w.dims[0 if trans_w else 1], 2)):
                continue
        else:
            continue
        n_cols = w.dims[0 if trans_w else 1]
        lead = dims.get(n.input[0])
        if lead and all(isinstance(d, int) and d > 0 for d in lead[:-1]) and np.prod(lead[:-1]) < MIN_ROWS:
            continue  # too few rows: fp64 weights double a memory-bound GEMM's traffic
        chain: list[onnx.NodeProto] = []
        out, gelu, residual = n.output[0], False, ""
        # the product's rank: X's where known (the bias may not raise it), else 1 (only a 1-D bias is safe)
        rank = len(lead) if lead and n.op_type == "MatMul" else 2 if n.op_type == "Gemm" else 1
        if not bias:
            add = only_use(out)
            b_name = other(add, out) if add is not None and add.op_type == "Add" else None
            if b_name and is_bias(b_name, n_cols, rank):
                chain.append(add)
                out, bias = add.output[0], b_name
        if bias:
            g = gelu_after(out)
            if g is not None:
                chain += g[0]
                out, gelu = g[1], True
            radd = only_use(out)
            r_name = other(radd, out) if radd is not None and radd.op_type == "Add" else None
            if r_name and r_name not in inits and r_name not in consts:
                # Y, R and the linear's own value all of one known shape: the Add broadcasts nothing
                dy, dr, dv = dims.get(radd.output[0]), dims.get(r_name), dims.get(out)
                if dy is not None and dy == dr == dv and all(d is not None and d != "" for d in dy):
                    chain.append(radd)
                    out, residual = radd.output[0], r_name
        node = helper.make_node(LINEAR_OP, [n.input[0], n.input[1], bias, residual], [out],
                                name=f"{out}/linear", domain=DOMAIN,  # output names are unique; node names need not be
                                gelu=int(gelu), residual=int(bool(residual)), trans_w=trans_w)
        replaced[id(n)] = node
        dropped.update(id(x) for x in chain)
    planned = [replaced.get(id(n), n) for n in nodes if id(n) not in dropped]
    # a linear output read only as the next linear step's X passes between them in fp64 (no widen pass)
    made = {node.output[0]: node for node in replaced.values()}
    for node in replaced.values():
        x = node.input[0]
        prev = made.get(x)
        users = consumers.get(x, [])
        if (prev is not None and x not in outputs and len(users) == 1 and replaced.get(id(users[0])) is node
                and list(node.input).count(x) == 1):
            prev.attribute.append(helper.make_attribute("out64", 1))
            node.attribute.append(helper.make_attribute("in64", 1))
    return planned
