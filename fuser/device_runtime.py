"""GPU execution of a fused model (DESIGN §6): our kernels for ``fuser`` nodes, onnxruntime's CUDA EP
(ROCm EP on AMD) for the islands of standard nodes — all on one stream, values kept on the device.

Every value lives in an onnxruntime ``OrtValue`` on the device. Islands bind them through IOBinding
(``bind_ortvalue_input`` / ``bind_output`` on the device), and our kernel runners read and write the same
buffers through ``data_ptr()``. One stream, created here, is given to every onnxruntime session as its
``user_compute_stream`` and to every kernel launch, so steps are ordered by the stream alone: no host
synchronisation and no host round trip until the caller asks for numpy outputs.

A fused node runs on a bundled kernel when its family has device code for it and its parameter inputs
are constants (a FusedConvAdd's residual is a runtime input); a fused conv runs the kernel its
``tactic`` attribute names (:mod:`fuser.tune`), except tactic ``library`` and 3-D convolutions, which
stay inside an island, where onnxruntime inlines the function body and runs it with cuDNN/MIOpen.

fp32 sessions on GPUs with fast fp64 tensor cores also run the plan's linear steps (:mod:`fuser.linear_steps`):
MatMul/Gemm chains with constant weights, on :mod:`fuser.kernels.linear` (widen, cuBLAS DGEMM, epilogue); an
fp64 value handed from one linear step to the next is an OrtValue of type double like any other.

CUDA graphs (NVIDIA, on by default): per step the plan costs host time — an onnxruntime island run through
IOBinding ~11 µs, a kernel launch from Python ~4 µs — which at batch 1 is more than the GPU work. So the
first run for a given set of input shapes/types runs eagerly (compiling kernels, building the island
sessions, letting cuDNN pick its algorithms and onnxruntime's arenas reach their size), then the whole
plan is captured once from the stream (relaxed capture mode, so onnxruntime's allocator may still call
``cudaMalloc``) into one CUDA graph, and every later run is one copy per input into the graph's static
input buffers plus one ``cuGraphLaunch``. The first replay is checked against the eager outputs; a
capture that fails or disagrees turns graphs off for the session (``graph_status`` says why) and
runs stay eager. What this relies on: every island session owns its arena and is only run inside the
graph once captured (memory freed at the end of a captured run is only ever written again by a replay),
and outputs of a run are valid until the next run (they live in the graph's buffers).

The AMD path (hip backend + ROCm EP) is written to the same shape but has never run: the project has
no AMD GPU. Only the NVIDIA path is tested (H100/H200); hipGraph capture is not attempted there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from .fused import FusedOpType
from .layout_views import resolve_input, resolve_output

# ORT's element type strings → numpy
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
              "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(bfloat16)": None}


def _drv_check(result: Any, what: str) -> None:
    if int(result[0]) != 0:
        raise RuntimeError(f"{what} failed: {result[0]!r}")


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    """Eager vs replayed outputs, as a guard against a capture that replays the wrong work (which shows as gross
    error): the same NaN/inf pattern and relative L2 ≤ 1e-2. Exact equality is not expected: split-K conv tactics
    add partial sums with atomics in a varying order, and under TF32 a last-ulp difference in one layer's output
    can round to a different TF32 operand in the next (measured: ResNet-50 with TF32 islands)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind != "f":
        return bool(np.array_equal(a, b))
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    fa, fb = np.isfinite(a64), np.isfinite(b64)
    if not np.array_equal(fa, fb) or not np.array_equal(a64[~fa], b64[~fb], equal_nan=True):
        return False
    num, den = np.linalg.norm(a64[fa] - b64[fb]), np.linalg.norm(a64[fa])
    return bool(num <= 1e-2 * den or num == 0.0)


def _bn_runner(backend, shape, dtype, attrs: dict, consts: list[np.ndarray | None]) -> Callable:
    from .kernels import batchnorm

    return batchnorm.Runner(backend, shape, dtype, consts[1].reshape(-1), consts[2].reshape(-1),
                            attrs.get("activation", ""), attrs.get("alpha", 0.01), attrs.get("beta", 0.0),
                            attrs.get("clip_min", float("-inf")), attrs.get("clip_max", float("inf")))


def _lrelu_runner(backend, shape, dtype, attrs: dict, consts: list[np.ndarray | None]) -> Callable:
    from .kernels import leaky_relu

    return leaky_relu.Runner(backend, int(np.prod(shape, dtype=np.int64)), dtype, attrs.get("alpha", 0.01))


