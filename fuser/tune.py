"""Conv tactics: which kernel runs each fused convolution (the node's ``tactic`` attribute).

Every ``FusedConv*`` node of a ``--target hip`` model names its tactic (see
:mod:`fuser.kernels.conv`: ``igemm[_BMxBN]``, ``mma_tf32[_..]``, ``mma_f16[_..]``, ``depthwise``,
``winograd``, ``library``):

- :func:`assign_tactics` — the documented heuristic (:func:`fuser.kernels.conv.heuristic`) from the
  node's shapes (value_info; a symbolic batch counts as 1) and weight dtype; convolutions no kernel of
  ours runs (3-D, grouped shapes past 32-bit indexing, unknown input rank) get ``library``: they stay in
  onnxruntime islands (cuDNN/MIOpen). No device needed.
- :func:`tune_tactics` — ``onnx-fuse --tune`` on a GPU: per node, time every candidate
  (:func:`fuser.kernels.conv.candidate_tactics`) at the node's shapes and keep the fastest. Candidates
  are timed the way the runtime runs them. On NVIDIA the runtime replays the whole model as one CUDA
  graph, where a step costs its GPU time and no host time, so each candidate — our kernel on one stream,
  or ``library`` as a one-node onnxruntime session on the CUDA EP sharing that stream — is captured
  ``graph_calls`` times into a CUDA graph and timed with events around replays (GPU ms per call). Where a
  capture fails, the wall clock per call over back-to-back calls is used instead (host launch and the ~11 µs
  per-island cost included), and the node's note says so. Where onnxruntime has no GPU provider,
  ``library`` is timed as cuDNN through PyTorch when PyTorch is present (said so in the timings), else
  not timed (a kernel of ours then wins). TF32 tactics are candidates only with ``allow_tf32``.

Attention: :func:`assign_attention_tactics` gives fused attention nodes on fp32 tensors the ``flash_tf32``
tactic (TF32 tensor cores) when the model is fused with ``allow_tf32``; otherwise their ``tactic`` stays ``auto``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import InputError
from .fused import DOMAIN, node_attrs, parse_op_type

_CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


@dataclass
class ConvNodeInfo:
    node: onnx.NodeProto
    x_shape: list[int] | None
    w_shape: list[int]
    dtype: np.dtype
    attrs: dict
    residual: bool
    residual_after: bool = False  # FusedConv<Act>Add: R is added after the activation
    tactic: str = ""
    timings_ms: dict[str, float] = field(default_factory=dict)
    note: str = ""


def _static_shape(vi: onnx.ValueInfoProto | None, batch: int = 1) -> list[int] | None:
    if vi is None or not vi.type.tensor_type.HasField("shape"):
        return None
    dims = []
    for i, d in enumerate(vi.type.tensor_type.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        elif i == 0:
            dims.append(batch)
        else:
            return None
    return dims


def conv_nodes(model: onnx.ModelProto, batch: int = 1) -> list[ConvNodeInfo]:
    """The fused conv nodes with what the tactic choice needs."""
    g = model.graph
    vis = {v.name: v for v in list(g.value_info) + list(g.input) + list(g.output)}
    inits = {t.name: t for t in g.initializer}
    out = []
    for n in g.node:
        if n.domain != DOMAIN:
            continue
        ft = parse_op_type(n.op_type)
        if ft is None or ft.base != "Conv" or len(n.input) < 2 or n.input[1] not in inits:
            continue
        w = inits[n.input[1]]
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(w.data_type))
        out.append(ConvNodeInfo(n, _static_shape(vis.get(n.input[0]), batch), list(w.dims), dtype,
                                node_attrs(n), ft.residual, ft.residual_after))
    return out


def _set_tactic(node: onnx.NodeProto, tactic: str) -> None:
    for a in node.attribute:
        if a.name == "tactic":
            a.s = tactic.encode()
            return
    node.attribute.append(helper.make_attribute("tactic", tactic))


def heuristic_tactic(info: ConvNodeInfo, allow_tf32: bool = False, backend_name: str = "cuda", arch: str = "") -> str:
    from .kernels import conv

    if len(info.w_shape) not in (3, 4):
        return conv.LIBRARY
    x_shape = info.x_shape
    if x_shape is None:   # unknown spatial size: any static stand-in decides only the algorithm
        x_shape = [1, info.w_shape[1] * int(info.attrs.get("group", 1))] + [32] * (len(info.w_shape) - 2)
    try:
        g = conv.geometry(x_shape, info.w_shape, **{k: info.attrs[k] for k in _CONV_ATTRS if k in info.attrs})
    except conv.Unsupported:
        return conv.LIBRARY
    return conv.heuristic(g, info.dtype, allow_tf32, backend_name, arch)


def assign_tactics(model: onnx.ModelProto, allow_tf32: bool = False, backend_name: str = "cuda",
                   arch: str = "") -> dict[str, str]:
    """Give every fused conv node its heuristic tactic (in place); returns {node name: tactic}. ``arch``: the GPU
    the model is fused on (``sm_90`` lets the heuristic pick the Hopper-only ``wgmma_tf32``); empty: none known."""
    chosen = {}
    for info in conv_nodes(model):
        t = heuristic_tactic(info, allow_tf32, backend_name, arch)
        _set_tactic(info.node, t)
        chosen[info.node.name] = t
    return chosen


# ---- attention ------------------------------------------------------------------------------------------
ATTENTION_TF32 = "flash_tf32"  # kernels/attention_tf32.py: fp32 attention on TF32 tensor cores


def _attention_is_fp32(node: onnx.NodeProto, elem_types: dict[str, int]) -> bool:
    """Whether a fused attention node computes on fp32 tensors: Q's (else K's, V's) element type from the graph;
    where the graph does not say, its softmax precision (FLOAT where the model computes in fp32, or upcast an
    fp16 softmax: the launch rule falls back to the default kernel for fp16/bf16 tensors either way)."""
    for name in node.input[:3]:
        if name in elem_types:
            return elem_types[name] == onnx.TensorProto.FLOAT
    return int(node_attrs(node).get("softmax_precision", onnx.TensorProto.FLOAT)) == onnx.TensorProto.FLOAT


def assign_attention_tactics(model: onnx.ModelProto, allow_tf32: bool = False) -> dict[str, str]:
    """With ``allow_tf32``, every fused attention node on fp32 tensors gets tactic ``flash_tf32`` (in place; where
    the node's shapes do not suit it the launch rule falls back to the default). Without it nothing changes (the
    launch rule picks, fp32 stays on CUDA cores). Returns {node name: tactic} of the nodes it set."""
    if not allow_tf32:
        return {}
    g = model.graph
    elem_types = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input) + list(g.output)
                  if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type}
    elem_types.update({t.name: t.data_type for t in g.initializer})
    chosen = {}
    for n in g.node:
        ft = parse_op_type(n.op_type) if n.domain == DOMAIN else None
        if ft is None or ft.base != "Attention" or not _attention_is_fp32(n, elem_types):
            continue
        _set_tactic(n, ATTENTION_TF32)
        chosen[n.name] = ATTENTION_TF32
    return chosen


# ---- tuning on a device ---------------------------------------------------------------------------
TIMING = {"min_calls": 20, "min_s": 0.02, "warmup": 3, "rounds": 5, "graph_calls": 10}   # tests shrink these


def _time_graph(call, stream: int) -> float | None:
    """GPU ms per call: ``graph_calls`` calls captured from ``stream`` into one CUDA graph, replayed between
    two events, the median of the rounds. None when the calls cannot be captured (the caller falls back)."""
    from cuda.bindings import driver as d

    n = TIMING["graph_calls"]
    graph = exe = None
    events = []
    try:
        for _ in range(TIMING["warmup"]):
            call()
        if int(d.cuStreamSynchronize(stream)[0]) != 0:
            return None
        if int(d.cuStreamBeginCapture(stream, d.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_RELAXED)[0]) != 0:
            return None
        try:
            for _ in range(n):
                call()
        finally:
            err, graph = d.cuStreamEndCapture(stream)
        if int(err) != 0:
            graph = None
            return None
        err, exe = d.cuGraphInstantiate(graph, 0)
        if int(err) != 0:
            exe = None
            return None
        events = [d.cuEventCreate(0)[1] for _ in range(2)]
        d.cuGraphLaunch(exe, stream)
        times = []
        for _ in range(TIMING["rounds"]):
            d.cuEventRecord(events[0], stream)
            d.cuGraphLaunch(exe, stream)
            d.cuEventRecord(events[1], stream)
            if int(d.cuEventSynchronize(events[1])[0]) != 0:
                return None
            err, ms = d.cuEventElapsedTime(events[0], events[1])
            if int(err) != 0:
                return None
            times.append(ms / n)
        return float(np.median(times))
    except Exception:  # noqa: BLE001 - a capture the driver or onnxruntime refuses: time it the other way
        return None
    finally:
        d.cuStreamSynchronize(stream)
        for e in events:
            d.cuEventDestroy(e)
        if exe is not None:
            d.cuGraphExecDestroy(exe)
        if graph is not None:
            d.cuGraphDestroy(graph)


def _time_calls(call, sync) -> float:
    """ms per call: back-to-back calls then one synchronisation, repeated; the median of the rounds."""
    min_calls, min_s = TIMING["min_calls"], TIMING["min_s"]
    for _ in range(TIMING["warmup"]):
        call()
    sync()
    rounds = []
    for _ in range(TIMING["rounds"]):
        n, t0 = 0, time.perf_counter()
        while True:
            for _ in range(min_calls):
                call()
            n += min_calls
            sync()
            dt = time.perf_counter() - t0
            if dt >= min_s / TIMING["rounds"]:
                break
        rounds.append(dt * 1e3 / n)
    return float(np.median(rounds))


def _one_node_model(model: onnx.ModelProto, info: ConvNodeInfo, x_shape, out_shape) -> onnx.ModelProto:
    n = info.node
    inits = {t.name: t for t in model.graph.initializer}
    elem = helper.np_dtype_to_tensor_dtype(info.dtype)
    ins = [helper.make_tensor_value_info(n.input[0], elem, x_shape)]
    if info.residual:
        ins.append(helper.make_tensor_value_info(n.input[3], elem, out_shape))
    used = [inits[i] for i in n.input if i in inits]
    graph = helper.make_graph([n], "tune", ins, [helper.make_tensor_value_info(n.output[0], elem, out_shape)], used)
    m = helper.make_model(graph, opset_imports=list(model.opset_import), functions=list(model.functions))
    m.ir_version = min(max(model.ir_version, 8), 10)
    return m


class _Library:
    """Times the ``library`` tactic: onnxruntime CUDA EP (IOBinding), else cuDNN through PyTorch."""

    def __init__(self, backend, stream: int, allow_tf32: bool) -> None:
        self.backend, self.stream, self.allow_tf32 = backend, stream, allow_tf32
        self.how = ""
        try:
            import onnxruntime as ort

            if "CUDAExecutionProvider" in ort.get_available_providers() and backend.name == "cuda":
                self.ort, self.how = ort, "onnxruntime CUDA EP"
        except ImportError:
            pass
        if not self.how:
            try:
                import torch

                if torch.cuda.is_available():
                    self.torch, self.how = torch, "cuDNN via PyTorch (onnxruntime has no GPU provider here)"
            except ImportError:
                pass

    def time(self, model, info: ConvNodeInfo, g, xp: int, rp: int, yp: int, sync) -> float | None:
        if self.how.startswith("onnxruntime"):
            ort = self.ort
            m = _one_node_model(model, info, list(info.x_shape), list(g.output_shape))
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            popts = {"device_id": "0", "use_tf32": "1" if self.allow_tf32 else "0"}
            if self.stream:
                popts["user_compute_stream"] = str(self.stream)
            sess = ort.InferenceSession(m.SerializeToString(), opts, providers=[("CUDAExecutionProvider", popts)])
            io = sess.io_binding()
            io.bind_input(info.node.input[0], "cuda", 0, info.dtype, list(info.x_shape), xp)
            if info.residual:
                io.bind_input(info.node.input[3], "cuda", 0, info.dtype, list(g.output_shape), rp)
            io.bind_output(info.node.output[0], "cuda", 0, info.dtype, list(g.output_shape), yp)
            run_opts = ort.RunOptions()
            run_opts.add_run_config_entry("disable_synchronize_execution_providers", "1")

            def call() -> None:
                sess.run_with_iobinding(io, run_opts)

            ms = _time_graph(call, self.stream) if self.stream else None
            return ms if ms is not None else _time_calls(call, sync)
        if self.how.startswith("cuDNN"):
            torch = self.torch
            import torch.nn.functional as F

            torch.backends.cudnn.allow_tf32 = self.allow_tf32
            dt = torch.float32 if info.dtype == np.float32 else torch.float16
            x = torch.randn(info.x_shape, device="cuda", dtype=dt)
            w = torch.randn(info.w_shape, device="cuda", dtype=dt)
            b = torch.randn(info.w_shape[0], device="cuda", dtype=dt)
            a = info.attrs
            pads = a.get("pads")
            nd = len(info.w_shape) - 2
            if pads and list(pads[:nd]) != list(pads[nd:]):
                return None   # asymmetric pads: torch would pad separately; not comparable
            conv = F.conv2d if nd == 2 else F.conv1d
            kw = {"stride": a.get("strides", 1) or 1, "padding": list(pads[:nd]) if pads else 0,
                  "dilation": a.get("dilations", 1) or 1, "groups": int(a.get("group", 1))}
            if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID", ""):
                return None

            def call():
                y = conv(x, w, b, **kw)
                return torch.nn.functional.relu(y)

            return _time_calls(call, torch.cuda.synchronize)
        return None


def _new_stream(backend) -> int:
    """A stream of our own to capture from (the legacy default stream cannot be captured); 0 off NVIDIA."""
    if backend.name != "cuda":
        return 0
    from cuda.bindings import driver as d

    err, stream = d.cuStreamCreate(0)
    return int(stream) if int(err) == 0 else 0


def tune_tactics(model: onnx.ModelProto, allow_tf32: bool = False, device: str = "auto", batch: int = 1,
                 log=None) -> list[ConvNodeInfo]:
    """Time every candidate tactic of every fused conv node on the GPU; set the winners (in place).

    Nodes whose input shape is not static (batch excepted: ``batch``) keep their heuristic tactic.
    Raises InputError (exit 2) when no GPU is usable."""
    from .kernels import conv
    from .kernels.backend import select_backend

    try:
        backend = select_backend(device)
    except Exception as e:  # BackendUnavailable for an explicit device
        raise InputError(f"--tune needs a GPU: {e}") from None
    if not backend.is_device:
        raise InputError("--tune needs a GPU (cuda or hip backend); none is usable here")
    sync = backend.synchronize
    stream = _new_stream(backend)
    lib = _Library(backend, stream, allow_tf32)
    infos = conv_nodes(model, batch)
    rng = np.random.default_rng(0)
    for info in infos:
        info.tactic = heuristic_tactic(info, allow_tf32, backend.name, backend.arch)
        if info.x_shape is None:
            info.note = "input shape not static: heuristic"
            _set_tactic(info.node, info.tactic)
            continue
        try:
            g = conv.geometry(info.x_shape, info.w_shape, **{k: info.attrs[k] for k in _CONV_ATTRS if k in info.attrs})
        except conv.Unsupported as e:
            info.tactic, info.note = conv.LIBRARY, str(e)
            _set_tactic(info.node, info.tactic)
            continue
        inits = {t.name: t for t in model.graph.initializer}
        w = numpy_helper.to_array(inits[info.node.input[1]])
        b = numpy_helper.to_array(inits[info.node.input[2]]) if len(info.node.input) > 2 and \
            info.node.input[2] in inits else None
        a = info.attrs
        xh = rng.standard_normal(info.x_shape).astype(info.dtype)
        xb = backend.upload(xh)
        yb = backend.upload(np.zeros(g.output_shape, info.dtype))
        rb = backend.upload(rng.standard_normal(g.output_shape).astype(info.dtype)) if info.residual else None
        for cand in conv.candidate_tactics(g, info.dtype, allow_tf32, backend.name, backend.arch):
            try:
                if cand == conv.LIBRARY:
                    ms = lib.time(model, info, g, xb.ptr, rb.ptr if rb else 0, yb.ptr, sync)
                    if ms is None:
                        continue
                else:
                    r = conv.Runner(backend, info.x_shape, info.dtype, w, b, residual=info.residual,
                                    residual_after=info.residual_after,
                                    activation=a.get("activation", ""), alpha=a.get("alpha", 0.01),
                                    beta=a.get("beta", 0.0), clip_min=a.get("clip_min", float("-inf")),
                                    clip_max=a.get("clip_max", float("inf")), tactic=cand, allow_tf32=allow_tf32,
                                    **{k: a[k] for k in _CONV_ATTRS if k in a})
                    if r.tactic != cand:
                        continue
                    ins = [xb.ptr] + ([rb.ptr] if rb else [])

                    def call(r=r, ins=ins, yp=yb.ptr) -> None:
                        r(ins, yp, stream)

                    ms = _time_graph(call, stream) if stream else None
                    if ms is None:
                        info.note += f"{cand}: wall clock (no CUDA graph); " if stream else ""
                        ms = _time_calls(call, sync)
            except Exception as e:  # a candidate that cannot run is simply not a candidate
                info.note += f"{cand}: {type(e).__name__}; "
                continue
            info.timings_ms[cand] = round(ms, 5)
        if info.timings_ms:
            info.tactic = min(info.timings_ms, key=info.timings_ms.get)
        _set_tactic(info.node, info.tactic)
        if log is not None:
            log(f"tune {info.node.name}: {info.tactic} "
                + ", ".join(f"{k} {v:.4f}" for k, v in sorted(info.timings_ms.items(), key=lambda kv: kv[1])))
    if stream:
        from cuda.bindings import driver as d

        d.cuStreamSynchronize(stream)
        d.cuStreamDestroy(stream)
    how = "GPU time per call in a CUDA graph" if stream else "wall clock per call"
    for info in infos:
        info.note = (info.note + f" timed as {how}" + (f"; library as {lib.how}" if lib.how else "")).strip()
    return infos
