"""The attention kernels against their float64 numpy reference on an NVIDIA GPU (run on the GPU machine).

Every tactic (flash_mma on tensor cores for fp16/bf16, flash_simt for every dtype, gemm_softmax), on
random shapes (batch, heads, kv heads for GQA/MQA, query and key lengths off the 64-tiles, head dims 8..128
and a different value width), with no term, an additive padding bias, a full additive bias, a boolean mask
(-inf and finite fills), causal, Swin's windowed bias, fully masked rows with and without the NaN guard.
Outputs are poisoned with NaN before each launch and checked fully written (NaN only where the reference
has it). Fresh seeded inputs, never zeros; torch only allocates device memory here.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

from fuser.kernels import attention as A  # noqa: E402

TOL = {"float32": 2e-5, "float16": 3e-3, "bfloat16": 2e-2}
TORCH = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TF32_TOL = 3e-3  # flash_tf32 (fp32 on TF32 tensor cores, --allow-tf32): products of 10-bit mantissas


@pytest.fixture(scope="module")
def be():
    from fuser.kernels.backend import select_backend

    return select_backend("cuda")


def rnd(shape, seed: int, scale: float = 1.0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(size=shape).astype(np.float32) * scale
    x[x == 0] = 0.25
    return x


def to_dev(x: np.ndarray, dtype: str):
    t = torch.from_numpy(np.ascontiguousarray(x))
    return t.to(TORCH[dtype]).cuda() if x.dtype.kind == "f" else t.cuda()


def rounded(x: np.ndarray, dtype: str) -> np.ndarray:
    """The values the kernel sees after the cast to ``dtype`` (float64 for the reference)."""
    return torch.from_numpy(x).to(TORCH[dtype]).to(torch.float64).numpy()


def make_terms(kind: str, b: int, h: int, sq: int, skv: int, seed: int, dtype: str):
    """(reference terms, kernel specs, device tensors)."""
    rng = np.random.default_rng(seed)
    if kind == "none":
        return [], [], []
    if kind == "pad_bias":  # HF's additive padding mask: finfo.min where padded
        keep = np.ones((b, 1, 1, skv), bool)
        keep[-1, ..., max(1, skv - 3):] = False
        t = np.where(keep, 0.0, np.finfo(np.float32).min).astype(np.float32)
    elif kind == "full_bias":  # relative-position-like bias per head and pair
        t = rng.standard_normal((1, h, sq, skv)).astype(np.float32)
    elif kind in ("bool_inf", "bool_finite", "dead_rows", "dead_rows_guard"):
        keep = rng.random((b, 1, sq, skv)) > 0.3
        keep[..., 0] = True
        if kind.startswith("dead_rows"):
            keep[0, 0, sq // 2, :] = False
        fill = -1e4 if kind == "bool_finite" else float("-inf")
        return ([("mask", keep, np.float32(fill))], [A.TermSpec("mask", "bool", keep.shape, fill)],
                [to_dev(keep.astype(np.uint8), dtype)])
    elif kind == "window":
        nw = 2
        t = np.where(rng.random((1, nw, 1, sq, skv)) > 0.3, 0.0, -100.0).astype(np.float32)
        ref = rounded(t, dtype) if dtype != "float32" else t
        return ([("winbias", ref)], [A.TermSpec("winbias", dtype, t.shape)], [to_dev(t, dtype)])
    else:
        raise KeyError(kind)
    ref = rounded(t, dtype) if dtype != "float32" else t
    return [("bias", ref)], [A.TermSpec("bias", dtype, t.shape)], [to_dev(t, dtype)]


def check(be, dtype: str, tactic: str, b: int, h: int, hkv: int, sq: int, skv: int, d: int, dv: int,
          term: str = "none", causal: bool = False, nan_zero: bool = False, seed: int = 0) -> None:
    sd = zlib.crc32(repr((dtype, tactic, b, h, hkv, sq, skv, d, dv, term, causal, nan_zero, seed)).encode())
    q, k, v = rnd((b, h, sq, d), sd), rnd((b, hkv, skv, d), sd + 1), rnd((b, hkv, skv, dv), sd + 2)
    scale = 1.0 / np.sqrt(d) * 1.3
    ref_terms, specs, dev_terms = make_terms(term, b, h, sq, skv, sd + 3, dtype)
    if dtype != "float32":
        q, k, v = (rounded(x, dtype) for x in (q, k, v))
    want = A.reference(q.astype(np.float64), k, v, scale=scale, causal=causal, terms=ref_terms,
                       nan_zero=nan_zero or term == "dead_rows_guard")
    r = A.Runner(be, q.shape, k.shape, v.shape, dtype, scale, causal, specs, nan_zero or term == "dead_rows_guard",
                 tactic)
    assert r.tactic == ("flash_wgmma" if tactic.startswith("flash_wgmma") else
                        "flash_mma" if tactic.startswith("flash_mma") else
                        "flash_simt" if tactic.startswith("flash_simt") else
                        "flash_tf32" if tactic.startswith("flash_tf32") else tactic)
    qd, kd, vd = (to_dev(x, dtype) for x in (q, k, v))
    out = torch.full((b * h * sq * dv + 64,), float("nan"), dtype=TORCH[dtype], device="cuda")
    r([qd, kd, vd, *dev_terms], out.data_ptr())
    torch.cuda.synchronize()
    got_all = out.to(torch.float64).cpu().numpy()
    assert np.isnan(got_all[b * h * sq * dv:]).all(), "kernel wrote past its output"
    got = got_all[:b * h * sq * dv].reshape(b, h, sq, dv)
    nan_want = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan_want), f"{int(np.isnan(got).sum())} NaN, want {int(nan_want.sum())}"
    w, g = want[~nan_want], got[~nan_want]
    err = float(np.linalg.norm(g - w) / max(np.linalg.norm(w), 1e-30))
    tol = TF32_TOL if tactic.startswith("flash_tf32") else TOL[dtype]
    assert err <= tol, f"rel-L2 {err:.3e} > {tol:.0e}"


SHAPES = [  # b, h, hkv, sq, skv, d, dv
    (2, 4, 4, 64, 64, 64, 64), (1, 3, 3, 65, 130, 64, 64), (3, 4, 2, 7, 200, 32, 32), (2, 8, 1, 100, 33, 64, 48),
    (1, 2, 2, 1, 77, 128, 128), (2, 2, 1, 129, 129, 80, 80), (1, 12, 4, 64, 256, 128, 64), (4, 1, 1, 128, 128, 8, 8),
    (2, 4, 4, 31, 17, 16, 24),
]
TERMS = ["none", "pad_bias", "full_bias", "bool_inf", "bool_finite", "dead_rows", "dead_rows_guard", "window"]


# flash_simt_kv (all keys resident): head dims up to 64, up to 128 keys; shapes of its own off the tiles
KV_SHAPES = [(2, 3, 3, 65, 128, 64, 64), (1, 4, 2, 129, 97, 40, 56), (3, 2, 1, 33, 64, 64, 64), (1, 2, 2, 5, 3, 6, 10)]
KV_TACTICS = [("float32", "flash_simt_kv_r128"), ("float32", "flash_simt_kv_r64"), ("float32", "flash_simt_kv_r32"),
              ("float16", "flash_simt_kv"), ("bfloat16", "flash_simt_kv")]


def kv_fits(tactic: str, skv: int, d: int, dv: int) -> bool:
    return not tactic.startswith("flash_simt_kv") or (skv <= 128 and max(d, dv) <= 64)


@pytest.mark.parametrize("shape", SHAPES + KV_SHAPES, ids=["x".join(map(str, s)) for s in SHAPES + KV_SHAPES])
@pytest.mark.parametrize("dtype,tactic", [("float32", "flash_simt"), ("float16", "flash_mma"),
                                          ("bfloat16", "flash_mma"), ("float16", "flash_mma_n128"),
                                          ("float16", "flash_mma_pp"), ("bfloat16", "flash_mma_pp"),
                                          ("float16", "flash_simt"), ("float32", "flash_simt_r128"),
                                          ("float32", "gemm_softmax"), *KV_TACTICS])
def test_shapes(be, shape, dtype, tactic):
    b, h, hkv, sq, skv, d, dv = shape
    if tactic.startswith("flash_mma") and (d % 8 or dv % 8):
        pytest.skip("tensor cores take multiples of 8")
    if tactic in ("flash_simt_r128", "flash_mma_n128", "flash_mma_pp") and max(d, dv) > 64:
        pytest.skip("this tiling takes head dims up to 64")
    if not kv_fits(tactic, skv, d, dv):
        pytest.skip("flash_simt_kv holds up to 128 keys of head dims up to 64")
    check(be, dtype, tactic, b, h, hkv, sq, skv, d, dv)


@pytest.mark.parametrize("term", TERMS)
@pytest.mark.parametrize("dtype,tactic", [("float32", "flash_simt"), ("float16", "flash_mma"),
                                          ("bfloat16", "flash_mma"), ("float16", "flash_mma_n128"),
                                          ("float16", "flash_mma_pp"), ("float32", "flash_simt_r128"),
                                          ("float32", "gemm_softmax"), *KV_TACTICS])
def test_terms(be, term, dtype, tactic):
    check(be, dtype, tactic, 2, 4, 2, 70, 90, 64, 64, term=term)


@pytest.mark.parametrize("dtype,tactic", [("float32", "flash_simt"), ("float16", "flash_mma"),
                                          ("float16", "flash_mma_n128"), ("float16", "flash_mma_pp"),
                                          ("bfloat16", "flash_simt"), ("float32", "flash_simt_r128"),
                                          ("float32", "gemm_softmax"), *KV_TACTICS])
@pytest.mark.parametrize("sq,skv", [(130, 130), (64, 200), (200, 64), (1, 1), (128, 128), (100, 37)])
def test_causal(be, dtype, tactic, sq, skv):
    if not kv_fits(tactic, skv, 64, 64):
        pytest.skip("flash_simt_kv holds up to 128 keys")
    check(be, dtype, tactic, 2, 4, 4, sq, skv, 64, 64, term="pad_bias", causal=True)


def test_seed_shape_fp32(be):
    check(be, "float32", "flash_simt", 256, 1, 1, 128, 128, 64, 64)
    check(be, "float32", "gemm_softmax", 256, 1, 1, 128, 128, 64, 64)
    check(be, "float32", "flash_simt_r128", 256, 1, 1, 128, 128, 64, 64)
    check(be, "float32", "flash_simt_kv_r128", 256, 1, 1, 128, 128, 64, 64)
    check(be, "float32", "flash_simt_kv_r64", 256, 1, 1, 128, 128, 64, 64)
    check(be, "float32", "flash_simt_kv_r32", 256, 1, 1, 128, 128, 64, 64)
    check(be, "float32", "flash_simt_kv", 8, 12, 12, 128, 128, 64, 64)


def test_kv_scale_and_plain_path(be):
    """flash_simt_kv's plain path (no terms, positive scale: the scale inside the exponent) next to a negative
    scale (the general path), on large dot products."""
    for scale_sign in (1.0, -1.0):
        b, h, s, d = 2, 2, 100, 64
        q, k, v = rnd((b, h, s, d), 1, 3.0), rnd((b, h, s, d), 2, 3.0), rnd((b, h, s, d), 3)
        scale = scale_sign / np.sqrt(d)
        want = A.reference(q.astype(np.float64), k, v, scale=scale)
        r = A.Runner(be, q.shape, k.shape, v.shape, "float32", scale, tactic="flash_simt_kv")
        qd, kd, vd = (to_dev(x, "float32") for x in (q, k, v))
        out = torch.full((b * h * s * d,), float("nan"), dtype=torch.float32, device="cuda")
        r([qd, kd, vd], out.data_ptr())
        torch.cuda.synchronize()
        got = out.to(torch.float64).cpu().numpy().reshape(want.shape)
        assert np.linalg.norm(got - want) / np.linalg.norm(want) <= TOL["float32"]


def test_misaligned_pointer_falls_back(be):
    b, h, s, d = 1, 2, 40, 64
    q, k, v = (rounded(rnd((b, h, s, d), i), "float16") for i in range(3))
    want = A.reference(q, k, v)
    r = A.Runner(be, q.shape, k.shape, v.shape, "float16")
    assert r.tactic == "flash_mma"
    bufs = [torch.zeros(x.size + 8, dtype=torch.float16, device="cuda") for x in (q, k, v)]
    for buf, x in zip(bufs, (q, k, v), strict=True):
        buf[1:1 + x.size] = torch.from_numpy(x.ravel()).cuda()
    out = torch.full((b * h * s * d + 1,), float("nan"), dtype=torch.float16, device="cuda")
    r([buf.data_ptr() + 2 for buf in bufs], out.data_ptr() + 2)
    torch.cuda.synchronize()
    got = out[1:].to(torch.float64).cpu().numpy().reshape(want.shape)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 3e-3


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("d", [128, 80])
def test_key_padding_bias_wide_heads(be, dtype, d):
    """The kernels compiled for one key-padding bias at head dims past 64 (and with causal)."""
    check(be, dtype, "flash_mma", 2, 4, 2, 70, 90, d, d, term="pad_bias")
    check(be, dtype, "flash_mma", 2, 4, 4, 90, 90, d, d, term="pad_bias", causal=True)


# -- flash_wgmma (Hopper wgmma, sm_90a; compute capability 9.0 only) ----------------------------------------------
# random shapes off the 64-row / 64-key tiles: odd batch, heads, lengths; GQA and MQA; batch-1 K/V; head dims
# below 64 (zero-padded to 64) and Dv != D; causal with Sq != Skv. Seeded, fixed at import (test ids stay stable).
_rng = np.random.default_rng(90)
WG_SHAPES = [(1, 1, 1, 64, 64, 64, 64), (3, 5, 5, 1, 1, 64, 64), (1, 3, 1, 777, 513, 64, 64),
             (2, 6, 2, 129, 1000, 64, 64), (1, 2, 2, 191, 63, 32, 48), (2, 4, 4, 255, 257, 64, 64)] + [
    (int(_rng.integers(1, 4)), h, h // int(_rng.choice([1, h])), int(_rng.integers(1, 400)) | 1,
     int(_rng.integers(1, 700)) | 1, int(_rng.choice([8, 24, 64])), int(_rng.choice([16, 64])))
    for h in (3, 5)]


def wgmma_device(be) -> None:
    if be.arch != "sm_90":
        pytest.skip(f"flash_wgmma runs on compute capability 9.0 only, not {be.arch}")


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", WG_SHAPES, ids=["x".join(map(str, s)) for s in WG_SHAPES])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_wgmma_shapes(be, dtype, shape, causal):
    wgmma_device(be)
    check(be, dtype, "flash_wgmma", *shape, causal=causal)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("variant", list(A._wg.WG_VARIANTS))
def test_wgmma_variants(be, variant, causal):
    """Every pinned variant (warpgroups per block, keys per tile, pipelined or not) on shapes off its tiles."""
    wgmma_device(be)
    for i, shape in enumerate([(2, 3, 3, 200, 333, 64, 64), (1, 4, 2, 65, 130, 40, 64)]):
        check(be, "float16" if i == 0 else "bfloat16", f"flash_wgmma_{variant}", *shape, causal=causal, seed=i)


def test_wgmma_scale_and_fallbacks(be):
    """A negative scale (the general softmax path, not the folded exponent) on large dot products; a score term,
    head dims past 64 and a misaligned pointer all run flash_mma / flash_simt instead (checked by check())."""
    wgmma_device(be)
    b, h, s, d = 2, 2, 150, 64
    q, k, v = (rounded(rnd((b, h, s, d), i, 3.0 if i < 2 else 1.0), "float16") for i in range(3))
    for scale in (-1.0 / np.sqrt(d), 2.0 / np.sqrt(d)):
        want = A.reference(q, k, v, scale=scale)
        r = A.Runner(be, q.shape, k.shape, v.shape, "float16", scale, tactic="flash_wgmma")
        assert r.tactic == "flash_wgmma"
        out = torch.full((b * h * s * d,), float("nan"), dtype=torch.float16, device="cuda")
        r([to_dev(x, "float16") for x in (q, k, v)], out.data_ptr())
        torch.cuda.synchronize()
        got = out.to(torch.float64).cpu().numpy().reshape(want.shape)
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < TOL["float16"]
    assert A.Runner(be, q.shape, k.shape, v.shape, "float16", tactic="flash_wgmma",
                    terms=[A.TermSpec("bias", "float16", (b, 1, 1, s))]).tactic == "flash_mma"
    assert A.Runner(be, (1, 2, 8, 128), (1, 2, 8, 128), (1, 2, 8, 128), "float16",
                    tactic="flash_wgmma").tactic == "flash_mma"
    bufs = [torch.zeros(x.size + 8, dtype=torch.float16, device="cuda") for x in (q, k, v)]
    for buf, x in zip(bufs, (q, k, v), strict=True):
        buf[1:1 + x.size] = torch.from_numpy(x.ravel()).cuda()
    want = A.reference(q, k, v, causal=True)
    r = A.Runner(be, q.shape, k.shape, v.shape, "float16", causal=True, tactic="flash_wgmma")
    out = torch.full((b * h * s * d + 1,), float("nan"), dtype=torch.float16, device="cuda")
    r([buf.data_ptr() + 2 for buf in bufs], out.data_ptr() + 2)  # off 16 bytes: the CUDA-core kernel runs
    torch.cuda.synchronize()
    got = out[1:].to(torch.float64).cpu().numpy().reshape(want.shape)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < TOL["float16"]


# -- flash_tf32: fp32 on TF32 tensor cores (--allow-tf32), rel-L2 <= TF32_TOL against float64 ------------------
TF32_TACTICS = ["flash_tf32", "flash_tf32_m2", "flash_tf32_trunc"]
TF32_SHAPES = [(2, 3, 3, 200, 333, 64, 64), (1, 4, 2, 65, 130, 40, 64), (2, 2, 1, 129, 1, 8, 16),
               (1, 2, 2, 300, 97, 128, 128), (1, 4, 1, 33, 257, 96, 56)]


@pytest.mark.parametrize("shape", SHAPES + TF32_SHAPES, ids=["x".join(map(str, s)) for s in SHAPES + TF32_SHAPES])
@pytest.mark.parametrize("tactic", TF32_TACTICS)
def test_tf32_shapes(be, shape, tactic):
    b, h, hkv, sq, skv, d, dv = shape
    if d % 8 or dv % 8:
        pytest.skip("tensor cores take multiples of 8")
    check(be, "float32", tactic, b, h, hkv, sq, skv, d, dv)


@pytest.mark.parametrize("term", TERMS)
@pytest.mark.parametrize("tactic,d", [("flash_tf32", 64), ("flash_tf32_m2", 64), ("flash_tf32", 128)])
def test_tf32_terms(be, term, tactic, d):
    check(be, "float32", tactic, 2, 4, 2, 70, 90, d, d, term=term)


@pytest.mark.parametrize("tactic,d", [("flash_tf32", 64), ("flash_tf32_m2", 64), ("flash_tf32", 128)])
@pytest.mark.parametrize("sq,skv", [(130, 130), (64, 200), (200, 64), (1, 1), (128, 128), (100, 37)])
def test_tf32_causal(be, tactic, d, sq, skv):
    check(be, "float32", tactic, 2, 4, 4, sq, skv, d, d, term="pad_bias", causal=True)
    check(be, "float32", tactic, 1, 4, 2, sq, skv, d, d, causal=True, seed=1)


def test_tf32_bert_shapes(be):
    """BERT-base's attention (12 heads, D=64) at S=128 and 512 with its key-padding bias, and a plain S=512."""
    check(be, "float32", "flash_tf32", 2, 12, 12, 512, 512, 64, 64, term="pad_bias")
    check(be, "float32", "flash_tf32", 8, 12, 12, 128, 128, 64, 64, term="pad_bias")
    check(be, "float32", "flash_tf32_m2", 2, 12, 12, 512, 512, 64, 64)


