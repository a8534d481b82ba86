"""``fuser.runtime.Session``: runs a fused model, our kernels for ``fuser`` nodes, onnxruntime for the rest.

onnxruntime cannot take Python GPU kernels as custom ops, so the session splits the graph (DESIGN §6):
every ``fuser`` node is a *kernel step* (and, in fp32 GPU sessions, every linear layer the plan takes from the
standard nodes: :mod:`fuser.linear_steps`); maximal islands of standard nodes become onnxruntime
sub-sessions (*island steps*). The schedule is a topological order that stays in the current kind of
step as long as it can, so islands are as large as the dependencies allow.

Backends: ``cpu`` runs the numpy references of :mod:`fuser.kernels` and the islands in onnxruntime's CPU
provider, exchanging numpy arrays. The GPU backends keep the same plan and swap the value store for
device buffers and the islands' I/O for IOBinding on one stream (see :mod:`fuser.kernels`).
"""

from __future__ import annotations

import os
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .fused import DOMAIN, FusedOpType, parse_op_type
from .layout_views import NodeViews, numpy_input, numpy_output, plan_views, value_dims
from .linear_steps import linear_op_type


@dataclass
class NodeArgInfo:
    """Mirrors onnxruntime's NodeArg: name, shape (ints, strings for symbolic dims, None), type."""

    name: str
    shape: list[Any] | None
    type: str


@dataclass
class KernelStep:
    node: onnx.NodeProto  # with layout views: inputs are the views' sources, the output the view's value
    ftype: FusedOpType
    attrs: dict
    views: NodeViews | None = None  # attention: inputs read / output written through strides (layout_views)


@dataclass
class IslandStep:
    nodes: list[onnx.NodeProto]
    inputs: list[str] = field(default_factory=list)  # produced outside the island (or graph inputs)
    outputs: list[str] = field(default_factory=list)  # needed after it (or graph outputs)
    sessions: dict = field(default_factory=dict)  # input dtypes → onnxruntime session


def _subgraph_names(node: onnx.NodeProto) -> set[str]:
    """Outer-scope names that If/Loop/Scan bodies read (they must be island inputs too)."""
    names: set[str] = set()
    for a in node.attribute:
        graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for g in graphs:
            local = {i.name for i in g.input} | {i.name for i in g.initializer}
            for n in g.node:
                local |= set(n.output)
            for n in g.node:
                names |= {i for i in n.input if i and i not in local}
                names |= _subgraph_names(n) - local
    return names


def node_inputs(node: onnx.NodeProto) -> list[str]:
    return [i for i in node.input if i] + sorted(_subgraph_names(node))


def schedule(nodes: list[onnx.NodeProto], is_kernel) -> list[list[onnx.NodeProto]]:
    """Group nodes into steps: a kernel node alone, standard nodes into maximal islands."""
    produced_by = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    deps = [{produced_by[x] for x in node_inputs(n) if x in produced_by} for n in nodes]
    users: dict[int, list[int]] = defaultdict(list)
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    remaining = [len(d) for d in deps]
    ready = {False: deque(), True: deque()}
    for i, n in enumerate(nodes):
        if remaining[i] == 0:
            ready[bool(is_kernel(n))].append(i)
    steps: list[list[onnx.NodeProto]] = []
    current: list[onnx.NodeProto] = []
    while ready[False] or ready[True]:
        if ready[False]:  # extend the open island while any standard node is ready
            i = ready[False].popleft()
            current.append(nodes[i])
        else:
            if current:
                steps.append(current)
                current = []
            i = ready[True].popleft()
            steps.append([nodes[i]])
        for u in users[i]:
            remaining[u] -= 1
            if remaining[u] == 0:
                ready[bool(is_kernel(nodes[u]))].append(u)
    if current:
        steps.append(current)
    return steps


_ATTR_KEYS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


def _attrs(node: onnx.NodeProto) -> dict:
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _step_attrs(node: onnx.NodeProto, ftype: FusedOpType) -> dict:
    """What a kernel step's runner reads: the node's attributes, plus what its op type says beyond them
    (a conv's ``residual_after``: a ``FusedConv<Act>Add`` adds R after the activation)."""
    out = _attrs(node)
    if ftype.base == "Conv":
        out["residual_after"] = ftype.residual_after
    return out


