"""Every conv tactic against the float64 numpy reference on an NVIDIA GPU (run on the GPU machine).

Fresh seeded random inputs (never zeros) per case; the output buffer poisoned with NaN and guarded by
NaN on both sides (every output written, nothing outside it); odd sizes, strides, asymmetric pads,
dilations, groups, depthwise with channel multipliers, 1-D, 1x1/3x3/5x5/7x7 and non-square kernels,
residual before and after the activation, every activation; fp32 and fp16; relative L2 error.
torch only allocates device memory here.
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

from fuser.kernels import conv  # noqa: E402
from fuser.kernels.activations import ACTIVATIONS  # noqa: E402

TORCH_DT = {np.float32: torch.float32, np.float16: torch.float16}
TOL = {np.float32: 1e-5, np.float16: 2e-3}
TF32_TOL = 3e-3

# (x shape, w shape, conv attrs)
CASES = [
    ((2, 3, 17, 19), (8, 3, 3, 3), {"pads": [1, 1, 1, 1]}),
    ((1, 16, 9, 10), (24, 16, 1, 1), {}),
    ((2, 8, 15, 13), (12, 8, 3, 3), {"strides": [2, 2], "pads": [1, 0, 2, 1]}),
    ((1, 12, 14, 14), (18, 4, 3, 3), {"group": 3, "pads": [2, 2, 2, 2], "dilations": [2, 2]}),
    ((1, 5, 20, 21), (7, 5, 5, 5), {"pads": [2, 2, 2, 2]}),
    ((1, 4, 23, 23), (6, 4, 7, 7), {"strides": [2, 2], "pads": [3, 3, 3, 3]}),
    ((3, 6, 31), (10, 6, 3), {"pads": [1, 2], "strides": [2]}),
    ((1, 64, 28, 28), (96, 64, 3, 3), {"pads": [1, 1, 1, 1]}),
    ((2, 7, 5, 3), (130, 7, 2, 2), {"auto_pad": "SAME_UPPER"}),
    ((1, 33, 11, 9), (40, 33, 3, 3), {"pads": [0, 1, 2, 0]}),
    ((2, 40, 7, 7), (260, 40, 1, 1), {"strides": [2, 2]}),
    # channel-innermost gather (Cg % BK == 0): strides, asymmetric pads, dilation, groups
    ((2, 32, 13, 11), (48, 32, 3, 3), {"strides": [2, 1], "pads": [1, 0, 2, 1], "dilations": [1, 2]}),
    ((1, 64, 9, 9), (40, 32, 3, 3), {"group": 2, "pads": [1, 1, 1, 1]}),
    ((1, 32, 10, 10), (24, 32, 5, 5), {"pads": [2, 2, 2, 2], "strides": [2, 2]}),
    # 1x1 stride 1 with H*W % 4 == 0: mma_tf32_ms's 16-byte gather (tiles across images, a k tail, Cg % 16 == 0)
    ((3, 20, 6, 10), (36, 20, 1, 1), {}),
    ((2, 64, 8, 12), (130, 64, 1, 1), {}),
]
DW_CASES = [
    ((2, 16, 13, 15), (16, 1, 3, 3), {"group": 16, "pads": [1, 1, 1, 1]}),
    ((1, 8, 12, 11), (16, 1, 5, 5), {"group": 8, "strides": [2, 2], "pads": [2, 2, 1, 2]}),
    ((1, 6, 9, 9), (6, 1, 3, 3), {"group": 6, "dilations": [2, 2], "pads": [2, 2, 2, 2]}),
    ((2, 5, 19), (5, 1, 7), {"group": 5, "pads": [3, 3]}),
]


def seed_of(*parts: object) -> int:
    return zlib.crc32(repr(parts).encode())


@pytest.fixture(scope="module")
def be():
    from fuser.kernels.backend import select_backend

    return select_backend("cuda")


def tactics_for(xs, ws, attrs, dtype) -> list[str]:
    g = conv.geometry(xs, ws, **attrs)
    out = []
    for algo in conv.ALGOS:
        if not conv.algo_ok(algo, g, dtype):
            continue
        out += [conv.tactic_name(algo, t) for t in conv.TILES[algo]] if algo in conv.TILES else [algo]
    return out


def launch(be, xs, ws, attrs, dtype, tactic, act="LeakyRelu", residual=False, residual_after=False, seed=0,
           x_off=0, y_off=0, splits=None, repeat=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs, dtype=np.float32).astype(dtype)
    w = (rng.standard_normal(ws) / np.sqrt(np.prod(ws[1:]))).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(np.float32)
    kw = {"alpha": 0.2, "beta": 0.4, "clip_min": -0.5, "clip_max": 0.75}
    if tactic.startswith("wgmma") and be.arch != "sm_90":
        pytest.skip("wgmma_tf32 runs on sm_90 only")
    r = conv.Runner(be, xs, dtype, w, b, residual=residual, residual_after=residual_after, activation=act,
                    tactic=tactic, allow_tf32=True, splits=splits, **kw, **attrs)
    assert r.tactic == tactic, (r.tactic, tactic)
    out_shape = r.output_shape
    res = rng.standard_normal(out_shape, dtype=np.float32).astype(dtype) if residual else None
    tdt = TORCH_DT[dtype]
    pad = 64
    n_out = int(np.prod(out_shape))
    xbuf = torch.full((x.size + x_off + pad,), float("nan"), dtype=tdt, device="cuda")
    xbuf[x_off:x_off + x.size] = torch.from_numpy(x.ravel()).cuda()
    ybuf = torch.full((n_out + y_off + pad,), float("nan"), dtype=tdt, device="cuda")
    es = xbuf.element_size()
    ins = [xbuf.data_ptr() + x_off * es]
    if residual:
        rbuf = torch.from_numpy(res.ravel()).cuda()
        ins.append(rbuf.data_ptr())
    for _ in range(repeat):   # a split-K workspace must be clean again after each launch
        ybuf[y_off:y_off + n_out] = float("nan")
        r(ins, ybuf.data_ptr() + y_off * es)
    torch.cuda.synchronize()
    buf = ybuf.cpu().numpy()
    assert np.isnan(buf[:y_off]).all() and np.isnan(buf[y_off + n_out:]).all(), "wrote outside the output"
    got = buf[y_off:y_off + n_out].reshape(out_shape)
    assert np.isfinite(got).all(), f"{int((~np.isfinite(got)).sum())} outputs unwritten or non-finite"
    want = conv.reference(x, w, b, res, act, residual_after=residual_after, **kw, **attrs)
    return got, want


def rel_l2(got, want) -> float:
    g, w = got.astype(np.float64).ravel(), want.astype(np.float64).ravel()
    return float(np.linalg.norm(g - w) / max(np.linalg.norm(w), 1e-30))


def tol_for(tactic: str, dtype) -> float:
    return TF32_TOL if tactic.startswith(conv.TF32_ALGOS) else TOL[dtype]


ALL = [(c, dt, t) for c in CASES + DW_CASES for dt in (np.float32, np.float16) for t in tactics_for(*c, dt)]


@pytest.mark.parametrize("case,dtype,tactic", ALL,
                         ids=[f"{'x'.join(map(str, c[0]))}-{'x'.join(map(str, c[1]))}-{np.dtype(d).name}-{t}"
                              for c, d, t in ALL])
def test_tactic_matches_reference(be, case, dtype, tactic) -> None:
    xs, ws, attrs = case
    residual = seed_of(case, "res") % 2 == 0
    got, want = launch(be, xs, ws, attrs, dtype, tactic, residual=residual, seed=seed_of(case, dtype, tactic))
    err = rel_l2(got, want)
    assert err <= tol_for(tactic, dtype), f"rel-L2 {err:.3g}"


ACT_TACTICS = ["igemm_64x64", "mma_tf32_64x64", "mma_tf32_ms_64x64", "mma_tf32_ms_128x128", "mma_f16_64x64",
               "wgmma_tf32_128x128", "wgmma_tf32_64x64", "winograd", "depthwise"]


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("tactic", ACT_TACTICS)
@pytest.mark.parametrize("after", [False, True], ids=["res-before", "res-after"])
def test_activations_and_residual(be, act, tactic, after) -> None:
    dtype = np.float16 if tactic.startswith("mma_f16") else np.float32
    if tactic == "depthwise":
        xs, ws, attrs = (2, 12, 11, 12), (12, 1, 3, 3), {"group": 12, "pads": [1, 1, 1, 1]}
    else:
        xs, ws, attrs = (2, 20, 11, 12), (36, 20, 3, 3), {"pads": [1, 1, 1, 1]}
    got, want = launch(be, xs, ws, attrs, dtype, tactic, act=act, residual=True, residual_after=after,
                       seed=seed_of(act, tactic, after))
    err = rel_l2(got, want)
    assert err <= tol_for(tactic, dtype) * (2 if act in ("Sigmoid", "SiLU", "Tanh") else 1), f"rel-L2 {err:.3g}"


# 128 channels x 512 pixels: every tile of every tactic here lies wholly inside the output (and the buffers are
# aligned), so these run the epilogue compiled per activation class (conv.py FUSER_CONV_EPILOGUE); the shapes above
# (36 channels) run the general one.
WHOLE_TILE_TACTICS = ["igemm_64x64", "igemm_128x128", "mma_tf32_64x64", "mma_tf32_ms_64x32", "mma_tf32_ms_128x128",
                      "mma_f16_64x64", "wgmma_tf32_64x64", "wgmma_tf32_128x128", "wgmma_tf32_64x128",
                      "wgmma_tf32_128x64"]
WHOLE = ((2, 16, 16, 16), (128, 16, 3, 3), {"pads": [1, 1, 1, 1]})


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("tactic", WHOLE_TILE_TACTICS)
@pytest.mark.parametrize("after", [False, True], ids=["res-before", "res-after"])
def test_activation_classes_on_whole_tiles(be, act, tactic, after) -> None:
    dtype = np.float16 if tactic.startswith("mma_f16") else np.float32
    got, want = launch(be, *WHOLE, dtype, tactic, act=act, residual=True, residual_after=after,
                       seed=seed_of("whole", act, tactic, after))
    err = rel_l2(got, want)
    assert err <= tol_for(tactic, dtype) * (2 if act in ("Sigmoid", "SiLU", "Tanh") else 1), f"rel-L2 {err:.3g}"


@pytest.mark.parametrize("tactic", ["igemm_64x64", "mma_tf32_64x64", "mma_tf32_ms_64x64", "mma_f16_64x64",
                                    "wgmma_tf32_64x64", "wgmma_tf32_128x64"])
@pytest.mark.parametrize("act", ["LeakyRelu", "SiLU", ""], ids=["LeakyRelu", "SiLU", "none"])
@pytest.mark.parametrize("res", ["none", "before", "after"])
def test_whole_tiles_split_k(be, tactic, act, res) -> None:
    """Split-K (the last split runs the epilogue) on whole tiles, with and without a residual; twice, as the
    workspace must be clean again."""
    dtype = np.float16 if tactic.startswith("mma_f16") else np.float32
    got, want = launch(be, *WHOLE, dtype, tactic, act=act, residual=res != "none", residual_after=res == "after",
                       seed=seed_of("whole-split", tactic, act, res), splits=2, repeat=2)
    assert rel_l2(got, want) <= tol_for(tactic, dtype) * (2 if act == "SiLU" else 1)


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("tactic", ["igemm_64x64", "mma_tf32_ms_64x64", "wgmma_tf32_64x64"])
def test_whole_tile_epilogue_matches_general_path_on_special_values(be, act, tactic) -> None:
    """NaN, +-inf, +-0 and huge values reach the activation (through the bias): the per-class epilogue (aligned
    output, whole tiles) must give what the general one (the same launch on an output one element off) gives,
    NaN for NaN."""
    if tactic.startswith("wgmma") and be.arch != "sm_90":
        pytest.skip("wgmma_tf32 runs on sm_90 only")
    xs, ws, attrs = WHOLE
    rng = np.random.default_rng(seed_of("special", act, tactic))
    x = rng.standard_normal(xs, dtype=np.float32)
    w = (rng.standard_normal(ws) / np.sqrt(np.prod(ws[1:]))).astype(np.float32)
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 3e38, -3e38, 1e-30, -1e-30, 5.0, -5.0, 0.3],
                        dtype=np.float32)
    b = np.resize(specials, ws[0]).astype(np.float32)
    kw = {"alpha": 0.2, "beta": 0.4, "clip_min": -0.5, "clip_max": 0.75}
    r = conv.Runner(be, xs, np.float32, w, b, activation=act, tactic=tactic, allow_tf32=True, **kw, **attrs)
    n_out = int(np.prod(r.output_shape))
    xt = torch.from_numpy(x).cuda()
    outs = []
    for off in (0, 1):   # 0: whole-tile class epilogue; 1: misaligned output, the general one
        ybuf = torch.full((n_out + 8,), 7.0, dtype=torch.float32, device="cuda")
        r((xt.data_ptr(),), ybuf.data_ptr() + off * 4)
        torch.cuda.synchronize()
        outs.append(ybuf[off:off + n_out].cpu().numpy())
    np.testing.assert_array_equal(np.isnan(outs[0]), np.isnan(outs[1]))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-6, atol=0, equal_nan=True)


@pytest.mark.parametrize("tactic", ["igemm_32x32", "mma_tf32_64x64", "mma_tf32_ms_64x32", "mma_tf32_ms_1x1",
                                    "wgmma_tf32_64x128", "wgmma_tf32_1x1", "mma_f16_128x128", "winograd",
                                    "depthwise"])
@pytest.mark.parametrize("offs", [(1, 1), (0, 1), (1, 0)], ids=["both+1", "out+1", "in+1"])
def test_misaligned_pointers(be, tactic, offs) -> None:
    dtype = np.float16 if tactic.startswith("mma_f16") else np.float32
    if tactic == "depthwise":
        case = ((1, 8, 9, 12), (8, 1, 3, 3), {"group": 8, "pads": [1, 1, 1, 1]})
    elif tactic == "mma_tf32_ms_1x1":   # a misaligned input turns the 16-byte pointwise gather off
        tactic, case = "mma_tf32_ms_64x64", ((2, 16, 6, 8), (24, 16, 1, 1), {})
    elif tactic == "wgmma_tf32_1x1":
        tactic, case = "wgmma_tf32_128x64", ((2, 40, 6, 8), (24, 40, 1, 1), {})
    else:
        case = ((1, 8, 9, 12), (16, 8, 3, 3), {"pads": [1, 1, 1, 1]})
    got, want = launch(be, *case, dtype, tactic, residual=True, seed=seed_of(tactic, offs), x_off=offs[0],
                       y_off=offs[1])
    assert rel_l2(got, want) <= tol_for(tactic, dtype)


@pytest.mark.parametrize("tactic", ["igemm_64x64", "igemm_128x128", "mma_tf32_64x64", "mma_tf32_ms_64x64",
                                    "mma_tf32_ms_128x128", "mma_f16_128x128", "wgmma_tf32_128x128",
                                    "wgmma_tf32_64x64"])
@pytest.mark.parametrize("splits", [2, 3, 7])
@pytest.mark.parametrize("after", [False, True], ids=["res-before", "res-after"])
def test_split_k(be, tactic, splits, after) -> None:
    """The last split of a tile runs the epilogue: the residual before or after the activation."""
    dtype = np.float16 if tactic.startswith("mma_f16") else np.float32
    case = ((2, 48, 10, 9), (70, 48, 3, 3), {"pads": [1, 1, 1, 1]})
    got, want = launch(be, *case, dtype, tactic, residual=True, residual_after=after, seed=seed_of(tactic, splits),
                       splits=splits, repeat=3)
    assert rel_l2(got, want) <= tol_for(tactic, dtype)


def test_heuristic_runs_the_seed_problems(be) -> None:
    """The default (auto) tactic on the benchmark's problem set, fp32: fp32-accurate everywhere."""
    for n, c, h, w, m, k in [(1, 3, 64, 64, 16, 3), (1, 64, 56, 56, 64, 3), (1, 64, 56, 56, 128, 1),
                             (1, 128, 32, 32, 256, 1), (1, 32, 64, 64, 64, 5)]:
        attrs = {"pads": [k // 2] * 4}
        r = conv.Runner(be, (n, c, h, w), np.float32, np.ones((m, c, k, k), np.float32), None, **attrs)
        assert not r.tactic.startswith("mma_tf32")
        got, want = launch(be, (n, c, h, w), (m, c, k, k), attrs, np.float32, r.tactic, seed=seed_of(n, c, h, w))
        assert rel_l2(got, want) <= 1e-5, r.tactic


def test_repeatable(be) -> None:
    case = ((2, 32, 20, 20), (64, 32, 3, 3), {"pads": [1, 1, 1, 1]})
    outs = [launch(be, *case, np.float32, "winograd", seed=5)[0] for _ in range(2)]
    np.testing.assert_array_equal(outs[0], outs[1])


# ---- wgmma_tf32 (Hopper warpgroup MMA, sm_90 only): every case and tile, random shapes -------------------------
WG_TACTICS = [conv.tactic_name("wgmma_tf32", t) for t in conv.TILES["wgmma_tf32"]]
WG_ALL = [(c, t) for c in CASES for t in WG_TACTICS]


@pytest.mark.parametrize("case,tactic", WG_ALL,
                         ids=[f"{'x'.join(map(str, c[0]))}-{'x'.join(map(str, c[1]))}-{t}" for c, t in WG_ALL])
def test_wgmma_matches_reference(be, case, tactic) -> None:
    xs, ws, attrs = case
    residual = seed_of(case, "res") % 2 == 0
    got, want = launch(be, xs, ws, attrs, np.float32, tactic, residual=residual, seed=seed_of(case, tactic))
    assert rel_l2(got, want) <= TF32_TOL


def _random_case(i: int):
    """Seeded random 2-D conv: odd sizes, kernels 1/3/5/7 (and non-square), strides, asymmetric pads, dilation,
    groups, channel counts that do and do not fill the 32-k stages."""
    rng = np.random.default_rng(1000 + i)
    kh = int(rng.choice([1, 3, 5, 7]))
    kw = kh if rng.random() < 0.8 else int(rng.choice([1, 3, 5]))
    group = int(rng.choice([1, 1, 1, 2, 3]))
    cg = int(rng.choice([1, 3, 8, 17, 32, 64, 96]))
    mg = int(rng.choice([5, 16, 40, 64, 100, 130]))
    n = int(rng.integers(1, 4))
    h, w = int(rng.integers(kh, 30)), int(rng.integers(kw, 30))
    s = [int(rng.integers(1, 3)), int(rng.integers(1, 3))]
    d = [int(rng.integers(1, 3)) if kh > 1 else 1, int(rng.integers(1, 3)) if kw > 1 else 1]
    pads = [int(rng.integers(0, kh)), int(rng.integers(0, kw)), int(rng.integers(0, kh)), int(rng.integers(0, kw))]
    h = max(h, (kh - 1) * d[0] + 1)
    w = max(w, (kw - 1) * d[1] + 1)
    return ((n, cg * group, h, w), (mg * group, cg, kh, kw),
            {"group": group, "strides": s, "pads": pads, "dilations": d})


RANDOM = [(i, t) for i in range(16) for t in (WG_TACTICS[i % len(WG_TACTICS)],)]


@pytest.mark.parametrize("i,tactic", RANDOM, ids=[f"rand{i}-{t}" for i, t in RANDOM])
def test_wgmma_random_shapes(be, i, tactic) -> None:
    xs, ws, attrs = _random_case(i)
    act = ACTIVATIONS[i % len(ACTIVATIONS)]
    residual = i % 3 != 0
    got, want = launch(be, xs, ws, attrs, np.float32, tactic, act=act, residual=residual, residual_after=i % 2 == 1,
                       seed=seed_of("rand", i))
    assert rel_l2(got, want) <= TF32_TOL * (2 if act in ("Sigmoid", "SiLU", "Tanh") else 1)


def test_wgmma_only_on_sm90(be) -> None:
    """algo_ok offers wgmma_tf32 on NVIDIA sm_90 only; anywhere else a pinned wgmma tactic runs the heuristic's."""
    g = conv.geometry((1, 64, 16, 16), (64, 64, 3, 3), pads=[1] * 4)
    assert conv.algo_ok("wgmma_tf32", g, np.float32, "cuda", "sm_90")
    assert not conv.algo_ok("wgmma_tf32", g, np.float32, "cuda", "sm_80")
    assert not conv.algo_ok("wgmma_tf32", g, np.float16, "cuda", "sm_90")
    r = conv.Runner(be, (1, 64, 16, 16), np.float32, np.ones((64, 64, 3, 3), np.float32), tactic="wgmma_tf32",
                    pads=[1] * 4)
    assert r.tactic.startswith("wgmma_tf32") == (be.arch == "sm_90")
