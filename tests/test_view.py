"""``onnx-fuse view`` / ``fuse --view``: both models served by Netron on loopback, two ports, answered,
then stopped."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import fuser

from .conftest import EXAMPLES

if os.environ.get("ONNX_FUSE_REQUIRE_VISUAL") != "1":  # tests/run.sh: Netron is required (the [test] extra)
    pytest.importorskip("netron")

MODEL = EXAMPLES / "resnet_block.onnx"
URL = re.compile(r"^(original|fused):\s+(http://127\.0\.0\.1:(\d+))\s", re.M)


def get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def served_file(base: str) -> bytes:
    """Netron's page names the model it serves (<meta name="file" content="/data/NAME">); fetch it."""
    status, page = get(base + "/")
    assert status == 200 and b"netron" in page.lower()
    m = re.search(rb'<meta name="file" content="([^"]+)"', page)
    assert m, "Netron's page names no model"
    status, data = get(base + m.group(1).decode())
    assert status == 200
    return data


def refused(url: str) -> bool:
    try:
        get(url, timeout=2)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return True
    return False


@pytest.fixture(scope="module")
def fused(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("view") / "resnet_block.fused.onnx"
    fuser.optimize(MODEL, out, verify_result=False)
    return out


def test_serve_both_on_two_loopback_ports_then_stop(fused: Path) -> None:
    from fuser.view import serve, stop

    served = serve([("original", MODEL), ("fused", fused)])
    try:
        assert [s.host for s in served] == ["127.0.0.1", "127.0.0.1"]
        assert served[0].port != served[1].port
        assert served_file(served[0].url) == MODEL.read_bytes()
        assert served_file(served[1].url) == fused.read_bytes()
    finally:
        stop(served)
    time.sleep(0.5)
    assert refused(served[0].url) and refused(served[1].url)


def _start(*args: object) -> tuple[subprocess.Popen, dict[str, str]]:
    p = subprocess.Popen([sys.executable, "-m", "fuser.cli.main", *map(str, args)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    urls: dict[str, str] = {}
    deadline = time.monotonic() + 60
    while len(urls) < 2 and time.monotonic() < deadline:
        line = p.stdout.readline()
        if not line:
            break
        m = URL.match(line)
        if m:
            urls[m.group(1)] = m.group(2)
    if len(urls) < 2:
        p.kill()
        raise AssertionError(f"no URLs printed: {p.stderr.read()}")
    return p, urls


def _stop(p: subprocess.Popen, sig: int) -> None:
    p.send_signal(sig)
    try:
        assert p.wait(15) == 0, p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()


def test_view_cli_headless(fused: Path) -> None:
    p, urls = _start("view", MODEL, fused, "--no-browser")
    assert urls["original"] != urls["fused"]
    assert served_file(urls["original"]) == MODEL.read_bytes()
    assert served_file(urls["fused"]) == fused.read_bytes()
    _stop(p, signal.SIGINT)
    assert refused(urls["original"]) and refused(urls["fused"])


def test_fuse_then_view(tmp_path: Path) -> None:
    out = tmp_path / "f.onnx"
    p, urls = _start(MODEL, "-o", out, "-q", "--view", "--no-browser")
    assert out.exists() and served_file(urls["fused"]) == out.read_bytes()
    _stop(p, signal.SIGTERM)


def test_view_errors(fused: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "fuser.cli.main", "view", EXAMPLES / "nope.onnx", fused,
                        "--no-browser"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "no such file" in p.stderr and "Traceback" not in p.stderr
    with socket.socket() as busy:  # a port already taken: one clear line, exit 2
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        p = subprocess.run([sys.executable, "-m", "fuser.cli.main", "view", MODEL, fused, "--no-browser",
                            "--port", str(port)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and f"127.0.0.1:{port}" in p.stderr and "Traceback" not in p.stderr
