"""The visual diff: provenance on every fused node (DESIGN §3), the ``onnx-fuse diff`` page — rendered and
clicked in a real headless Chromium — and the Model Explorer mapping.

Browser: Debian's ``chromium`` driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
no port, no extra Python package). Screenshots are kept under ``tests/artifacts/`` (git-ignored).
Set ``ONNX_FUSE_REQUIRE_VISUAL=1`` (tests/run.sh does) to fail instead of skip where Graphviz or Chromium
is missing.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import fuser
from fuser.normalize import unique_node_names
from fuser.pipeline import run_pipeline
from fuser.visual import build_diff, load_graph, model_explorer_mapping, render_html
from fuser.visual.mapping import model_explorer_ids

from .conftest import EXAMPLES, LIGHT

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
DENSENET = LIGHT / "light_densenet121.onnx"
REQUIRE = os.environ.get("ONNX_FUSE_REQUIRE_VISUAL") == "1"


def need(tool: str, found: object) -> None:
    if not found:
        if REQUIRE:
            pytest.fail(f"{tool} is required here (ONNX_FUSE_REQUIRE_VISUAL=1) but not installed")
        pytest.skip(f"{tool} not installed")


def props(n: onnx.NodeProto) -> dict[str, str]:
    return {p.key: p.value for p in n.metadata_props}


def cli(*args: object, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fuser.cli.main", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


# ---------------------------------------------------------------------------------------------------------
# 1. provenance

def _unnamed_model() -> onnx.ModelProto:
    """Conv+BN+Relu twice; the first pair unnamed, the second pair sharing one name (``dup``)."""
    rng = np.random.default_rng(0)

    def w(name, *shape, positive=False):
        v = rng.standard_normal(shape).astype(np.float32)
        return numpy_helper.from_array(np.abs(v) + 0.5 if positive else v, name)

    inits, nodes = [], []
    x = "x"
    for k, names in enumerate((["", "", ""], ["dup", "dup", "dup"])):
        inits += [w(f"w{k}", 4, 4 if k else 3, 3, 3), w(f"g{k}", 4), w(f"b{k}", 4), w(f"m{k}", 4),
                  w(f"v{k}", 4, positive=True)]
        nodes += [helper.make_node("Conv", [x, f"w{k}"], [f"c{k}"], name=names[0], pads=[1, 1, 1, 1]),
                  helper.make_node("BatchNormalization", [f"c{k}", f"g{k}", f"b{k}", f"m{k}", f"v{k}"], [f"n{k}"],
                                   name=names[1]),
                  helper.make_node("Relu", [f"n{k}"], [f"r{k}"], name=names[2])]
        x = f"r{k}"
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_unnamed_and_duplicate_names_get_unique_stable_names() -> None:
    m = _unnamed_model()
    assert unique_node_names([(n.name, n.op_type) for n in m.graph.node]) == [
        "Conv_0", "BatchNormalization_1", "Relu_2", "dup", "dup_1", "dup_2", "Identity_6"]
    a, b = run_pipeline(m).model, run_pipeline(m).model
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)
    names = [n.name for n in a.graph.node]
    assert all(names) and len(set(names)) == len(names), names
    fused = [n for n in a.graph.node if n.domain == "fuser"]
    assert [n.name for n in fused] == ["Conv_0+Relu_2", "dup+dup_2"]
    for n in fused:
        p = props(n)
        sources = json.loads(p["fuser.source_nodes"])
        assert n.name == "+".join(sources) and p["fuser.pattern"] == "conv_relu"
        assert "\n" not in n.doc_string and all(s in n.doc_string for s in sources)
    assert json.loads(props(fused[0])["fuser.folded"]) == ["BatchNormalization_1"]
    assert json.loads(props(fused[1])["fuser.folded"]) == ["dup_1"]
    # the diff finds every one of them in the original, under the same names
    d = build_diff(m, a)
    assert [[d.original_nodes[i].name for i in g.sources] for g in d.groups] == [
        ["Conv_0", "BatchNormalization_1", "Relu_2"], ["dup", "dup_1", "dup_2"]]
    assert d.removed == [] and d.added == []


def test_folds_are_marked_on_kept_and_fused_nodes() -> None:
    res = fuser.optimize(EXAMPLES / "resnet_block.onnx", verify_result=False)
    by = {n.name: n for n in res.model.graph.node}
    conv14 = by["conv14"]  # a plain Conv that absorbed its BN
    assert conv14.domain == "" and json.loads(props(conv14)["fuser.folded"]) == ["bn15"]
    assert "bn15" in conv14.doc_string and "\n" not in conv14.doc_string
    f = by["conv1+relu3"]
    assert json.loads(props(f)["fuser.source_nodes"]) == ["conv1", "relu3"]
    assert json.loads(props(f)["fuser.folded"]) == ["bn2"] and "bn2" in f.doc_string
    # every record of the report is visible in the output's provenance
    shown = {s for n in res.model.graph.node for k in ("fuser.source_nodes", "fuser.folded")
             for s in json.loads(props(n).get(k, "[]"))} | {n.name for n in res.model.graph.node}
    assert {s for r in res.fusions for s in r.source_nodes} <= shown


def test_target_onnx_inlined_nodes_are_named_and_traceable() -> None:
    res = fuser.optimize(EXAMPLES / "resnet_block.onnx", target="onnx", verify_result=False)
    names = [n.name for n in res.model.graph.node]
    assert all(names) and len(set(names)) == len(names)
    assert not any(n.domain == "fuser" for n in res.model.graph.node)
    by = {n.name: n for n in res.model.graph.node}
    assert props(by["conv7+add9+relu10/Add"])["fuser.fused_node"] == "conv7+add9+relu10"
    d = build_diff(load_graph(EXAMPLES / "resnet_block.onnx", "original"), res.model)
    g = next(g for g in d.groups if g.pattern == "conv_add_relu")
    assert [d.fused_nodes[i].name for i in g.fused] == [
        "conv7+add9+relu10/Conv", "conv7+add9+relu10/Add", "conv7+add9+relu10/Relu"]
    assert [d.original_nodes[i].name for i in g.sources] == ["conv7", "bn8", "add9", "relu10"]


# ---------------------------------------------------------------------------------------------------------
# 2. the page and the mapping, on a real 1746-node CNN

@pytest.fixture(scope="module")
def densenet(tmp_path_factory) -> dict:
    if not DENSENET.exists():
        pytest.skip("onnx package without its light model zoo")
    need("Graphviz dot", shutil.which("dot"))
    tmp = tmp_path_factory.mktemp("densenet")
    fused = tmp / "densenet121.fused.onnx"
    res = fuser.optimize(DENSENET, fused, verify_result=False)
    html, mapping = tmp / "diff.html", tmp / "map.json"
    p = cli("diff", DENSENET, fused, "-o", html, "--mapping", mapping)
    assert p.returncode == 0, p.stderr
    return {"fused": fused, "result": res, "html": html, "mapping": mapping, "tmp": tmp}


def expected_groups(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Fused node → the original nodes it stands for, read straight from the node metadata."""
    out = {}
    for n in model.graph.node:
        p = props(n)
        if n.domain == "fuser":
            out[n.name] = json.loads(p["fuser.source_nodes"]) + json.loads(p.get("fuser.folded", "[]"))
    return out


