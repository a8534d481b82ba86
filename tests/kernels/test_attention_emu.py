"""The CUDA-core attention kernels (flash_simt, flash_simt_r128, flash_simt_kv) run through the CPU emulator
(tests/kernels/emu.py: the HIP side of the source, so cp.async is its portable fallback there) against the
float64 reference: odd sizes, GQA / MQA, every term kind, causal, fully masked rows, fp32 and fp16, the 16-byte
and the scalar load paths. And flash_simt_kv's launch rule on a fake CUDA backend."""

from __future__ import annotations

import numpy as np
import pytest

from fuser.kernels import attention as A

from . import emu
from .test_attention_kernel import FakeCuda

needs_cxx = pytest.mark.skipif(emu.compiler() is None, reason="no C++ compiler for the emulator")


@pytest.fixture(scope="module")
def emu_be():
    return emu.EmuBackend()


def _check(be, tactic, b, h, hkv, sq, skv, d, dv, dtype=np.float32, causal=False, terms=(), nan_zero=False,
           kb=None, scale=0.3, seed=0):
    rng = np.random.default_rng(seed)
    kb = b if kb is None else kb
    q = rng.standard_normal((b, h, sq, d)).astype(dtype)
    k = rng.standard_normal((kb, hkv, skv, d)).astype(dtype)
    v = rng.standard_normal((kb, hkv, skv, dv)).astype(dtype)
    got = A.run(be, q, k, v, scale=scale, causal=causal, terms=terms, nan_zero=nan_zero, tactic=tactic)
    want = A.reference(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), scale=scale, causal=causal,
                       terms=list(terms), nan_zero=nan_zero)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan), f"{int(np.isnan(got).sum())} NaN, want {int(nan.sum())}"
    err = np.linalg.norm(got[~nan] - want[~nan]) / np.linalg.norm(want[~nan])
    assert err <= (1e-5 if dtype == np.float32 else 3e-3), f"rel-L2 {err:.3e}"
    return be.launches[-1][0]


SIMT = ["flash_simt", "flash_simt_r128", "flash_simt_kv_r128", "flash_simt_kv_r64", "flash_simt_kv_r32"]
SHAPES = [  # b, h, hkv, sq, skv, d, dv, kv batch
    (1, 2, 1, 70, 90, 64, 64, 1),      # GQA, batch-1 K/V, both key tiles
    (2, 2, 2, 33, 128, 64, 48, 2),     # Dv != D, every key of the second tile
    (1, 2, 2, 65, 40, 36, 20, 1),      # one key tile, a row past the 64-row tile
    (1, 1, 1, 17, 60, 6, 10, 1),       # D not a multiple of 4: the scalar (synchronous) loads
]


@needs_cxx
@pytest.mark.parametrize("tactic", SIMT)
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_emulated_shapes(emu_be, tactic, shape):
    b, h, hkv, sq, skv, d, dv, kb = shape
    entry = _check(emu_be, tactic, b, h, hkv, sq, skv, d, dv, kb=kb)
    if tactic.startswith("flash_simt_kv"):
        assert entry == f"fuser_attn_simtkv{64 if skv <= 64 else 128}r{tactic.rsplit('_r', 1)[1]}_f32"


@needs_cxx
@pytest.mark.parametrize("tactic", ["flash_simt", "flash_simt_r128"])
@pytest.mark.parametrize("skv,causal", [(197, False), (129, False), (197, True), (134, False)])
def test_emulated_short_last_key_tile(emu_be, tactic, skv, causal):
    """A last key tile holding 5, 1 or 6 keys (ViT's 197 tokens, 129, 134): only its existing key columns and its
    first keys rounded up to 4 are computed, and the result is the same (fp32 against float64)."""
    _check(emu_be, tactic, 1, 2, 2, 70, skv, 64, 64, causal=causal, seed=skv)


def _terms(kind: str, b: int, h: int, sq: int, skv: int):
    rng = np.random.default_rng(7)
    keep = rng.random((b, 1, sq, skv)) > 0.3
    keep[0, 0, 5] = False  # a fully masked row
    if kind == "bias_mask":
        return [("bias", rng.standard_normal((1, h, sq, skv)).astype(np.float32)), ("mask", keep, np.float32(-1e4))]
    if kind == "mask_inf":
        return [("mask", keep, np.float32(-np.inf))]
    if kind == "pad_bias_f16":
        return [("bias", rng.standard_normal((b, 1, 1, skv)).astype(np.float16))]
    if kind == "winbias":
        return [("winbias", rng.standard_normal((1, 2, 1, sq, skv)).astype(np.float32))]
    raise KeyError(kind)