def _gn_runner(backend, shape, dtype, attrs: dict, consts: list[np.ndarray | None]) -> Callable:
    from .kernels import group_norm

    return group_norm.Runner(backend, shape, dtype, consts[1].reshape(-1), consts[2].reshape(-1),
                             int(attrs["num_groups"]), float(attrs.get("epsilon", 1e-5)),
                             attrs.get("activation", ""), attrs.get("alpha", 0.01), attrs.get("beta", 0.0))


_CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


def _conv_runner(backend, shape, dtype, attrs: dict, consts: list[np.ndarray | None]) -> Callable:
    """FusedConv[Add]<Act> / FusedConv<Act>Add: inputs X, W, B [, R] [, clip bounds]; R (input 3) is the one
    runtime input. ``attrs["residual_after"]`` (the step's, from the op type): R is added after the activation."""
    from .kernels import conv

    return conv.Runner(backend, shape, dtype, consts[1], consts[2], residual=len(consts) > 3 and consts[3] is None,
                       residual_after=bool(attrs.get("residual_after", False)),
                       activation=attrs.get("activation", ""), alpha=attrs.get("alpha", 0.01),
                       beta=attrs.get("beta", 0.0), clip_min=attrs.get("clip_min", float("-inf")),
                       clip_max=attrs.get("clip_max", float("inf")), tactic=attrs.get("tactic", "auto"),
                       **{k: attrs[k] for k in _CONV_ATTRS if k in attrs})


def _attention_runner(backend, shape, dtype, attrs: dict, consts: list[np.ndarray | None], shapes=None,
                      ftype: FusedOpType | None = None, strides: dict | None = None) -> Callable:
    """FusedAttention<Variant>: inputs Q, K, V, then per term bias | mask, fill | winbias [, scale]; Q, K, V and
    the term tensors may be runtime values (their shapes come in ``shapes``), fills are constants. ``strides``:
    the layout views' (batch, head, row) strides of q/k/v/o (:mod:`fuser.layout_views`)."""
    from .kernels import attention

    v = ftype.attention_variant()
    specs, term_consts, i = [], [], 3
    for kind in v.terms:
        t_shape = shapes[i] if shapes[i] is not None else consts[i].shape
        t_dtype = str(consts[i].dtype) if consts[i] is not None else str(np.dtype(shapes.dtypes[i]))
        fill = float(np.asarray(consts[i + 1]).reshape(-1)[0]) if kind == "mask" else float("-inf")
        specs.append(attention.TermSpec(kind, t_dtype, tuple(t_shape), fill))
        term_consts.append(consts[i])
        i += 2 if kind == "mask" else 1
    return attention.Runner(backend, shapes[0], shapes[1], shapes[2], dtype, float(attrs["scale"]),
                            bool(v.causal), specs, v.nan_zero, attrs.get("tactic", "auto"), term_consts,
                            strides=strides)


def _linear_runner(backend, shape, dtype, attrs: dict, consts: list[np.ndarray | None], state=None) -> Callable:
    """FusedLinear (a plan-only node, :mod:`fuser.linear_steps`): inputs X, W, b or "", R or ""; ``state``: the
    session's cuBLAS handle and scratch (:class:`fuser.kernels.linear.LinearState`)."""
    from .kernels import linear

    trans = bool(attrs.get("trans_w", 0))
    w = consts[1].T if trans else consts[1]  # a Gemm's transB: W stored [N, K]
    # consts[1] is the executor's cached array of that initializer: its id names the weights while the session lives
    return linear.Runner(backend, shape, w, consts[2] if len(consts) > 2 else None, weight_key=(id(consts[1]), trans),
                         residual=bool(attrs.get("residual", 0)), gelu=bool(attrs.get("gelu", 0)),
                         x_f64=bool(attrs.get("in64", 0)), y_f64=bool(attrs.get("out64", 0)), state=state)