def test_tf32_large_scores_and_fallbacks(be):
    """Large dot products (TF32's error grows with them) with a positive and a negative scale; fp16 tensors,
    head dims that are not multiples of 8 and a misaligned pointer take the other kernels (checked here)."""
    b, h, s, d = 2, 2, 150, 64
    q, k, v = rnd((b, h, s, d), 1, 3.0), rnd((b, h, s, d), 2, 3.0), rnd((b, h, s, d), 3)
    for scale in (0.5 / np.sqrt(d), -1.0 / np.sqrt(d)):
        want = A.reference(q.astype(np.float64), k, v, scale=scale)
        r = A.Runner(be, q.shape, k.shape, v.shape, "float32", scale, tactic="flash_tf32")
        assert r.tactic == "flash_tf32"
        out = torch.full((b * h * s * d,), float("nan"), dtype=torch.float32, device="cuda")
        r([to_dev(x, "float32") for x in (q, k, v)], out.data_ptr())
        torch.cuda.synchronize()
        got = out.to(torch.float64).cpu().numpy().reshape(want.shape)
        assert np.linalg.norm(got - want) / np.linalg.norm(want) <= 2 * TF32_TOL
    assert A.Runner(be, q.shape, k.shape, v.shape, "float16", tactic="flash_tf32").tactic == "flash_mma"
    assert A.Runner(be, (1, 2, 8, 36), (1, 2, 8, 36), (1, 2, 8, 36), "float32",
                    tactic="flash_tf32").tactic.startswith("flash_simt")
    bufs = [torch.zeros(x.size + 8, dtype=torch.float32, device="cuda") for x in (q, k, v)]
    for buf, x in zip(bufs, (q, k, v), strict=True):
        buf[1:1 + x.size] = torch.from_numpy(x.ravel()).cuda()
    want = A.reference(q.astype(np.float64), k, v, causal=True)
    r = A.Runner(be, q.shape, k.shape, v.shape, "float32", causal=True, tactic="flash_tf32")
    out = torch.full((b * h * s * d + 1,), float("nan"), dtype=torch.float32, device="cuda")
    r([buf.data_ptr() + 4 for buf in bufs], out.data_ptr() + 4)  # off 16 bytes: the CUDA-core kernel runs
    torch.cuda.synchronize()
    got = out[1:].to(torch.float64).cpu().numpy().reshape(want.shape)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) <= TOL["float32"]


