"""The visual diff: what was fused into what, for a browser (``onnx-fuse diff``), for Model Explorer's
split view (``--mapping``) and, through node provenance, for Netron (``onnx-fuse view``)."""

from __future__ import annotations

from .mapping import model_explorer_mapping, write_mapping
from .model import GraphDiff, build_diff, diff_files, load_graph
from .page import render_html, write_html

__all__ = ["GraphDiff", "build_diff", "diff_files", "load_graph", "model_explorer_mapping", "render_html",
           "write_html", "write_mapping"]
