"""flash_tf32 (attention on TF32 tensor cores) without a GPU: the launch rule, and the kernel's logic through the
CPU emulator (tests/kernels/emu.py) — its tensor-core path compiled with ``FUSER_ATTN_TF32_EMU``, where the mma is a
portable implementation of the m16n8k8 fragment contract (operands masked to TF32 as the tensor cores read them)
and cp.async a synchronous copy. What this proves: the fragment layouts and the k-slot permutations of both
GEMMs, the tiles and their bounds, the commit/wait/barrier order, the online softmax on the accumulators with
every term kind, causal, GQA, and TF32 accuracy (rounded and truncated K/V) against float64."""

from __future__ import annotations

import numpy as np
import pytest

from fuser.kernels import attention as A
from fuser.kernels import attention_tf32 as T

from . import emu
from .test_attention_kernel import FakeCuda

needs_cxx = pytest.mark.skipif(emu.compiler() is None, reason="no C++ compiler for the emulator")
TF32_TOL = 3e-3  # rel-L2 against float64 (TF32 keeps 10 mantissa bits)


def _definition(src: str, name: str) -> str:
    """The template definition of ``name`` in ``src`` (from its ``template`` line to its closing brace)."""
    at = src.index(f" {name}(")
    start = src.rindex("\ntemplate <", 0, at) + 1
    depth, i = 0, src.index("{", at)
    while True:
        depth += {"{": 1, "}": -1}.get(src[i], 0)
        i += 1
        if depth == 0:
            return src[start:i] + "\n"


def emu_source(entry: str) -> str:
    """attention's common code, the online-softmax helpers flash_mma shares with flash_tf32 (compiled for NVIDIA
    only in COMMON, portable code: copied here for the emulator), the TF32 kernel in its emulated form, one entry."""
    shared = "".join(_definition(A.COMMON, n) for n in ("fuser_attn_rowmax", "fuser_attn_online"))
    line = next(x for x in T.ENTRIES.splitlines(True) if x.startswith(f"FUSER_ATTN_TF32({entry},"))
    return A.COMMON + shared + "#define FUSER_ATTN_TF32_EMU 1\n" + T.SOURCE + T.ENTRY_MACROS + line


class EmuTf32(emu.EmuBackend):
    """The emulator behind the NVIDIA launch rule: the runner plans flash_tf32 and launches its entry, which the
    emulator builds from emu_source."""

    name, arch = "cuda", "sm_90"
    _drv = FakeCuda._drv

    def function(self, family, source, entry, arch=None):
        assert family == "attention_tf32" and entry in T.VARIANTS, (family, entry)
        return super().function(family, emu_source(entry), entry)


@pytest.fixture(scope="module")
def be():
    return EmuTf32()


def _check(be, tactic, b, h, hkv, sq, skv, d, dv, causal=False, terms=(), nan_zero=False, kb=None, scale=None,
           seed=0, family=None, tol=TF32_TOL):
    rng = np.random.default_rng(seed)
    kb = b if kb is None else kb
    q = rng.standard_normal((b, h, sq, d)).astype(np.float32)
    k = rng.standard_normal((kb, hkv, skv, d)).astype(np.float32)
    v = rng.standard_normal((kb, hkv, skv, dv)).astype(np.float32)
    scale = 1.3 / np.sqrt(d) if scale is None else scale
    got = A.run(be, q, k, v, scale=scale, causal=causal, terms=terms, nan_zero=nan_zero, tactic=tactic)
    want = A.reference(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), scale=scale, causal=causal,
                       terms=list(terms), nan_zero=nan_zero)
    entry = be.launches[-1][0]
    assert entry.startswith("fuser_attn_tf"), entry
    if family:
        assert entry == f"fuser_attn_{family}_f32"
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan), f"{int(np.isnan(got).sum())} NaN, want {int(nan.sum())}"
    err = float(np.linalg.norm(got[~nan] - want[~nan]) / np.linalg.norm(want[~nan]))
    assert err <= tol, f"rel-L2 {err:.3e} > {tol:.0e}"
    return err


