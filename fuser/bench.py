"""``onnx-fuse bench ORIGINAL FUSED``: baseline vs fused latency on the same device, in the seed report's
format (baseline latency, current latency, speedup, SNR, cosine).

- baseline: the ORIGINAL model in onnxruntime on the same device (CUDA EP — ROCm EP on AMD — with all
  of onnxruntime's graph optimizations; ``use_tf32=0`` unless ``allow_tf32``), inputs already on the
  device, outputs bound to the device through IOBinding;
- current: the FUSED model in :class:`fuser.runtime.Session` on that device, same inputs on the device.

Each timed iteration ends with a device synchronisation; the numbers are medians over ``iters`` after
``warmup`` iterations. On a machine with no GPU both run on the CPU (onnxruntime CPU vs our CPU runtime).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np
import onnx

from .verify import make_inputs, metrics


@dataclass
class BenchResult:
    device: str
    baseline_ms: float
    current_ms: float
    speedup: float
    snr_db: float
    cosine: float
    rel_l2: float
    iters: int
    kernel_steps: int
    island_steps: int
    baseline_all_ms: list[float]
    current_all_ms: list[float]
    cuda_graph: str = "off"
    baseline_graph_ms: float | None = None  # the original with the CUDA EP's own CUDA graphs, where it accepts them
    linear_steps: int = 0  # of the kernel steps: fp32 linear layers on the FP64 tensor cores (fuser.linear_steps)

    def block(self, name: str) -> str:
        return (f"[{name}] device={self.device}\n"
                f"  baseline latency: {self.baseline_ms:.4f} ms (original, onnxruntime)\n"
                f"  current latency:  {self.current_ms:.4f} ms (fused, onnx-fuse runtime: "
                f"{self.kernel_steps} kernel steps"
                + (f" ({self.linear_steps} fp64-tensor-core linear)" if self.linear_steps else "")
                + f", {self.island_steps} onnxruntime islands, "
                f"CUDA graph {self.cuda_graph})\n"
                + (f"  (original with onnxruntime's enable_cuda_graph: {self.baseline_graph_ms:.4f} ms)\n"
                   if self.baseline_graph_ms is not None else "")
                + f"  speedup:          {self.speedup:.3f}x\n"
                f"  accuracy:         SNR {self.snr_db:.1f} dB, cosine {self.cosine:.7f}, rel-L2 {self.rel_l2:.2e}")

    def to_json(self) -> dict:
        d = asdict(self)
        for k in ("snr_db",):
            if not np.isfinite(d[k]):
                d[k] = str(d[k])
        return d


def _median_ms(fn, warmup: int, iters: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def _ort_graph_ms(ort, original: onnx.ModelProto, opts, ex, popts: dict, dev_feeds: dict, names: list[str],
                  ref: list[np.ndarray], warmup: int, iters: int) -> float | None:
    """The original in the CUDA EP with ``enable_cuda_graph=1`` (inputs and outputs at fixed device addresses):
    a reference point beside the baseline, not the baseline. None where onnxruntime refuses the model (its
    graphs need every node on the CUDA EP)."""
    try:
        sess = ort.InferenceSession(original.SerializeToString(), opts,
                                    providers=[(ex.provider, dict(popts, enable_cuda_graph="1"))])
        io = sess.io_binding()
        for k, v in dev_feeds.items():
            io.bind_ortvalue_input(k, v)
        outs = [ort.OrtValue.ortvalue_from_shape_and_type(list(r.shape), r.dtype, ex.ort_device, 0) for r in ref]
        for n, o in zip(names, outs, strict=True):
            io.bind_ortvalue_output(n, o)
        ms = _median_ms(lambda: sess.run_with_iobinding(io), warmup, iters)
        return statistics.median(ms)
    except Exception:  # noqa: BLE001 - onnxruntime's graph capture does not take every model
        return None


def bench(original: onnx.ModelProto, fused: onnx.ModelProto, device: str = "auto", warmup: int = 10,
          iters: int = 50, feeds: dict[str, np.ndarray] | None = None, allow_tf32: bool = False,
          seed: int = 0, cuda_graph: bool = True, layout_views: bool = True,
          fp64_linear: bool | None = None) -> BenchResult:
    import onnxruntime as ort

    from .runtime import Session

    feeds = feeds if feeds is not None else make_inputs(original, seed)
    sess = Session(fused, device=device, allow_tf32=allow_tf32, cuda_graph=cuda_graph, layout_views=layout_views,
                   fp64_linear=fp64_linear)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if sess.backend.is_device:
        ex = sess._device
        popts = dict(ex.provider_options())
        popts.pop("user_compute_stream")
        popts["use_tf32"] = "1" if allow_tf32 else "0"
        base = ort.InferenceSession(original.SerializeToString(), opts, providers=[(ex.provider, popts)])
        dev_feeds = {k: ex.to_device(v) for k, v in feeds.items()}
        io = base.io_binding()
        for k, v in dev_feeds.items():
            io.bind_ortvalue_input(k, v)
        names = [o.name for o in base.get_outputs()]
        for n in names:
            io.bind_output(n, ex.ort_device, 0)

        def run_base() -> None:
            base.run_with_iobinding(io)  # synchronises at its end

        def run_cur() -> None:
            sess.run_device(dev_feeds)
            sess.synchronize()

        b_ms = _median_ms(run_base, warmup, iters)
        c_ms = _median_ms(run_cur, warmup, iters)
        ref = [o.numpy() for o in io.get_outputs()]
        b_graph = _ort_graph_ms(ort, original, opts, ex, popts, dev_feeds, names, ref, warmup, iters) \
            if ex.provider == "CUDAExecutionProvider" else None
        outs = sess.run_device(dev_feeds)
        sess.synchronize()
        got = [outs[n].numpy() for n in names]
    else:
        base = ort.InferenceSession(original.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        names = [o.name for o in base.get_outputs()]
        b_ms = _median_ms(lambda: base.run(names, feeds), warmup, iters)
        c_ms = _median_ms(lambda: sess.run(names, feeds), warmup, iters)
        ref = base.run(names, feeds)
        got = sess.run(names, feeds)
        b_graph = None
    rel, _, cos, snr = metrics(np.concatenate([r.ravel() for r in ref]).astype(np.float64),
                               np.concatenate([g.ravel() for g in got]).astype(np.float64))
    b, c = statistics.median(b_ms), statistics.median(c_ms)
    return BenchResult(sess.device, b, c, b / c if c > 0 else float("inf"), snr, cos, rel, iters,
                       sess.kernel_steps, len(sess.steps) - sess.kernel_steps, b_ms, c_ms, sess.graph_status,
                       b_graph, sum(getattr(getattr(st, "ftype", None), "base", "") == "Linear" for st in sess.steps))
