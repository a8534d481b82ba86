"""Graph layout by Graphviz ``dot`` (the system package: ``apt-get install graphviz``), as inline SVG.

``dot`` lays out layered graphs (Sugiyama) — the look Netron users know — and stays readable and fast at
the size of real models (DenseNet-121's 1746 nodes lay out in about half a second). Each node's SVG
group gets the id and CSS classes the page script works with; the SVG comes back without an XML
prolog, doctype, comments or namespace URLs, ready to be inlined into HTML.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from dataclasses import dataclass

from ..errors import InputError

DOT_INSTALL_HINT = ("Graphviz `dot` not found on PATH: install Graphviz (Debian/Ubuntu: apt-get install graphviz; "
                    "macOS: brew install graphviz; conda: conda install graphviz), or set ONNX_FUSE_DOT")
BIG = 4000  # nodes: from here on cheaper edge routing and fewer ordering passes


@dataclass
class DrawNode:
    id: str
    label_top: str
    label_bottom: str
    classes: str
    fill: str
    stroke: str
    title: str
    shape: str = "box"
    dashed: bool = False
    bold: bool = False


def dot_executable() -> str:
    import os

    exe = os.environ.get("ONNX_FUSE_DOT") or shutil.which("dot")
    if not exe:
        raise InputError(DOT_INSTALL_HINT)
    return exe


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _h(s: str) -> str:
    """Escape for a Graphviz HTML-like label."""
    return html.escape(s, quote=True).replace("[", "&#91;").replace("]", "&#93;")


def short(s: str, n: int = 30) -> str:
    return s if len(s) <= n else s[: n // 2 - 1] + "…" + s[-(n - n // 2):]


def to_dot(nodes: list[DrawNode], edges: list[tuple[str, str]], name: str) -> str:
    big = len(nodes) >= BIG
    lines = [
        f"digraph {_q(name)} {{",
        '  graph [rankdir=TB, nodesep=0.18, ranksep=0.3, bgcolor="transparent", margin=0.1'
        + (", splines=line, nslimit=2, nslimit1=2, mclimit=0.3, searchsize=10" if big else "") + "];",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10, height=0.3, '
        'margin="0.08,0.03", penwidth=1];',
        '  edge [arrowsize=0.5, color="#8a8a8a", penwidth=0.8];',
    ]
    for n in nodes:
        style = "rounded,filled" + (",dashed" if n.dashed else "") + (",bold" if n.bold else "")
        if n.shape != "box":
            style = "filled" + (",dashed" if n.dashed else "")
        label = f"<<b>{_h(n.label_top)}</b>"
        if n.label_bottom:
            label += f'<br/><font point-size="8">{_h(short(n.label_bottom))}</font>'
        label += ">"
        lines.append(f"  {n.id} [id={_q(n.id)}, class={_q(n.classes)}, label={label}, shape={n.shape}, "
                     f"style={_q(style)}, fillcolor={_q(n.fill)}, color={_q(n.stroke)}];")
    seen: set[tuple[str, str]] = set()
    for a, b in edges:
        if (a, b) not in seen:
            seen.add((a, b))
            lines.append(f"  {a} -> {b};")
    lines.append("}")
    return "\n".join(lines)


def render_svg(nodes: list[DrawNode], edges: list[tuple[str, str]], name: str, timeout: float = 600) -> str:
    exe = dot_executable()
    src = to_dot(nodes, edges, name)
    try:
        p = subprocess.run([exe, "-Tsvg"], input=src.encode("utf-8"), capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise InputError(f"Graphviz dot took longer than {timeout:.0f} s to lay out {len(nodes)} nodes") from None
    except OSError as e:
        raise InputError(f"cannot run Graphviz dot ({exe}): {e}") from None
    if p.returncode != 0:
        msg = p.stderr.decode("utf-8", "replace").strip().splitlines()
        raise InputError(f"Graphviz dot failed: {msg[0] if msg else 'exit ' + str(p.returncode)}")
    return clean_svg(p.stdout.decode("utf-8"), {n.id: n.title for n in nodes})


_PROLOG = re.compile(r"<\?xml[^>]*\?>|<!DOCTYPE[^>]*>|<!--.*?-->", re.S)
_XMLNS = re.compile(r'\s+xmlns(:xlink)?="[^"]*"')
_TITLE = re.compile(r'(<g id="([^"]+)" class="node[^"]*">\s*<title>)[^<]*(</title>)')
_SIZE = re.compile(r'<svg width="[^"]*" height="[^"]*"')


def clean_svg(svg: str, titles: dict[str, str]) -> str:
    svg = _PROLOG.sub("", svg)
    svg = _XMLNS.sub("", svg)
    svg = _SIZE.sub("<svg", svg, count=1)
    # the graph's own <title> would become the tooltip of the whole pane
    svg = re.sub(r'(<g id="graph0" class="graph"[^>]*>)\s*<title>[^<]*</title>', r"\1", svg, count=1)
    svg = _TITLE.sub(lambda m: m.group(1) + html.escape(titles.get(m.group(2), ""), quote=False)
                     + m.group(3), svg)
    return svg.strip()