def run_kernel_reference(step: KernelStep, args: list[np.ndarray | None]) -> np.ndarray:
    """The CPU backend: the numpy reference of the node's kernel family."""
    a, ft = step.attrs, step.ftype
    act = {"activation": a.get("activation", ft.activation), "alpha": a.get("alpha", 0.01),
           "beta": a.get("beta", 0.0), "clip_min": a.get("clip_min", float("-inf")),
           "clip_max": a.get("clip_max", float("inf"))}
    if ft.base == "Conv":
        from .kernels import conv

        conv_attrs = {k: a[k] for k in _ATTR_KEYS if k in a}
        residual = args[3] if ft.residual else None
        return conv.reference(args[0], args[1], args[2], residual, **act, residual_after=ft.residual_after,
                              **conv_attrs)
    if ft.base == "BatchNorm":
        from .kernels import batchnorm

        return batchnorm.reference(args[0], args[1].reshape(-1), args[2].reshape(-1), **act)
    if ft.base == "GroupNorm":  # inputs X, gamma[C], beta[C] (eps/group_shape inputs only feed the body)
        from .kernels import group_norm

        return group_norm.reference(args[0], args[1], args[2], int(a["num_groups"]), float(a.get("epsilon", 1e-5)),
                                    act["activation"], float(act["alpha"]), float(act["beta"]))
    if ft.base == "Attention":  # inputs Q, K, V [, per-term tensors (mask: mask, fill)] [, scale]
        from .kernels import attention

        return attention.reference_node(ft.attention_variant(), a, args)
    from .kernels import leaky_relu

    return leaky_relu.reference(args[0], float(a.get("alpha", 0.01)))