SHAPES = [  # b, h, hkv, sq, skv, d, dv, kv batch
    (1, 2, 1, 70, 90, 64, 64, 1),      # GQA, batch-1 K/V, a partial second key tile
    (1, 1, 1, 129, 130, 64, 48, 1),    # three query blocks and three key tiles, Dv < D (zero-padded columns)
    (1, 2, 2, 33, 40, 16, 24, 1),      # narrow heads, a single partial tile
    (1, 1, 1, 40, 70, 128, 96, 1),     # the wide-head kernel: 32-key tiles, three of them
]


@needs_cxx
@pytest.mark.parametrize("tactic", ["flash_tf32_m1", "flash_tf32_m2", "flash_tf32_trunc"])
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_emulated_shapes(be, tactic, shape):
    b, h, hkv, sq, skv, d, dv, kb = shape
    if tactic != "flash_tf32_m1" and max(d, dv) > 64:
        pytest.skip("one wide-head kernel per rounding: m1 covers it")
    _check(be, tactic, b, h, hkv, sq, skv, d, dv, kb=kb)


def _terms(kind: str, b: int, h: int, sq: int, skv: int):
    rng = np.random.default_rng(7)
    keep = rng.random((b, 1, sq, skv)) > 0.3
    keep[0, 0, 5] = False  # a fully masked row
    if kind == "pad_bias":  # HF's key-padding mask: the CB kernel
        keep1 = np.ones((b, 1, 1, skv), bool)
        keep1[-1, ..., skv - 20:] = False
        return [("bias", np.where(keep1, 0.0, np.finfo(np.float32).min).astype(np.float32))]
    if kind == "bias_mask":
        return [("bias", rng.standard_normal((1, h, sq, skv)).astype(np.float32)), ("mask", keep, np.float32(-1e4))]
    if kind == "mask_inf":
        return [("mask", keep, np.float32(-np.inf))]
    if kind == "winbias":
        return [("winbias", rng.standard_normal((1, 2, 1, sq, skv)).astype(np.float32))]
    raise KeyError(kind)


@needs_cxx
@pytest.mark.parametrize("kind,causal,nan_zero,family", [("pad_bias", False, False, "tf64m1cb"),
                                                         ("pad_bias", True, False, "tf64m1cb"),
                                                         ("bias_mask", False, False, "tf64m1"),
                                                         ("mask_inf", False, True, "tf64m1"),
                                                         ("mask_inf", False, False, "tf64m1"),
                                                         ("winbias", False, False, "tf64m1")])
def test_emulated_terms(be, kind, causal, nan_zero, family):
    b, h, sq, skv = 2, 2, 70, 90
    _check(be, "flash_tf32_m1", b, h, h, sq, skv, 64, 64, causal=causal, terms=_terms(kind, b, h, sq, skv),
           nan_zero=nan_zero, family=family)


@needs_cxx
def test_emulated_padding_bias_paths(be):
    """The key-padding kernels: the bias staged in shared memory (positive scale; an fp16 bias, random keys padded,
    a partial last tile) and their general path (a negative scale: the bias read inside the softmax)."""
    b, h, sq, skv = 2, 2, 70, 90
    rng = np.random.default_rng(11)
    bias = np.where(rng.random((b, 1, 1, skv)) > 0.3, 0.0, -1e4)
    _check(be, "flash_tf32_m2", b, h, h, sq, skv, 64, 64, terms=[("bias", bias.astype(np.float16))], family="tf64m2cb")
    _check(be, "flash_tf32_m1", b, h, 1, sq, skv, 64, 64, terms=[("bias", bias.astype(np.float32))], scale=-0.125,
           family="tf64m1cb")


@needs_cxx
@pytest.mark.parametrize("tactic,sq,skv", [("flash_tf32_m1", 130, 130), ("flash_tf32_m2", 130, 130),
                                           ("flash_tf32_m1", 64, 150), ("flash_tf32_m2", 150, 64)])
def test_emulated_causal(be, tactic, sq, skv):
    _check(be, tactic, 1, 2, 1, sq, skv, 64, 64, causal=True)


