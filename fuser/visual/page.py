"""``onnx-fuse diff``: one self-contained HTML page — both graphs side by side, each fused node linked to
the original nodes it replaced, op counts before/after and the table of fusions.

Self-contained means: the SVG of both layouts, the styles, the script and the data are inline; the page
references no URL at all, and its Content-Security-Policy (``default-src 'none'``) forbids the browser to
load anything, so it works offline and shows the same thing everywhere.
"""

from __future__ import annotations

import html
import json
import os
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

from .. import __version__
from .layout import DrawNode, render_svg
from .model import GraphDiff, Group, Node

CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"

# fill, stroke per node class (the legend shows the same)
STYLE = {
    "plain": ("#f3f3f3", "#9a9a9a"),
    "src": ("#ffe0b8", "#d9822b"),  # original node that a fused node replaced
    "folded": ("#e4d9f6", "#8e6cc2"),  # original node folded into another node's weights
    "foldtarget": ("#f1ebfb", "#8e6cc2"),  # node whose weights absorbed a fold (kept, weights changed)
    "removed": ("#ffffff", "#b4b4b4"),  # original node with no counterpart
    "const": ("#fafafa", "#c8c8c8"),  # original node computed from constants only (folded to an initializer)
    "fused": ("#ffb066", "#b85f00"),  # fused node
    "added": ("#d7f2dc", "#3c9a52"),  # output node with no counterpart
    "io": ("#dfeefc", "#5b8ec9"),
}
LEGEND = [
    ("fused", "fused node (fused graph)"),
    ("src", "replaced by a fused node"),
    ("folded", "folded into weights"),
    ("foldtarget", "weights absorbed a fold"),
    ("removed", "not in the fused graph"),
    ("added", "new node"),
    ("plain", "unchanged"),
]


def _classes(d: GraphDiff) -> tuple[list[str], list[str]]:
    left = []
    for n in d.original_nodes:
        g = d.groups[d.left_group[n.index]] if n.index in d.left_group else None
        if g is not None:
            if n.index in g.folded:
                left.append("folded")
            elif g.kind == "fused":
                left.append("src")
            else:
                left.append("foldtarget")
        elif n.index in d.left_to_right:
            left.append("plain")
        else:
            left.append("const" if n.const else "removed")
    right = []
    for n in d.fused_nodes:
        g = d.groups[d.right_group[n.index]] if n.index in d.right_group else None
        if g is not None:
            right.append("fused" if g.kind == "fused" else "foldtarget")
        elif n.index in d.right_to_left:
            right.append("plain")
        else:
            right.append("added")
    return left, right


def _draw(side: str, nodes: list[Node], classes: list[str], inputs: list[str], outputs: list[str],
          show_constants: bool, name: str) -> str:
    draw: list[DrawNode] = []
    producer: dict[str, str] = {}
    for k, t in enumerate(inputs):
        nid = f"{side}I{k}"
        fill, stroke = STYLE["io"]
        draw.append(DrawNode(nid, "input", t, "io", fill, stroke, f"graph input {t}", shape="ellipse"))
        producer[t] = nid
    drawn: set[str] = set()
    for n, cls in zip(nodes, classes, strict=True):
        if n.const and not show_constants:
            continue
        nid = f"{side}{n.index}"
        drawn.add(nid)
        fill, stroke = STYLE[cls]
        title = f"{n.name} ({n.op})" + (f"\n{n.doc}" if n.doc else "")
        draw.append(DrawNode(nid, n.op_type, n.name, cls, fill, stroke, title,
                             dashed=cls in ("removed", "const"), bold=cls == "fused"))
        for o in n.outputs:
            producer[o] = nid
    edges = []
    for n in nodes:
        nid = f"{side}{n.index}"
        if nid not in drawn:
            continue
        for t in n.inputs:
            src = producer.get(t)
            if src is not None and (src in drawn or src[1:2] == "I"):
                edges.append((src, nid))
    for k, t in enumerate(outputs):
        nid = f"{side}O{k}"
        fill, stroke = STYLE["io"]
        draw.append(DrawNode(nid, "output", t, "io", fill, stroke, f"graph output {t}", shape="ellipse"))
        src = producer.get(t)
        if src is not None and (src in drawn or src[1:2] == "I"):
            edges.append((src, nid))
    return render_svg(draw, edges, name)