class Session:
    """Run a (fused) ONNX model; the API mirrors ``onnxruntime.InferenceSession``."""

    def __init__(self, model: str | os.PathLike | onnx.ModelProto, device: str = "auto", allow_tf32: bool = False,
                 cuda_graph: bool = True, layout_views: bool = True, fp64_linear: bool | None = None) -> None:
        """``allow_tf32``: the onnxruntime islands may use TF32 (CUDA EP ``use_tf32``; our kernels follow their
        tactics). ``cuda_graph``: on NVIDIA, replay the whole plan as one CUDA graph after the first run of
        each input signature (see :mod:`fuser.device_runtime`; ``graph_status`` says whether it is on).
        ``layout_views``: attention kernel steps read Q/K/V and write O through strides, and the head-split
        Reshape/Transpose (and Split) nodes around them do not run (:mod:`fuser.layout_views`).
        ``fp64_linear``: fp32 MatMul(+bias, GELU, residual) chains with constant weights run as our linear steps on
        the FP64 tensor cores (:mod:`fuser.linear_steps`); None (default): where that is faster and exact — the
        cuda backend, no ``allow_tf32``, a GPU whose fp64 tensor cores match its fp32 peak (A100, H100/H200)."""
        self.base_dir: str | None = None  # where external data (of > 2 GiB models) resolves
        if isinstance(model, (str, os.PathLike)):
            from .io import load_model

            path = Path(model)
            if path.stat().st_size > 64 << 20 or _has_external_file(path):
                # keep the weights on disk: islands load by path, kernel steps read their constants
                model = onnx.load(str(path), load_external_data=False)
                self.base_dir = str(path.parent)
            else:
                model = load_model(path)
        self.model = model
        from .kernels.backend import select_backend

        self.backend = select_backend(device)  # hip → cuda → cpu for "auto"; explicit ones must work
        if self.backend.is_device and not _ort_has_device_ep(self.backend.name):
            if device != "auto":
                raise RuntimeError(f"device {device!r}: onnxruntime here has no GPU execution provider: install "
                                   "onnx-fuse[cuda] (onnxruntime-gpu) or [rocm] (onnxruntime-rocm)")
            # a GPU without a GPU onnxruntime cannot run the islands there: the best usable device is the CPU
            self.backend = select_backend("cpu")
        self.device = self.backend.name
        g = model.graph
        self.initializers = {t.name: t for t in g.initializer}
        self._const_cache: dict[str, np.ndarray] = {}
        self.input_names = [i.name for i in g.input if i.name not in self.initializers]
        self.output_names = [o.name for o in g.output]
        self.steps: list[KernelStep | IslandStep] = []
        self.linear_steps = self._wants_fp64_linear(fp64_linear, allow_tf32)
        nodes, self.views = list(g.node), {}
        dims = value_dims(model) if layout_views or self.linear_steps else {}
        if layout_views:
            nodes, self.views = _apply_views(nodes, self.initializers, set(self.output_names), self._is_attention,
                                             dims)
        if self.linear_steps:
            from .linear_steps import plan_linear_steps

            nodes = plan_linear_steps(nodes, self.initializers, set(self.output_names), dims, node_inputs)
        groups = schedule(nodes, self._is_kernel)
        needed_later: list[set[str]] = [set() for _ in groups]
        acc = set(self.output_names)
        for k in range(len(groups) - 1, -1, -1):
            needed_later[k] = set(acc)
            for n in groups[k]:
                acc |= set(node_inputs(n))
        for k, nodes in enumerate(groups):
            if len(nodes) == 1 and self._is_kernel(nodes[0]):
                n = nodes[0]
                ft = linear_op_type(n) or parse_op_type(n.op_type)
                self.steps.append(KernelStep(n, ft, _step_attrs(n, ft), self.views.get(n.name)))
                continue
            produced = {o for n in nodes for o in n.output if o}
            ins: list[str] = []
            for n in nodes:
                for x in node_inputs(n):
                    if x not in produced and x not in ins:
                        ins.append(x)
            outs = [o for n in nodes for o in n.output if o and o in needed_later[k]]
            self.steps.append(IslandStep(nodes, ins, outs))
        self._device = None
        if self.backend.is_device:
            from .device_runtime import DeviceExecutor

            self._device = DeviceExecutor(self, self.backend, allow_tf32, cuda_graph)

    def _wants_fp64_linear(self, asked: bool | None, allow_tf32: bool) -> bool:
        if asked is False or self.backend.name != "cuda" or allow_tf32:
            if asked:
                raise ValueError("fp64_linear needs the cuda backend and no allow_tf32")
            return False
        from .kernels.linear import cublas_available, fp64_tensor_cores

        if not cublas_available():  # no DGEMM here: onnxruntime keeps the layers (an explicit ask is an error)
            if asked:
                raise RuntimeError("fp64_linear: libcublas could not be loaded")
            return False
        return bool(asked) or fp64_tensor_cores(self.backend.arch, getattr(self.backend, "device_name", ""))

    def _is_kernel(self, n: onnx.NodeProto) -> bool:
        """A step of its own: a fused node we run (on a device: only where a device kernel exists), or a linear
        step of the plan (:mod:`fuser.linear_steps`)."""
        if n.domain != DOMAIN:
            return False
        if linear_op_type(n) is not None:
            return True
        ftype = parse_op_type(n.op_type)
        if ftype is None:
            return False
        if not self.backend.is_device:
            return True
        from .device_runtime import runs_on_device

        return runs_on_device(n, ftype, self.initializers)

    def _is_attention(self, n: onnx.NodeProto) -> bool:
        return self._is_kernel(n) and parse_op_type(n.op_type).base == "Attention"

    @property
    def graph_status(self) -> str:
        """"on" (runs replay one CUDA graph), or "off" and why."""
        return self._device.graph_status if self._device is not None else "off: cpu"

    @property
    def kernel_steps(self) -> int:
        return sum(isinstance(s, KernelStep) for s in self.steps)

    # -- onnxruntime-like API -------------------------------------------------------------------
    def get_inputs(self) -> list[NodeArgInfo]:
        return [_info(v) for v in self.model.graph.input if v.name in self.input_names]

    def get_outputs(self) -> list[NodeArgInfo]:
        return [_info(v) for v in self.model.graph.output]

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ValueError(f"missing input {missing[0]!r}")
        if self._device is not None:
            outs = self.run_device({k: self._device.to_device(v) for k, v in feeds.items()})
            self._device.synchronize()
            return [outs[n].numpy() for n in (output_names or self.output_names)]
        values: dict[str, np.ndarray] = dict(feeds)
        for step in self.steps:
            if isinstance(step, KernelStep):
                args = [self._value(values, x) if x else None for x in step.node.input]
                views = step.views
                for i, view in (views.inputs.items() if views else ()):
                    args[i] = numpy_input(view, args[i])
                y = run_kernel_reference(step, args)
                values[step.node.output[0]] = numpy_output(views.output, y) if views and views.output else y
            else:
                self._run_island(step, values)
        return [values[n] for n in (output_names or self.output_names)]

    def run_device(self, feeds: dict) -> dict:
        """Device run on device values (onnxruntime OrtValues); returns the outputs as OrtValues, after
        work was queued on the session's stream (call ``synchronize()`` before reading them)."""
        if self._device is None:
            raise RuntimeError("run_device needs a GPU session (device cuda or hip)")
        return self._device.run(feeds)

    def synchronize(self) -> None:
        if self._device is not None:
            self._device.synchronize()

    # -- internals ------------------------------------------------------------------------------

    def _value(self, values: dict[str, np.ndarray], name: str) -> np.ndarray:
        if name in values:
            return values[name]
        if name not in self._const_cache:
            self._const_cache[name] = numpy_helper.to_array(self.initializers[name], self.base_dir or "")
        return self._const_cache[name]

    def _run_island(self, step: IslandStep, values: dict[str, np.ndarray]) -> None:
        feeds = {x: values[x] for x in step.inputs if x in values}
        key = tuple((x, str(v.dtype)) for x, v in feeds.items())
        sess = step.sessions.get(key)
        if sess is None:
            types = {x: (v.dtype, list(v.shape)) for x, v in feeds.items()}
            sess = step.sessions[key] = self.island_session(step, types, ["CPUExecutionProvider"])
        for name, v in zip(step.outputs, sess.run(step.outputs, feeds), strict=True):
            values[name] = v

    def island_session(self, step: IslandStep, types: dict[str, tuple[np.dtype, list[int]]], providers: list):
        """An onnxruntime session for one island: its nodes, the initializers they read, graph inputs
        typed from the values that will be fed (model-local functions come along, so fused nodes that
        stay in an island run their bodies)."""
        import onnxruntime as ort

        inits = [self.initializers[x] for x in step.inputs if x not in types and x in self.initializers]
        g_in = [helper.make_tensor_value_info(x, helper.np_dtype_to_tensor_dtype(np.dtype(dt)), shape)
                for x, (dt, shape) in types.items()]
        g_out = [onnx.ValueInfoProto(name=o) for o in step.outputs]
        graph = helper.make_graph(step.nodes, "island", g_in, g_out, inits)
        sub = helper.make_model(graph, opset_imports=list(self.model.opset_import),
                                functions=list(self.model.functions))
        sub.ir_version = max(self.model.ir_version, 8)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if self.base_dir is not None and any(t.data_location == onnx.TensorProto.EXTERNAL for t in inits):
            # weights on disk (> 2 GiB model): no onnxruntime rewrites that would embed > 2 GiB initializers
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            # onnxruntime resolves external data relative to the model file: write the island beside it
            import tempfile

            fd, island_path = tempfile.mkstemp(prefix=".island-", suffix=".onnx", dir=self.base_dir)
            os.close(fd)
            try:
                Path(island_path).write_bytes(sub.SerializeToString())
                return ort.InferenceSession(island_path, opts, providers=providers,
                                            disabled_optimizers=ISLAND_DISABLED_OPTIMIZERS)
            finally:
                os.unlink(island_path)
        return ort.InferenceSession(sub.SerializeToString(), opts, providers=providers,
                                    disabled_optimizers=ISLAND_DISABLED_OPTIMIZERS)


