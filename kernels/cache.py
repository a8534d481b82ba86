"""On-disk compile cache for code objects (NVRTC cubins, hiprtc code objects).

Location: ``$ONNX_FUSE_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/onnx-fuse``, else
``~/.cache/onnx-fuse``; entries live under ``kernels/<backend>/``.
Key: sha256 over (source, options, arch, backend, compiler version), so a compiler upgrade or a changed
flag never returns a stale binary. Writes go to a temporary file in the same directory and are
published with ``os.replace`` (atomic on POSIX): two processes compiling the same kernel at once both
succeed and readers never see a half-written file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

ENV_DIR = "ONNX_FUSE_CACHE_DIR"


def cache_dir() -> Path:
    """Root of the cache (not created here)."""
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "onnx-fuse"


def cache_key(source: str, options: Sequence[str], arch: str, backend: str, compiler_version: str) -> str:
    h = hashlib.sha256()
    # Length-prefix every field so no two different tuples hash the same byte stream.
    for part in (backend, arch, compiler_version, "\0".join(options), source):
        b = part.encode()
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _path(backend: str, key: str) -> Path:
    return cache_dir() / "kernels" / backend / f"{key}.bin"


def load(backend: str, key: str) -> bytes | None:
    """The cached code object, or None. An unreadable or empty entry counts as a miss."""
    try:
        data = _path(backend, key).read_bytes()
    except OSError:
        return None
    return data or None


def store(backend: str, key: str, data: bytes) -> Path | None:
    """Publish ``data`` atomically. A read-only or full disk only costs the caching, never the compile."""
    path = _path(backend, key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except OSError:
        return None
    return path
