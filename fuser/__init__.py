"""onnx-fuse: fuse ONNX subgraphs into kernel-backed nodes and verify the result."""

__version__ = "0.1.0"

from .api import OptimizeResult, optimize  # noqa: E402

__all__ = ["OptimizeResult", "optimize", "__version__"]