@needs_cxx
def test_emulated_negative_scale_and_large_scores(be):
    """The general softmax path (a negative scale) and large dot products, where TF32's error grows."""
    _check(be, "flash_tf32_m1", 1, 1, 1, 64, 64, 64, 64, scale=-0.125)
    _check(be, "flash_tf32_m1", 1, 1, 1, 64, 64, 64, 64, scale=0.3, tol=5e-3)


@needs_cxx
def test_rounding_beats_truncation(be):
    """K and V rounded to TF32 (the default) against truncated (flash_tf32_trunc): same shapes, smaller error."""
    rounded = _check(be, "flash_tf32", 1, 1, 1, 64, 128, 64, 64, seed=3)
    truncated = _check(be, "flash_tf32_trunc", 1, 1, 1, 64, 128, 64, 64, seed=3)
    assert rounded < truncated


# -- the launch rule (no compiler needed) -----------------------------------------------------------------

@pytest.mark.parametrize("tactic,d,dv,terms,entry,rows,smem", [
    ("flash_tf32", 64, 64, [], "fuser_attn_tf64m1_f32", 64, 72192),
    ("flash_tf32_m2", 64, 64, [], "fuser_attn_tf64m2_f32", 128, 72192),
    ("flash_tf32_trunc", 32, 64, [], "fuser_attn_tf64m1t_f32", 64, 72192),
    ("flash_tf32", 64, 64, [A.TermSpec("bias", "float32", (2, 1, 1, 70))], "fuser_attn_tf64m1cb_f32", 64, 72192),
    ("flash_tf32", 64, 64, [A.TermSpec("bias", "float32", (1, 4, 65, 70))], "fuser_attn_tf64m1_f32", 64, 72192),
    ("flash_tf32", 128, 80, [], "fuser_attn_tf128m1_f32", 64, 68864),
    ("flash_tf32_m2", 96, 96, [], "fuser_attn_tf128m1_f32", 64, 68864),   # m2 is a head-dims-<=-64 tiling
])
def test_launch_rule(tactic, d, dv, terms, entry, rows, smem):
    be = FakeCuda()
    r = A.Runner(be, (2, 4, 65, d), (2, 2, 70, d), (2, 2, 70, dv), "float32", 0.5, terms=terms, tactic=tactic)
    assert r.tactic == "flash_tf32"
    r([1600, 3200, 4800, *([6400] if terms else [])], 8000)
    fn, grid, block, shared = be.launches[-1][:4]
    assert (fn, grid, block, shared) == (entry, (-(-65 // rows), 4, 2), (128, 1, 1), smem)
    assert (entry, None) in be.compiled_for


@pytest.mark.parametrize("dtype,d,backend,want", [
    ("float16", 64, "cuda", "flash_mma"),      # not fp32: the default rule
    ("bfloat16", 64, "cuda", "flash_mma"),
    ("float32", 36, "cuda", "flash_simt"),     # not a multiple of 8
    ("float32", 256, "cuda", "gemm_softmax"),  # past 128
    ("float32", 64, "hip", "flash_simt"),      # not NVIDIA
])
def test_falls_back_where_it_does_not_apply(dtype, d, backend, want):
    assert A.plan(backend, dtype, d, d, 512, 512, True, "flash_tf32")["tactic"] == want
    assert A.plan("cuda", "float32", 64, 64, 512, 512, False, "flash_tf32")["tactic"] == "flash_simt"


def test_misaligned_pointer_takes_the_cuda_core_kernel():
    be = FakeCuda()
    r = A.Runner(be, (1, 2, 8, 64), (1, 2, 8, 64), (1, 2, 8, 64), "float32", tactic="flash_tf32")
    r([16, 32, 48], 64)
    assert be.launches[-1][0] == "fuser_attn_tf64m1_f32"
    r([20, 32, 48], 64)  # Q off 16 bytes: cp.async and the 64-bit fragment loads need aligned rows
    assert be.launches[-1][0].startswith("fuser_attn_simt")


def test_entries_are_in_the_family():
    assert set(T.VARIANTS) <= set(A.VARIANTS) and set(T.TACTICS) <= set(A.TACTICS)
    for e in T.VARIANTS:
        assert f"FUSER_ATTN_TF32({e}," in A.SOURCE
