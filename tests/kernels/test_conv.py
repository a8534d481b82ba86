"""Conv family on the CPU: the reference against a direct loop, geometry, tactic names and the heuristic,
the host-side packing (k table + packed weights reproduce the convolution as a GEMM), the Winograd
algebra, and every tactic's kernel run through the CPU emulator (tests/kernels/emu.py: the real kernel
source compiled by g++, one thread per GPU thread) against the reference.
"""

from __future__ import annotations

import itertools
import zlib

import numpy as np
import pytest

from fuser.kernels import conv, conv_winograd
from fuser.kernels.activations import ACTIVATIONS

from . import emu


def seed_of(*parts: object) -> int:
    return zlib.crc32(repr(parts).encode())


def direct_conv(x, w, b, group, strides, pads, dil):
    """Independent 2-D float64 convolution by its definition (slow; tiny shapes)."""
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    oh = (h + pads[0] + pads[2] - (kh - 1) * dil[0] - 1) // strides[0] + 1
    ow = (wd + pads[1] + pads[3] - (kw - 1) * dil[1] - 1) // strides[1] + 1
    y = np.zeros((n, m, oh, ow))
    mg = m // group
    for bi, co, i, j in itertools.product(range(n), range(m), range(oh), range(ow)):
        gi = co // mg
        s = b[co] if b is not None else 0.0
        for ci, u, v in itertools.product(range(cg), range(kh), range(kw)):
            ih, iw = i * strides[0] - pads[0] + u * dil[0], j * strides[1] - pads[1] + v * dil[1]
            if 0 <= ih < h and 0 <= iw < wd:
                s += float(x[bi, gi * cg + ci, ih, iw]) * float(w[co, ci, u, v])
        y[bi, co, i, j] = s
    return y


GEOMS = [  # x, w, group, strides, pads (t, l, b, r), dilations
    ((2, 4, 7, 6), (6, 2, 3, 2), 2, (2, 1), (1, 0, 0, 1), (1, 2)),
    ((1, 3, 5, 5), (4, 3, 1, 1), 1, (1, 1), (0, 0, 0, 0), (1, 1)),
    ((1, 4, 9, 8), (4, 1, 3, 3), 4, (2, 2), (1, 1, 1, 1), (2, 1)),
    ((1, 2, 6, 7), (3, 2, 5, 5), 1, (1, 1), (2, 2, 2, 2), (1, 1)),
]


@pytest.mark.parametrize("geom", GEOMS)
def test_reference_matches_direct_loop(geom) -> None:
    xs, ws, group, strides, pads, dil = geom
    rng = np.random.default_rng(seed_of(geom))
    x, w, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
    got = conv.conv_reference(x, w, b, group=group, strides=strides, pads=pads, dilations=dil)
    np.testing.assert_allclose(got, direct_conv(x, w, b, group, strides, pads, dil), rtol=1e-12, atol=1e-12)
    g = conv.geometry(xs, ws, group=group, strides=strides, pads=pads, dilations=dil)
    assert g.output_shape == got.shape


def test_reference_residual_before_and_after_activation() -> None:
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((1, 2, 5, 5)).astype(np.float32), rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    r = rng.standard_normal((1, 3, 3, 3)).astype(np.float32)
    y = conv.conv_reference(x, w)
    before = conv.reference(x, w, None, r, "Relu")
    after = conv.reference(x, w, None, r, "Relu", residual_after=True)
    np.testing.assert_allclose(before, np.maximum(y + r, 0), rtol=1e-6)
    np.testing.assert_allclose(after, np.maximum(y, 0) + r, rtol=1e-6)