# onnxruntime rewrites an island does not get: MatMulAddFusion turns MatMul + bias Add into a Gemm, which on the
# CUDA EP first writes the bias broadcast over the whole output and then reads it back as C (BroadcastBiasKernel:
# 0.39 of 1.83 ms GPU time in BERT-base S128 TF32, bench/profile_e2e.py), and it runs before the fusions that would
# take the bias for free (BiasGelu; SkipLayerNormalization's bias input)
ISLAND_DISABLED_OPTIMIZERS = ["MatMulAddFusion"]


def _apply_views(nodes: list[onnx.NodeProto], inits: dict, outputs: set[str], is_attention,
                 dims: dict) -> tuple[list[onnx.NodeProto], dict[str, NodeViews]]:
    """The plan's nodes with layout views applied: the absorbed layout nodes left out (and the standard nodes that
    only fed them), each viewed attention node replaced by a copy that reads the views' sources and writes the
    output view's value."""
    views, removed = plan_views(nodes, inits, outputs, is_attention, dims)
    out = []
    for n in nodes:
        if n.name in removed:
            continue
        v = views.get(n.name)
        if v is not None:
            c = onnx.NodeProto()
            c.CopyFrom(n)
            for i, view in v.inputs.items():
                c.input[i] = view.source
            if v.output is not None:
                c.output[0] = v.output.value
            n = c
        out.append(n)
    while removed:  # what only computed the absorbed nodes' inputs (a dynamic Reshape target) is dead now
        used = outputs | {x for n in out for x in node_inputs(n)}
        dead = {id(n) for n in out if n.domain in ("", "ai.onnx") and n.output
                and not any(o in used for o in n.output if o)}
        if not dead:
            break
        out = [n for n in out if id(n) not in dead]
    return out, views


def _has_external_file(path: Path) -> bool:
    m = onnx.load(str(path), load_external_data=False)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer)


def _ort_has_device_ep(backend_name: str) -> bool:
    import onnxruntime as ort

    wanted = {"cuda": ("CUDAExecutionProvider",), "hip": ("ROCMExecutionProvider", "MIGraphXExecutionProvider")}
    return any(p in ort.get_available_providers() for p in wanted.get(backend_name, ()))


def _info(v: onnx.ValueInfoProto) -> NodeArgInfo:
    t = v.type.tensor_type
    shape = None
    if t.HasField("shape"):
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
    elem = onnx.TensorProto.DataType.Name(t.elem_type).lower() if t.elem_type else "undefined"
    return NodeArgInfo(v.name, shape, f"tensor({elem})")