def test_diff_groups_match_provenance_and_report(densenet) -> None:
    res = densenet["result"]
    orig = load_graph(DENSENET, "original")
    d = build_diff(orig, res.model)
    assert len(d.original_nodes) == 1746
    exp = expected_groups(res.model)
    assert len(exp) == 121
    got = {d.fused_nodes[g.fused[0]].name: sorted(d.original_nodes[i].name for i in g.sources) for g in d.groups}
    assert got == {k: sorted(v) for k, v in exp.items()}
    # every node optimize() reports as replaced is linked; what is left out is constant weight subgraphs
    linked = {d.original_nodes[i].name for i in d.left_to_right}
    assert {s for r in res.fusions for s in r.source_nodes} <= linked
    assert all(d.original_nodes[i].const for i in d.removed) and d.added == []


def test_diff_page_is_self_contained(densenet) -> None:
    page = densenet["html"].read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "default-src 'none'" in page  # the CSP forbids every load
    assert not re.search(r"https?:|//[a-z0-9.-]+\.[a-z]{2,}/", page, re.I), "a URL in the page"
    assert not re.search(r"""\b(src|href)\s*=\s*["'](?!#)""", page), "an external reference"
    assert "url(" not in page and "@import" not in page
    for name, sources in expected_groups(densenet["result"].model).items():
        assert f">{name}<" in page
        for s in sources:
            assert f">{s}<" in page
    assert "<th>before</th><th>after</th>" in page and ">ConstantOfShape</td><td>836</td><td>0</td>" in page


