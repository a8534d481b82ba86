"""What the installed onnxruntime accepts, found by asking it (it has no API for its limits)."""

from __future__ import annotations

import functools

import onnx
from onnx import TensorProto, helper

# domains onnxruntime executes without any registration from the user
KNOWN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training", "com.microsoft",
                 "com.microsoft.nchwc", "com.ms.internal.nhwc", "org.pytorch.aten"}


def _loads(ir: int, opset: int) -> bool:
    import onnxruntime as ort

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir)
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    try:
        ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return True
    except Exception:
        return False


@functools.lru_cache(maxsize=1)
def ort_limits() -> tuple[int, int]:
    """(newest IR version, newest default-domain opset) the installed onnxruntime loads."""
    max_ir = next((ir for ir in range(onnx.IR_VERSION, 6, -1) if _loads(ir, 13)), 7)
    max_opset = next((op for op in range(onnx.defs.onnx_opset_version(), 12, -1) if _loads(min(max_ir, 10), op)),
                     13)
    return max_ir, max_opset
