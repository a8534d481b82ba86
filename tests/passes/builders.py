"""Shared builders and checks for the pass unit tests.

Graphs are built by hand with ``onnx.helper``; every weight comes from a seeded numpy Generator and is
never zero. ``ir_version`` is always set explicitly (onnx 1.23 would otherwise stamp an IR newer than the
installed onnxruntime loads).
"""

from __future__ import annotations

import importlib
import json
from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper

from fuser.fused import node_attrs
from fuser.pipeline import PipelineResult, run_pipeline

DOMAIN = "fuser"
TOL = {np.dtype(np.float16): 1e-2, np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
KERNEL_MODULES = {"conv": "fuser.kernels.conv", "batchnorm": "fuser.kernels.batchnorm",
                  "leaky_relu": "fuser.kernels.leaky_relu", "group_norm": "fuser.kernels.group_norm"}


def ttype(dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


class GraphBuilder:
    """A tiny graph under construction: inputs, outputs, initializers and nodes, one seeded Generator."""

    def __init__(self, seed: int = 0, dtype=np.float32) -> None:
        self.rng = np.random.default_rng(seed)
        self.dtype = np.dtype(dtype)
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.values: dict[str, np.ndarray] = {}

    # -- declarations -----------------------------------------------------------------------------
    def input(self, name: str, shape, dtype=None) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, ttype(dtype or self.dtype), shape))
        return name

    def output(self, name: str, shape=None, dtype=None) -> str:
        self.outputs.append(helper.make_tensor_value_info(name, ttype(dtype or self.dtype), shape))
        return name

    def const(self, name: str, value) -> str:
        arr = np.asarray(value)
        self.values[name] = arr
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def rand(self, shape, lo: float | None = None, hi: float | None = None, dtype=None) -> np.ndarray:
        """Seeded random values, never zero (|v| >= 0.05)."""
        if lo is not None:
            v = self.rng.uniform(lo, hi, size=shape)
        else:
            v = self.rng.standard_normal(size=shape)
            v = np.where(np.abs(v) < 0.05, np.copysign(0.05, v), v)
        return v.astype(dtype or self.dtype)

    def weight(self, name: str, shape, lo: float | None = None, hi: float | None = None, dtype=None) -> str:
        return self.const(name, self.rand(shape, lo, hi, dtype))

    def node(self, op: str, inputs: list[str], outputs: int | list[str] = 1, name: str | None = None,
             domain: str = "", doc_string: str = "", **attrs) -> str | list[str]:
        name = f"{op.lower()}{len(self.nodes)}" if name is None else name
        outs = outputs if isinstance(outputs, list) else [f"{name or op + str(len(self.nodes))}_y{i}"
                                                          for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, domain=domain or None,
                                           doc_string=doc_string or None, **attrs))
        return outs[0] if len(outs) == 1 else outs

    # -- common layers ----------------------------------------------------------------------------
    def conv(self, x: str, cin: int, cout: int, kernel=(3, 3), name: str = "conv", group: int = 1,
             bias: bool = True, transpose: bool = False, weight: str | None = None, **attrs) -> str:
        """Conv (W [Cout, Cin/g, k..]) or ConvTranspose (W [Cin, Cout/g, k..]); pads keep the spatial size
        of a stride-1 Conv unless given."""
        kernel = tuple(kernel)
        prefix = name or f"conv{len(self.nodes)}"
        if weight is None:
            wshape = (cin, cout // group, *kernel) if transpose else (cout, cin // group, *kernel)
            weight = self.weight(f"{prefix}.W", wshape)
        ins = [x, weight]
        if bias:
            ins.append(self.weight(f"{prefix}.B", (cout,)))
        if not transpose and "pads" not in attrs and "auto_pad" not in attrs:
            attrs["pads"] = [k // 2 for k in kernel] * 2
        if group != 1:
            attrs["group"] = group
        return self.node("ConvTranspose" if transpose else "Conv", ins, name=name, kernel_shape=list(kernel),
                         **attrs)

    def bn_params(self, c: int, name: str = "bn", shape=None) -> list[str]:
        shape = (c,) if shape is None else shape
        return [self.weight(f"{name}.gamma", shape, 0.5, 1.5), self.weight(f"{name}.beta", shape),
                self.weight(f"{name}.mean", shape), self.weight(f"{name}.var", shape, 0.5, 2.0)]

    def bn(self, x: str, c: int, name: str = "bn", outputs: int | list[str] = 1, params: list[str] | None = None,
           **attrs) -> str | list[str]:
        params = self.bn_params(c, name) if params is None else params
        return self.node("BatchNormalization", [x, *params], outputs, name=name, **attrs)

    def model(self, opset: int = 13, ir: int = 8, extra_opsets: dict[str, int] | None = None,
              graph_name: str = "test", **kw) -> onnx.ModelProto:
        inputs = list(self.inputs)
        if ir < 4:  # IR 3 lists every initializer among the graph inputs
            listed = {i.name for i in inputs}
            inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in self.inits
                       if t.name not in listed]
        graph = helper.make_graph(self.nodes, graph_name, inputs, self.outputs, self.inits)
        ops = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
        return helper.make_model(graph, ir_version=ir, opset_imports=ops, **kw)


# -- running and inspecting -------------------------------------------------------------------------

def fuse(model: onnx.ModelProto, target: str = "hip", check: bool = True, **kw) -> PipelineResult:
    """run_pipeline; the input model must come back untouched, and where the onnx checker accepts the
    original it must accept the result too."""
    before = model.SerializeToString(deterministic=True)
    res = run_pipeline(model, target=target, **kw)
    assert model.SerializeToString(deterministic=True) == before, "the pipeline modified its input model"
    if check and _valid(model):
        onnx.checker.check_model(res.model)
    return res


def _valid(model: onnx.ModelProto) -> bool:
    try:
        onnx.checker.check_model(model)
        return True
    except onnx.checker.ValidationError:
        return False


def ops(model: onnx.ModelProto) -> dict[str, int]:
    return dict(Counter((f"{n.domain}::" if n.domain not in ("", "ai.onnx") else "") + n.op_type
                        for n in model.graph.node))


def fused_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.domain == DOMAIN]