def test_mapping_is_model_explorer_sync_navigation_data(densenet) -> None:
    data = json.loads(densenet["mapping"].read_text())
    assert data["type"] == "sync_navigation" and data["disableMappingFallback"] is True
    entries = data["mappingEntries"]
    assert all(set(e) == {"leftNodeIds", "rightNodeIds"} and e["leftNodeIds"] and e["rightNodeIds"] for e in entries)
    lefts = [i for e in entries for i in e["leftNodeIds"]]
    rights = [i for e in entries for i in e["rightNodeIds"]]
    assert len(lefts) == len(set(lefts)) and len(rights) == len(set(rights))  # one entry per node id
    fused = load_graph(densenet["fused"], "fused")
    assert set(rights) == {n.name for n in fused.graph.node}
    orig = load_graph(DENSENET, "original")
    me_ids = model_explorer_ids(orig, unique_node_names([(n.name, n.op_type) for n in orig.graph.node]))
    assert set(lefts) <= set(me_ids)
    by_right = {tuple(e["rightNodeIds"]): e["leftNodeIds"] for e in entries}
    for name, sources in expected_groups(fused).items():
        assert sorted(by_right[(name,)]) == sorted(sources)
    # fuse --mapping (from optimize()'s result) writes the same map as diff --mapping (from the files)
    out = densenet["tmp"] / "again.onnx"
    p = cli("-q", DENSENET, "-o", out, "--no-verify", "--mapping", densenet["tmp"] / "map2.json")
    assert p.returncode == 0, p.stderr
    assert json.loads((densenet["tmp"] / "map2.json").read_text()) == data


def test_mapping_uses_model_explorer_ids_for_unnamed_nodes() -> None:
    pytest.importorskip("onnx_ir")
    m = _unnamed_model()
    out = run_pipeline(m).model
    ids = model_explorer_ids(m, unique_node_names([(n.name, n.op_type) for n in m.graph.node]))
    assert len(set(ids)) == len(ids) == len(m.graph.node) and ids[3] == "dup"
    data = model_explorer_mapping(build_diff(m, out), m, out)
    first = data["mappingEntries"][0]
    assert first["rightNodeIds"] == ["Conv_0+Relu_2"] and first["leftNodeIds"] == ids[:3]


def test_diff_cli_errors() -> None:
    p = cli("diff", EXAMPLES / "nope.onnx", EXAMPLES / "resnet_block.onnx", "-o", "/tmp/never.html")
    assert p.returncode == 2 and "no such file" in p.stderr and "Traceback" not in p.stderr
    p = cli("diff", EXAMPLES / "resnet_block.onnx", EXAMPLES / "resnet_block.onnx", "-o",
            EXAMPLES / "resnet_block.onnx")
    assert p.returncode == 2 and "refusing to overwrite" in p.stderr


# ---------------------------------------------------------------------------------------------------------
# 3. in a real headless Chromium

CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class Chrome:
    """A DevTools-protocol client over ``--remote-debugging-pipe`` (fd 3: commands in, fd 4: replies out,
    each message JSON terminated by NUL)."""

    def __init__(self, exe: str, profile: Path, size=(1600, 1000)) -> None:
        r_cmd, self.w = os.pipe()
        self.r, w_res = os.pipe()

        def child() -> None:  # move the pipe ends to fds 3 and 4 without clobbering either
            a = fcntl.fcntl(r_cmd, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(w_res, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [exe, *CHROME_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe",
             f"--window-size={size[0]},{size[1]}", "about:blank"],
            preexec_fn=child, close_fds=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(r_cmd)
        os.close(w_res)
        self.buf, self.next_id, self.events = b"", 0, []
        page = next(t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True})[
            "sessionId"]
        for domain in ("Page", "Network", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=self.session)

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from Chromium")
            if select.select([self.r], [], [], left)[0]:
                chunk = os.read(self.r, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe")
                self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            r = self._read(deadline)
            if r.get("id") == self.next_id:
                if "error" in r:
                    raise RuntimeError(f"{method}: {r['error']}")
                return r.get("result", {})
            self.events.append(r)

    def page(self, method: str, params: dict | None = None):
        return self.send(method, params, session=self.session)

    def wait_event(self, method: str, timeout: float = 60) -> dict:
        for k, e in enumerate(self.events):
            if e.get("method") == method:
                return self.events.pop(k)
        deadline = time.monotonic() + timeout
        while True:
            e = self._read(deadline)
            if e.get("method") == method:
                return e
            self.events.append(e)

    def open(self, path: Path) -> None:
        self.events.clear()
        self.page("Page.navigate", {"url": path.resolve().as_uri()})
        self.wait_event("Page.loadEventFired")

    def js(self, expr: str):
        r = self.page("Runtime.evaluate", {"expression": expr, "returnByValue": True})
        if "exceptionDetails" in r:
            raise AssertionError(f"{expr}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def click(self, x: float, y: float) -> None:
        """A real mouse click (press + release) at viewport coordinates."""
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.page("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    def click_node(self, element_id: str) -> str:
        """Scroll the node into view, click its centre; returns its tooltip (SVG <title>)."""
        x, y, title = self.js(f"""(function () {{
            var e = document.getElementById({json.dumps(element_id)});
            var v = e.closest('.view'), r = e.getBoundingClientRect(), vr = v.getBoundingClientRect();
            v.scrollLeft += r.left + r.width / 2 - (vr.left + v.clientWidth / 2);
            v.scrollTop += r.top + r.height / 2 - (vr.top + v.clientHeight / 2);
            r = e.getBoundingClientRect();
            return [r.left + r.width / 2, r.top + r.height / 2, e.querySelector('title').textContent];
        }})()""")
        self.click(x, y)
        return title

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.page("Page.captureScreenshot", {"format": "png"})["data"]))

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def problems(self) -> list[dict]:
        return [e["params"] for e in self.events if e.get("method") == "Runtime.exceptionThrown"
                or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:  # noqa: BLE001 - it may be gone already
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.w)
        os.close(self.r)


@pytest.fixture(scope="module")
def chrome(tmp_path_factory):
    exe = next((shutil.which(c) for c in ("chromium", "chromium-browser", "google-chrome") if shutil.which(c)), None)
    need("Chromium", exe)
    c = Chrome(exe, tmp_path_factory.mktemp("chrome-profile"))
    yield c
    c.close()


def check_page(chrome: Chrome, page: Path, fused_model: onnx.ModelProto, shot: str) -> None:
    """Open the page; it loads nothing but itself, draws every fused node, and a click on a fused node
    selects exactly the original nodes it replaced (and back)."""
    chrome.open(page)
    assert chrome.js("document.body.dataset.ready") == "1"
    assert chrome.js("performance.getEntriesByType('resource').length") == 0
    assert chrome.requests() == [page.resolve().as_uri()], chrome.requests()
    assert chrome.problems() == []
    index = {n.name: i for i, n in enumerate(fused_model.graph.node)}
    groups = expected_groups(fused_model)
    assert groups, "no fused node to look at"
    drawn = chrome.js("Array.from(document.querySelectorAll('#view-R g.node.fused')).map(function (g) {"
                      " return g.querySelector('title').textContent.split(' (')[0]; })")
    assert sorted(drawn) == sorted(groups)
    assert chrome.js("fuserDiff.fusedNodes().length") == len(groups)
    # click a fused node (the one replacing the most nodes): its sources light up on the left
    name = max(groups, key=lambda k: (len(groups[k]), k))
    assert chrome.click_node(f"R{index[name]}").startswith(name + " (")
    assert chrome.js("document.body.dataset.selected") == f"R:{name}"
    related = chrome.js("document.body.dataset.related").split("\n")
    assert sorted(r[2:] for r in related if r.startswith("L:")) == sorted(groups[name])
    assert chrome.js("document.querySelectorAll('#view-L g.node.rel').length") == len(groups[name])
    details = chrome.js("document.getElementById('details-body').textContent")
    assert name in details and all(s in details for s in groups[name])
    chrome.screenshot(ARTIFACTS / shot)
    # and the other way: a click on one of those original nodes selects the fused node
    src = chrome.js("document.querySelector('#view-L g.node.rel').id")
    chrome.click_node(src)
    assert chrome.js("document.body.dataset.selected").startswith("L:")
    assert f"R:{name}" in chrome.js("document.body.dataset.related").split("\n")
    assert chrome.problems() == [] and chrome.requests() == [page.resolve().as_uri()]
    png = (ARTIFACTS / shot).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_densenet_page_in_headless_chromium(densenet, chrome) -> None:
    check_page(chrome, densenet["html"], densenet["result"].model, "diff_densenet121.png")


def test_transformer_page_in_headless_chromium(tmp_path, chrome) -> None:
    """A model the project does not ship: a small hybrid vision transformer (conv stem + encoder) exported
    from PyTorch."""
    torch = pytest.importorskip("torch")
    need("Graphviz dot", shutil.which("dot"))
    nn = torch.nn

    class Hybrid(nn.Module):
        def __init__(self, d: int = 32) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, d, 3, 2, 1), nn.BatchNorm2d(d), nn.Hardswish())
            layer = nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.0, batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
            self.head = nn.Linear(d, 10)

        def forward(self, x):
            return self.head(self.encoder(self.stem(x).flatten(2).transpose(1, 2)).mean(1))

    src, out, page = tmp_path / "hybrid.onnx", tmp_path / "hybrid.fused.onnx", tmp_path / "hybrid.html"
    torch.manual_seed(0)
    with warnings.catch_warnings():  # the TorchScript tracer's chatter about MultiheadAttention
        warnings.simplefilter("ignore")
        torch.onnx.export(Hybrid().eval(), (torch.randn(1, 3, 16, 16),), str(src), dynamo=False, opset_version=17)
    res = fuser.optimize(src, out)
    assert res.verification.passed
    p = cli("diff", src, out, "-o", page)
    assert p.returncode == 0, p.stderr
    assert len(load_graph(src, "o").graph.node) > 300
    check_page(chrome, page, res.model, "diff_hybrid_transformer.png")
    # the same page with every long edge drawn as a stub: a click on a stub selects the producer
    from fuser.visual import layout, write_html

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(layout, "VIRTUAL_BUDGET", (0, 0))
        write_html(build_diff(load_graph(src, "o"), res.model, str(src), str(out)), tmp_path / "stubs.html")
    chrome.open(tmp_path / "stubs.html")
    stub = chrome.js("Array.from(document.querySelectorAll('#view-R g.stub'))"
                     ".find(function (g) { return /to-R[0-9]+/.test(g.getAttribute('class')); }).id")
    title = chrome.click_node(stub)
    producer = title.removeprefix("from ").split(" (")[0]
    assert chrome.js("document.body.dataset.selected") == f"R:{producer}"
    assert chrome.problems() == []