def test_geometry_views_and_limits() -> None:
    g1 = conv.geometry((2, 6, 31), (10, 6, 3), pads=[1, 2], strides=[2])
    assert (g1.nd, g1.h, g1.kh, g1.w, g1.pw, g1.ow) == (1, 1, 1, 31, 1, 16) and g1.output_shape == (2, 10, 16)
    g = conv.geometry((1, 3, 10, 10), (8, 3, 3, 3), auto_pad="SAME_LOWER", strides=[2, 2])
    assert g.output_shape == (1, 8, 5, 5) and (g.ph, g.pw) == (1, 1)
    assert conv.geometry((1, 8, 5, 5), (8, 1, 3, 3), group=8).depthwise
    assert conv.geometry((1, 8, 5, 5), (8, 8, 3, 3), pads=[1] * 4).winograd_ok
    assert not conv.geometry((1, 8, 5, 5), (8, 8, 3, 3), strides=[2, 2]).winograd_ok
    with pytest.raises(conv.Unsupported):
        conv.geometry((1, 2, 4, 4, 4), (3, 2, 1, 1, 1))        # 3-D: library
    with pytest.raises(conv.Unsupported):
        conv.geometry((1, 2, 4, 4), (3, 2, 5, 5))              # empty output
    with pytest.raises(conv.Unsupported):
        conv.geometry((1, 4, 4, 4), (3, 3, 1, 1), group=2)      # inconsistent groups


def test_tactic_names_and_heuristic() -> None:
    assert conv.parse_tactic("igemm_64x128") == ("igemm", (64, 128))
    assert conv.parse_tactic("winograd") == ("winograd", None)
    assert conv.tactic_name("mma_f16", (64, 64)) == "mma_f16_64x64"
    for bad in ("igemm_7x7", "cudnn", "mma_tf32_12x"):
        with pytest.raises(ValueError):
            conv.parse_tactic(bad)
    big = conv.geometry((8, 64, 128, 128), (128, 64, 3, 3), pads=[1] * 4)
    assert conv.heuristic(big, np.float32) == "winograd"
    assert conv.heuristic(big, np.float32, allow_tf32=True) == "mma_tf32_ms"
    assert conv.pick_tile("mma_tf32_ms", big) == (128, 128)
    assert conv.pick_tile("mma_tf32_ms", conv.geometry((1, 64, 56, 56), (128, 64, 1, 1))) == (64, 32)
    assert conv.heuristic(big, np.float16) == "mma_f16"
    assert conv.heuristic(big, np.float16, backend_name="hip") == "winograd"
    dw = conv.geometry((1, 32, 56, 56), (32, 1, 3, 3), group=32, pads=[1] * 4)
    assert conv.heuristic(dw, np.float32) == "depthwise"
    pw = conv.geometry((1, 64, 56, 56), (128, 64, 1, 1))
    assert conv.heuristic(pw, np.float32) == "igemm"
    for dt in (np.float32, np.float16):
        for allow in (False, True):
            cands = conv.candidate_tactics(big, dt, allow)
            assert cands[0] == "library" and all(conv.parse_tactic(t) for t in cands)
            assert any(t.startswith("mma_tf32") for t in cands) == (allow and dt == np.float32)
    assert not any(t.startswith("mma") for t in conv.candidate_tactics(big, np.float32, True, "hip"))