# inputs that decide an op's output shape by their values (index, or None: every input from that index on)
_SHAPE_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "ConstantOfShape": (0,), "Range": (0, 1, 2), "Slice": (1, 2, 3, 4),
    "Resize": (1, 2, 3), "Upsample": (1,), "Pad": (1, 3), "TopK": (1,), "OneHot": (1,), "Squeeze": (1,),
    "Unsqueeze": (1,), "Split": (1,), "CenterCropPad": (1,), "ReduceSum": (1,), "ReduceMean": (1,), "ReduceMax": (1,),
    "ReduceMin": (1,), "ReduceProd": (1,), "ReduceL2": (1,), "ReduceL1": (1,), "ReduceLogSumExp": (1,),
    "ReduceSumSquare": (1,), "ReduceLogSum": (1,), "Col2Im": (1, 2), "DFT": (1,),
    "STFT": (2, 3)}
_ALWAYS_DATA_DEPENDENT = {"NonZero", "Unique", "Compress", "NonMaxSuppression", "Loop", "If", "Scan",
                          "StringSplit", "RegexFullMatch"}


def data_dependent_shapes(model: onnx.ModelProto) -> str | None:
    """Why a CUDA graph cannot replay this model (some output shape follows tensor *values* that are not
    fixed by the input shapes), or None. A value is shape-static when it comes from constants and Shape/Size
    ops only; a graph replays the shapes of its capture, so every shape-deciding input must be shape-static."""
    g = model.graph
    static = {t.name for t in g.initializer}
    for n in g.node:
        if n.op_type in _ALWAYS_DATA_DEPENDENT:
            return f"{n.op_type} node {n.name!r} has data-dependent output shapes"
        for i in _SHAPE_INPUTS.get(n.op_type, ()) if n.domain in ("", "ai.onnx") else ():
            if i < len(n.input) and n.input[i] and n.input[i] not in static:
                return f"{n.op_type} node {n.name!r} takes its shape from computed values ({n.input[i]!r})"
        if n.op_type in ("Shape", "Size", "Constant") or all(not x or x in static for x in n.input):
            static.update(o for o in n.output if o)
    return None


class _Shapes(list):
    """Every input's shape (None for constants and absent inputs), with their element types beside."""

    def __init__(self, shapes, dtypes) -> None:
        super().__init__(shapes)
        self.dtypes = dtypes


# fused base → runner builder. A runner's output shape is the input's unless it has ``output_shape``.
RUNNER_BUILDERS: dict[str, Callable] = {"BatchNorm": _bn_runner, "LeakyRelu": _lrelu_runner,
                                        "GroupNorm": _gn_runner, "Conv": _conv_runner,
                                        "Attention": _attention_runner, "Linear": _linear_runner}
# builders that take every input's shape (and the op type) because no single input decides the launch
SHAPED_BUILDERS = ("Attention",)
_KERNEL_DTYPES = (np.float32, np.float16)


def _runtime_inputs(ftype: FusedOpType) -> set[int]:
    """Input positions (besides X) that are values computed at run time, not constants."""
    if ftype.base == "Attention":  # K, V and the term tensors; a mask's fill and the scale are constants
        v, pos, out = ftype.attention_variant(), 3, {1, 2}
        for kind in v.terms:
            out.add(pos)
            pos += 2 if kind == "mask" else 1
        return out
    return {3} if ftype.base == "Conv" and ftype.residual else set()


def runs_on_device(node: onnx.NodeProto, ftype: FusedOpType, initializers: dict) -> bool:
    """Does this fused node get a device kernel (else it stays in an onnxruntime island)?"""
    if ftype.base not in RUNNER_BUILDERS:
        return False
    if ftype.base == "Conv":  # tactic "library", or a conv our kernels do not do (3-D): onnxruntime
        tactic = next((a.s.decode() for a in node.attribute if a.name == "tactic"), "auto")
        w = initializers.get(node.input[1]) if len(node.input) > 1 else None
        if tactic == "library" or w is None or len(w.dims) not in (3, 4):
            return False
        if ftype.residual and len(node.input) > 3 and node.input[3] in initializers:
            return False  # a constant R: the runner binds only a computed residual; the island adds it right
    if ftype.base == "Attention" and (ftype.attention_variant() is None or len(ftype.attention_variant().terms) > 2):
        return False  # the kernels take up to two score terms
    # parameter inputs must be constants: runners upload them once
    runtime = _runtime_inputs(ftype)
    return all(name in initializers for i, name in enumerate(node.input) if i >= 1 and name and i not in runtime)


@dataclass
class _Graph:
    """One captured run: its executable graph, static inputs, and every value of the captured run (kept alive:
    the graph reads and writes their buffers)."""

    signature: tuple
    graph: Any
    exec: Any
    inputs: dict[str, Any]
    values: dict[str, Any]
    outputs: dict[str, Any]


