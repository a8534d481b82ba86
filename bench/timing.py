"""The benchmarks' one timing loop: calls captured into a CUDA graph (no host launch cost in the numbers), inputs
rotated over ``nsets`` buffer sets (so they can exceed L2), device events around replays, the median per call."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

import torch


def time_graph(call: Callable[[int, int], Any], nsets: int, inner_min: int = 20, reps: int = 25,
               warmup: int = 3) -> dict[str, float]:
    """ms per call of ``call(set_index, stream_handle)``, captured in a CUDA graph."""
    inner = max(inner_min, nsets)
    inner = math.ceil(inner / nsets) * nsets
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        for i in range(nsets):        # eager warm-up: module loads, cuDNN heuristics, allocator
            call(i, s.cuda_stream)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=s):
        st = torch.cuda.current_stream().cuda_stream
        for j in range(inner):
            call(j % nsets, st)
    for _ in range(warmup):
        g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        g.replay()
        e1.record()
        e1.synchronize()
        times.append(e0.elapsed_time(e1) / inner)
    del g
    torch.cuda.synchronize()
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times),
            "inner": inner, "nsets": nsets}
