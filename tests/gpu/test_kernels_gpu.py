"""Every kernel against its float64 numpy reference on an NVIDIA GPU (run on the GPU machine).

Fresh seeded random inputs (never zeros); outputs poisoned with NaN before each launch and checked
fully written, with the poison around them untouched (no out-of-bounds writes); sizes 1, 3, 4, 4097,
2^24+3; base pointers offset by one element (4 bytes fp32, 2 bytes fp16) on input and/or output;
fp32 and fp16; relative L2 error against the reference. torch only allocates device memory here.
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

from fuser.kernels import batchnorm, group_norm, leaky_relu  # noqa: E402
from fuser.kernels.activations import ACTIVATIONS  # noqa: E402

TOL = {np.float32: 1e-5, np.float16: 2e-3}
TORCH_DT = {np.float32: torch.float32, np.float16: torch.float16}
# (input offset, output offset) in elements: aligned, same misalignment (vector body after a scalar
# head), different misalignment (scalar path).
OFFSETS = [(0, 0), (1, 1), (1, 0)]


@pytest.fixture(scope="module")
def be():
    from fuser.kernels.backend import select_backend

    return select_backend("cuda")


def seed_of(*parts: object) -> int:
    return zlib.crc32(repr(parts).encode())


def rnd(shape: tuple[int, ...], seed: int, dtype: type, loc: float = 0.0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(size=shape, dtype=np.float32) + np.float32(loc)
    x[x == 0] = 0.5
    return x.astype(dtype)


class Dev:
    """A device copy of ``host`` at an element offset inside a larger buffer, guarded by NaN on both
    sides, plus a NaN-poisoned output buffer laid out the same way."""

    PAD = 64

    def __init__(self, host: np.ndarray, in_off: int, out_off: int) -> None:
        self.shape, self.n = host.shape, host.size
        tdt = TORCH_DT[host.dtype.type]
        self.in_off, self.out_off = in_off, out_off
        self.xbuf = torch.full((self.n + in_off + self.PAD,), float("nan"), dtype=tdt, device="cuda")
        self.xbuf[in_off:in_off + self.n] = torch.from_numpy(host.ravel()).cuda()
        self.ybuf = torch.full((self.n + out_off + self.PAD,), float("nan"), dtype=tdt, device="cuda")
        es = self.xbuf.element_size()
        self.x = self.xbuf.data_ptr() + in_off * es
        self.y = self.ybuf.data_ptr() + out_off * es

    def result(self) -> np.ndarray:
        torch.cuda.synchronize()
        buf = self.ybuf.cpu().numpy()
        lo, hi = buf[:self.out_off], buf[self.out_off + self.n:]
        assert np.isnan(lo).all() and np.isnan(hi).all(), "kernel wrote outside its output"
        out = buf[self.out_off:self.out_off + self.n].reshape(self.shape)
        assert np.isfinite(out).all(), f"{int((~np.isfinite(out)).sum())} outputs unwritten or non-finite"
        return out


def rel_l2(got: np.ndarray, want: np.ndarray) -> float:
    g, w = got.astype(np.float64).ravel(), want.astype(np.float64).ravel()
    den = np.linalg.norm(w)
    return float(np.linalg.norm(g - w) / (den if den > 0 else 1.0))


def check(got: np.ndarray, want: np.ndarray, dtype: type) -> None:
    err = rel_l2(got, want)
    assert err <= TOL[dtype], f"rel-L2 {err:.3g} > {TOL[dtype]}"


# ---- LeakyReLU ------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 3, 4, 4097, 2 ** 24 + 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("offs", OFFSETS, ids=["aligned", "both+1", "in+1"])
def test_leaky_relu(be, n: int, dtype: type, offs: tuple[int, int]) -> None:
    x = rnd((n,), seed_of("lrelu", n, dtype, offs), dtype)
    d = Dev(x, *offs)
    leaky_relu.Runner(be, n, dtype, 0.01)((d.x,), d.y)
    got = d.result()
    want = leaky_relu.reference(x, 0.01)
    check(got, want, dtype)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 1.75, -0.25])
def test_leaky_relu_alphas(be, alpha: float) -> None:
    """alpha exact in fp32 and float64, so one multiply and a max/min are bit-exact."""
    x = rnd((10007,), seed_of("alpha", alpha), np.float32)
    d = Dev(x, 1, 1)
    leaky_relu.Runner(be, x.size, np.float32, alpha)((d.x,), d.y)
    np.testing.assert_array_equal(d.result(), leaky_relu.reference(x, alpha))


@pytest.mark.parametrize("max_blocks", [1, 7])
def test_leaky_relu_grid_stride(be, max_blocks: int) -> None:
    """A tiny grid must still cover everything (grid-stride loop, 64-bit lane arithmetic)."""
    x = rnd((1 << 20) + 5, seed_of("gs", max_blocks), np.float32).reshape(-1)
    d = Dev(x, 0, 0)
    leaky_relu.Runner(be, x.size, np.float32, 0.125, max_blocks=max_blocks)((d.x,), d.y)
    np.testing.assert_array_equal(d.result(), leaky_relu.reference(x, 0.125))


@pytest.mark.parametrize("cfg", leaky_relu.CONFIGS, ids=lambda c: f"{c[0]}{c[1]}x{c[2]}")
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("offs", OFFSETS, ids=["aligned", "both+1", "in+1"])
def test_leaky_relu_configs(be, cfg: tuple, dtype: type, offs: tuple[int, int]) -> None:
    """Every compiled launch configuration: less than one vector, exactly one tile, two tiles and a
    partial one plus a scalar tail; alpha > 1 (min form) and < 0; a capped grid looping over tiles."""
    vec = 16 // np.dtype(dtype).itemsize
    tile = cfg[1] * cfg[2] * vec
    for n, alpha, cap in ((vec - 1, 0.125, None), (tile, 1.75, None), (2 * tile + 5 * vec + 3, -0.25, None),
                          (5 * tile + 7, 0.5, 2)):
        x = rnd((n,), seed_of("cfg", cfg, n, dtype, offs), dtype)
        d = Dev(x, *offs)
        leaky_relu.Runner(be, n, dtype, alpha, max_blocks=cap, config=cfg)((d.x,), d.y)
        np.testing.assert_array_equal(d.result(), leaky_relu.reference(x, alpha), err_msg=f"n={n}")


def test_leaky_relu_over_2_31_elements(be) -> None:
    """64-bit indexing: 2^31 + 37 fp16 elements (4.3 GB each way); compared on the GPU with torch's
    leaky_relu, which rounds the same fp32 value."""
    n = 2 ** 31 + 37
    if torch.cuda.mem_get_info()[0] < 3.5 * n * 2:
        pytest.skip("not enough GPU memory")
    g = torch.Generator(device="cuda").manual_seed(11)
    x = torch.randn(n, dtype=torch.float16, device="cuda", generator=g)
    y = torch.full_like(x, float("nan"))
    leaky_relu.Runner(be, n, np.float16, 0.01)((x.data_ptr(),), y.data_ptr())
    torch.cuda.synchronize()
    assert not torch.isnan(y).any()
    assert torch.equal(y, torch.nn.functional.leaky_relu(x, 0.01))
    del x, y
    torch.cuda.empty_cache()


# ---- BatchNorm ------------------------------------------------------------------------------------
BN_SHAPES = [(1, 1), (2, 3), (1, 1, 1), (1, 3, 1), (2, 3, 7, 7), (4, 16, 14, 14), (2, 5, 3, 5, 7),
             (3, 8, 56, 56), (1, 3, 4097), (2, 1, 3, 3), (1, 1, 2 ** 24 + 3), (1, 4, 2 ** 22 + 1)]


def _bn_params(c: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.random.default_rng(seed)
    return batchnorm.fold_scale_shift(r.normal(1, 0.3, c), r.normal(0, 0.5, c), r.normal(0, 1, c),
                                      r.uniform(0.2, 2.0, c), 1e-5)


@pytest.mark.parametrize("shape", BN_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("offs", OFFSETS, ids=["aligned", "both+1", "in+1"])
def test_batchnorm_leaky(be, shape: tuple[int, ...], dtype: type, offs: tuple[int, int]) -> None:
    x = rnd(shape, seed_of("bn", shape, dtype, offs), dtype)
    scale, shift = _bn_params(shape[1], seed_of("bnp", shape))
    d = Dev(x, *offs)
    batchnorm.Runner(be, shape, dtype, scale, shift, "LeakyRelu", alpha=0.1)((d.x,), d.y)
    check(d.result(), batchnorm.reference(x, scale, shift, "LeakyRelu", alpha=0.1), dtype)


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_batchnorm_activations(be, act: str, dtype: type) -> None:
    shape = (2, 6, 9, 11)
    x = rnd(shape, seed_of("bnact", act, dtype), dtype)
    scale, shift = _bn_params(6, 5)
    kw = dict(alpha=0.2, beta=0.4, clip_min=-0.5, clip_max=0.75)
    d = Dev(x, 1, 1)
    batchnorm.Runner(be, shape, dtype, scale, shift, act, **kw)((d.x,), d.y)
    check(d.result(), batchnorm.reference(x, scale, shift, act, **kw), dtype)


def test_batchnorm_in_place(be) -> None:
    shape = (2, 4, 33)
    x = rnd(shape, 9, np.float32)
    scale, shift = _bn_params(4, 9)
    t = torch.from_numpy(x.ravel()).cuda()
    batchnorm.Runner(be, shape, np.float32, scale, shift, "Relu")((t.data_ptr(),), t.data_ptr())
    torch.cuda.synchronize()
    check(t.cpu().numpy().reshape(shape), batchnorm.reference(x, scale, shift, "Relu"), np.float32)


def test_batchnorm_over_2_31_elements(be) -> None:
    """64-bit plane offsets: 2 planes of 2^30 + 3 fp16 elements."""
    s = 2 ** 30 + 3
    n = 2 * s
    if torch.cuda.mem_get_info()[0] < 5 * n * 2:
        pytest.skip("not enough GPU memory")
    g = torch.Generator(device="cuda").manual_seed(12)
    x = torch.randn(n, dtype=torch.float16, device="cuda", generator=g)
    y = torch.full_like(x, float("nan"))
    scale = np.array([0.5, -2.0], np.float32)
    shift = np.array([0.25, 1.0], np.float32)
    batchnorm.Runner(be, (1, 2, s), np.float16, scale, shift)((x.data_ptr(),), y.data_ptr())
    torch.cuda.synchronize()
    assert not torch.isnan(y).any()
    for c in range(2):
        xs, ys = x[c * s:(c + 1) * s].float(), y[c * s:(c + 1) * s].float()
        want = xs * float(scale[c]) + float(shift[c])
        err = (torch.linalg.vector_norm(ys - want) / torch.linalg.vector_norm(want)).item()
        assert err < TOL[np.float16], err
        assert torch.allclose(ys[-5:], want[-5:], rtol=2e-3, atol=2e-3)
    del x, y
    torch.cuda.empty_cache()


# ---- GroupNorm ------------------------------------------------------------------------------------
GN_CASES = [
    ((2, 64, 56, 56), 32),     # fused, vector path (the benchmark's group shape)
    ((2, 6, 7, 7), 3),         # fused, S=49: scalar path
    ((3, 8, 5), 4),
    ((2, 16), 4),              # rank 2: S=1
    ((1, 32, 64, 64), 32),     # few groups but small: fused
    ((1, 320, 32, 32), 32),    # few groups of 10240: split
    ((1, 4, 2 ** 22 + 1), 2),  # huge groups: split, odd size
    ((2, 3, 4097), 1),
]


def _gn_params(c: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.random.default_rng(seed)
    return r.normal(1, 0.3, c).astype(np.float32), r.normal(0, 0.3, c).astype(np.float32)


@pytest.mark.parametrize("shape,g", GN_CASES, ids=[f"{'x'.join(map(str, s))}-G{g}" for s, g in GN_CASES])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("offs", OFFSETS, ids=["aligned", "both+1", "in+1"])
def test_group_norm_silu(be, shape: tuple[int, ...], g: int, dtype: type, offs: tuple[int, int]) -> None:
    x = rnd(shape, seed_of("gn", shape, dtype, offs), dtype, loc=0.5)
    gamma, beta = _gn_params(shape[1], seed_of("gnp", shape))
    d = Dev(x, *offs)
    group_norm.Runner(be, shape, dtype, gamma, beta, g, 1e-5, "SiLU")((d.x,), d.y)
    check(d.result(), group_norm.reference(x, gamma, beta, g, 1e-5, "SiLU"), dtype)


@pytest.mark.parametrize("force", ["fused", "split"])
@pytest.mark.parametrize("act", ["", "Relu", "LeakyRelu", "Sigmoid", "SiLU"])
def test_group_norm_schemes_agree(be, force: str, act: str) -> None:
    shape, g = (3, 12, 17, 19), 4       # M = 3 * 323 = 969
    x = rnd(shape, seed_of("gnf", force, act), np.float32, loc=30.0)   # offset mean: stability
    gamma, beta = _gn_params(12, 3)
    d = Dev(x, 0, 0)
    group_norm.Runner(be, shape, np.float32, gamma, beta, g, 1e-5, act, alpha=0.2, force=force)((d.x,), d.y)
    check(d.result(), group_norm.reference(x, gamma, beta, g, 1e-5, act, alpha=0.2), np.float32)


def test_group_norm_repeatable(be) -> None:
    """Same input twice gives identical bits (no races in the reductions)."""
    shape = (1, 320, 32, 32)
    x = rnd(shape, 21, np.float32)
    gamma, beta = _gn_params(320, 21)
    r = group_norm.Runner(be, shape, np.float32, gamma, beta, 32, 1e-5, "SiLU")
    outs = []
    for _ in range(2):
        d = Dev(x, 0, 0)
        r((d.x,), d.y)
        outs.append(d.result())
    np.testing.assert_array_equal(outs[0], outs[1])


# ---- host-array convenience (upload/launch/download through the library's own allocations) ---------
def test_run_helpers_use_library_allocations(be) -> None:
    x = rnd((2, 4, 9, 9), 31, np.float32)
    np.testing.assert_array_equal(leaky_relu.run(be, x, 0.375), leaky_relu.reference(x, 0.375))
    sc, sh = _bn_params(4, 31)
    check(batchnorm.run(be, x, sc, sh, "Tanh"), batchnorm.reference(x, sc, sh, "Tanh"), np.float32)
    g, b = _gn_params(4, 31)
    check(group_norm.run(be, x, g, b, 2, 1e-5), group_norm.reference(x, g, b, 2, 1e-5), np.float32)


@pytest.mark.parametrize("act", ["SiLU", "Sigmoid"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_fast_sigmoid_family_extremes(be, act: str, dtype: type) -> None:
    """The fast-reciprocal Sigmoid/SiLU stay finite and right far into both tails."""
    x = np.linspace(-120.0, 120.0, 4 * 2001, dtype=np.float32).reshape(1, 4, 2001).astype(dtype)
    sc, sh = np.ones(4, np.float32), np.zeros(4, np.float32)
    d = Dev(x, 0, 0)
    batchnorm.Runner(be, x.shape, dtype, sc, sh, act)((d.x,), d.y)
    got = d.result()
    want = batchnorm.reference(x, sc, sh, act)
    check(got, want, dtype)
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=2e-3 if dtype is np.float16
                               else 2e-6, atol=1e-6)


@pytest.mark.parametrize("vpt", [1, 2, 3])
def test_leaky_relu_vectors_per_thread(be, vpt: int) -> None:
    x = rnd((3 * 4097 + 1,), seed_of("vpt", vpt), np.float32)
    d = Dev(x, 1, 1)
    leaky_relu.Runner(be, x.size, np.float32, 0.25, vectors_per_thread=vpt)((d.x,), d.y)
    np.testing.assert_array_equal(d.result(), leaky_relu.reference(x, 0.25))


@pytest.mark.parametrize("kw", [{"specialize": False}, {"per_lane": 1}, {"per_lane": 2}, {"per_lane": 8},
                                {"max_blocks": 3}], ids=str)
@pytest.mark.parametrize("shape", [(4, 16, 14, 14), (2, 3, 7, 7), (1, 2, 300001)], ids=lambda s: "x".join(map(str, s)))
def test_batchnorm_launch_variants(be, kw: dict, shape: tuple[int, ...]) -> None:
    x = rnd(shape, seed_of("bnv", shape, tuple(kw.items())), np.float32)
    scale, shift = _bn_params(shape[1], 17)
    d = Dev(x, 1, 1)
    batchnorm.Runner(be, shape, np.float32, scale, shift, "LeakyRelu", alpha=0.1, **kw)((d.x,), d.y)
    check(d.result(), batchnorm.reference(x, scale, shift, "LeakyRelu", alpha=0.1), np.float32)
