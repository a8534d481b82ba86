"""Layout views on the GPU: every attention tactic reading Q/K/V through (batch, head, row) strides out of one packed
[B, S, 3·H·D] projection and writing O as [B, S, H·Dv]; then fused BERT-style models in the device runtime with the
views on, against onnxruntime. Outputs poisoned with NaN first; fresh seeded inputs; torch allocates device memory.
"""

from __future__ import annotations

import os
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

from fuser.kernels import attention as A  # noqa: E402

from ..attention_zoo import build, export  # noqa: E402

TORCH = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TOL = {"float32": 2e-5, "float16": 3e-3, "bfloat16": 2e-2}


@pytest.fixture(scope="module")
def be():
    from fuser.kernels.backend import select_backend

    return select_backend("cuda")


CASES = [  # (dtype, tactic, B, H, Sq, Skv, D, term)
    ("float32", "auto", 2, 3, 77, 77, 64, "none"),
    ("float32", "flash_simt", 2, 3, 77, 130, 64, "pad"),
    ("float32", "flash_simt_kv_r32", 3, 2, 61, 61, 32, "pad"),
    ("float32", "flash_simt_r128", 2, 2, 140, 99, 64, "none"),
    ("float32", "gemm_softmax", 2, 3, 33, 47, 64, "pad"),
    ("float32", "flash_tf32", 2, 3, 129, 129, 64, "pad"),
    ("float16", "flash_mma", 2, 3, 77, 190, 64, "pad"),
    ("float16", "flash_mma", 1, 4, 200, 200, 128, "none"),
    ("float16", "flash_wgmma", 2, 3, 300, 300, 64, "none"),
    ("bfloat16", "flash_wgmma", 1, 2, 260, 333, 32, "none"),
    ("float16", "flash_simt", 2, 2, 50, 50, 16, "none"),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1]}-{c[4]}x{c[5]}-d{c[6]}-{c[7]}" for c in CASES])
def test_strided_projection_views(be, case):
    dtype, tactic, b, h, sq, skv, d, term = case
    if tactic == "flash_wgmma" and be.arch != "sm_90":
        pytest.skip("flash_wgmma needs compute capability 9.0")
    seed = zlib.crc32(repr(case).encode()) ^ int.from_bytes(os.urandom(2), "little")
    rng = np.random.default_rng(seed)
    hd = h * d
    # self-attention packs Q, K, V of one sequence; with Sq != Skv, Q comes from one buffer and K/V from another
    pq = rng.standard_normal((b, sq, 3 * hd)).astype(np.float32)
    pkv = pq if sq == skv else rng.standard_normal((b, skv, 3 * hd)).astype(np.float32)
    dev_q = torch.from_numpy(pq).to(TORCH[dtype]).cuda()
    dev_kv = dev_q if sq == skv else torch.from_numpy(pkv).to(TORCH[dtype]).cuda()
    seen_q = dev_q.to(torch.float64).cpu().numpy()
    seen_kv = dev_kv.to(torch.float64).cpu().numpy()

    def heads(p, off, s):
        return p[:, :, off:off + hd].reshape(b, s, h, d).transpose(0, 2, 1, 3)

    q, k, v = heads(seen_q, 0, sq), heads(seen_kv, hd, skv), heads(seen_kv, 2 * hd, skv)
    terms, specs, dev_terms = [], [], []
    if term == "pad":
        keep = np.ones((b, 1, 1, skv), bool)
        keep[-1, ..., skv - 5:] = False
        t = np.where(keep, 0.0, np.finfo(np.float32).min).astype(np.float32)
        terms, specs = [("bias", t)], [A.TermSpec("bias", "float32", t.shape)]
        dev_terms = [torch.from_numpy(t).cuda()]
    scale = 1.0 / np.sqrt(d)
    want = A.reference(q, k, v, scale=scale, terms=terms)  # [B, H, Sq, D], float64
    row_q, row_kv = 3 * hd, 3 * hd
    strides = {"q": (sq * row_q, d, row_q), "k": (skv * row_kv, d, row_kv), "v": (skv * row_kv, d, row_kv),
               "o": (sq * hd, d, hd)}
    r = A.Runner(be, (b, h, sq, d), (b, h, skv, d), (b, h, skv, d), dtype, scale, terms=specs, tactic=tactic,
                 strides=strides)
    out = torch.full((b, sq, hd), float("nan"), dtype=TORCH[dtype], device="cuda")
    item = out.element_size()
    r([dev_q.data_ptr(), dev_kv.data_ptr() + hd * item, dev_kv.data_ptr() + 2 * hd * item,
       *(x.data_ptr() for x in dev_terms)], out.data_ptr())
    torch.cuda.synchronize()
    got = out.to(torch.float64).cpu().numpy()
    assert np.isfinite(got).all(), "output not fully written"
    want_merged = want.transpose(0, 2, 1, 3).reshape(b, sq, hd)
    err = np.linalg.norm(got - want_merged) / np.linalg.norm(want_merged)
    tol = 3e-3 if tactic == "flash_tf32" else TOL[dtype]
    assert err <= tol, f"{tactic} {dtype}: rel-L2 {err:.2e} > {tol}"