def _e(s: object) -> str:
    return html.escape(str(s), quote=True)


def _link(side: str, i: int, name: str, extra: str = "") -> str:
    return f'<a href="#{side}:{_e(name)}" class="nl" data-s="{side}" data-i="{i}"{extra}>{_e(name)}</a>'


def _fusion_rows(d: GraphDiff) -> str:
    rows = []
    order = sorted(range(len(d.groups)), key=lambda gi: (d.groups[gi].kind != "fused", d.groups[gi].fused[0]))
    for k, gi in enumerate(order, 1):
        g: Group = d.groups[gi]
        fused = ", ".join(_link("R", r, d.fused_nodes[r].name) for r in g.fused)
        src = ", ".join(
            _link("L", s, d.original_nodes[s].name, ' data-folded="1" title="folded into the weights"')
            if s in g.folded else _link("L", s, d.original_nodes[s].name)
            for s in g.sources)
        if g.missing:
            src += " " + ", ".join(f"<s>{_e(m)}</s>" for m in g.missing)
        rows.append(f'<tr class="{g.kind}" data-g="{gi}"><td>{k}</td><td>{_e(g.pattern)}</td><td>{fused}</td>'
                    f'<td title="{_e(g.op_type)}">{_e(g.op_type.removeprefix("fuser::"))}</td><td>{src}</td>'
                    f"<td>{_e(g.kernel or '—')}</td>"
                    f"<td>{_e(g.tactic or '—')}</td></tr>")
    return "\n".join(rows)


def _op_rows(d: GraphDiff) -> str:
    before, after = d.op_counts()
    keys = sorted(set(before) | set(after), key=lambda k: (-(before.get(k, 0) + after.get(k, 0)), k))
    rows = []
    for k in keys:
        b, a = before.get(k, 0), after.get(k, 0)
        delta = a - b
        cls = "up" if delta > 0 else "down" if delta < 0 else ""
        rows.append(f'<tr class="{cls}"><td>{_e(k)}</td><td>{b}</td><td>{a}</td>'
                    f"<td>{'+' if delta > 0 else ''}{delta if delta else ''}</td></tr>")
    rows.append(f'<tr class="total"><td>nodes</td><td>{sum(before.values())}</td><td>{sum(after.values())}</td>'
                f"<td>{sum(after.values()) - sum(before.values())}</td></tr>")
    return "\n".join(rows)


def _data(d: GraphDiff, lcls: list[str], rcls: list[str], show_constants: bool) -> dict:
    def nodes(ns: list[Node], classes: list[str], groups: dict[int, int]) -> list[list]:
        return [[n.name, n.op, c, n.doc, groups.get(n.index, -1), int(not n.const or show_constants),
                 n.inputs[:12], n.outputs[:12]] for n, c in zip(ns, classes, strict=True)]

    return {
        "left": {"path": d.original_path, "nodes": nodes(d.original_nodes, lcls, d.left_group)},
        "right": {"path": d.fused_path, "nodes": nodes(d.fused_nodes, rcls, d.right_group)},
        "groups": [{"pattern": g.pattern, "op": g.op_type, "kind": g.kind, "fused": g.fused, "sources": g.sources,
                    "folded": g.folded, "kernel": g.kernel, "tactic": g.tactic, "missing": g.missing}
                   for g in d.groups],
        "l2r": {str(k): v for k, v in d.left_to_right.items()},
        "r2l": {str(k): v for k, v in d.right_to_left.items()},
    }