def the_fused(model: onnx.ModelProto) -> onnx.NodeProto:
    nodes = fused_nodes(model)
    assert len(nodes) == 1, [n.op_type for n in nodes]
    return nodes[0]


def node(model: onnx.ModelProto, op_type: str) -> onnx.NodeProto:
    found = [n for n in model.graph.node if n.op_type == op_type]
    assert len(found) == 1, f"{len(found)} {op_type} nodes"
    return found[0]


attrs = node_attrs


def props(n: onnx.NodeProto) -> dict[str, str]:
    return {p.key: p.value for p in n.metadata_props}


def init(model: onnx.ModelProto, name: str) -> np.ndarray:
    found = [t for t in model.graph.initializer if t.name == name]
    assert len(found) == 1, f"initializer {name!r}: {len(found)} found"
    return numpy_helper.to_array(found[0])


def patterns(res: PipelineResult) -> list[str]:
    return [f.pattern for f in res.fusions]


def assert_provenance(model: onnx.ModelProto, n: onnx.NodeProto, pattern: str, sources: list[str]) -> None:
    """Name derived from the sources, one-line doc string, fuser.pattern / fuser.source_nodes metadata,
    and a model-local function of the same op type."""
    assert n.domain == DOMAIN
    assert n.name == "+".join(sources)
    p = props(n)
    assert p["fuser.pattern"] == pattern
    assert json.loads(p["fuser.source_nodes"]) == sources
    assert "\n" not in n.doc_string and pattern in n.doc_string and n.op_type in n.doc_string
    for s in sources:
        assert s in n.doc_string
    assert [f for f in model.functions if f.domain == DOMAIN and f.name == n.op_type], "no function body"
    assert {(o.domain, o.version) for o in model.opset_import if o.domain == DOMAIN} == {(DOMAIN, 1)}


