"""Numerical verification of a rewritten model against the original (DESIGN §7).

The original runs in onnxruntime (CPU); the rewritten model runs (a) in onnxruntime with our function
bodies inlined and (b) in :class:`fuser.runtime.Session` on the best device, on the same seeded inputs.
Per output: relative L2 error, max abs error, cosine similarity and SNR in dB (the seed report's
metrics). An output passes when it is finite where the original is, and rel-L2 ≤ rtol (or max-abs ≤ atol
when atol is given). Integer and boolean outputs must match exactly.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from .errors import InputError

DEFAULT_RTOL = {"float16": 1e-2, "bfloat16": 1e-2}
DEFAULT_RTOL_FP32 = 1e-5
DEFAULT_SYMBOLIC_BATCH = 1
DEFAULT_SYMBOLIC_OTHER = 16
# where the original model refuses the default (a waveform shorter than its conv stack's receptive field, ...), the
# generated non-batch symbolic dims grow to these sizes in turn before verification gives up
SYMBOLIC_RETRY_SIZES = (64, 256, 1024, 4096)


@dataclass
class OutputCheck:
    name: str
    path: str  # "onnxruntime" (function bodies) or "runtime:<device>"
    rel_l2: float
    max_abs: float
    cosine: float
    snr_db: float
    rtol: float
    atol: float | None
    passed: bool
    reason: str = ""


@dataclass
class Verification:
    checks: list[OutputCheck] = field(default_factory=list)
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def first_failure(self) -> OutputCheck | None:
        return next((c for c in self.checks if not c.passed), None)

    def to_json(self) -> dict:
        return {"passed": self.passed, "input_shapes": self.input_shapes, "seconds": round(self.seconds, 3),
                "outputs": [_jsonable(asdict(c)) for c in self.checks]}


def _jsonable(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) and k != "snr_db" else
                (str(v) if isinstance(v, float) and not math.isfinite(v) else v)) for k, v in d.items()}


def metrics(ref: np.ndarray, got: np.ndarray) -> tuple[float, float, float, float]:
    """(rel_l2, max_abs, cosine, snr_db) of ``got`` against ``ref`` in float64."""
    a = np.asarray(ref, dtype=np.float64).ravel()
    b = np.asarray(got, dtype=np.float64).ravel()
    if a.size == 0:
        return 0.0, 0.0, 1.0, math.inf
    err = b - a
    na, ne, nb = np.linalg.norm(a), np.linalg.norm(err), np.linalg.norm(b)
    rel = float(ne / na) if na > 0 else (0.0 if ne == 0 else math.inf)
    max_abs = float(np.max(np.abs(err))) if err.size else 0.0
    cos = float(np.dot(a, b) / (na * nb)) if na > 0 and nb > 0 else (1.0 if na == nb else 0.0)
    snr = float(10 * math.log10(na**2 / ne**2)) if ne > 0 and na > 0 else (math.inf if ne == 0 else -math.inf)
    return rel, max_abs, cos, snr


def check_output(name: str, path: str, ref: np.ndarray, got: np.ndarray, rtol: float | None,
                 atol: float | None) -> OutputCheck:
    tol = rtol if rtol is not None else DEFAULT_RTOL.get(str(ref.dtype), DEFAULT_RTOL_FP32)
    if ref.shape != got.shape:
        return OutputCheck(name, path, math.inf, math.inf, 0.0, -math.inf, tol, atol, False,
                           f"shape {list(got.shape)} != {list(ref.shape)}")
    if ref.dtype.kind in "biu":
        same = bool(np.array_equal(ref, got))
        rel, mx, cos, snr = metrics(ref, got)
        return OutputCheck(name, path, rel, mx, cos, snr, 0.0, None, same, "" if same else "integer mismatch")
    rel, mx, cos, snr = metrics(ref, got)
    ref_finite = np.isfinite(ref)
    if not np.array_equal(ref_finite, np.isfinite(got)):
        return OutputCheck(name, path, rel, mx, cos, snr, tol, atol, False, "NaN/Inf where the original has none")
    if not np.all(ref_finite):
        # compare the finite part only; non-finite positions must agree exactly
        same_special = np.array_equal(ref[~ref_finite], got[~ref_finite], equal_nan=True)
        rel, mx, cos, snr = metrics(ref[ref_finite], got[ref_finite])
        if not same_special:
            return OutputCheck(name, path, rel, mx, cos, snr, tol, atol, False, "NaN/Inf differ")
    ok = rel <= tol or (atol is not None and mx <= atol)
    return OutputCheck(name, path, rel, mx, cos, snr, tol, atol, ok, "" if ok else "tolerance exceeded")


# ---------------------------------------------------------------------------------------------
# inputs

def _index_bounds(model: onnx.ModelProto) -> dict[str, int]:
    """For integer graph inputs used as Gather/Embedding indices: the size of the table they index."""
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    bounds: dict[str, int] = {}
    for n in model.graph.node:
        if n.op_type == "Gather" and len(n.input) > 1 and n.input[0] in inits:
            axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
            dims = inits[n.input[0]]
            if dims:
                size = dims[axis if axis >= 0 else axis + len(dims)]
                bounds[n.input[1]] = min(bounds.get(n.input[1], size), size)
    return bounds


def make_inputs(model: onnx.ModelProto, seed: int = 0, user: dict[str, np.ndarray] | None = None,
                shapes: dict[str, list[int]] | None = None,
                other: int = DEFAULT_SYMBOLIC_OTHER) -> dict[str, np.ndarray]:
    """Seeded inputs for every real graph input; ``user`` arrays and ``shapes`` override. Symbolic dims are
    DEFAULT_SYMBOLIC_BATCH on the first axis and ``other`` elsewhere (one size per dim name)."""
    user = user or {}
    shapes = shapes or {}
    inits = {t.name for t in model.graph.initializer}
    graph_inputs = [v for v in model.graph.input if v.name not in inits]
    names = {v.name for v in graph_inputs}
    for n in list(user) + list(shapes):
        if n not in names:
            raise InputError(f"{n!r} is not an input of the model (inputs: {', '.join(sorted(names))})")
    rng = np.random.default_rng(seed)
    bounds = _index_bounds(model)
    symbols: dict[str, int] = {}
    feeds: dict[str, np.ndarray] = {}
    for v in graph_inputs:
        t = v.type.tensor_type
        if not v.type.HasField("tensor_type"):
            raise InputError(f"input {v.name!r} is not a tensor; supply it with --input")
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type)
        dims = [d for d in t.shape.dim] if t.HasField("shape") else None
        if v.name in user:
            arr = np.asarray(user[v.name])
            if arr.dtype != dtype:
                raise InputError(f"--input {v.name}: dtype {arr.dtype} but the model expects {dtype}")
            if dims is not None and (len(arr.shape) != len(dims) or any(
                    d.HasField("dim_value") and d.dim_value != s for d, s in zip(dims, arr.shape, strict=True))):
                raise InputError(f"--input {v.name}: shape {list(arr.shape)} does not fit the model's "
                                 f"{_dims_str(dims)}")
            feeds[v.name] = arr
            continue
        if v.name in shapes:
            shape = list(shapes[v.name])
            if dims is not None and (len(shape) != len(dims) or any(
                    d.HasField("dim_value") and d.dim_value != s for d, s in zip(dims, shape, strict=True))):
                raise InputError(f"--shape {v.name}: {shape} does not fit the model's {_dims_str(dims)}")
        elif dims is None:
            raise InputError(f"input {v.name!r} has no declared shape; give one with --shape {v.name}:d0,d1,...")
        else:
            shape = []
            for i, d in enumerate(dims):
                if d.HasField("dim_value"):
                    shape.append(int(d.dim_value))
                else:
                    default = DEFAULT_SYMBOLIC_BATCH if i == 0 else other
                    shape.append(symbols.setdefault(d.dim_param or f"?{v.name}{i}", default))
        feeds[v.name] = _random(rng, dtype, shape, bounds.get(v.name))
    return feeds


def has_generated_symbolic(model: onnx.ModelProto, user: dict[str, np.ndarray] | None = None,
                           shapes: dict[str, list[int]] | None = None) -> bool:
    """Whether make_inputs sizes a symbolic dim past the first axis itself (what ``other`` changes)."""
    inits = {t.name for t in model.graph.initializer}
    skip = set(user or {}) | set(shapes or {}) | inits
    for v in model.graph.input:
        t = v.type.tensor_type
        if v.name in skip or not v.type.HasField("tensor_type") or not t.HasField("shape"):
            continue
        if any(not d.HasField("dim_value") for d in list(t.shape.dim)[1:]):
            return True
    return False


def feeds_the_model_takes(model: onnx.ModelProto, run: Callable[[dict[str, np.ndarray]], Any], seed: int = 0,
                          user: dict[str, np.ndarray] | None = None, shapes: dict[str, list[int]] | None = None,
                          where: str = "the model", doing: str = "run the model") -> tuple[dict[str, np.ndarray], Any]:
    """Generated inputs ``run`` accepts, and what it returned on them. Symbolic dims past the first axis start at
    DEFAULT_SYMBOLIC_OTHER; where ``run`` refuses them (a waveform shorter than wav2vec2's conv stack, a window
    larger than the sequence) they grow through SYMBOLIC_RETRY_SIZES before this gives up with one InputError that
    names --shape. Sizes the user gave (``user``, ``shapes``) are never changed, and with none generated ``run``
    gets one try."""
    sizes = (DEFAULT_SYMBOLIC_OTHER, *SYMBOLIC_RETRY_SIZES) if has_generated_symbolic(model, user, shapes) else (
        DEFAULT_SYMBOLIC_OTHER,)
    msg = ""
    for other in sizes:
        feeds = make_inputs(model, seed, user, shapes, other=other)
        try:
            return feeds, run(feeds)
        except InputError:
            raise
        except Exception as e:  # the model refused these inputs
            msg = first_line(e)
    hint = (f"; its symbolic dims were tried at {', '.join(map(str, sizes))}: give real sizes with "
            "--shape NAME:d0,d1,... or --input NAME=FILE.npy") if len(sizes) > 1 else ""
    raise InputError(f"{where}: cannot {doing} ({msg}){hint}")


def first_line(e: BaseException) -> str:
    """An exception's first line (300 characters at most), or its type where it has no message."""
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _dims_str(dims) -> str:
    return "[" + ",".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in dims) + "]"