def _pane(side: str, label: str, path: str, count: int, svg: str) -> str:
    zoom = "".join(f'<button type="button" data-zoom="{k}" data-side="{side}">{t}</button>'
                   for k, t in (("-", "−"), ("+", "+"), ("w", "fit width"), ("a", "fit all")))
    return f"""  <section class="pane" id="pane-{side}">
    <div class="pane-head"><span class="side">{label}</span>
      <span class="path" title="{_e(path)}">{_e(os.path.basename(path))}</span>
      <span class="count">{count} nodes</span><span class="zoom">{zoom}</span></div>
    <div class="view" id="view-{side}">
{svg}
    </div>
  </section>"""


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def render_html(d: GraphDiff, title: str | None = None, show_constants: bool = False) -> str:
    lcls, rcls = _classes(d)
    with ThreadPoolExecutor(2) as pool:  # two dot processes at once
        left = pool.submit(_draw, "L", d.original_nodes, lcls, d.original_inputs, d.original_outputs,
                           show_constants, "original")
        right = pool.submit(_draw, "R", d.fused_nodes, rcls, d.fused_inputs, d.fused_outputs, show_constants,
                            "fused")
        left_svg, right_svg = left.result(), right.result()
    data = json.dumps(_data(d, lcls, rcls, show_constants), ensure_ascii=False, separators=(",", ":"))
    data = data.replace("</", "<\\/").replace("<!--", "<\\!--")
    nb, na = len(d.original_nodes), len(d.fused_nodes)
    fused = d.fused_groups()
    folds = sum(len(g.folded) for g in d.groups)
    n_const = sum(1 for n in d.original_nodes if n.const)
    n_const_right = sum(1 for n in d.fused_nodes if n.const)
    n_removed = sum(1 for c in lcls if c == "removed")
    title = title or f"onnx-fuse diff: {os.path.basename(d.original_path)} → {os.path.basename(d.fused_path)}"
    const_note = ""
    if n_const:
        kept = f", {n_const_right} of them still in the fused graph" if n_const_right else ""
        const_note = (f'<span class="note">{n_const} original nodes compute from constants only (weights; '
                      f"folded into initializers{kept}){'' if show_constants else ': not drawn (--show-constants)'}"
                      "</span>")
    legend = "".join(f'<span class="lg"><i style="background:{STYLE[c][0]};border-color:{STYLE[c][1]}"></i>'
                     f"{_e(t)}</span>" for c, t in LEGEND)
    summary = (f"<b>{nb}</b> → <b>{na}</b> nodes · <b>{len(fused)}</b> fused nodes replacing "
               f"<b>{sum(len(g.sources) for g in fused)}</b> · <b>{folds}</b> nodes folded into weights"
               + (f" · <b>{n_removed}</b> removed" if n_removed else "")
               + (f" · <b>{len(d.added)}</b> new" if d.added else ""))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="onnx-fuse {_e(__version__)}">
<title>{_e(title)}</title>
<style>
{_asset("page.css")}
</style>
</head>
<body>
<header>
  <h1>{_e(title)}</h1>
  <div class="summary">{summary}</div>
  <div class="tools">
    <button type="button" id="prev-fusion" title="previous fused node (p)">◀</button>
    <button type="button" id="next-fusion" title="next fused node (n)">next fused node ▶</button>
    <input id="search" type="search" placeholder="find node by name or op (Enter)" autocomplete="off">
    <span id="search-status"></span>
  </div>
</header>
<div class="legend">{legend}{const_note}</div>
<main id="panes">
{_pane("L", "original", d.original_path, nb, left_svg)}
{_pane("R", "fused", d.fused_path, na, right_svg)}
</main>
<section id="bottom">
  <div class="panel" id="details"><h2>Selection</h2><div id="details-body"><p class="hint">Click a node in either graph
  (or a row below) to see what it became, or what it was made of. Drag to pan, Ctrl+wheel to zoom,
  <kbd>n</kbd>/<kbd>p</kbd> step through the fused nodes.</p></div></div>
  <div class="panel" id="fusions">
    <h2>Fusions ({len(fused)} fused nodes, {len(d.groups) - len(fused)} folds into kept nodes)</h2>
    <table id="fusion-table"><thead><tr><th>#</th><th>pattern</th><th>fused node</th><th>op</th>
      <th>replaced (original nodes; <span class="fl">folded into weights</span>)</th><th>kernel</th><th>tactic</th>
    </tr></thead>
    <tbody>
{_fusion_rows(d)}
    </tbody></table></div>
  <div class="panel" id="ops"><h2>Op counts</h2>
    <table id="op-table"><thead><tr><th>op</th><th>before</th><th>after</th><th>Δ</th></tr></thead>
    <tbody>
{_op_rows(d)}
    </tbody></table></div>
</section>
<script type="application/json" id="fuser-diff-data">{data}</script>
<script>
{_asset("page.js")}
</script>
</body>
</html>
"""


def write_html(d: GraphDiff, path: str | os.PathLike, title: str | None = None, show_constants: bool = False) -> str:
    text = render_html(d, title, show_constants)
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return text
