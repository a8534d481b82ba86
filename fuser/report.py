"""Reports: the before/after table on stderr and the ``--report`` JSON (DESIGN §7)."""

from __future__ import annotations

import json
import math
import os
from collections import Counter

import onnx

from . import __version__
from .fused import DOMAIN

SCHEMA_VERSION = 1


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    c = Counter((f"{n.domain}::" if n.domain not in ("", "ai.onnx") else "") + n.op_type for n in model.graph.node)
    return dict(sorted(c.items()))


def build_report(result, options: dict) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "onnx-fuse", "version": __version__},
        "options": options,
        "input": {"path": result.input_path, "sha256": result.input_sha256, "bytes": result.input_bytes},
        "output": {"path": result.output_path, "sha256": result.output_sha256, "bytes": result.output_bytes,
                   "written": result.written},
        "ir_version": result.model.ir_version,
        "opset_import": {o.domain or "ai.onnx": o.version for o in result.model.opset_import},
        "timing_s": {k: round(v, 4) for k, v in result.timings.items()},
        "pass_counts": result.pass_counts,
        "fusions": [
            {"pattern": f.pattern, "source_nodes": f.source_nodes, "fused_node": f.fused_node,
             "op_type": f.op_type, "domain": DOMAIN if f.kernel else "", "kernel": f.kernel, "tactic": f.tactic}
            for f in result.fusions
        ],
        "op_counts": {"before": result.ops_before, "after": result.ops_after},
        "node_count": {"before": sum(result.ops_before.values()), "after": sum(result.ops_after.values())},
        "verification": result.verification.to_json() if result.verification else None,
    }


def write_json(report: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(report, f, indent=2, allow_nan=False, default=_default)
        f.write("\n")


def _default(o):
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    raise TypeError(type(o).__name__)


def print_table(result, console) -> None:
    from rich.table import Table

    t = Table(title=f"onnx-fuse {__version__}: {os.path.basename(result.input_path)}", title_justify="left")
    t.add_column("op")
    t.add_column("before", justify="right")
    t.add_column("after", justify="right")
    keys = sorted(set(result.ops_before) | set(result.ops_after),
                  key=lambda k: (-(result.ops_before.get(k, 0) + result.ops_after.get(k, 0)), k))
    for k in keys:
        b, a = result.ops_before.get(k, 0), result.ops_after.get(k, 0)
        if b != a or k.startswith(DOMAIN):
            t.add_row(k, str(b), str(a))
    t.add_section()
    t.add_row("nodes", str(sum(result.ops_before.values())), str(sum(result.ops_after.values())))
    t.add_row("size (MB)", f"{result.input_bytes / 1e6:.2f}", f"{(result.output_bytes or 0) / 1e6:.2f}")
    console.print(t)
    timing = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
    console.print(f"time: {timing}", markup=False)
    if result.verification:
        for c in result.verification.checks:
            status = "ok" if c.passed else "FAIL"
            console.print(f"verify {c.path:<14} {c.name}: rel-L2 {c.rel_l2:.2e}  max-abs {c.max_abs:.2e}  "
                          f"cosine {c.cosine:.6f}  SNR {c.snr_db:.1f} dB  [{status}]", markup=False)
