"""``onnx-fuse``: a thin click layer over :func:`fuser.optimize`.

``onnx-fuse MODEL -o OUT`` is the main job (the ``fuse`` subcommand is implied); other subcommands
(``kernels`` …) sit beside it. Errors are one line on stderr with the documented exit code:
0 ok, 1 verification failed, 2 usage error or unreadable/invalid input, 3 internal error (a bug).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import click
import numpy as np

from fuser import __version__
from fuser.cli.diff_cmds import diff_cmd, view_cmd, view_models, write_mapping_for
from fuser.errors import EXIT_INTERNAL, FuserError, InputError

# click marks usage errors with exit code 2 already, matching ours


class DefaultGroup(click.Group):
    """A group whose first argument, when it is not a subcommand, goes to ``fuse``."""

    default_cmd = "fuse"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = [self.default_cmd, *args]
        elif not args:
            args = ["--help"]
        return super().parse_args(ctx, args)


def _parse_input(spec: str) -> tuple[str, np.ndarray]:
    if "=" not in spec:
        raise InputError(f"--input {spec!r}: expected NAME=FILE.npy")
    name, path = spec.split("=", 1)
    try:
        return name, np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"--input {name}: cannot read {path} ({e})") from None


def _parse_shape(spec: str) -> tuple[str, list[int]]:
    if ":" not in spec:
        raise InputError(f"--shape {spec!r}: expected NAME:d0,d1,...")
    name, dims = spec.rsplit(":", 1)
    try:
        shape = [int(d) for d in dims.split(",") if d.strip() != ""]
    except ValueError:
        raise InputError(f"--shape {spec!r}: dims must be integers") from None
    if any(d <= 0 for d in shape):
        raise InputError(f"--shape {spec!r}: dims must be positive")
    return name, shape


def _fail(e: BaseException) -> None:
    if isinstance(e, FuserError):
        click.echo(f"onnx-fuse: error: {e}", err=True)
        sys.exit(e.exit_code)
    if os.environ.get("ONNX_FUSE_DEBUG"):
        raise e
    first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
    click.echo(f"onnx-fuse: internal error: {type(e).__name__}: {first} (set ONNX_FUSE_DEBUG=1 for a "
               "traceback)", err=True)
    sys.exit(EXIT_INTERNAL)


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="onnx-fuse")
def main() -> None:
    """Fuse Conv/BN/activation (and more) in an ONNX model, bind fused nodes to bundled GPU kernels,
    and verify the result against the original.

    \b
    onnx-fuse MODEL.onnx -o FUSED.onnx      (same as: onnx-fuse fuse MODEL.onnx -o FUSED.onnx)
    """


main.add_command(diff_cmd)
main.add_command(view_cmd)


@main.command("fuse")
@click.argument("model", type=click.Path(dir_okay=True, path_type=Path), required=False)
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Where to write the fused model.")
@click.option("--target", type=click.Choice(["hip", "onnx"]), default="hip", show_default=True,
              help="hip: fused nodes bound to our kernels (function-backed, runs anywhere); "
                   "onnx: standard ops only.")
@click.option("--skip", "skip", multiple=True, metavar="PASS", help="Skip a pass (repeatable).")
@click.option("--list-passes", is_flag=True, help="List the passes in the order they run, and exit.")
@click.option("--no-verify", is_flag=True, help="Do not verify the result numerically.")
@click.option("--rtol", type=float, default=None, help="Max relative L2 error per output "
              "(default 1e-5 fp32, 1e-2 fp16).")
@click.option("--atol", type=float, default=None, help="Also pass an output whose max abs error is ≤ ATOL.")
@click.option("--input", "inputs", multiple=True, metavar="NAME=FILE.npy", help="Verification input.")
@click.option("--shape", "shapes", multiple=True, metavar="NAME:d0,d1,...", help="Shape for symbolic dims.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of generated inputs.")
@click.option("--device", type=click.Choice(["auto", "hip", "cuda", "cpu"]), default="auto",
              show_default=True, help="Where the runtime verifies the fused kernels.")
@click.option("--report", "report", type=click.Path(path_type=Path), help="Write a JSON report here.")
@click.option("--keep-on-fail", is_flag=True, help="Write the output even if verification fails.")
@click.option("--tune", is_flag=True, help="Time each fused conv's candidate kernels (and the onnxruntime "
              "library path) on the GPU and keep the fastest as its tactic; default: a documented heuristic.")
@click.option("--allow-tf32", "allow_tf32", is_flag=True, help="Allow TF32 tensor-core tactics (conv mma_tf32, fp32 "
              "attention flash_tf32); the default verification tolerance of fp32 outputs becomes 1e-2 when one is "
              "chosen.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("--mapping", type=click.Path(path_type=Path), metavar="FILE.json",
              help="Also write the fused-node → source-nodes map for Model Explorer's split view.")
@click.option("--view", is_flag=True, help="Then serve MODEL and OUT with Netron on loopback (Ctrl+C stops).")
@click.option("--no-browser", is_flag=True, help="With --view: print the two URLs, open no browser.")
def fuse_cmd(model, output, target, skip, list_passes, no_verify, rtol, atol, inputs, shapes, seed, device,
             report, keep_on_fail, tune, allow_tf32, quiet, mapping, view, no_browser) -> None:
    """Rewrite MODEL and write the verified result to -o OUT."""
    from fuser.passes import pass_names

    if list_passes:
        for name in [*pass_names(), "cleanup"]:
            click.echo(name)
        return
    try:
        if model is None:
            raise InputError("missing MODEL (usage: onnx-fuse MODEL -o OUT)")
        if output is None:
            raise InputError("missing -o/--output")
        feeds = dict(_parse_input(s) for s in inputs)
        shape_map = dict(_parse_shape(s) for s in shapes)
        from fuser.api import optimize

        # SIGINT while writing: the atomic save cleans its temp file in `finally`; exit 130 quietly.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        result = optimize(model, output, target=target, skip=tuple(skip), verify_result=not no_verify,
                          rtol=rtol, atol=atol, inputs=feeds, shapes=shape_map, keep_on_fail=keep_on_fail,
                          device=device, report=report, seed=seed, tune=tune, allow_tf32=allow_tf32)
        if mapping is not None:
            write_mapping_for(model, result.model, mapping, output)
    except KeyboardInterrupt:
        click.echo("onnx-fuse: interrupted; nothing written", err=True)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001
        from fuser.errors import VerificationError

        if isinstance(e, VerificationError) and e.report is not None and not quiet:
            _print(e.report)
        _fail(e)
        return
    if not quiet:
        _print(result)
    if view:
        try:
            view_models(model, output, "127.0.0.1", 0, browse=not no_browser)
        except Exception as e:  # noqa: BLE001
            _fail(e)


@main.command("run")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--input", "inputs", multiple=True, metavar="NAME=FILE.npy", help="Input (else seeded random).")
@click.option("--shape", "shapes", multiple=True, metavar="NAME:d0,d1,...", help="Shape for symbolic dims.")
@click.option("--device", type=click.Choice(["auto", "hip", "cuda", "cpu"]), default="auto", show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Save the outputs to an .npz file.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--allow-tf32", is_flag=True, help="Let the onnxruntime islands use TF32 (default: fp32).")
@click.option("--no-cuda-graph", is_flag=True, help="Run step by step instead of replaying one CUDA graph.")
@click.option("--no-fp64-linear", is_flag=True, help="Leave fp32 MatMul/Gemm layers to onnxruntime (cuBLAS SGEMM) "
              "instead of our linear steps on the FP64 tensor cores.")
def run_cmd(model, inputs, shapes, device, output, seed, allow_tf32, no_cuda_graph, no_fp64_linear) -> None:
    """Run a (fused) MODEL in the onnx-fuse runtime and summarise its outputs."""
    try:
        from fuser.io import load_model
        from fuser.verify import feeds_the_model_takes, has_generated_symbolic, make_inputs

        proto = load_model(model)
        user, given = dict(_parse_input(s) for s in inputs), dict(_parse_shape(s) for s in shapes)
        sess = _session(proto, device, allow_tf32, not no_cuda_graph, False if no_fp64_linear else None)
        if has_generated_symbolic(proto, user, given):  # sizes it refuses grow, as verification's do
            _, outs = feeds_the_model_takes(proto, lambda f: sess.run(None, f), seed, user, given, str(model))
        else:
            outs = sess.run(None, make_inputs(proto, seed, user, given))
    except Exception as e:  # noqa: BLE001
        _fail(e)
        return
    click.echo(f"device {sess.device}: {sess.kernel_steps} kernel steps, "
               f"{len(sess.steps) - sess.kernel_steps} onnxruntime islands")
    for name, v in zip(sess.output_names, outs, strict=True):
        finite = np.isfinite(v).all() if v.dtype.kind == "f" else True
        click.echo(f"{name}: {v.dtype} {list(v.shape)} mean {float(np.mean(v)):.6g} "
                   f"std {float(np.std(v)):.6g}{'' if finite else ' (non-finite values!)'}")
    if output is not None:
        np.savez(output, **dict(zip(sess.output_names, outs, strict=True)))


def _session(proto, device: str, allow_tf32: bool = False, cuda_graph: bool = True, fp64_linear: bool | None = None):
    from fuser.kernels.backend import BackendUnavailable
    from fuser.runtime import Session

    try:
        return Session(proto, device=device, allow_tf32=allow_tf32, cuda_graph=cuda_graph, fp64_linear=fp64_linear)
    except BackendUnavailable as e:
        raise InputError(str(e)) from None


@main.command("bench")
@click.argument("original", type=click.Path(path_type=Path))
@click.argument("fused", type=click.Path(path_type=Path))
@click.option("--device", type=click.Choice(["auto", "hip", "cuda", "cpu"]), default="auto", show_default=True)
@click.option("--warmup", type=int, default=10, show_default=True)
@click.option("--iters", type=int, default=50, show_default=True)
@click.option("--input", "inputs", multiple=True, metavar="NAME=FILE.npy")
@click.option("--shape", "shapes", multiple=True, metavar="NAME:d0,d1,...")
@click.option("--allow-tf32", is_flag=True, help="Let the CUDA EP use TF32, for the baseline and for the fused "
              "model's islands (default: fp32 for both).")
@click.option("--no-cuda-graph", is_flag=True, help="Time the fused model step by step (no CUDA graph replay).")
@click.option("--no-fp64-linear", is_flag=True, help="Leave the fused model's fp32 MatMul/Gemm layers to onnxruntime "
              "(cuBLAS SGEMM) instead of our linear steps on the FP64 tensor cores.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the result as JSON.")
def bench_cmd(original, fused, device, warmup, iters, inputs, shapes, allow_tf32, no_cuda_graph, no_fp64_linear,
              json_path) -> None:
    """Baseline (ORIGINAL in onnxruntime) vs current (FUSED in our runtime) on the same device."""
    import json

    try:
        from fuser.bench import bench
        from fuser.io import load_model
        from fuser.kernels.backend import BackendUnavailable
        from fuser.verify import feeds_the_model_takes, has_generated_symbolic, make_inputs, ort_session

        orig, fz = load_model(original), load_model(fused)
        user, given = dict(_parse_input(s) for s in inputs), dict(_parse_shape(s) for s in shapes)
        if has_generated_symbolic(orig, user, given):  # sizes the original takes (onnxruntime, CPU), as verify does
            feeds, _ = feeds_the_model_takes(orig, ort_session(orig), 0, user, given, str(original))
        else:
            feeds = make_inputs(orig, 0, user, given)
        try:
            res = bench(orig, fz, device, warmup, iters, feeds, allow_tf32, cuda_graph=not no_cuda_graph,
                        fp64_linear=False if no_fp64_linear else None)
        except BackendUnavailable as e:
            raise InputError(str(e)) from None
    except Exception as e:  # noqa: BLE001
        _fail(e)
        return
    click.echo(res.block(Path(fused).name))
    if json_path is not None:
        json_path.write_text(json.dumps({"original": str(original), "fused": str(fused), **res.to_json(),
                                          "input_shapes": {k: list(v.shape) for k, v in feeds.items()}}, indent=1))


@main.group("kernels")
def kernels_group() -> None:
    """The bundled GPU kernel families: list them, or compile them all for one target (no GPU needed)."""


@kernels_group.command("list")
def kernels_list() -> None:
    """Every kernel family and its variants (entry points)."""
    from fuser.kernels.build import list_families

    for fam in list_families():
        kind = "device" if fam.has_device_code else "reference-only"
        click.echo(f"{fam.name:<12} {kind:<15} {fam.doc}")
        for v in fam.variants:
            click.echo(f"    {v}")


@kernels_group.command("build")
@click.option("--backend", type=click.Choice(["hip", "cuda"]), required=True)
@click.option("--arch", required=True, help="gfx90a, gfx1030, ... (hip) or sm_80, sm_90, ... (cuda)")
@click.option("--no-cache", is_flag=True, help="Compile even what the disk cache already holds.")
def kernels_build(backend: str, arch: str, no_cache: bool) -> None:
    """Compile every kernel family for BACKEND/ARCH; print each compiler log; exit 1 on any failure."""
    from fuser.kernels.build import build_all
    from fuser.kernels.toolchain import ToolchainMissing

    try:
        results = build_all(backend, arch, use_cache=not no_cache)
    except (ToolchainMissing, ValueError) as e:
        _fail(InputError(str(e)))
        return
    failed = 0
    for r in results:
        state = "ok" if r.ok else "FAILED"
        how = "cached" if r.cached else f"{r.seconds:.2f}s"
        click.echo(f"{r.family:<12} {r.variant or '-':<40} {state:<7} {how}")
        if r.log.strip() and (not r.ok or not r.cached):
            click.echo("    " + r.log.strip().replace("\n", "\n    "))
        failed += not r.ok
    click.echo(f"{len(results) - failed} ok, {failed} failed ({backend} {arch})")
    if failed:
        sys.exit(1)


def _print(result) -> None:
    from rich.console import Console

    from fuser.report import print_table

    print_table(result, Console(stderr=True, width=max(100, Console(stderr=True).width)))


if __name__ == "__main__":  # pragma: no cover
    main()
