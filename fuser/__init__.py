"""onnx-fuse: fuse ONNX subgraphs into kernel-backed nodes and verify the result."""

__version__ = "0.1.0"
