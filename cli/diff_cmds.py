"""``onnx-fuse diff`` and ``onnx-fuse view``: look at what was fused into what.

``diff ORIGINAL FUSED -o diff.html`` writes one self-contained HTML page (both graphs side by side, each
fused node linked to the nodes it replaced, op counts, the fusion table); ``--mapping FILE.json`` also
writes the map for Model Explorer's split view. ``view ORIGINAL FUSED`` serves both models with Netron on
loopback (two ports) and prints both URLs. ``fuse --view`` / ``fuse --mapping`` do the same after a fuse.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from fuser.errors import InputError


def _fail(e: BaseException) -> None:
    from fuser.cli.main import _fail as fail

    fail(e)


def write_mapping_for(original: str | Path, fused_model, out: str | Path, fused_path: str | Path = "fused") -> dict:
    """The Model Explorer map between the model at ``original`` and ``fused_model`` (a fused ModelProto,
    e.g. ``optimize(...).model``), written to ``out``."""
    from fuser.visual import build_diff, load_graph, write_mapping

    orig = load_graph(original, "original")
    return write_mapping(build_diff(orig, fused_model, str(original), str(fused_path)), out, orig, fused_model)


def view_models(original: str | Path, fused: str | Path, host: str, port: int, browse: bool) -> None:
    """Serve both with Netron, print both URLs, block until Ctrl+C / SIGTERM."""
    from fuser.view import serve, serve_forever

    served = serve([("original", original), ("fused", fused)], host=host, port=port, browse=browse)
    for s in served:
        click.echo(f"{s.label + ':':<10} {s.url}  ({s.path})")
    click.echo("Netron is serving both models on loopback; press Ctrl+C to stop.")
    sys.stdout.flush()
    serve_forever(served)
    click.echo("stopped", err=True)


@click.command("diff")
@click.argument("original", type=click.Path(path_type=Path))
@click.argument("fused", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Where to write the HTML page "
              "(default: FUSED with .diff.html).")
@click.option("--mapping", type=click.Path(path_type=Path), metavar="FILE.json",
              help="Also write the fused-node → source-nodes map for Model Explorer's split view.")
@click.option("--title", help="Page title.")
@click.option("--show-constants", is_flag=True, help="Also draw the original's constant (weight) subgraphs.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
def diff_cmd(original, fused, output, mapping, title, show_constants, quiet) -> None:
    """Write a self-contained HTML visual diff of ORIGINAL and its fused version FUSED."""
    try:
        from fuser.visual import build_diff, load_graph, write_html, write_mapping

        orig, fz = load_graph(original, "original"), load_graph(fused, "fused")
        d = build_diff(orig, fz, str(original), str(fused))
        out = output or fused.with_suffix(".diff.html")
        if out.resolve() in (Path(original).resolve(), Path(fused).resolve()):
            raise InputError(f"{out}: refusing to overwrite an input model")
        try:
            write_html(d, out, title=title, show_constants=show_constants)
            if mapping is not None:
                write_mapping(d, mapping, orig, fz)
        except OSError as e:
            raise InputError(f"cannot write {e.filename or out}: {e.strerror or e}") from None
    except Exception as e:  # noqa: BLE001
        _fail(e)
        return
    if not quiet:
        before, after = d.op_counts()
        click.echo(f"{out}: {sum(before.values())} → {sum(after.values())} nodes, {len(d.fused_groups())} fused "
                   f"nodes, {sum(len(g.folded) for g in d.groups)} folded"
                   + (f"; mapping: {mapping}" if mapping else ""), err=True)


@click.command("view")
@click.argument("original", type=click.Path(path_type=Path))
@click.argument("fused", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on (keep it loopback).")
@click.option("--port", type=int, default=0, help="Port of the original (the fused model gets PORT+1); "
              "default: two free ports.")
@click.option("--no-browser", is_flag=True, help="Do not open a browser (headless use): just print the URLs.")
def view_cmd(original, fused, host, port, no_browser) -> None:
    """Serve ORIGINAL and FUSED with Netron, side by side in two browser tabs."""
    try:
        view_models(original, fused, host, port, browse=not no_browser)
    except Exception as e:  # noqa: BLE001
        _fail(e)
