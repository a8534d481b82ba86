"""``onnx-fuse view``: the original and the fused model side by side in Netron, served on loopback.

Netron (``pip install netron``, the ``[view]`` extra) has no diff of its own; two tabs, one per model,
are what its users compare — and the fused nodes' provenance (name, doc string, ``fuser.*`` metadata)
shows in its node sidebar. Each model gets its own Netron server on 127.0.0.1 (two ports); nothing
listens beyond the local machine.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import webbrowser
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

HOST = "127.0.0.1"
NETRON_HINT = "Netron is not installed: pip install netron (or: pip install \"onnx-fuse[view]\")"


@dataclass
class Served:
    label: str
    path: str
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def _netron():
    try:
        import netron
    except ImportError:
        raise InputError(NETRON_HINT) from None
    logging.getLogger("netron").setLevel(logging.WARNING)  # we print the URLs ourselves
    return netron


def serve(models: list[tuple[str, str | os.PathLike]], host: str = HOST, port: int = 0,
          browse: bool = False) -> list[Served]:
    """Serve each ``(label, path)`` with Netron on ``host``; ports ``port``, ``port+1``, … (0: free ports)."""
    netron = _netron()
    for _, p in models:
        if not Path(p).is_file():
            raise InputError(f"{p}: no such file")
    served: list[Served] = []
    try:
        for k, (label, p) in enumerate(models):
            address = (host, port + k if port else 0)
            try:
                h, bound = netron.serve(str(p), None, address=address, browse=False)
            except OSError as e:
                raise InputError(f"cannot serve {p} on {address[0]}:{address[1]}: {e}") from None
            served.append(Served(label, str(p), h, int(bound)))
    except BaseException:
        stop(served)
        raise
    if browse:
        for s in served:
            webbrowser.open(s.url)
    return served


def stop(served: list[Served]) -> None:
    import netron

    for s in served:
        netron.stop((s.host, s.port))


def serve_forever(served: list[Served]) -> None:
    """Block until Ctrl+C or SIGTERM, then stop the servers."""
    done = threading.Event()
    old = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        while not done.wait(0.2):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, old)
        stop(served)
