"""Every kernel once on small odd shapes, for compute-sanitizer (memcheck, racecheck) on the GPU machine.

Run: ``compute-sanitizer --tool memcheck --error-exitcode 9 python3 bench/sanitize_kernels.py`` (and with
``--tool racecheck``). Device buffers come from torch; each output is checked against the family's numpy
reference as well, so a sanitizer-clean run is also a correct one. Pointers are offset by one element
where the kernel allows (misaligned vector paths), sizes are odd, outputs poisoned with NaN first.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from fuser.kernels import batchnorm, conv, group_norm, leaky_relu
from fuser.kernels.backend import select_backend

rng = np.random.default_rng(1234)
be = select_backend("cuda")
stream = torch.cuda.current_stream().cuda_stream
failures: list[str] = []


def dev(a: np.ndarray, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A device copy of ``a`` starting ``offset`` elements into a larger buffer (misaligned on purpose)."""
    t = torch.from_numpy(np.ascontiguousarray(a).reshape(-1))
    buf = torch.empty(t.numel() + offset, dtype=t.dtype, device="cuda")
    view = buf[offset:]
    view.copy_(t)
    return buf, view


def out_like(shape, dtype, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    n = int(np.prod(shape))
    buf = torch.full((n + offset,), float("nan"), dtype=dtype, device="cuda")
    return buf, buf[offset:]


def check(name: str, got: torch.Tensor, ref: np.ndarray, tol: float) -> None:
    torch.cuda.synchronize()
    g = got.cpu().numpy().astype(np.float64).reshape(ref.shape)
    r = ref.astype(np.float64)
    err = np.linalg.norm(g - r) / max(np.linalg.norm(r), 1e-30)
    ok = np.isfinite(g).all() and err <= tol
    print(f"{'ok ' if ok else 'BAD'} {name}: rel-L2 {err:.2e}")
    if not ok:
        failures.append(name)


for dt, tol in ((np.float32, 1e-5), (np.float16, 1e-2)):
    tdt = torch.float32 if dt == np.float32 else torch.float16
    for n, off in ((1, 0), (3, 1), (4097, 1), (100_003, 0)):
        x = rng.standard_normal(n).astype(dt)
        _, xv = dev(x, off)
        _, yv = out_like(x.shape, tdt, off)
        leaky_relu.Runner(be, n, dt, 0.1)((xv.data_ptr(),), yv.data_ptr(), stream)
        check(f"leaky_relu {dt.__name__} n={n} off={off}", yv, leaky_relu.reference(x, 0.1), tol)
    for shape in ((1, 3, 5, 7), (2, 5, 1, 33), (3, 7, 11)):
        x = rng.standard_normal(shape).astype(dt)
        c = shape[1]
        sc, sh = (1 + 0.1 * rng.standard_normal(c)).astype(np.float32), rng.standard_normal(c).astype(np.float32)
        _, xv = dev(x, 1)
        _, yv = out_like(shape, tdt, 1)
        batchnorm.Runner(be, shape, dt, sc, sh, "LeakyRelu", 0.2)((xv.data_ptr(),), yv.data_ptr(), stream)
        check(f"batchnorm {dt.__name__} {shape}", yv, batchnorm.reference(x, sc, sh, "LeakyRelu", 0.2), tol)
    for shape, groups, force in (((2, 6, 5, 7), 3, None), ((1, 6, 9, 13), 2, "split"), ((3, 4, 17), 4, "fused")):
        x = rng.standard_normal(shape).astype(dt)
        c = shape[1]
        gam, bet = (1 + 0.1 * rng.standard_normal(c)).astype(np.float32), rng.standard_normal(c).astype(np.float32)
        _, xv = dev(x, 1)
        _, yv = out_like(shape, tdt, 1)
        group_norm.Runner(be, shape, dt, gam, bet, groups, 1e-5, "SiLU", force=force)(
            (xv.data_ptr(),), yv.data_ptr(), stream)
        check(f"group_norm {dt.__name__} {shape} G={groups} {force or 'auto'}", yv,
              group_norm.reference(x, gam, bet, groups, 1e-5, "SiLU"), tol * (10 if dt == np.float16 else 1))
    # every conv tactic the heuristic may pick, on odd shapes with residual and activation
    for (n, cin, h, w_, cout, k, s, g) in ((1, 3, 7, 9, 5, 3, 1, 1), (2, 8, 9, 7, 8, 3, 2, 8), (1, 6, 5, 5, 4, 1, 1, 2),
                                           (1, 4, 11, 6, 6, 5, 1, 1)):
        x = rng.standard_normal((n, cin, h, w_)).astype(dt)
        wt = (rng.standard_normal((cout, cin // g, k, k)) * 0.3).astype(dt)
        b = rng.standard_normal(cout).astype(np.float32)
        attrs = {"strides": [s, s], "pads": [k // 2] * 4, "group": g}
        geom = conv.geometry(x.shape, wt.shape, **attrs)
        ref_shape = geom.output_shape
        r = rng.standard_normal(ref_shape).astype(dt)
        for tactic in conv.candidate_tactics(geom, dt, allow_tf32=True):
            if tactic == "library":
                continue
            try:
                run = conv.Runner(be, x.shape, dt, wt, b, residual=True, activation="Relu", tactic=tactic,
                                  allow_tf32=True, **attrs)
            except conv.Unsupported:
                continue
            _, xv = dev(x)
            _, rv = dev(r)
            _, yv = out_like(ref_shape, tdt)
            run((xv.data_ptr(), rv.data_ptr()), yv.data_ptr(), stream)
            ref = conv.reference(x, wt, b, r, "Relu", **attrs)
            t = 2e-3 if "tf32" in run.tactic or dt == np.float16 else 1e-5
            check(f"conv {dt.__name__} {run.tactic} x={x.shape} w={wt.shape} s={s} g={g}", yv, ref, t)

try:
    from fuser.kernels import attention

    for dt, tol in ((np.float32, 1e-5), (np.float16, 1e-2)):
        for (b, h, hkv, sq, skv, d, causal) in ((1, 2, 2, 5, 7, 16, False), (2, 4, 2, 33, 33, 64, True),
                                                (1, 1, 1, 129, 70, 32, False)):
            q = rng.standard_normal((b, h, sq, d)).astype(dt)
            k = rng.standard_normal((b, hkv, skv, d)).astype(dt)
            v = rng.standard_normal((b, hkv, skv, d)).astype(dt)
            run = attention.Runner(be, q.shape, k.shape, v.shape, dt, causal=causal)
            tdt = torch.float32 if dt == np.float32 else torch.float16
            _, qv = dev(q)
            _, kv = dev(k)
            _, vv = dev(v)
            _, yv = out_like(run.output_shape, tdt)
            run((qv.data_ptr(), kv.data_ptr(), vv.data_ptr()), yv.data_ptr(), stream)
            check(f"attention {dt.__name__} q={q.shape} kv_heads={hkv} causal={causal}", yv,
                  attention.reference(q, k, v, causal=causal), tol * 10)
except ImportError as e:
    print(f"attention family not present: {e}")

torch.cuda.synchronize()
print(f"{len(failures)} failures" + (": " + ", ".join(failures) if failures else ""))
sys.exit(1 if failures else 0)