@pytest.mark.parametrize("geom", GEOMS)
def test_k_table_and_packed_weights_are_the_convolution(geom) -> None:
    """Simulate the kernels' gather in numpy: B[k, n] through the k table, A from the packed weights."""
    xs, ws, group, strides, pads, dil = geom
    rng = np.random.default_rng(seed_of("kt", geom))
    x, w = rng.standard_normal(xs).astype(np.float32), rng.standard_normal(ws).astype(np.float32)
    g = conv.geometry(xs, ws, group=group, strides=strides, pads=pads, dilations=dil)
    tab = conv.k_table(g)
    wp = conv.pack_weights_km(w, g)
    assert tab.shape[0] % conv.KPAD == 0 and wp.shape[1] == tab.shape[0] and wp.shape[2] % conv.MPAD == 0
    n = np.arange(g.npix)
    b, q = np.divmod(n, g.ohw)
    oh, ow = np.divmod(q, g.ow)
    ih0, iw0 = oh * g.sh - g.ph, ow * g.sw - g.pw
    y = np.zeros((g.group, g.mg, g.npix))
    for gi in range(g.group):
        xg = x[:, gi * g.cg:(gi + 1) * g.cg].reshape(g.n, -1)
        bm = np.zeros((tab.shape[0], g.npix))
        for k in range(tab.shape[0]):
            ih, iw = ih0 + tab[k, 1], iw0 + tab[k, 2]
            ok = (ih >= 0) & (ih < g.h) & (iw >= 0) & (iw < g.w)
            idx = np.where(ok, ih0 * g.w + iw0 + tab[k, 0], 0)
            bm[k] = np.where(ok, xg[b, idx], 0.0)
        y[gi] = wp[gi][:, :g.mg].T.astype(np.float64) @ bm     # [Mg, Kpad] @ [Kpad, npix]
    got = y.reshape(g.cout, g.n, g.oh, g.ow).transpose(1, 0, 2, 3)
    np.testing.assert_allclose(got, conv.conv_reference(x, w, group=group, strides=strides, pads=pads,
                                                        dilations=dil), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("shape", [(1, 3, 7, 6), (2, 5, 4, 9)])
def test_winograd_algebra(shape) -> None:
    rng = np.random.default_rng(seed_of("wino", shape))
    x, w = rng.standard_normal(shape), rng.standard_normal((4, shape[1], 3, 3))
    np.testing.assert_allclose(conv_winograd.winograd_reference(x, w), conv.conv_reference(x, w, pads=[1] * 4),
                               rtol=1e-12, atol=1e-12)
    u = conv_winograd.transform_weights(w)
    assert u.shape == (8, 16, 32) and not u[shape[1]:].any() and not u[:, :, 4:].any()


# ---- the kernels themselves, through the CPU emulator ------------------------------------------------
needs_cxx = pytest.mark.skipif(emu.compiler() is None, reason="no C++ compiler for the emulator")

EMU_CASES = [
    ((2, 5, 9, 7), (12, 5, 3, 3), {"pads": [1, 1, 1, 1]}),
    ((1, 6, 8, 9), (10, 3, 3, 2), {"group": 2, "strides": [2, 1], "pads": [1, 0, 0, 1], "dilations": [1, 2]}),
    ((2, 8, 11), (6, 8, 3), {"pads": [2, 1], "strides": [2]}),
    ((1, 40, 5, 6), (70, 40, 1, 1), {}),
    ((1, 32, 7, 6), (40, 32, 3, 3), {"strides": [2, 1], "pads": [1, 0, 2, 1], "dilations": [1, 2]}),  # k-major
]
EMU_DW = [((1, 6, 9, 8), (12, 1, 3, 3), {"group": 6, "pads": [1, 1, 1, 1]}),
          ((1, 4, 13, 11), (4, 1, 5, 5), {"group": 4, "pads": [2, 1, 2, 3], "strides": [2, 2]}),
          ((1, 4, 10, 9), (4, 1, 3, 2), {"group": 4, "dilations": [2, 3], "pads": [2, 1, 0, 0]})]


@pytest.fixture(scope="module")
def emu_be():
    return emu.EmuBackend()


def _emu_tactics(case, dtype) -> list[str]:
    g = conv.geometry(case[0], case[1], **case[2])
    out = []
    for algo in conv.ALGOS:
        if conv.algo_ok(algo, g, dtype):
            out += [conv.tactic_name(algo, conv.TILES[algo][-1])] if algo in conv.TILES else [algo]
    return out


EMU_ALL = [(c, dt, t) for c in EMU_CASES + EMU_DW for dt in (np.float32, np.float16) for t in _emu_tactics(c, dt)]


@needs_cxx
@pytest.mark.parametrize("case,dtype,tactic", EMU_ALL,
                         ids=[f"{'x'.join(map(str, c[0]))}-{np.dtype(d).name}-{t}" for c, d, t in EMU_ALL])
def test_emulated_tactic(emu_be, case, dtype, tactic) -> None:
    xs, ws, attrs = case
    rng = np.random.default_rng(seed_of(case, dtype, tactic))
    x = rng.standard_normal(xs).astype(dtype)
    w = (rng.standard_normal(ws) / np.sqrt(np.prod(ws[1:]))).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(np.float32)
    g = conv.geometry(xs, ws, **attrs)
    r = rng.standard_normal(g.output_shape).astype(dtype)
    got = conv.run(emu_be, x, w, b, r, "LeakyRelu", alpha=0.1, tactic=tactic, **attrs)
    want = conv.reference(x, w, b, r, "LeakyRelu", alpha=0.1, **attrs)
    assert emu_be.launches[-1][0].startswith("fuser_conv")
    err = np.linalg.norm(got.astype(np.float64) - want) / np.linalg.norm(want.astype(np.float64))
    tol = 3e-3 if tactic.startswith("mma_tf32") else (2e-3 if dtype == np.float16 else 1e-6)
    assert err <= tol, f"rel-L2 {err:.3g}"


@needs_cxx
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_emulated_activations_residual_after(emu_be, act) -> None:
    rng = np.random.default_rng(seed_of("act", act))
    x, w = rng.standard_normal((1, 4, 6, 5)).astype(np.float32), rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    r = rng.standard_normal((1, 8, 6, 5)).astype(np.float32)
    kw = {"alpha": 0.2, "beta": 0.4, "clip_min": -0.5, "clip_max": 0.75, "pads": [1, 1, 1, 1]}
    for tactic in ("igemm_32x32", "winograd"):
        got = conv.run(emu_be, x, w, None, r, act, tactic=tactic, residual_after=True, **kw)
        want = conv.reference(x, w, None, r, act, residual_after=True, **kw)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


# Every tile of these launches covers only existing pixels and the tensors are aligned, so the kernels take the
# epilogue compiled per activation class (conv.py FUSER_CONV_EPILOGUE), not the general one the small shapes above run:
# 48 channels x 64 pixels tiled by 32x32, 64x32 and 64x64 (the last channel tile, or the only one, is partial: its
# rows past the channels are skipped inside the class epilogue too).
FULL_TILE_TACTICS = [("igemm_32x32", np.float32), ("mma_tf32_ms_64x32", np.float32), ("mma_tf32_64x64", np.float32),
                     ("mma_f16_64x64", np.float16)]


@needs_cxx
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("tactic,dtype", FULL_TILE_TACTICS, ids=[t for t, _ in FULL_TILE_TACTICS])
def test_emulated_activation_classes_on_whole_tiles(emu_be, monkeypatch, act, tactic, dtype) -> None:
    aligned: list[bool] = []
    real_aligned = conv._aligned
    monkeypatch.setattr(conv, "_aligned", lambda p, n: aligned.append(real_aligned(p, n)) or aligned[-1])
    rng = np.random.default_rng(seed_of("whole", act, tactic))
    x = rng.standard_normal((1, 8, 8, 8)).astype(dtype)
    w = (rng.standard_normal((48, 8, 3, 3)) / np.sqrt(72)).astype(dtype)
    b = rng.standard_normal(48).astype(np.float32)
    r = rng.standard_normal((1, 48, 8, 8)).astype(dtype)
    after = seed_of(act, tactic) % 2 == 0
    kw = {"alpha": 0.2, "beta": 0.4, "clip_min": -0.5, "clip_max": 0.75, "pads": [1, 1, 1, 1]}
    got = conv.run(emu_be, x, w, b, r, act, tactic=tactic, residual_after=after, **kw)
    want = conv.reference(x, w, b, r, act, residual_after=after, **kw)
    assert aligned and all(aligned), "the output or residual was not vector-aligned: the general epilogue ran"
    err = np.linalg.norm(got.astype(np.float64) - want) / np.linalg.norm(want.astype(np.float64))
    tol = 3e-3 if tactic.startswith("mma_tf32") else (2e-3 if dtype == np.float16 else 1e-6)
    assert err <= tol, f"rel-L2 {err:.3g}"


# Darknet's shortcut (FusedConv<Act>Add: act(conv + b) + R) on every tactic the geometry allows, fp32 and fp16
RES_AFTER = [(c, dt, t) for c in (EMU_CASES[0], EMU_DW[0]) for dt in (np.float32, np.float16)
             for t in _emu_tactics(c, dt)]


@needs_cxx
@pytest.mark.parametrize("case,dtype,tactic", RES_AFTER,
                         ids=[f"{'x'.join(map(str, c[0]))}-{np.dtype(d).name}-{t}" for c, d, t in RES_AFTER])
def test_emulated_residual_after_every_tactic(emu_be, case, dtype, tactic) -> None:
    xs, ws, attrs = case
    rng = np.random.default_rng(seed_of("after", case, dtype, tactic))
    x = rng.standard_normal(xs).astype(dtype)
    w = (rng.standard_normal(ws) / np.sqrt(np.prod(ws[1:]))).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(np.float32)
    r = rng.standard_normal(conv.geometry(xs, ws, **attrs).output_shape).astype(dtype)
    got = conv.run(emu_be, x, w, b, r, "LeakyRelu", alpha=0.1, tactic=tactic, residual_after=True, **attrs)
    want = conv.reference(x, w, b, r, "LeakyRelu", alpha=0.1, residual_after=True, **attrs)
    before = conv.reference(x, w, b, r, "LeakyRelu", alpha=0.1, **attrs)
    assert emu_be.launches[-1][0].startswith("fuser_conv")
    err = np.linalg.norm(got.astype(np.float64) - want) / np.linalg.norm(want.astype(np.float64))
    tol = 3e-3 if tactic.startswith("mma_tf32") else (2e-3 if dtype == np.float16 else 1e-6)
    assert err <= tol, f"rel-L2 {err:.3g}"
    assert np.linalg.norm(before.astype(np.float64) - want) > 10 * tol * np.linalg.norm(want)  # orders differ


@needs_cxx
def test_emulated_split_k_residual_after(emu_be) -> None:
    """The split-K path's epilogue (run by the last split of a tile) adds R after the activation too."""
    rng = np.random.default_rng(seed_of("split-after"))
    x, w = rng.standard_normal((1, 24, 7, 6)).astype(np.float32), rng.standard_normal((20, 24, 3, 3)).astype(np.float32)
    r = rng.standard_normal((1, 20, 7, 6)).astype(np.float32)
    runner = conv.Runner(emu_be, x.shape, np.float32, w, None, residual=True, residual_after=True,
                         activation="LeakyRelu", alpha=0.1, tactic="igemm_32x32", splits=3, pads=[1, 1, 1, 1])
    assert runner.impl.splits == 3
    xb, rb = emu_be.upload(x), emu_be.upload(r)
    yb = emu_be.upload(np.zeros(runner.output_shape, np.float32))
    runner([xb.ptr, rb.ptr], yb.ptr)
    got = np.empty(runner.output_shape, np.float32)
    emu_be.copy_dtoh(got, yb.ptr)
    want = conv.reference(x, w, None, r, "LeakyRelu", alpha=0.1, residual_after=True, pads=[1, 1, 1, 1])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@needs_cxx
@pytest.mark.parametrize("tactic,splits", [("igemm_32x32", 3), ("mma_tf32_64x64", 2), ("igemm_64x128", 4),
                                           ("mma_tf32_ms_64x64", 2)])
def test_emulated_split_k_twice(emu_be, tactic, splits) -> None:
    """Split-K: right, and its workspace is clean again for the next launch (run twice)."""
    rng = np.random.default_rng(seed_of("split", tactic))
    x, w = rng.standard_normal((2, 24, 7, 6)).astype(np.float32), rng.standard_normal((20, 24, 3, 3)).astype(np.float32)
    runner = conv.Runner(emu_be, x.shape, np.float32, w, None, activation="Relu", tactic=tactic, splits=splits,
                         allow_tf32=True, pads=[1, 1, 1, 1])
    assert runner.impl.splits == splits
    xb, yb = emu_be.upload(x), emu_be.upload(np.zeros(runner.output_shape, np.float32))
    want = conv.reference(x, w, None, None, "Relu", pads=[1, 1, 1, 1])
    for _ in range(2):
        runner([xb.ptr], yb.ptr)
        got = np.empty(runner.output_shape, np.float32)
        emu_be.copy_dtoh(got, yb.ptr)
        err = np.linalg.norm(got - want) / np.linalg.norm(want)
        assert err < (3e-3 if tactic.startswith("mma_tf32") else 1e-6)


# The multistage TF32 kernel on every gather (0 = k table, 1 = channel walk, 2 = 16-byte pointwise), every
# tile, every residual mode (0 none, 1 before the activation, 2 after), groups, strides, asymmetric pads,
# dilation, 1-D, tiles that straddle images, a k tail, split-K.
EMU_MS = [  # x, w, attrs, tile, residual mode, gather, splits
    ((2, 5, 9, 7), (12, 5, 3, 3), {"pads": [1, 1, 1, 1]}, "64x64", 1, 0, None),
    ((1, 6, 8, 9), (10, 3, 3, 2), {"group": 2, "strides": [2, 1], "pads": [1, 0, 0, 1], "dilations": [1, 2]},
     "64x32", 2, 0, None),
    ((2, 8, 11), (6, 8, 3), {"pads": [2, 1], "strides": [2]}, "64x32", 0, 0, None),
    ((1, 32, 7, 6), (40, 32, 3, 3), {"strides": [2, 1], "pads": [1, 0, 2, 1], "dilations": [1, 2]}, "128x64", 0,
     1, None),
    ((1, 32, 5, 6), (36, 16, 3, 3), {"group": 2, "pads": [1, 1, 1, 1]}, "64x128", 1, 1, None),
    ((1, 32, 5, 5), (20, 32, 1, 1), {}, "64x64", 2, 1, None),
    ((3, 20, 2, 6), (36, 20, 1, 1), {}, "64x32", 2, 2, None),
    ((2, 48, 4, 4), (70, 48, 1, 1), {}, "64x64", 1, 2, 2),
    ((1, 32, 5, 4), (24, 32, 3, 3), {"pads": [1, 1, 1, 1]}, "128x128", 2, 1, None),
]


@needs_cxx
@pytest.mark.parametrize("case", EMU_MS, ids=[f"{'x'.join(map(str, c[0]))}-{c[3]}-res{c[4]}-gather{c[5]}"
                                              for c in EMU_MS])
def test_emulated_multistage_tf32(emu_be, case) -> None:
    xs, ws, attrs, tile, res_mode, gather, splits = case
    rng = np.random.default_rng(seed_of("ms", case[:5]))
    x = rng.standard_normal(xs).astype(np.float32)
    w = (rng.standard_normal(ws) / np.sqrt(np.prod(ws[1:]))).astype(np.float32)
    b = rng.standard_normal(ws[0]).astype(np.float32)
    r = conv.Runner(emu_be, xs, np.float32, w, b, residual=res_mode > 0, residual_after=res_mode == 2,
                    activation="LeakyRelu", alpha=0.1, tactic=f"mma_tf32_ms_{tile}", splits=splits, **attrs)
    assert r.tactic == f"mma_tf32_ms_{tile}" and (splits is None or r.impl.splits == splits)
    res = rng.standard_normal(r.output_shape).astype(np.float32) if res_mode else None
    bufs = [emu_be.upload(x)] + ([emu_be.upload(res)] if res_mode else [])
    assert r.impl.kmode(bufs[0].ptr) == gather
    yb = emu_be.upload(np.full(r.output_shape, np.nan, np.float32))
    want = conv.reference(x, w, b, res, "LeakyRelu", alpha=0.1, residual_after=res_mode == 2, **attrs)
    for _ in range(2 if splits else 1):    # split-K leaves its workspace clean for the next launch
        r([bb.ptr for bb in bufs], yb.ptr)
        got = np.empty(r.output_shape, np.float32)
        emu_be.copy_dtoh(got, yb.ptr)
        err = np.linalg.norm(got.astype(np.float64) - want) / np.linalg.norm(want.astype(np.float64))
        assert err <= 1e-3, f"rel-L2 {err:.3g}"    # TF32 operands (rounded): ~2e-4


# Other builds of the multistage kernel (bench_conv.py --ms-variants times them): 64x64 warp tiles (n8 fragments
# interleaved in two groups of 4; timed slower in run 2, not a default) and 32 k per stage (the 8-chunk A swizzle;
# the 64x64 / 64x32 defaults since run 2).
EMU_MS_BUILDS = [  # tile, (warps M, warps N, stages, min blocks, k per stage), x, w, attrs, residual mode
    ("128x128", (2, 2, 3, 2, 32), (1, 32, 5, 4), (24, 32, 3, 3), {"pads": [1, 1, 1, 1]}, 1),
    ("64x64", (2, 2, 3, 4, 32), (2, 48, 4, 4), (40, 48, 1, 1), {}, 2),
    ("64x64", (2, 2, 3, 4, 32), (1, 6, 8, 9), (10, 3, 3, 2), {"group": 2, "pads": [1, 0, 0, 1]}, 0),
]


@needs_cxx
@pytest.mark.parametrize("build", EMU_MS_BUILDS, ids=[f"{b[0]}-{'x'.join(map(str, b[1]))}-{'x'.join(map(str, b[2]))}"
                                                      for b in EMU_MS_BUILDS])
def test_emulated_multistage_other_builds(emu_be, monkeypatch, build) -> None:
    from fuser.kernels import conv_mma

    tile, cfg, xs, ws, attrs, res_mode = build
    monkeypatch.setitem(conv_mma.MS_TILES, tuple(int(v) for v in tile.split("x")), cfg)
    rng = np.random.default_rng(seed_of("msb", build[:3]))
    x = rng.standard_normal(xs).astype(np.float32)
    w = (rng.standard_normal(ws) / np.sqrt(np.prod(ws[1:]))).astype(np.float32)
    b = rng.standard_normal(ws[0]).astype(np.float32)
    g = conv.geometry(xs, ws, **attrs)
    res = rng.standard_normal(g.output_shape).astype(np.float32) if res_mode else None
    got = conv.run(emu_be, x, w, b, res, "LeakyRelu", alpha=0.1, tactic=f"mma_tf32_ms_{tile}",
                   residual_after=res_mode == 2, **attrs)
    want = conv.reference(x, w, b, res, "LeakyRelu", alpha=0.1, residual_after=res_mode == 2, **attrs)
    assert emu_be.launches[-1][2][0] == cfg[0] * cfg[1] * 32
    err = np.linalg.norm(got.astype(np.float64) - want) / np.linalg.norm(want.astype(np.float64))
    assert err <= 1e-3, f"rel-L2 {err:.3g}"


@needs_cxx
def test_multistage_gather_choice(emu_be) -> None:
    """16-byte pointwise gather only for a 1x1 stride-1 conv with H*W % 4 == 0 on a 16-byte aligned input."""
    w = np.ones((8, 32, 1, 1), np.float32)   # Cg a multiple of the 64x32 build's 32 k per stage: channel walk
    r = conv.Runner(emu_be, (1, 32, 4, 6), np.float32, w, tactic="mma_tf32_ms_64x32")
    assert [r.impl.kmode(p) for p in (4096, 4100, 4104)] == [2, 1, 1]
    r = conv.Runner(emu_be, (1, 32, 5, 5), np.float32, w, tactic="mma_tf32_ms_64x32")
    assert r.impl.kmode(4096) == 1
    r = conv.Runner(emu_be, (1, 32, 8, 8), np.float32, w, tactic="mma_tf32_ms_64x32", strides=[2, 2])
    assert r.impl.kmode(4096) == 1
    r = conv.Runner(emu_be, (1, 12, 8, 8), np.float32, np.ones((8, 12, 1, 1), np.float32), tactic="mma_tf32_ms_64x32",
                    strides=[2, 2])
    assert r.impl.kmode(4096) == 0


def test_round_tf32() -> None:
    from fuser.kernels.conv_mma import round_tf32

    one_ulp = np.float32(2.0 ** -10)
    a = np.array([1.0, 1.0 + one_ulp / 2, 1.0 + one_ulp / 4, -(1.0 + one_ulp / 2), np.inf, -np.inf, np.nan, 0.0],
                 np.float32)
    got = round_tf32(a)
    np.testing.assert_array_equal(got[:6], [1.0, 1.0 + one_ulp, 1.0, -(1.0 + one_ulp), np.inf, -np.inf])
    assert np.isnan(got[6]) and got[7] == 0.0
    assert not (round_tf32(np.random.default_rng(0).standard_normal(100).astype(np.float32)).view(np.uint32)
                & 0x1FFF).any()


@needs_cxx
def test_runner_falls_back_when_the_tactic_cannot_run(emu_be) -> None:
    g_args = dict(strides=[2, 2], pads=[1, 1, 1, 1])
    r = conv.Runner(emu_be, (1, 4, 8, 8), np.float32, np.ones((4, 4, 3, 3), np.float32), tactic="winograd", **g_args)
    assert not r.tactic.startswith("winograd")          # stride 2: the heuristic's tactic instead
    r = conv.Runner(emu_be, (1, 4, 8, 8), np.float32, np.ones((8, 4, 3, 3), np.float32), tactic="mma_f16")
    assert not r.tactic.startswith("mma")               # fp32 tensors, no TF32 allowed
    with pytest.raises(conv.Unsupported):
        conv.Runner(emu_be, (1, 4, 8, 8), np.float32, np.ones((8, 4, 3, 3), np.float32), tactic="library")
