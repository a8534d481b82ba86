"""Model I/O: careful loading (external data, validation) and atomic saving.

Loading never modifies the file; saving writes a temporary file beside the target and renames it into
place, so a failure (or an interruption) leaves either the old file or nothing — never half a model.
Models whose serialized size would exceed protobuf's 2 GiB limit are written with external data.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import onnx

from .errors import InputError

_TWO_GIB = 2**31 - 1
# The IR versions the installed onnxruntime can load (1.17..1.31 accept up to 10..13); we never raise it.
MIN_OPSET = 7


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# external data beyond this stays on disk (memory-mapped when read) instead of being loaded
LAZY_EXTERNAL_BYTES = 1 << 30


def load_model(path: str | os.PathLike, lazy_external: bool | None = None) -> onnx.ModelProto:
    """Load and validate ``path``. External data is checked (present, inside the model's folder) and
    loaded — unless there is more than ``LAZY_EXTERNAL_BYTES`` of it (or ``lazy_external``): then the
    tensors keep pointing at their files, and :func:`external_array` maps them when needed.
    Raises InputError with one clear line."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, expected an .onnx file")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: empty file")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        raise InputError(f"{p}: not a valid ONNX model ({_short(e)})") from None
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise InputError(f"{p}: not an ONNX model (no graph)")
    if model.ir_version <= 0:
        raise InputError(f"{p}: not an ONNX model (no ir_version)")
    _load_external_data(model, p.parent.resolve(), p, lazy_external)
    return model


def temp_name(folder: str | os.PathLike, prefix: str, suffix: str) -> str:
    """A fresh, unused file name in ``folder`` (not created: create it with mode "x")."""
    import secrets

    return os.path.join(folder, f"{prefix}{secrets.token_hex(6)}{suffix}")


def external_array(t: onnx.TensorProto, base_dir: str | os.PathLike):
    """A read-only memory map of an external tensor's data (no copy; pages load as they are read)."""
    import numpy as np

    info = {e.key: e.value for e in t.external_data}
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).newbyteorder("<")
    shape = tuple(int(d) for d in t.dims)
    count = int(np.prod(shape, dtype=np.int64))
    if count == 0:
        return np.zeros(shape, dtype)
    return np.memmap(Path(base_dir) / info["location"], dtype=dtype, mode="r", offset=int(info.get("offset", 0)),
                     shape=shape)


def _external_bytes(tensors: list, base: Path) -> int:
    total = 0
    for t in tensors:
        info = {e.key: e.value for e in t.external_data}
        total += int(info["length"]) if "length" in info else (base / info.get("location", "")).stat().st_size
    return total


def _load_external_data(model: onnx.ModelProto, base: Path, p: Path, lazy: bool | None) -> None:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    tensors = [t for t in _get_all_tensors(model) if uses_external_data(t)]
    for t in tensors:
        loc = next((e.value for e in t.external_data if e.key == "location"), "")
        target = (base / loc).resolve()
        if not str(target).startswith(str(base) + os.sep):
            raise InputError(f"{p}: external data location {loc!r} escapes the model's folder")
        if not target.is_file():
            raise InputError(f"{p}: external data file {loc!r} is missing")
    if lazy is None:
        lazy = bool(tensors) and _external_bytes(tensors, base) > LAZY_EXTERNAL_BYTES
    if tensors and not lazy:
        try:
            onnx.load_external_data_for_model(model, str(base))
        except Exception as e:
            raise InputError(f"{p}: cannot read external data ({_short(e)})") from None


def save_model_atomic(model: onnx.ModelProto, out: str | os.PathLike, data_path: str | os.PathLike | None = None,
                      move_data: bool = False) -> None:
    """Write ``model`` to ``out`` atomically; external data (``<out>.data``) when over 2 GiB.

    The bytes go to a temporary file in the target folder, are flushed to disk, and only then renamed
    over ``out``: a full disk, a read-only folder or an interruption (SIGINT) leaves no partial file —
    the temporary file is removed on every way out."""
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{out}: output folder {parent} does not exist")
    big = approx_size(model) > _TWO_GIB - (64 << 20)  # margin for the graph itself
    data_name = out.name + ".data"
    tmp = tmp_data = None
    try:
        # name first, then create: an interruption at any point leaves a name the cleanup knows
        tmp = temp_name(parent, f".{out.name}.", ".tmp")
        open(tmp, "xb").close()
        if data_path is not None:
            # weights already in an external data file (a > 2 GiB pipeline result): bring it next to
            # the output under its final name, point the small proto at it, then rename both in place
            tmp_data = tmp + ".data"
            if move_data and Path(data_path).resolve().parent == parent.resolve():
                os.replace(data_path, tmp_data)
            else:
                shutil.copyfile(data_path, tmp_data)
            small = onnx.ModelProto()
            small.CopyFrom(model)
            for t in small.graph.initializer:
                for e in t.external_data:
                    if e.key == "location":
                        e.value = data_name
            with open(tmp, "wb") as f:
                f.write(small.SerializeToString(deterministic=True))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_data, parent / data_name)
            tmp_data = None
        elif big:
            tmp_data = tmp + ".data"
            _save_external(model, tmp, os.path.basename(tmp_data), data_name)
            os.replace(tmp_data, parent / data_name)
            tmp_data = None
        else:
            with open(tmp, "wb") as f:
                f.write(model.SerializeToString(deterministic=True))
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, out)
        tmp = None
    except OSError as e:
        raise InputError(f"{out}: cannot write ({e.strerror or e}); nothing written") from None
    finally:
        for leftover in (tmp, tmp_data):
            if leftover and os.path.exists(leftover):
                os.unlink(leftover)


def _save_external(model: onnx.ModelProto, path: str, tmp_location: str, final_location: str) -> None:
    """Save with all large tensors in one data file named ``tmp_location``, then point the model at
    ``final_location`` (the name the data file will have once renamed into place). The caller's model
    is not modified."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=tmp_location, size_threshold=1024)
    # onnx.save_model converted the caller's tensors in place: bring their data back
    onnx.load_external_data_for_model(model, os.path.dirname(path) or ".")
    m2 = onnx.load(path, load_external_data=False)
    for t in _get_all_tensors(m2):
        if uses_external_data(t):
            for e in t.external_data:
                if e.key == "location":
                    e.value = final_location
    with open(path, "wb") as f:
        f.write(m2.SerializeToString())
        f.flush()
        os.fsync(f.fileno())


def approx_size(model: onnx.ModelProto) -> int:
    """Bytes of tensor data in the model, cheaply (protobuf's ByteSize walks every field: ~1 s/100 MB)."""
    from onnx.external_data_helper import _get_all_tensors

    total = 0
    for t in _get_all_tensors(model):
        n = len(t.raw_data)
        if not n:
            n = 4 * (len(t.float_data) + len(t.int32_data)) + 8 * (len(t.int64_data) + len(t.double_data))
        total += n
    return total


def _short(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return (s[0] if s else type(e).__name__)[:200]