@pytest.mark.parametrize("scale_sign", [1.0, -1.0])
@pytest.mark.parametrize("bias_dtype", ["float32", "float16"])
@pytest.mark.parametrize("tactic", ["flash_tf32", "flash_tf32_m2"])
def test_tf32_padding_bias_paths(be, scale_sign, bias_dtype, tactic):
    """The key-padding kernels: bias / scale staged in shared memory (positive scale) and the general path (negative
    scale), random keys padded, an fp16 bias beside fp32 tensors, with and without causal."""
    b, h, sq, skv, d = 2, 4, 150, 170, 64
    q, k, v = rnd((b, h, sq, d), 5), rnd((b, 2, skv, d), 6), rnd((b, 2, skv, d), 7)
    keep = np.random.default_rng(8).random((b, 1, 1, skv)) > 0.3
    bias = np.where(keep, 0.0, -1e4).astype(bias_dtype)
    scale = scale_sign / np.sqrt(d)
    for causal in (False, True):
        want = A.reference(q.astype(np.float64), k, v, scale=scale, causal=causal, terms=[("bias", bias)])
        r = A.Runner(be, q.shape, k.shape, v.shape, "float32", scale, causal,
                     [A.TermSpec("bias", bias_dtype, bias.shape)], tactic=tactic)
        assert r.tactic == "flash_tf32" and r.plan["family"].endswith("cb")
        out = torch.full((b * h * sq * d + 64,), float("nan"), dtype=torch.float32, device="cuda")
        r([to_dev(x, "float32") for x in (q, k, v)] + [to_dev(bias, bias_dtype)], out.data_ptr())
        torch.cuda.synchronize()
        got_all = out.to(torch.float64).cpu().numpy()
        assert np.isnan(got_all[b * h * sq * d:]).all()
        got = got_all[:b * h * sq * d].reshape(want.shape)
        assert np.linalg.norm(got - want) / np.linalg.norm(want) <= TF32_TOL