def test_render_html_escapes_hostile_names() -> None:
    m = _unnamed_model()
    for n in m.graph.node:
        if n.name == "dup":
            n.name = '</script><script>alert(1)</script>"&'
    need("Graphviz dot", shutil.which("dot"))
    page = render_html(build_diff(m, run_pipeline(m).model))
    # the name cannot close the data block or the SVG: only our own two <script> elements end
    assert page.count("</script>") == 2 and "</script><script>alert" not in page
    data = page.split('<script type="application/json" id="fuser-diff-data">')[1].split("</script>")[0]
    assert json.loads(data)["left"]["nodes"][3][0] == '</script><script>alert(1)</script>"&'


def test_long_edges_become_stubs_past_the_layout_budget(monkeypatch) -> None:
    """A tensor feeding layers all along a deep model would cost dot minutes; past the budget its longest
    edges are drawn as stubs that name (and link to) the producer."""
    from fuser.visual import layout
    from fuser.visual.layout import DrawNode, render_svg, shorten_long_edges

    need("Graphviz dot", shutil.which("dot"))
    nodes = [DrawNode(f"L{i}", "Add", f"add{i}", "plain", "#fff", "#999", f"add{i} (Add)") for i in range(120)]
    edges = [(f"L{i}", f"L{i + 1}") for i in range(119)] + [("L0", f"L{i}") for i in range(10, 120, 10)]
    same, kept = shorten_long_edges(list(nodes), edges, budget=10_000)
    assert same == nodes and kept == edges  # under budget: untouched
    ns, es = shorten_long_edges(list(nodes), edges, budget=100)
    stubs = [n for n in ns if n.small]
    assert stubs and all(n.classes == "stub to-L0" and "add0" in n.label_top for n in stubs)
    assert sum(int(b[1:]) - 1 for a, b in es if a == "L0") <= 100  # what is left fits the budget
    assert {b for a, b in es if a.startswith("LS")} == {"L50", "L60", "L70", "L80", "L90", "L100", "L110"}
    monkeypatch.setattr(layout, "VIRTUAL_BUDGET", (100, 100))
    svg = render_svg(nodes, edges, "deep")
    # (dot writes the "-" of a class as &#45;; the browser reads it back as "-")
    assert len(re.findall(r'class="node stub to(?:-|&#45;)L0"', svg)) == len(stubs)
    assert "<title>add0 (Add)</title>" in svg