def _random(rng: np.random.Generator, dtype: np.dtype, shape: list[int], bound: int | None) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        hi = bound if bound else 16
        return rng.integers(0, hi, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------------------------------------
# running

def ort_session(model: onnx.ModelProto | str | os.PathLike):
    """A function running ``model`` in onnxruntime (CPU) on feeds, its session built once; a path lets onnxruntime
    resolve external data beside the model."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise InputError("verification needs onnxruntime: install onnx-fuse[cpu] (or [cuda] / [rocm]), "
                         "or pass --no-verify") from None

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # its errors come back as exceptions, reported in one line (or sizes retried)
    # the reference is the model as written: none of onnxruntime's own rewrites (some of which also fail
    # on > 2 GiB weights), and no pre-packed weight copies
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.add_session_config_entry("session.disable_prepacking", "1")
    src = str(model) if isinstance(model, (str, os.PathLike)) else model.SerializeToString()
    sess = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return lambda feeds: dict(zip(names, sess.run(names, feeds), strict=True))


def ort_run(model: onnx.ModelProto | str | os.PathLike, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run in onnxruntime (CPU) once (:func:`ort_session`)."""
    return ort_session(model)(feeds)


def has_fused_nodes(model: onnx.ModelProto) -> bool:
    from .fused import DOMAIN

    return any(n.domain == DOMAIN for n in model.graph.node)


def verify(original: onnx.ModelProto, fused: onnx.ModelProto, feeds: dict[str, np.ndarray],
           rtol: float | None = None, atol: float | None = None, device: str = "auto",
           reference: dict[str, np.ndarray] | None = None, original_path: str | os.PathLike | None = None,
           fused_data_path: str | os.PathLike | None = None) -> Verification:
    """Compare ``fused`` with ``original`` on ``feeds``. For > 2 GiB models pass ``original_path`` (the
    input file) and ``fused_data_path`` (the external data of ``fused``): the models are then loaded by
    path, one at a time, never serialised whole."""
    import time

    from .external import remove_quietly, write_beside

    t0 = time.perf_counter()
    ver = Verification(input_shapes={k: list(v.shape) for k, v in feeds.items()})
    big = fused_data_path is not None
    if reference is not None:
        ref = reference
    else:
        from .external import has_external

        by_path = original_path is not None and (big or has_external(original))
        ref = ort_run(original_path if by_path else original, feeds)
    fused_path = None
    try:
        if big:
            fused_path = write_beside(fused, Path(fused_data_path).parent, Path(fused_data_path).stem + ".onnx")
        got = ort_run(fused_path or fused, feeds)
        for name, r in ref.items():
            ver.checks.append(check_output(name, "onnxruntime", r, got[name], rtol, atol))
        del got
        if has_fused_nodes(fused):
            from .runtime import Session

            sess = Session(fused_path or fused, device=device)
            names = list(ref)
            outs = sess.run(names, feeds)
            for name, o in zip(names, outs, strict=True):
                ver.checks.append(check_output(name, f"runtime:{sess.device}", ref[name], o, rtol, atol))
    finally:
        remove_quietly(fused_path)
    ver.seconds = time.perf_counter() - t0
    return ver