# -- flash_wgmma's split tail (variant 2n64qs): the last wave's query tiles split over two blocks each -----------

def split_shape(be, h: int, hkv: int, nq: int, sq: int, skv: int, d: int, dv: int, extra: int):
    """A shape whose n query tiles (128 rows) fill one wave of 2-per-SM block slots and ``extra`` more: the launch
    rule splits the last ``extra`` tiles."""
    slots = 2 * be.num_sms
    b = -(-(slots + extra) // (nq * h))
    return (b, h, hkv, sq, skv, d, dv), b * h * nq - slots


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("case", [
    (5, 5, 3, 333, 777, 64, 64),    # MHA, keys off the tiles (13 tiles: halves of 6 and 7)
    (6, 2, 2, 200, 1000, 24, 40),   # GQA, head dims below 64, Dv != D
    (4, 1, 1, 100, 65, 64, 16),     # MQA, 2 key tiles (one each), one query tile per head
])
def test_wgmma_split_tail(be, dtype, case):
    """Where one whole wave of block slots runs first and at most half a wave is left, 2n64qs splits the last
    tiles (the launch rule's split, which auto takes from WG_SPLIT_MIN_KEY_TILES key tiles on); every element
    written (NaN-poisoned), against float64."""
    wgmma_device(be)
    h, hkv, nq, sq, skv, d, dv = case
    shape, tail = split_shape(be, h, hkv, nq, sq, skv, d, dv, 9)
    assert 0 < tail <= be.num_sms
    b = shape[0]
    r = A.Runner(be, (b, h, sq, d), (b, hkv, skv, d), (b, hkv, skv, dv), dtype, tactic="flash_wgmma_2n64qs")
    assert r.plan["family"] == "wg2n64qs" and r.plan["split_tiles"] == tail
    assert r.plan["grid"] == (b * h * nq + tail, 1, 1)
    check(be, dtype, "flash_wgmma_2n64qs", *shape)
    # the rule: auto splits the same tail where the keys are long enough, not below, not a full last wave
    long_kv = 64 * A._wg.WG_SPLIT_MIN_KEY_TILES
    r = A.Runner(be, (b, h, sq, d), (b, hkv, long_kv, d), (b, hkv, long_kv, dv), dtype, tactic="flash_wgmma")
    assert r.plan["family"] == "wg2n64qs" and r.plan["grid"] == (b * h * nq + tail, 1, 1)
    r = A.Runner(be, (b, h, sq, d), (b, hkv, long_kv - 64, d), (b, hkv, long_kv - 64, dv), dtype,
                 tactic="flash_wgmma")
    assert r.plan["family"] == "wg2n64q" and "grid" not in r.plan
    r = A.Runner(be, (1, 12, 128 * be.num_sms // 6, 64), (1, 12, long_kv, 64), (1, 12, long_kv, 64), dtype,
                 tactic="flash_wgmma")
    assert r.plan["family"] == "wg2n64q" and "grid" not in r.plan


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(3, 2, 2, 130, 1, 64, 64), (2, 3, 1, 257, 64, 32, 64), (2, 2, 2, 300, 129, 64, 56),
                                   (1, 3, 3, 1, 500, 64, 64), (2, 5, 5, 513, 301, 16, 8)],
                         ids=lambda s: "x".join(map(str, s)))
