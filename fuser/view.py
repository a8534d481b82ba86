"""``onnx-fuse view``: the original and the fused model side by side in Netron, served on loopback.

Netron (``pip install netron``, the ``[view]`` extra) has no diff of its own; two tabs, one per model,
are what its users compare — and the fused nodes' provenance (name, doc string, ``fuser.*`` metadata)
shows in its node sidebar. Each model gets its own Netron server on 127.0.0.1, one port each; nothing
listens beyond the local machine.

Each server runs in a child process: Netron's request handler keeps the model it serves in a class
attribute, so two servers in one process would both serve the last model. A child stops when told to,
and on its own when its parent is gone.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
import webbrowser
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError

HOST = "127.0.0.1"
NETRON_HINT = "Netron is not installed: pip install netron (or: pip install \"onnx-fuse[view]\")"
START_TIMEOUT_S = 60

_CHILD = r"""
import logging, os, sys, time
logging.basicConfig(level=logging.WARNING, format="%(message)s")
import netron
path, host, port, parent = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
try:
    h, p = netron.serve(path, None, address=(host, port), browse=False)
except OSError as e:
    print("ERROR", e, flush=True)
    sys.exit(2)
print("PORT", p, flush=True)
try:
    while os.getppid() == parent and netron.status((h, p)):
        time.sleep(0.5)
finally:
    netron.stop((h, p))
"""


@dataclass
class Served:
    label: str
    path: str
    host: str
    port: int
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def _check_netron() -> None:
    import importlib.util

    if importlib.util.find_spec("netron") is None:
        raise InputError(NETRON_HINT)


def _first_line(p: subprocess.Popen, deadline: float) -> str:
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([p.stdout], [], [], left)[0]:
            raise InputError("Netron did not start in time")
        chunk = os.read(p.stdout.fileno(), 1)
        if not chunk:
            err = p.stderr.read().decode("utf-8", "replace").strip().splitlines() if p.stderr else []
            raise InputError(f"Netron exited: {err[-1] if err else 'no output'}")
        line += chunk
    return line.decode("utf-8", "replace").strip()


def serve(models: list[tuple[str, str | os.PathLike]], host: str = HOST, port: int = 0,
          browse: bool = False) -> list[Served]:
    """Serve each ``(label, path)`` with Netron on ``host``; ports ``port``, ``port+1``, … (0: free ports)."""
    _check_netron()
    for _, p in models:
        if not Path(p).is_file():
            raise InputError(f"{p}: no such file")
    served: list[Served] = []
    try:
        for k, (label, p) in enumerate(models):
            want = port + k if port else 0
            proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(Path(p).resolve()), host, str(want),
                                     str(os.getpid())], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
            served.append(Served(label, str(p), host, want, proc))
        deadline = time.monotonic() + START_TIMEOUT_S
        for s in served:
            line = _first_line(s.proc, deadline)
            if not line.startswith("PORT "):
                raise InputError(f"cannot serve {s.path} on {host}:{s.port}: {line.removeprefix('ERROR ')}")
            s.port = int(line.split()[1])
    except BaseException:
        stop(served)
        raise
    if browse:
        for s in served:
            webbrowser.open(s.url)
    return served


def stop(served: list[Served]) -> None:
    for s in served:
        if s.proc is not None and s.proc.poll() is None:
            s.proc.terminate()
    for s in served:
        if s.proc is not None:
            try:
                s.proc.wait(10)
            except subprocess.TimeoutExpired:
                s.proc.kill()
                s.proc.wait()
            for f in (s.proc.stdout, s.proc.stderr):
                if f is not None:
                    f.close()


def serve_forever(served: list[Served]) -> None:
    """Block until Ctrl+C or SIGTERM (or a server dies), then stop the servers."""
    done = threading.Event()
    old = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        while not done.wait(0.2):
            if any(s.proc is not None and s.proc.poll() is not None for s in served):
                break
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, old)
        stop(served)