class DeviceExecutor:
    """Runs a :class:`fuser.runtime.Session`'s plan on a device backend."""

    def __init__(self, session: Any, backend: Any, allow_tf32: bool = False, cuda_graph: bool = True) -> None:
        import onnxruntime as ort

        self.session = session
        self.backend = backend
        self.allow_tf32 = bool(allow_tf32)
        self.use_graph = bool(cuda_graph) and backend.name == "cuda"
        self.graph_status = "on" if self.use_graph else "off" if backend.name == "cuda" else "off: not on hip"
        why = data_dependent_shapes(session.model) if self.use_graph else None
        if why:
            self.use_graph, self.graph_status = False, f"off: {why}"
        self._graph: _Graph | None = None
        self._warm: set[tuple] = set()
        self.ort = ort
        ort.set_default_logger_severity(3)  # provider-option chatter per session would flood stderr
        if backend.name == "cuda":
            from cuda.bindings import driver

            backend.activate()
            err, stream = driver.cuStreamCreate(0)
            if int(err) != 0:
                raise RuntimeError(f"cuStreamCreate failed: {err!r}")
            self._stream_obj = stream
            self.stream = int(stream)
            self.provider = "CUDAExecutionProvider"
        else:  # hip: never run here (no AMD GPU)
            from hip import hip

            err, stream = hip.hipStreamCreate()
            self._stream_obj = stream
            self.stream = int(stream)
            self.provider = "ROCMExecutionProvider"
        if self.provider not in ort.get_available_providers():
            raise RuntimeError(f"onnxruntime here has no {self.provider}: install onnx-fuse[cuda] "
                               "(onnxruntime-gpu) or [rocm] (onnxruntime-rocm)")
        self.ort_device = "cuda"  # ORT names the GPU memory of both its CUDA and ROCm EPs "cuda"
        self.run_options = ort.RunOptions()
        # the stream orders everything; ORT need not wait for its own work after each island
        self.run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        self._runners: dict[tuple, Callable] = {}
        self._buffers: dict[tuple, Any] = {}
        self._consts: dict[str, np.ndarray] = {}
        self._linear = None  # LinearState, made by the first linear step

    def _linear_state(self) -> Any:
        """This session's cuBLAS handle and scratch for its linear steps (its own: sessions have their own streams)."""
        if self._linear is None:
            from .kernels.linear import LinearState

            self._linear = LinearState(self.backend)
        return self._linear

    def provider_options(self) -> dict[str, str]:
        return {"device_id": "0", "user_compute_stream": str(self.stream), "use_tf32": "1" if self.allow_tf32 else "0"}

    # -- values -----------------------------------------------------------------------------------
    def to_device(self, arr: np.ndarray) -> Any:
        return self.ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr), self.ort_device, 0)

    def _const(self, name: str) -> np.ndarray:
        if name not in self._consts:
            self._consts[name] = numpy_helper.to_array(self.session.initializers[name], self.session.base_dir or "")
        return self._consts[name]

    def synchronize(self) -> None:
        if self.backend.name == "cuda":
            from cuda.bindings import driver

            driver.cuStreamSynchronize(self._stream_obj)
        else:
            from hip import hip

            hip.hipStreamSynchronize(self._stream_obj)

    # -- running ----------------------------------------------------------------------------------
    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """Run on device values (OrtValues); returns every graph output as an OrtValue (not yet synced;
        valid until the next run)."""
        if not self.use_graph:
            return self._run_steps(feeds)
        sig = tuple(sorted((k, tuple(v.shape()), v.data_type()) for k, v in feeds.items()))
        g = self._graph
        if g is None or g.signature != sig:
            if sig not in self._warm:  # first run of these shapes: eager (builds everything the capture needs)
                self._warm.add(sig)
                return self._run_steps(feeds)
            g = self._capture(feeds, sig)
            if g is None:
                try:
                    return self._run_steps(feeds)
                except RuntimeError:
                    # right after a capture that onnxruntime broke, its next run can still fail the same way
                    # (measured: a Conv island's host-to-device copy, H200, onnxruntime 1.31); fresh sessions, once
                    self._drop_island_sessions()
                    return self._run_steps(feeds)
        self._launch_graph(g, feeds)
        return g.outputs

    def _run_steps(self, feeds: dict[str, Any]) -> dict[str, Any]:
        from .runtime import KernelStep

        values: dict[str, Any] = dict(feeds)
        for step in self.session.steps:
            if isinstance(step, KernelStep):
                self._run_kernel(step, values)
            else:
                self._run_island(step, values)
        self._last_values = values
        return {n: values[n] for n in self.session.output_names}

    # -- CUDA graphs -------------------------------------------------------------------------------
    def _launch_graph(self, g: _Graph, feeds: dict[str, Any]) -> None:
        from cuda.bindings import driver

        for name, v in feeds.items():
            dst = g.inputs[name]
            if v.data_ptr() != dst.data_ptr():
                nbytes = int(np.prod(v.shape(), dtype=np.int64)) * np.dtype(_ORT_TYPES[v.data_type()]).itemsize
                _drv_check(driver.cuMemcpyDtoDAsync(dst.data_ptr(), v.data_ptr(), nbytes, self.stream),
                           "cuMemcpyDtoDAsync")
        _drv_check(driver.cuGraphLaunch(g.exec, self.stream), "cuGraphLaunch")

    def _graph_off(self, why: str) -> None:
        self.use_graph = False
        self.graph_status = f"off: {why}"
        self._release_graph()

    def _drop_island_sessions(self) -> None:
        """Forget every island's onnxruntime session: one whose run failed inside a capture keeps failing after it
        (measured: a Conv island's host-to-device copy, H200, onnxruntime 1.31), so eager runs build fresh ones."""
        from .runtime import IslandStep

        for step in self.session.steps:
            if isinstance(step, IslandStep):
                for key in [k for k in step.sessions if k and k[0] == "device"]:
                    del step.sessions[key]

    def _release_graph(self) -> None:
        from cuda.bindings import driver

        g, self._graph = self._graph, None
        if g is not None:
            self.synchronize()
            driver.cuGraphExecDestroy(g.exec)
            driver.cuGraphDestroy(g.graph)

    def _capture(self, feeds: dict[str, Any], sig: tuple) -> _Graph | None:
        """Capture one run of the plan into a CUDA graph; None (and graphs off) when that cannot be done."""
        from cuda.bindings import driver

        if any(_ORT_TYPES.get(v.data_type()) is None for v in feeds.values()):
            self._graph_off("an input type the runtime cannot copy (bfloat16)")
            return None
        self._release_graph()  # one graph at a time: a new one may reuse memory the old one wrote
        inputs = {k: self.ort.OrtValue.ortvalue_from_shape_and_type(list(v.shape()), _ORT_TYPES[v.data_type()],
                                                                    self.ort_device, 0) for k, v in feeds.items()}
        self.synchronize()
        mode = driver.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_RELAXED
        err = driver.cuStreamBeginCapture(self._stream_obj, mode)[0]
        if int(err) != 0:
            self._graph_off(f"cuStreamBeginCapture: {err!r}")
            return None
        try:
            outputs = self._run_steps(inputs)
        except Exception as e:  # noqa: BLE001 - anything the plan did that a capture does not allow
            driver.cuStreamEndCapture(self._stream_obj)
            self.synchronize()
            driver.cuCtxSynchronize()
            self._graph_off(f"a step could not be captured ({type(e).__name__}: {str(e).splitlines()[0][:160]})")
            self._drop_island_sessions()
            return None
        values = self._last_values
        err, graph = driver.cuStreamEndCapture(self._stream_obj)
        if int(err) != 0:
            self.synchronize()
            self._graph_off(f"capture invalidated: {err!r}")
            return None
        err, exe = driver.cuGraphInstantiate(graph, 0)
        if int(err) != 0:
            driver.cuGraphDestroy(graph)
            self._graph_off(f"cuGraphInstantiate: {err!r}")
            return None
        g = _Graph(sig, graph, exe, inputs, values, outputs)
        self._last_values = None
        # the first replay must agree with an eager run on the same inputs, else graphs stay off
        eager_out = self._run_steps(feeds)
        self.synchronize()
        eager = {n: v.numpy() for n, v in eager_out.items()}  # host copies: the replay reuses kernel buffers
        self._graph = g
        self._launch_graph(g, feeds)
        self.synchronize()
        got = {n: v.numpy() for n, v in g.outputs.items()}
        if not all(_close(eager[n], got[n]) for n in got):
            self._graph_off("the captured graph's outputs differ from an eager run")
            return None
        return g

    def _run_kernel(self, step: Any, values: dict[str, Any]) -> None:
        x = values[step.node.input[0]]
        shape = tuple(x.shape())
        dtype = _ORT_TYPES.get(x.data_type())
        if step.ftype.base == "Linear":  # fp32 X, or the fp64 X a previous linear step handed over
            if dtype != (np.float64 if step.attrs.get("in64") else np.float32):
                raise TypeError(f"{step.node.name}: a linear step takes float32, got {x.data_type()}")
        elif dtype not in _KERNEL_DTYPES:
            raise TypeError(f"{step.node.name}: kernels take float32/float16, got {x.data_type()}")
        key = (step.node.name, shape, np.dtype(dtype).str)
        extra = {}
        offsets: dict[int, int] = {}
        out_shape = None
        if step.ftype.base in SHAPED_BUILDERS:  # the launch depends on every input's shape
            ins = [values.get(n) if n else None for n in step.node.input]
            shapes = [tuple(v.shape()) if v is not None else None for v in ins]
            if step.views is not None:  # layout views: logical [B, H, S, D] shapes, strides into the sources
                strides = {}
                for i, view in step.views.inputs.items():
                    shapes[i], strides["qkv"[i]] = resolve_input(view, shapes[i])
                    offsets[i] = view.offset * np.dtype(dtype).itemsize
                if step.views.output is not None:
                    b, h, sq, _ = shapes[0]
                    o_shape = (b, h, sq, shapes[2][3])
                    out_shape, strides["o"] = resolve_output(step.views.output, o_shape)
                extra["strides"] = strides
            extra["shapes"] = _Shapes(shapes, [_ORT_TYPES.get(v.data_type()) if v is not None else None for v in ins])
            extra["ftype"] = step.ftype
            key += tuple(extra["shapes"]) + tuple(sorted(extra.get("strides", {}).items()))
        runner = self._runners.get(key)
        inits = self.session.initializers
        if runner is None:
            if step.ftype.base == "Linear":
                extra["state"] = self._linear_state()
            consts = [None] + [self._const(n) if n in inits else None for n in step.node.input[1:]]
            runner = self._runners[key] = RUNNER_BUILDERS[step.ftype.base](
                self.backend, shape, dtype, step.attrs, consts, **extra)
        out = self._buffers.get(key)
        if out is None:  # outputs are reused run to run: the caller gets copies (numpy) or syncs first
            out = self._buffers[key] = self.ort.OrtValue.ortvalue_from_shape_and_type(
                list(out_shape or getattr(runner, "output_shape", shape)), getattr(runner, "output_dtype", dtype),
                self.ort_device, 0)
        if step.ftype.base == "Linear" and step.ftype.residual:  # planned on inferred shapes: R must be Y's
            r = values[step.node.input[3]]
            if tuple(r.shape()) != tuple(runner.output_shape) or _ORT_TYPES.get(r.data_type()) != np.float32:
                raise RuntimeError(f"{step.node.name}: residual {r.shape()} {r.data_type()} is not the float32 "
                                   f"{list(runner.output_shape)} the plan expected")
        # X, then the runtime inputs in order (a FusedConvAdd's residual); a view reads at its column offset
        ptrs = [x.data_ptr() + offsets.get(0, 0)] + [values[n].data_ptr() + offsets.get(i, 0)
                                                     for i, n in enumerate(step.node.input) if i >= 1 and n
                                                     and n not in inits]
        runner(ptrs, out.data_ptr(), self.stream)
        values[step.node.output[0]] = out

    def _run_island(self, step: Any, values: dict[str, Any]) -> None:
        feeds = {x: values[x] for x in step.inputs if x in values}
        key = tuple((x, v.data_type()) for x, v in feeds.items())
        sess = step.sessions.get(("device", key))
        if sess is None:
            types = {x: (_ORT_TYPES[v.data_type()], list(v.shape())) for x, v in feeds.items()}
            sess = step.sessions[("device", key)] = self.session.island_session(
                step, types, [(self.provider, self.provider_options())])
        io = sess.io_binding()
        for x, v in feeds.items():
            io.bind_ortvalue_input(x, v)
        for o in step.outputs:
            io.bind_output(o, self.ort_device, 0)
        sess.run_with_iobinding(io, self.run_options)
        for o, v in zip(step.outputs, io.get_outputs(), strict=True):
            values[o] = v
