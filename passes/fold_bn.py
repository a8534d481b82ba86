"""fold_bn — fold an inference BatchNormalization into the weights of the linear op before it.

Matches::

    X ─► Conv / ConvTranspose (W, B?) ─► y ─► BatchNormalization(γ, β, μ, σ², ε) ─► z
    A ─► Gemm (B, C?, alpha, beta, transB)  ─► y ─► BatchNormalization ─► z          (y is [N, F])
    A ─► MatMul (W) [─► Add (b)] [─► Reshape/Flatten to [-1, F]] ─► y ─► BatchNormalization ─► z

With s = γ / sqrt(σ² + ε) and t = β − μ·s (per output channel, computed in float64), the BN is
y·s + t, so it folds into the weights: each output channel's filter times s, its bias b·s + t.

Guards (no rewrite when any fails):
- y has exactly one consumer (the BN) and is not a graph output;
- W, B and all four BN parameters are constants (initializers), not graph inputs;
- the BN is in inference mode: no training_mode=1 and no extra outputs declared (before opset 14 a BN
  that declares its mean/var outputs is in training mode, used or not); ``spatial=0`` of opset < 9 is
  refused;
- the channel counts agree (Conv: W.shape[0]; ConvTranspose: W.shape[1]·group; Gemm/MatMul: F);
- for MatMul, W is 2-D and the BN input is 2-D with its feature axis last; an Add's constant bias
  broadcasts along that axis only (shape [F], [1, F], … — never [F, 1]).

Rewrite: new weight/bias constants (shared weights are cloned, never mutated in place), cast back to
the weight's dtype; the BN disappears (for a bias-less MatMul it becomes an Add of t).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from fuser.context import PassContext
from fuser.graph import const_value, conv_out_channel_factor, input_at, producer, scaled, single_use_intermediate

NAME = "fold_bn"


def bn_scale_shift(bn: gs.Node) -> tuple[np.ndarray, np.ndarray] | None:
    """(s, t) in float64 for an inference BN with constant parameters, else None."""
    if bn.attrs.get("training_mode", 0) or bn.attrs.get("spatial", 1) != 1:
        return None
    if len([o for o in bn.outputs if o.name]) > 1:  # mean/var outputs declared: training mode (opset < 14)
        return None
    params = [const_value(input_at(bn, i)) for i in range(1, 5)]
    if any(p is None for p in params):
        return None
    gamma, beta, mean, var = (np.asarray(p, dtype=np.float64).reshape(-1) for p in params)
    if not (gamma.size == beta.size == mean.size == var.size):
        return None
    eps = float(bn.attrs.get("epsilon", 1e-5))
    s = gamma / np.sqrt(var + eps)
    return s, beta - mean * s


def _bn_has_extra_outputs(graph: gs.Graph, bn: gs.Node) -> bool:
    return any(o.outputs or o in graph.outputs for o in bn.outputs[1:])


def run(ctx: PassContext) -> int:
    graph = ctx.graph
    count = 0
    for bn in [n for n in graph.nodes if n.op == "BatchNormalization"]:
        if not bn.outputs or _bn_has_extra_outputs(graph, bn):
            continue
        y = bn.inputs[0]
        lin = producer(y)
        if lin is None or not single_use_intermediate(graph, y):
            continue
        st = bn_scale_shift(bn)
        if st is None:
            continue
        if lin.op in ("Conv", "ConvTranspose"):
            ok = _fold_conv(ctx, lin, bn, *st)
        elif lin.op == "Gemm":
            ok = _fold_gemm(ctx, lin, bn, *st)
        else:
            ok = _fold_matmul_chain(ctx, y, bn, *st)
        count += int(ok)
    return count


def _replace_output(ctx: PassContext, node: gs.Node, bn: gs.Node) -> None:
    """``node`` now produces what the BN produced; the BN is retired."""
    z = bn.outputs[0]
    ctx.retire([bn])
    node.outputs[0] = z


def _fold_conv(ctx: PassContext, conv: gs.Node, bn: gs.Node, s: np.ndarray, t: np.ndarray) -> bool:
    w = const_value(input_at(conv, 1))
    b_t = input_at(conv, 2)
    b = const_value(b_t)
    if w is None or (b_t is not None and b is None) or w.ndim < 3:
        return False
    group = int(conv.attrs.get("group", 1))
    if conv.op == "Conv":
        cout = w.shape[0]
        if s.size != cout:
            return False
    else:  # ConvTranspose: W is [Cin, Cout/group, k...]; output channel = g·(Cout/g) + j
        cin, cpg = w.shape[0], w.shape[1]
        cout = cpg * group
        if s.size != cout or cin % group:
            return False
    bias = np.zeros(cout) if b is None else b.astype(np.float64).reshape(-1)
    if bias.size != cout:
        return False
    b2 = bias * s + t
    w2 = scaled(w, conv_out_channel_factor(conv.op, w, group, s))
    conv.inputs[1] = ctx.names.constant(f"{conv.name}.weight_bn", w2)
    new_b = ctx.names.constant(f"{conv.name}.bias_bn", b2.astype(w.dtype))
    if len(conv.inputs) > 2:
        conv.inputs[2] = new_b
    else:
        conv.inputs.append(new_b)
    _replace_output(ctx, conv, bn)
    ctx.record_fold("conv_bn_fold", [conv, bn], conv)
    return True


def _fold_gemm(ctx: PassContext, gemm: gs.Node, bn: gs.Node, s: np.ndarray, t: np.ndarray) -> bool:
    bmat = const_value(input_at(gemm, 1))
    c_t = input_at(gemm, 2)
    c = const_value(c_t)
    if bmat is None or bmat.ndim != 2 or (c_t is not None and c is None):
        return False
    trans_b = int(gemm.attrs.get("transB", 0))
    f = bmat.shape[0] if trans_b else bmat.shape[1]
    if s.size != f:
        return False
    alpha = float(gemm.attrs.get("alpha", 1.0))
    beta = float(gemm.attrs.get("beta", 1.0))
    b2 = scaled(bmat, s.reshape(-1, 1) if trans_b else s.reshape(1, -1))
    if c is None:
        c2 = np.broadcast_to(t, (f,))
    else:
        c64 = beta * c.astype(np.float64)
        if c64.ndim == 2 and c64.shape[-1] not in (1, f):
            return False
        c2 = c64 * s + t  # broadcasts over [F], [1, F] or [M, F]
    gemm.inputs[1] = ctx.names.constant(f"{gemm.name}.B_bn", b2.astype(bmat.dtype))
    new_c = ctx.names.constant(f"{gemm.name}.C_bn", np.asarray(c2).astype(bmat.dtype))
    if len(gemm.inputs) > 2:
        gemm.inputs[2] = new_c
    else:
        gemm.inputs.append(new_c)
    gemm.attrs["beta"] = 1.0
    gemm.attrs["alpha"] = alpha
    _replace_output(ctx, gemm, bn)
    ctx.record_fold("gemm_bn_fold", [gemm, bn], gemm)
    return True


def _fold_matmul_chain(ctx: PassContext, y: gs.Tensor, bn: gs.Node, s: np.ndarray, t: np.ndarray) -> bool:
    """MatMul [→ Add(b)] [→ Reshape/Flatten] → BN over a 2-D [rows, F] input."""
    graph = ctx.graph
    chain: list[gs.Node] = []
    cur = y
    node = producer(cur)
    if node is not None and node.op in ("Reshape", "Flatten"):
        shape_ok = (y.shape is not None and len(y.shape) == 2 and isinstance(y.shape[1], int)
                    and y.shape[1] == s.size)
        if not shape_ok:
            return False
        chain.append(node)
        cur = node.inputs[0]
        if not single_use_intermediate(graph, cur):
            return False
        node = producer(cur)
    elif y.shape is None or len(y.shape) != 2:
        return False
    add = None
    if node is not None and node.op == "Add":
        add = node
        cur = next((i for i in add.inputs if const_value(i) is None), None)
        bias = next((const_value(i) for i in add.inputs if const_value(i) is not None), None)
        if cur is None or bias is None or bias.size not in (1, s.size) or not single_use_intermediate(graph, cur):
            return False
        if any(d != 1 for d in bias.shape[:-1]):  # [F, 1] would broadcast along the rows, not the features
            return False
        node = producer(cur)
    if node is None or node.op != "MatMul":
        return False
    w = const_value(input_at(node, 1))
    if w is None or w.ndim != 2 or w.shape[1] != s.size:
        return False
    node.inputs[1] = ctx.names.constant(f"{node.name}.weight_bn", scaled(w, s.reshape(1, -1)))
    if add is not None:
        i = next(k for k, inp in enumerate(add.inputs) if const_value(inp) is not None)
        b2 = np.broadcast_to(add.inputs[i].values.astype(np.float64).reshape(-1), s.shape) * s + t
        add.inputs[i] = ctx.names.constant(f"{add.name}.bias_bn", b2.astype(w.dtype))
        _replace_output(ctx, chain[0] if chain else add, bn)
        ctx.record_fold("matmul_bn_fold", [node, add, *chain, bn], node)
    else:
        # no bias to absorb t: the BN becomes one Add of t (same node count, no normalisation math)
        z = bn.outputs[0]
        x = bn.inputs[0]
        ctx.retire([bn])
        new = gs.Node("Add", name=ctx.names.fresh(f"{bn.name}.shift"),
                      inputs=[x, ctx.names.constant(f"{bn.name}.shift", t.astype(w.dtype))], outputs=[z])
        graph.nodes.append(new)
        ctx.record_fold("matmul_bn_fold", [node, *chain, bn], node)
    return True
