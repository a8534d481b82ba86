"""Fuzzing: hypothesis-generated random graphs, every optimized graph verified against the original in
onnxruntime (and in our runtime) by ``fuser.optimize`` itself.

Graphs are chains of blocks over an [N, C, H, W] tensor: Conv (kernel, stride, padding, dilation,
groups, bias), ConvTranspose (groups), BatchNormalization (random statistics), per-channel Mul/Add,
activations (every fusable one, SiLU as the diamond), residual Adds, GroupNorm as PyTorch exports it
(+SiLU), scaled-dot-product attention (scale as Mul or Div, optional additive mask), a Gemm head with a
BatchNorm1d,
shared weights between Convs, and extra consumers that must block a fusion (a graph output in the
middle of a chain, a second reader). CI runs ``FUZZ_EXAMPLES`` (default 500) derandomized examples;
a larger run: ``FUZZ_EXAMPLES=5000 FUZZ_RANDOM=1 pytest tests/test_fuzz.py``.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import fuser

ACTS = ["Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "SiLU", None]


class G:
    def __init__(self, draw, seed: int) -> None:
        self.draw = draw
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.outputs: list[str] = []
        self.n = 0
        self.weights: dict[tuple, str] = {}

    def name(self, p: str) -> str:
        self.n += 1
        return f"{p}{self.n}"

    def const(self, arr: np.ndarray, p: str = "c") -> str:
        nm = self.name(p)
        self.inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), nm))
        return nm

    def const_i64(self, values) -> str:
        nm = self.name("shape")
        self.inits.append(numpy_helper.from_array(np.asarray(values, np.int64), nm))
        return nm

    def node(self, op: str, ins: list[str], **attrs) -> str:
        out = self.name(op.lower() + "_")
        self.nodes.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return out


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def graphs(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    g = G(draw, seed)
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 6))
    h, w = draw(st.integers(3, 8)), draw(st.integers(3, 8))
    x, shape = "x", [n, c, h, w]
    history = [(x, list(shape))]
    plan: list[str] = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["cba", "cba", "cba", "conv", "convT", "bn", "affine", "act", "residual",
                                     "groupnorm", "attention"]))
        if kind == "cba":  # the bread and butter of CNNs: Conv [+BN] [+residual] [+act]
            plan += ["conv"] + (["bn"] if draw(st.booleans()) else []) + (
                ["residual"] if draw(st.integers(0, 3)) == 0 else []) + (["act"] if draw(st.integers(0, 4)) else [])
        else:
            plan.append(kind)
    for kind in plan:
        cin = shape[1]
        if kind in ("conv", "convT"):
            cout = draw(st.integers(1, 8))
            grp = draw(st.sampled_from([d for d in _divisors(cin) if cout % d == 0]))
            k = draw(st.sampled_from([1, 2, 3]))
            s = draw(st.sampled_from([1, 2]))
            if kind == "conv":
                d = draw(st.sampled_from([1, 2])) if k > 1 else 1
                p = draw(st.integers(0, (k - 1) * d))
                oh = (shape[2] + 2 * p - d * (k - 1) - 1) // s + 1
                ow = (shape[3] + 2 * p - d * (k - 1) - 1) // s + 1
                if oh < 1 or ow < 1:
                    continue
                key = (cout, cin // grp, k)
                share = key in g.weights and draw(st.booleans())
                wname = g.weights[key] if share else g.const(g.rng.standard_normal(key[:2] + (k, k)) * 0.4, "w")
                g.weights[key] = wname
                ins = [x, wname] + ([g.const(g.rng.standard_normal(cout) * 0.1, "b")] if draw(st.booleans()) else [])
                x = g.node("Conv", ins, kernel_shape=[k, k], strides=[s, s], pads=[p] * 4, dilations=[d, d],
                           group=grp)
                shape = [shape[0], cout, oh, ow]
            else:
                wname = g.const(g.rng.standard_normal((cin, cout // grp, k, k)) * 0.4, "wt")
                ins = [x, wname] + ([g.const(g.rng.standard_normal(cout) * 0.1, "b")] if draw(st.booleans()) else [])
                x = g.node("ConvTranspose", ins, kernel_shape=[k, k], strides=[s, s], group=grp)
                shape = [shape[0], cout, (shape[2] - 1) * s + k, (shape[3] - 1) * s + k]
        elif kind == "bn":
            x = g.node("BatchNormalization", [x, g.const(1 + 0.3 * g.rng.standard_normal(cin)),
                                              g.const(0.3 * g.rng.standard_normal(cin)),
                                              g.const(0.3 * g.rng.standard_normal(cin)),
                                              g.const(0.5 + g.rng.random(cin))],
                       epsilon=draw(st.sampled_from([1e-5, 1e-3, 0.1])))
        elif kind == "affine":
            op = draw(st.sampled_from(["Mul", "Add"]))
            cshape = draw(st.sampled_from([(cin, 1, 1), (1, cin, 1, 1), (1,), (shape[3],)]))
            x = g.node(op, [x, g.const(1 + 0.3 * g.rng.standard_normal(cshape))])
        elif kind == "act":
            act = draw(st.sampled_from(ACTS[:-1]))
            if act == "SiLU":
                sg = g.node("Sigmoid", [x])
                x = g.node("Mul", [x, sg])
            elif act == "Clip":
                x = g.node("Clip", [x, g.const(np.array(draw(st.sampled_from([0.0, -1.0])))),
                                    g.const(np.array(6.0))])
            elif act == "LeakyRelu":
                x = g.node("LeakyRelu", [x], alpha=draw(st.sampled_from([0.01, 0.1, 0.2])))
            else:
                x = g.node(act, [x])
        elif kind == "groupnorm":  # PyTorch's export: Reshape → InstanceNormalization → Reshape → Mul → Add [→ act]
            groups = draw(st.sampled_from(_divisors(cin)))
            r = g.node("Reshape", [x, g.const_i64([0, groups, -1])])
            inn = g.node("InstanceNormalization", [r, g.const(np.ones(groups)), g.const(np.zeros(groups))],
                         epsilon=draw(st.sampled_from([1e-5, 1e-3])))
            back = g.node("Reshape", [inn, g.const_i64(shape)])
            x = g.node("Add", [g.node("Mul", [back, g.const(1 + 0.3 * g.rng.standard_normal((cin, 1, 1)))]),
                               g.const(0.3 * g.rng.standard_normal((cin, 1, 1)))])
            if draw(st.booleans()):
                x = g.node("Mul", [x, g.node("Sigmoid", [x])])
        elif kind == "attention":  # scaled-dot-product attention over [B=N, heads=C, S=H, D=W], shape-preserving
            q = x
            k = g.node("Mul", [x, g.const(1 + 0.3 * g.rng.standard_normal((cin, 1, 1)))])
            v = g.node("Add", [x, g.const(0.3 * g.rng.standard_normal((cin, 1, 1)))])
            scores = g.node("MatMul", [q, g.node("Transpose", [k], perm=[0, 1, 3, 2])])
            scores = g.node(draw(st.sampled_from(["Mul", "Div"])), [scores, g.const(np.array(shape[3] ** -0.5))])
            if draw(st.booleans()):  # an additive mask over the keys
                mask = np.where(g.rng.random((1, 1, 1, shape[2])) < 0.3, -1e4, 0.0)
                mask[..., 0] = 0.0  # keep one key visible
                scores = g.node("Add", [scores, g.const(mask)])
            x = g.node("MatMul", [g.node("Softmax", [scores], axis=-1), v])
        else:  # residual: add an earlier tensor of the same shape (or x itself)
            same = [t for t, s_ in history if s_ == shape]
            r = draw(st.sampled_from(same))
            x = g.node(draw(st.sampled_from(["Add", "Sum"])), [x, r] if draw(st.booleans()) else [r, x])
        history.append((x, list(shape)))
        if draw(st.integers(0, 9)) == 0:  # an extra consumer that must block a fusion
            g.outputs.append(x) if draw(st.booleans()) else g.outputs.append(g.node("Neg", [x]))
    if draw(st.booleans()):  # a Gemm head with BatchNorm1d, as classifier heads have
        feat = shape[1]
        pooled = g.node("Flatten", [g.node("GlobalAveragePool", [x])])
        f = draw(st.integers(1, 6))
        gem = g.node("Gemm", [pooled, g.const(g.rng.standard_normal((f, feat)) * 0.3),
                              g.const(g.rng.standard_normal(f) * 0.1)], transB=1)
        x = g.node("BatchNormalization", [gem, g.const(1 + 0.3 * g.rng.standard_normal(f)),
                                          g.const(0.3 * g.rng.standard_normal(f)), g.const(g.rng.standard_normal(f)),
                                          g.const(0.5 + g.rng.random(f))])
    outs = list(dict.fromkeys([*g.outputs, x]))
    graph = helper.make_graph(g.nodes, "fuzz", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, c, h, w])],
                              [onnx.ValueInfoProto(name=o, type=helper.make_tensor_type_proto(TensorProto.FLOAT, None))
                               for o in outs], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model = onnx.shape_inference.infer_shapes(model)
    vi = {v.name: v for v in [*model.graph.value_info, *model.graph.output]}
    vi = {k: onnx.ValueInfoProto().__class__.FromString(v.SerializeToString()) for k, v in vi.items()}
    del model.graph.output[:]  # declare the outputs with their inferred shapes (the checker wants one)
    model.graph.output.extend(vi[o] for o in outs)
    # a graph output must declare a shape; where onnx's inference gives none the graph is not a case
    assume(all(o.type.tensor_type.HasField("shape") for o in model.graph.output))
    return model


EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "500"))


@settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("FUZZ_RANDOM"),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], database=None)
@given(graphs())
def test_random_graphs_verify(model: onnx.ModelProto) -> None:
    before = model.SerializeToString()
    res = fuser.optimize(model, None)
    assert res.verification.passed, res.verification.first_failure()
    for f in res.fusions:
        event(f"rewrite: {f.pattern}")
    event(f"rewrites per graph: {min(len(res.fusions), 3)}{'+' if len(res.fusions) >= 3 else ''}")
    assert model.SerializeToString() == before  # the input model is never modified
    again = fuser.optimize(res.model, None, verify_result=False)  # idempotent
    assert [n.op_type for n in again.model.graph.node] == [n.op_type for n in res.model.graph.node]
