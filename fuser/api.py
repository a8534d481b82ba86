"""The Python API: :func:`optimize` — everything the CLI does, without the CLI."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from .errors import InputError, VerificationError
from .external import remove_quietly
from .fused import FusionRecord
from .io import approx_size, load_model, save_model_atomic, sha256_file
from .pipeline import default_opset, run_pipeline
from .report import build_report, op_counts, write_json
from .verify import Verification, first_line, verify

TARGETS = ("hip", "onnx")
TF32_RTOL = 1e-2  # default rel-L2 tolerance once a TF32 tactic runs (10-bit mantissa products)
MAX_OPSET_SUPPORTED = None  # filled lazily from onnx.defs


@dataclass
class OptimizeResult:
    model: onnx.ModelProto
    fusions: list[FusionRecord]
    verification: Verification | None
    ops_before: dict[str, int]
    ops_after: dict[str, int]
    pass_counts: dict[str, int]
    timings: dict[str, float] = field(default_factory=dict)
    input_path: str = "<memory>"
    input_sha256: str = ""
    input_bytes: int = 0
    output_path: str | None = None
    output_sha256: str = ""
    output_bytes: int = 0
    written: bool = False
    report: dict = field(default_factory=dict)


def check_model_supported(model: onnx.ModelProto, where: str, verify: bool = True) -> None:
    """Refuse, in one line, models the toolchain cannot process faithfully."""
    opset = default_opset(model)
    newest = onnx.defs.onnx_opset_version()
    if opset < 7:
        raise InputError(f"{where}: opset {opset} is older than the oldest supported (7; onnxruntime runs "
                         "nothing older) — upgrade it first with onnx.version_converter.convert_version")
    if opset > newest:
        raise InputError(f"{where}: opset {opset} is newer than the installed onnx knows ({newest})")
    if model.ir_version > onnx.IR_VERSION:
        raise InputError(f"{where}: IR version {model.ir_version} is newer than the installed onnx knows "
                         f"({onnx.IR_VERSION})")
    outs = [o.name for o in model.graph.output]
    dup = next((n for n in outs if outs.count(n) > 1), None)
    if dup is not None:
        raise InputError(f"{where}: graph output {dup!r} is declared more than once")
    try:
        onnx.checker.check_model(_without_weights(model), full_check=False)
    except Exception as e:
        raise InputError(f"{where}: invalid model ({str(e).strip().splitlines()[0][:200]})") from None
    if verify:
        try:
            from .ortcompat import KNOWN_DOMAINS, ort_limits
        except ImportError:  # pragma: no cover - no onnxruntime: verify() says so
            return
        max_ir, max_opset = ort_limits()
        if model.ir_version > max_ir:
            raise InputError(f"{where}: IR version {model.ir_version} is newer than the installed onnxruntime "
                             f"accepts ({max_ir}), so it cannot be verified (--no-verify to fuse anyway)")
        if opset > max_opset:
            raise InputError(f"{where}: opset {opset} is newer than the installed onnxruntime runs ({max_opset}), "
                             "so it cannot be verified (--no-verify to fuse anyway)")
        local = {f.domain for f in model.functions}
        for n in model.graph.node:
            if n.domain not in KNOWN_DOMAINS and n.domain not in local and n.domain != "fuser":
                raise InputError(f"{where}: node {n.name or n.op_type!r} is {n.domain}::{n.op_type}, an op in a domain "
                                 "onnxruntime does not know, so the model cannot be verified (--no-verify to fuse "
                                 "anyway)")


def _without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy for the checker with the initializers' data left out: checking a 500 MB model must not
    serialise 500 MB (and protobuf refuses past 2 GiB). Names, types and ranks stay."""
    g = model.graph
    light = onnx.ModelProto(ir_version=model.ir_version, producer_name=model.producer_name,
                            producer_version=model.producer_version, domain=model.domain,
                            model_version=model.model_version)
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    lg = light.graph
    lg.name = g.name
    for part in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(lg, part).extend(getattr(g, part))
    lg.initializer.extend(_stub_tensor(t) for t in g.initializer)
    return light