def test_strides_that_break_row_alignment_are_refused(be):
    with pytest.raises(ValueError, match="16-byte aligned"):
        A.Runner(be, (1, 2, 8, 8), (1, 2, 8, 8), (1, 2, 8, 8), "float16",
                 strides={"q": (8 * 52, 8, 52)})  # 52 halves = 104 bytes per row


@pytest.fixture(scope="module")
def cuda_ready():
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
    return True


@pytest.mark.parametrize("family", ["bert", "vit", "distilbert"])
def test_device_runtime_views_on_real_exports(cuda_ready, family):
    pytest.importorskip("transformers")
    from fuser.pipeline import run_pipeline
    from fuser.runtime import Session
    from fuser.verify import ort_run

    module, args, names = build(family, "eager")
    m = export(module, args, names, dynamo=False, opset=17)
    fused = run_pipeline(m).model
    sess = Session(fused, device="cuda")
    assert sess.views and all(len(v.inputs) == 3 and v.output is not None for v in sess.views.values())
    for i in range(4):  # eager, capture, replays with fresh inputs
        feeds = {n: a.numpy() for n, a in zip(names, args, strict=True)}
        if i:
            for n, x in feeds.items():
                if x.dtype.kind == "f":
                    feeds[n] = np.random.default_rng(i).standard_normal(x.shape).astype(x.dtype)
        ref = ort_run(m, feeds)
        got = sess.run(None, feeds)
        for a, b in zip((ref[n] for n in sess.output_names), got, strict=True):
            err = np.linalg.norm(a.astype(np.float64) - b) / max(np.linalg.norm(a.astype(np.float64)), 1e-30)
            assert err <= 1e-5, f"{family} run {i}: rel-L2 {err:.2e}"
    # the dynamic-batch ViT export's patch Conv island copies host data each run, which a capture refuses: graphs
    # stay off for it (and the runs above stayed correct through the failed capture); the others replay
    assert sess.graph_status == "on" or family == "vit", sess.graph_status


@pytest.mark.parametrize("case", ["hand", "torch_mha"])
def test_device_runtime_static_chain_views(cuda_ready, case):
    """nn.MultiheadAttention's chains (Reshape/Unsqueeze/Transpose/Squeeze/Gather/Reshape/Transpose/Reshape in,
    Transpose/Reshape out) read and written through strides on the device, eager and replayed."""
    from fuser.pipeline import run_pipeline
    from fuser.runtime import KernelStep, Session
    from fuser.verify import ort_run

    from ..test_layout_views import mha_chain_attention

    if case == "hand":
        m, feeds = mha_chain_attention(s=37, b=3, heads=4, d=16)
    else:
        module, _, _ = build("mha_vit_block")
        block = type(module)(False, 128, 2)
        block.static_batch = True
        x = torch.randn(4, 197, 128)
        m = export(block, (x,), ["x"], dynamo=False, opset=17)
        feeds = {"x": x.numpy()}
    fused = run_pipeline(m).model
    sess = Session(fused, device="cuda")
    (v,) = sess.views.values()
    assert all(x.strides is not None for x in v.inputs.values()) and v.output is not None
    plan = [n.op_type for st in sess.steps for n in ([st.node] if isinstance(st, KernelStep) else st.nodes)]
    assert "Gather" not in plan and "Squeeze" not in plan, plan
    for i in range(4):
        if i:
            feeds = {n: np.random.default_rng(i).standard_normal(a.shape).astype(a.dtype) for n, a in feeds.items()}
        ref = ort_run(m, feeds)
        got = sess.run(None, feeds)
        for a, b in zip((ref[n] for n in sess.output_names), got, strict=True):
            err = np.linalg.norm(a.astype(np.float64) - b) / max(np.linalg.norm(a.astype(np.float64)), 1e-30)
            assert err <= 1e-5, f"{case} run {i}: rel-L2 {err:.2e}"