def bn_fold_ref(gamma, beta, mean, var, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """(s, t) in float64, independently of the code under test."""
    g, b, m, v = (np.asarray(a, dtype=np.float64) for a in (gamma, beta, mean, var))
    s = g / np.sqrt(v + eps)
    return s, b - m * s


# -- numerics ---------------------------------------------------------------------------------------

def feeds_for(model: onnx.ModelProto, seed: int = 1234, shapes: dict[str, list[int]] | None = None,
              symbolic: int = 2) -> dict[str, np.ndarray]:
    """Fresh random inputs for every real graph input (symbolic dims become ``symbolic``)."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for v in model.graph.input:
        if v.name in inits:
            continue
        t = v.type.tensor_type
        if shapes and v.name in shapes:
            shape = shapes[v.name]
        else:
            shape = [d.dim_value if d.HasField("dim_value") else symbolic for d in t.shape.dim]
        feeds[v.name] = rng.standard_normal(shape).astype(helper.tensor_dtype_to_np_dtype(t.elem_type))
    return feeds


def ort_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def rel_l2(ref: np.ndarray, got: np.ndarray) -> float:
    a = np.asarray(ref, dtype=np.float64)
    b = np.asarray(got, dtype=np.float64)
    fin = np.isfinite(a)
    assert np.array_equal(fin, np.isfinite(b)), "non-finite values differ in position"
    assert np.array_equal(a[~fin], b[~fin], equal_nan=True), "non-finite values differ"
    a, b = a[fin], b[fin]
    na = np.linalg.norm(a)
    return float(np.linalg.norm(a - b) / na) if na > 0 else float(np.linalg.norm(a - b))


def compare(ref: list[np.ndarray], got: list[np.ndarray], tol: float | None = None, what: str = "") -> None:
    assert len(ref) == len(got)
    for i, (r, g) in enumerate(zip(ref, got, strict=True)):
        assert r.shape == g.shape and r.dtype == g.dtype, (what, i, r.shape, g.shape, r.dtype, g.dtype)
        err = rel_l2(r, g)
        limit = TOL[np.dtype(r.dtype)] if tol is None else tol
        assert err <= limit, f"{what} output {i}: rel-L2 {err:.3e} > {limit:.1e}"


def runtime_kernels_missing(model: onnx.ModelProto) -> list[str]:
    """Kernel modules the fused model's nodes need that cannot be imported (yet)."""
    from fuser.fused import parse_op_type

    missing = []
    for n in fused_nodes(model):
        ft = parse_op_type(n.op_type)
        mod = KERNEL_MODULES[ft.kernel] if ft else None
        if mod is None:
            continue
        try:
            importlib.import_module(mod)
        except ImportError:
            missing.append(mod)
    return sorted(set(missing))


def assert_equivalent(original: onnx.ModelProto, new: onnx.ModelProto, tol: float | None = None,
                      seed: int = 1234, shapes: dict[str, list[int]] | None = None, runtime: bool = True) -> None:
    """``new`` computes what ``original`` does: onnxruntime CPU on fresh random inputs (function bodies
    inlined by onnxruntime) and, where it has fused nodes, fuser.runtime.Session (numpy references) —
    the latter only for kernel families whose module imports."""
    feeds = feeds_for(original, seed, shapes)
    ref = ort_outputs(original, feeds)
    compare(ref, ort_outputs(new, feeds), tol, "onnxruntime")
    if runtime and fused_nodes(new) and not runtime_kernels_missing(new):
        from fuser.runtime import Session

        compare(ref, Session(new).run(None, feeds), tol, "fuser.runtime")