def _stub_tensor(t: onnx.TensorProto) -> onnx.TensorProto:
    """One element of the same name, type and rank: what the checker needs of an initializer."""
    stub = onnx.TensorProto(name=t.name, data_type=t.data_type, dims=[1] * len(t.dims))
    if t.data_type == onnx.TensorProto.STRING:
        stub.string_data.append(b"")
    else:
        try:
            itemsize = max(1, onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize)
        except Exception:  # exotic types (4-bit, 8-bit floats): one byte is what they need
            itemsize = 1
        stub.raw_data = b"\0" * itemsize
    return stub


def optimize(model: str | os.PathLike | onnx.ModelProto, output: str | os.PathLike | None = None, *,
             target: str = "hip", skip: tuple[str, ...] = (), verify_result: bool = True,
             rtol: float | None = None, atol: float | None = None,
             inputs: dict[str, np.ndarray] | None = None, shapes: dict[str, list[int]] | None = None,
             keep_on_fail: bool = False, device: str = "auto", report: str | os.PathLike | None = None,
             seed: int = 0, tune: bool = False, allow_tf32: bool = False) -> OptimizeResult:
    """Rewrite ``model``; verify it against the original; write it to ``output`` (atomically).

    Every fused conv node gets a tactic (:mod:`fuser.tune`): the heuristic, or with ``tune`` the fastest
    candidate timed on the GPU. ``allow_tf32`` admits TF32 tensor-core tactics (conv ``mma_tf32``; fp32 attention
    nodes get ``flash_tf32``) and, when one is chosen, widens the default verification tolerance of fp32 outputs
    to ``TF32_RTOL`` (said in the report).

    Raises :class:`InputError` (exit 2) for bad input and :class:`VerificationError` (exit 1) when the
    rewritten model does not match; nothing is written then unless ``keep_on_fail``.
    """
    if target not in TARGETS:
        raise InputError(f"unknown target {target!r} (choose from {', '.join(TARGETS)})")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    in_path = None
    if isinstance(model, (str, os.PathLike)):
        in_path = Path(model)
        if output is not None and _same_file(in_path, Path(output)):
            raise InputError(f"{output}: refusing to overwrite the input model")
        proto = load_model(in_path)
    else:
        proto = model
    where = str(in_path) if in_path else "model"
    check_model_supported(proto, where, verify_result)
    timings["load"] = time.perf_counter() - t0

    feeds, reference = None, None
    if verify_result:  # the original's outputs first: an input it refuses fails before any pass runs
        t_ref = time.perf_counter()
        feeds, reference = _reference_run(proto, in_path, seed, inputs, shapes, where)
        timings["verify_original"] = time.perf_counter() - t_ref
    t1 = time.perf_counter()
    # a > 2 GiB result keeps its weights in a data file; put it beside the output so saving is a rename
    workdir = Path(output).parent if output is not None and Path(output).parent.is_dir() else None
    res = run_pipeline(proto, target=target, skip=tuple(skip), workdir=workdir,
                       base_dir=in_path.parent if in_path is not None else None)
    try:
        timings["passes"] = time.perf_counter() - t1
        tactics: dict[str, str] = {}
        if tune and target != "hip":
            raise InputError("--tune picks kernels for fused nodes: it needs --target hip")
        if target == "hip":
            from .tune import assign_attention_tactics, assign_tactics, tune_tactics

            t_tune = time.perf_counter()
            tactics = assign_tactics(res.model, allow_tf32, *_tf32_target(device) if allow_tf32 else ("cuda", ""))
            if tune:
                tactics = {i.node.name: i.tactic for i in tune_tactics(res.model, allow_tf32, device)}
                timings["tune"] = time.perf_counter() - t_tune
            tactics.update(assign_attention_tactics(res.model, allow_tf32))
            for rec in res.fusions:
                if rec.fused_node in tactics:
                    rec.tactic = tactics[rec.fused_node]
        if rtol is None and any(t.startswith(("mma_tf32", "wgmma_tf32", "flash_tf32")) for t in tactics.values()):
            rtol = TF32_RTOL

        result = OptimizeResult(
            model=res.model, fusions=res.fusions, verification=None, ops_before=op_counts(proto),
            ops_after=op_counts(res.model), pass_counts=res.pass_counts, timings=timings,
            input_path=str(in_path) if in_path else "<memory>",
            input_sha256=sha256_file(in_path) if in_path else "",
            input_bytes=in_path.stat().st_size if in_path else approx_size(proto),
            output_path=str(output) if output is not None else None,
        )
        failure: VerificationError | None = None
        if verify_result:
            t2 = time.perf_counter()
            try:
                result.verification = verify(proto, res.model, feeds, rtol=rtol, atol=atol, device=device,
                                             reference=reference, original_path=in_path,
                                             fused_data_path=res.data_path)
            except InputError:
                raise
            except Exception as e:  # the original ran on these inputs (_reference_run): the rewritten model failed
                failure = VerificationError(f"{where}: the rewritten model failed to run on inputs the original "
                                            f"runs on ({first_line(e)})", result)
            timings["verify"] = time.perf_counter() - t2
            bad = result.verification.first_failure() if result.verification is not None else None
            if bad is not None:
                failure = VerificationError(
                    f"verification failed for output {bad.name!r} ({bad.path}): rel-L2 {bad.rel_l2:.3e} "
                    f"(tolerance {bad.rtol:.1e}), max-abs {bad.max_abs:.3e}, cosine {bad.cosine:.6f}, "
                    f"SNR {bad.snr_db:.1f} dB{'; ' + bad.reason if bad.reason else ''}", result)
        if output is not None and (failure is None or keep_on_fail):
            t3 = time.perf_counter()
            save_model_atomic(res.model, output, res.data_path, move_data=True)
            result.written = True
            result.output_sha256 = sha256_file(output)
            result.output_bytes = Path(output).stat().st_size
            timings["write"] = time.perf_counter() - t3
        else:
            result.output_bytes = approx_size(res.model)
        timings["total"] = time.perf_counter() - t0
        result.report = build_report(result, {
            "target": target, "skip": list(skip), "verify": verify_result, "rtol": rtol, "atol": atol,
            "shapes": shapes or {}, "inputs": sorted(inputs or {}), "keep_on_fail": keep_on_fail,
            "device": device, "seed": seed, "tune": tune, "allow_tf32": allow_tf32})
        if report is not None:
            write_json(result.report, str(report))
        if failure is not None:
            raise failure
        return result
    finally:  # the external data of a > 2 GiB result was moved into place, or is discarded here
        if res.data_path is not None:
            remove_quietly(res.data_path)
            if workdir is None:
                shutil.rmtree(res.data_path.parent, ignore_errors=True)


