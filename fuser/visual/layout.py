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
from collections import defaultdict
from dataclasses import dataclass

from ..errors import InputError

DOT_INSTALL_HINT = ("Graphviz `dot` not found on PATH: install Graphviz (Debian/Ubuntu: apt-get install graphviz; "
                    "macOS: brew install graphviz; conda: conda install graphviz), or set ONNX_FUSE_DOT")


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
    small: bool = False  # one small line (edge stubs)


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


def to_dot(nodes: list[DrawNode], edges: list[tuple[str, str]], name: str, effort: int = 0) -> str:
    """``effort`` 0: dot's defaults where they are fast enough; 1 and 2: fewer network-simplex iterations
    for the x positions (the part that grows fastest with size) and fewer crossing-minimisation passes."""
    size = len(nodes) + len(edges)
    if effort == 0 and size > 2500:
        effort = 1
    tuning = {0: "", 1: ", nslimit=0.2, mclimit=0.5", 2: ", splines=line, nslimit=0.05, mclimit=0.1, remincross=false"}
    lines = [
        f"digraph {_q(name)} {{",
        '  graph [rankdir=TB, nodesep=0.18, ranksep=0.3, bgcolor="transparent", margin=0.1' + tuning[effort] + "];",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10, height=0.3, '
        'margin="0.08,0.03", penwidth=1];',
        '  edge [arrowsize=0.5, color="#8a8a8a", penwidth=0.8];',
    ]
    for n in nodes:
        style = "rounded,filled" + (",dashed" if n.dashed else "") + (",bold" if n.bold else "")
        if n.shape != "box":
            style = "filled" + (",dashed" if n.dashed else "")
        label = f"<<b>{_h(n.label_top)}</b>" if not n.small else f'<<font point-size="8">{_h(n.label_top)}</font>'
        if n.label_bottom:
            label += f'<br/><font point-size="8">{_h(short(n.label_bottom))}</font>'
        label += ">"
        lines.append(f"  {n.id} [id={_q(n.id)}, class={_q(n.classes)}, label={label}, shape={n.shape}, "
                     f"style={_q(style)}, fillcolor={_q(n.fill)}, color={_q(n.stroke)}];")
    seen: set[tuple[str, str]] = set()
    stubs = {n.id for n in nodes if n.small}
    for a, b in edges:
        if (a, b) not in seen:
            seen.add((a, b))
            lines.append(f"  {a} -> {b}" + (" [style=dashed];" if a in stubs else ";"))
    lines.append("}")
    return "\n".join(lines)


def shorten_long_edges(nodes: list[DrawNode], edges: list[tuple[str, str]], budget: int,
                       min_span: int = 6) -> tuple[list[DrawNode], list[tuple[str, str]]]:
    """Bound the layout's cost: ``dot`` turns an edge spanning k ranks into k-1 virtual nodes, and a tensor
    that feeds layers all along a deep model (an attention mask, a shape, a graph input) makes tens of
    thousands of them — minutes of layout. Past ``budget`` virtual nodes, the longest edges are drawn as
    a short dashed stub above their consumer, labelled with the producer (a click on it jumps there)."""
    edges = list(dict.fromkeys(edges))
    ids = [n.id for n in nodes]
    succ: dict[str, list[str]] = defaultdict(list)
    indeg = dict.fromkeys(ids, 0)
    for a, b in edges:
        succ[a].append(b)
        indeg[b] += 1
    rank = dict.fromkeys(ids, 0)
    todo = [i for i in ids if indeg[i] == 0]
    while todo:
        a = todo.pop()
        for b in succ[a]:
            rank[b] = max(rank[b], rank[a] + 1)
            indeg[b] -= 1
            if indeg[b] == 0:
                todo.append(b)
    # dot pulls a producer down next to its nearest consumer
    home = {a: max(rank[a], min(rank[b] for b in succ[a]) - 1) if succ[a] else rank[a] for a in ids}
    spans = sorted(((rank[b] - home[a], a, b) for a, b in edges), reverse=True)
    total = sum(s - 1 for s, _, _ in spans if s > 1)
    if total <= budget:
        return nodes, edges
    by_id = {n.id: n for n in nodes}
    cut: dict[tuple[str, str], str] = {}
    for span, a, b in spans:
        if total <= budget or span <= min_span:
            break
        src = by_id[a]
        sid = f"{a[0]}S{len(cut)}"
        cut[(a, b)] = sid
        total -= span - 1
        name = src.label_bottom or src.label_top
        nodes.append(DrawNode(sid, f"↑ {short(name, 26)}", "", f"stub to-{a}", "#ffffff", "#bbbbbb",
                              f"from {name} ({src.label_top}), {span} ranks up: click to go there",
                              dashed=True, small=True))
    new_edges = [(cut[(a, b)], b) if (a, b) in cut else (a, b) for a, b in edges]
    return nodes, new_edges


VIRTUAL_BUDGET = (3000, 800)  # per effort level: long edges beyond this many dot virtual nodes become stubs


def render_svg(nodes: list[DrawNode], edges: list[tuple[str, str]], name: str, timeout: float = 120) -> str:
    """Lay out with dot; if that takes longer than ``timeout`` seconds, once more with cheaper settings."""
    exe = dot_executable()
    titles = {n.id: n.title for n in nodes}
    for attempt, effort in enumerate((0, 2)):
        ns, es = shorten_long_edges(list(nodes), edges, VIRTUAL_BUDGET[min(attempt, 1)])
        titles.update({n.id: n.title for n in ns})
        src = to_dot(ns, es, name, effort)
        try:
            p = subprocess.run([exe, "-Tsvg"], input=src.encode("utf-8"), capture_output=True,
                               timeout=timeout * (1 + 2 * attempt))
        except subprocess.TimeoutExpired:
            continue
        except OSError as e:
            raise InputError(f"cannot run Graphviz dot ({exe}): {e}") from None
        if p.returncode != 0:
            msg = p.stderr.decode("utf-8", "replace").strip().splitlines()
            raise InputError(f"Graphviz dot failed: {msg[0] if msg else 'exit ' + str(p.returncode)}")
        return clean_svg(p.stdout.decode("utf-8"), titles)
    raise InputError(f"Graphviz dot could not lay out the {name} graph ({len(nodes)} nodes) in "
                     f"{timeout * 4:.0f} s")


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