def test_wgmma_split_pinned_edges(be, shape, causal):
    """Pinned 2n64qs on edge cases: one key tile (the first half has none), exactly one tile, Sq = 1, causal rows
    that see no key of the second half, tiny head dims."""
    wgmma_device(be)
    for i, dtype in enumerate(("float16", "bfloat16")):
        check(be, dtype, "flash_wgmma_2n64qs", *shape, causal=causal, seed=i)


def test_wgmma_split_repeated_launches(be):
    """The tiles' arrival counters reset themselves: one runner launched several times on fresh inputs (and a second
    runner of the same module after it) gives the right result each time."""
    wgmma_device(be)
    (b, h, hkv, sq, skv, d, dv), _ = split_shape(be, 4, 4, 2, 256, 640, 64, 64, 40)
    r = A.Runner(be, (b, h, sq, d), (b, hkv, skv, d), (b, hkv, skv, dv), "float16", tactic="flash_wgmma_2n64qs")
    assert r.plan["family"] == "wg2n64qs" and r.plan["split_tiles"] == 40
    r2 = A.Runner(be, (1, 3, 200, d), (1, 3, 333, d), (1, 3, 333, dv), "float16", tactic="flash_wgmma_2n64qs")
    for it in range(3):
        for rr, (bb, hh, s1, s2) in ((r, (b, h, sq, skv)), (r2, (1, 3, 200, 333))):
            q, k, v = (rounded(rnd(sh, 100 * it + j), "float16") for j, sh in
                       enumerate([(bb, hh, s1, d), (bb, hh, s2, d), (bb, hh, s2, dv)]))
            want = A.reference(q, k, v)
            out = torch.full((bb * hh * s1 * dv,), float("nan"), dtype=torch.float16, device="cuda")
            rr([to_dev(x, "float16") for x in (q, k, v)], out.data_ptr())
            torch.cuda.synchronize()
            got = out.to(torch.float64).cpu().numpy().reshape(want.shape)
            assert not np.isnan(got).any()
            assert np.linalg.norm(got - want) / np.linalg.norm(want) <= TOL["float16"], (it, rr.plan["family"])