def _reference_run(proto: onnx.ModelProto, in_path: Path | None, seed: int, inputs: dict[str, np.ndarray] | None,
                   shapes: dict[str, list[int]] | None, where: str) -> tuple[dict[str, np.ndarray], dict]:
    """The verification inputs and the original model's outputs on them (onnxruntime, CPU), before any pass runs.
    Generated symbolic dims start at DEFAULT_SYMBOLIC_OTHER; where the original refuses them (a waveform shorter
    than wav2vec2's conv stack, a window larger than the sequence), they grow through SYMBOLIC_RETRY_SIZES (one
    session, run again) before this gives up with an InputError that names --shape."""
    from .external import has_external
    from .verify import feeds_the_model_takes, ort_session

    try:  # a model onnxruntime cannot load is refused at once: no input size changes that
        run = ort_session(in_path if in_path is not None and has_external(proto) else proto)
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{where}: cannot run the model for verification ({first_line(e)})") from None
    return feeds_the_model_takes(proto, run, seed, inputs, shapes, where, "run the model for verification")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _tf32_target(device: str) -> tuple[str, str]:
    """(backend name, arch) of the GPU this run fuses on, for the TF32 conv heuristic (Hopper has a tactic of its
    own); ("cuda", "") where there is none: the tactics then suit every NVIDIA GPU."""
    if device == "cpu":
        return "cuda", ""
    from .kernels.backend import select_backend

    try:
        backend = select_backend(device)
    except Exception:  # noqa: BLE001 - no usable GPU: fuse for any
        return "cuda", ""
    return (backend.name, backend.arch) if backend.is_device else ("cuda", "")
