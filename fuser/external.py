"""Models over protobuf's 2 GiB limit: weights live in one external data file from export to save.

A ModelProto cannot be serialised past 2 GiB, so for large models the pipeline never builds one with
the weights inside: :func:`export_external` writes every large constant straight from numpy into a data
file in a work folder and exports a small proto whose tensors point at it (``data_location=EXTERNAL``).
Verification and the runtime then load by path (onnxruntime resolves the data beside the model), and
:func:`fuser.io.save_model_atomic` moves the data file next to the output.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

# protobuf's hard limit, with room for the graph itself
LARGE_BYTES = 2**31 - (64 << 20)
# tensors at least this big go to the data file (onnx.save_model's usual threshold)
EXTERNAL_MIN_BYTES = 1024
ALIGN = 4096  # data offsets aligned for mmap


def graph_constant_bytes(graph: gs.Graph) -> int:
    total = 0
    for t in graph.tensors().values():
        if isinstance(t, gs.Constant):
            total += int(np.prod(t.shape, dtype=np.int64)) * np.dtype(t.dtype).itemsize if t.shape is not None else 0
    return total


def export_external(graph: gs.Graph, data_path: Path) -> onnx.ModelProto:
    """gs.export_onnx with every large constant written to ``data_path`` instead of the proto."""
    big: dict[str, tuple[np.ndarray, gs.Constant]] = {}
    for t in graph.tensors().values():
        if isinstance(t, gs.Constant):
            nbytes = int(np.prod(t.shape, dtype=np.int64)) * np.dtype(t.dtype).itemsize
            if nbytes >= EXTERNAL_MIN_BYTES:
                big[t.name] = (t.values, t)
    offsets: dict[str, tuple[int, int]] = {}
    with open(data_path, "wb") as f:
        for name, (arr, _) in big.items():
            pos = f.tell()
            if pos % ALIGN:
                f.write(b"\0" * (ALIGN - pos % ALIGN))
                pos = f.tell()
            data = np.ascontiguousarray(arr)
            if data.dtype.byteorder == ">":
                data = data.astype(data.dtype.newbyteorder("<"))
            f.write(memoryview(data.reshape(-1).view(np.uint8)))
            offsets[name] = (pos, data.nbytes)
    # export with empty placeholders, then point the tensors at the data file
    for _, (arr, const) in big.items():
        const.values = np.empty((0,), dtype=arr.dtype)
    try:
        model = gs.export_onnx(graph, do_type_check=False)
    finally:
        for _, (arr, const) in big.items():
            const.values = arr
    loc = data_path.name
    for t in model.graph.initializer:
        if t.name in offsets:
            arr = big[t.name][0]
            off, length = offsets[t.name]
            del t.dims[:]
            t.dims.extend(arr.shape)
            t.ClearField("raw_data")
            t.data_location = onnx.TensorProto.EXTERNAL
            del t.external_data[:]
            for k, v in (("location", loc), ("offset", str(off)), ("length", str(length))):
                t.external_data.add(key=k, value=v)
    return model


def has_external(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def write_beside(model: onnx.ModelProto, folder: Path, name: str) -> Path:
    """Write the (small) proto into ``folder`` so that its relative data locations resolve."""
    p = Path(folder) / name
    p.write_bytes(model.SerializeToString())
    return p


def remove_quietly(*paths: str | os.PathLike | None) -> None:
    for p in paths:
        if p and os.path.exists(p):
            try:
                os.unlink(p)
            except OSError:
                pass