@needs_cxx
@pytest.mark.parametrize("tactic", SIMT)
@pytest.mark.parametrize("kind,causal,nan_zero", [("bias_mask", False, False), ("mask_inf", False, True),
                                                  ("mask_inf", False, False), ("pad_bias_f16", True, False),
                                                  ("winbias", False, False)])
def test_emulated_terms(emu_be, tactic, kind, causal, nan_zero):
    b, h, sq, skv = 2, 2, 70, 90
    _check(emu_be, tactic, b, h, 2, sq, skv, 64, 64, causal=causal, terms=_terms(kind, b, h, sq, skv),
           nan_zero=nan_zero)


@needs_cxx
@pytest.mark.parametrize("tactic", ["flash_simt", "flash_simt_kv"])
def test_emulated_fp16_and_negative_scale(emu_be, tactic):
    _check(emu_be, tactic, 1, 2, 2, 70, 90, 64, 64, dtype=np.float16, causal=True)
    _check(emu_be, tactic, 1, 2, 2, 70, 90, 64, 64, scale=-0.2)   # not the kv kernel's plain path


@needs_cxx
def test_emulated_long_keys_and_wide_heads(emu_be):
    """flash_simt past two key tiles (the copies of K and V for later tiles) and at head dims past 64."""
    _check(emu_be, "flash_simt", 1, 2, 1, 70, 190, 64, 64)
    _check(emu_be, "flash_simt_r128", 1, 2, 2, 130, 150, 64, 64, causal=True)
    assert _check(emu_be, "flash_simt", 1, 2, 2, 40, 150, 96, 80) == "fuser_attn_simt128_f32"


@pytest.mark.parametrize("b,h,sq,skv,tactic,entry,rows", [
    (256, 1, 128, 128, "flash_simt_kv", "fuser_attn_simtkv128r128_f32", 128),  # 256 128-row blocks on 132 SMs
    (8, 12, 128, 128, "flash_simt_kv", "fuser_attn_simtkv128r32_f32", 32),    # 192 64-row: too few, 32-row blocks
    (4, 100, 64, 64, "flash_simt_kv", "fuser_attn_simtkv64r64_f32", 64),      # 128-row blocks half empty
    (2, 2, 65, 100, "flash_simt_kv_r128", "fuser_attn_simtkv128r128_f32", 128),
    (8, 12, 128, 60, "flash_simt_kv_r64", "fuser_attn_simtkv64r64_f32", 64),
    (2, 2, 65, 100, "flash_simt_kv_r32", "fuser_attn_simtkv128r32_f32", 32),
    (256, 1, 128, 128, "auto", "fuser_attn_simt64r128_f32", 128),             # auto, <= 128 keys: large grid
    (8, 12, 128, 128, "auto", "fuser_attn_simtkv128r32_f32", 32),             # small grid
    (8, 12, 129, 129, "auto", "fuser_attn_simt64_f32", 64),                   # past 128 keys
])
def test_kv_launch_rule(b, h, sq, skv, tactic, entry, rows):
    be = FakeCuda()
    r = A.Runner(be, (b, h, sq, 64), (b, h, skv, 64), (b, h, skv, 64), "float32", tactic=tactic)
    r([1600, 3200, 4800], 8000)
    fn, grid, block, shared, *_ = be.launches[-1]
    assert r.tactic == "flash_simt" and fn == entry and block == (256 if rows == 128 else 128, 1, 1)
    kv = (rows + 128) * 68 * 4
    assert grid == (-(-sq // rows), h, b) and shared == (kv if "kv" in entry else (2 * rows + 64) * 68 * 4)


def test_kv_limits():
    with pytest.raises(ValueError, match="128 keys"):
        A.plan("cuda", np.float32, 64, 64, 10, 129, True, "flash_simt_kv")
    with pytest.raises(ValueError, match="head dims up to 64"):
        A.plan("cuda", np.float32, 64, 72, 10, 100, True, "flash_simt_kv")
