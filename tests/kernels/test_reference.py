"""CPU tests: each family's numpy reference against independent float64 formulas, the launch rules,
backend selection and argument packing. No GPU, no compiler needed."""

from __future__ import annotations

import ctypes
import math

import numpy as np
import pytest

from fuser.kernels import batchnorm, group_norm, leaky_relu
from fuser.kernels.activations import ACTIVATIONS
from fuser.kernels.backend import BackendUnavailable, KernelArgs, select_backend


def rnd(shape: tuple[int, ...], seed: int, dtype: type = np.float32, loc: float = 0.0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(loc, 1.0, size=shape)
    x[x == 0] = 0.5          # never zeros
    return x.astype(dtype)


def act64(y: np.ndarray, act: str, alpha: float, beta: float) -> np.ndarray:
    """Independent float64 activation formulas (element-wise Python math, no shared code)."""
    def f(v: float) -> float:
        if act == "":
            return v
        if act == "Relu":
            return v if v > 0 else 0.0
        if act == "LeakyRelu":
            return v if v >= 0 else alpha * v
        if act == "Clip":
            return min(max(v, -1.0), 1.5)
        if act == "Sigmoid":
            return 1.0 / (1.0 + math.exp(-v))
        if act == "HardSigmoid":
            return min(max(alpha * v + beta, 0.0), 1.0)
        if act == "HardSwish":
            return v * min(max(v / 6.0 + 0.5, 0.0), 1.0)
        if act == "Tanh":
            return math.tanh(v)
        if act == "SiLU":
            return v / (1.0 + math.exp(-v))
        raise AssertionError(act)
    return np.vectorize(f, otypes=[np.float64])(y)


# ---- LeakyReLU ------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0.01, 0.0, 0.2, 1.0, 1.7, -0.3])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_leaky_relu_reference(alpha: float, dtype: type) -> None:
    x = rnd((3, 4097), seed=1, dtype=dtype)
    got = leaky_relu.reference(x, alpha)
    assert got.dtype == x.dtype and got.shape == x.shape
    x64 = x.astype(np.float64)
    want = np.maximum(x64, 0.0) + alpha * np.minimum(x64, 0.0)
    np.testing.assert_array_equal(got, want.astype(dtype))
    # The device's branchless identity: max(x, a*x) for a <= 1, min(x, a*x) for a > 1.
    dev = np.minimum(x64, alpha * x64) if alpha > 1 else np.maximum(x64, alpha * x64)
    np.testing.assert_array_equal(got, dev.astype(dtype))


# ---- BatchNorm ------------------------------------------------------------------------------------
def _bn_params(c: int, seed: int) -> tuple[np.ndarray, ...]:
    r = np.random.default_rng(seed)
    return (r.normal(1, 0.3, c).astype(np.float32), r.normal(0, 0.5, c).astype(np.float32),
            r.normal(0, 1, c).astype(np.float32), r.uniform(0.2, 2.0, c).astype(np.float32))


@pytest.mark.parametrize("shape", [(2, 3), (1, 1, 1), (2, 3, 7), (2, 3, 5, 4), (1, 2, 3, 2, 2)])
def test_fold_and_batchnorm_reference(shape: tuple[int, ...]) -> None:
    c = shape[1]
    gamma, beta, mean, var = _bn_params(c, seed=2)
    eps = 1e-5
    scale, shift = batchnorm.fold_scale_shift(gamma, beta, mean, var, eps)
    assert scale.dtype == np.float32 and shift.dtype == np.float32
    x = rnd(shape, seed=3)
    got = batchnorm.reference(x, scale.reshape(c, 1), shift, "")
    # Independent: the BN definition itself, per element, in float64.
    want = np.empty(x.shape, np.float64)
    for idx in np.ndindex(*x.shape):
        ch = idx[1]
        want[idx] = ((float(x[idx]) - float(mean[ch])) / math.sqrt(float(var[ch]) + eps) * float(gamma[ch])
                     + float(beta[ch]))
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_batchnorm_reference_activations(act: str, dtype: type) -> None:
    x = rnd((2, 3, 4, 5), seed=4, dtype=dtype)
    scale = np.array([0.5, -1.25, 2.0], np.float32)
    shift = np.array([0.1, 0.0, -0.3], np.float32)
    got = batchnorm.reference(x, scale, shift, act, alpha=0.2, beta=0.4, clip_min=-1.0, clip_max=1.5)
    assert got.dtype == x.dtype
    y = x.astype(np.float64) * scale.astype(np.float64)[None, :, None, None] + shift[None, :, None, None]
    want = act64(y, act, 0.2, 0.4).astype(dtype)
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=1e-6, atol=1e-7)


def test_batchnorm_reference_validates() -> None:
    with pytest.raises(ValueError):
        batchnorm.reference(np.ones(4, np.float32), np.ones(4, np.float32), np.ones(4, np.float32))
    with pytest.raises(ValueError):
        batchnorm.reference(np.ones((1, 3), np.float32), np.ones(2, np.float32), np.ones(3, np.float32))


# ---- GroupNorm ------------------------------------------------------------------------------------
def _gn_loop(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, g: int, eps: float) -> np.ndarray:
    n, c = x.shape[:2]
    cg = c // g
    out = np.empty(x.shape, np.float64)
    for i in range(n):
        for j in range(g):
            blk = x[i, j * cg:(j + 1) * cg].astype(np.float64)
            vals = blk.ravel().tolist()
            m = math.fsum(vals) / len(vals)
            v = math.fsum((t - m) ** 2 for t in vals) / len(vals)
            for k in range(cg):
                ch = j * cg + k
                out[i, ch] = (x[i, ch].astype(np.float64) - m) / math.sqrt(v + eps) * gamma[ch] + beta[ch]
    return out


@pytest.mark.parametrize("shape,g", [((2, 4), 2), ((2, 6, 5), 3), ((1, 8, 3, 4), 4), ((2, 4, 2, 3, 2), 1),
                                     ((1, 4, 3, 3), 4)])
@pytest.mark.parametrize("act", ["", "SiLU", "LeakyRelu", "Sigmoid"])
def test_group_norm_reference(shape: tuple[int, ...], g: int, act: str) -> None:
    c = shape[1]
    x = rnd(shape, seed=5, loc=3.0)
    r = np.random.default_rng(6)
    gamma = r.normal(1, 0.3, c).astype(np.float32)
    beta = r.normal(0, 0.3, c).astype(np.float32)
    got = group_norm.reference(x, gamma, beta, g, 1e-5, act, alpha=0.2)
    want = act64(_gn_loop(x, gamma, beta, g, 1e-5), act, 0.2, 0.0)
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=1e-5, atol=1e-6)


def test_group_norm_reference_is_stable_far_from_zero() -> None:
    """A large common offset must not cost precision: statistics are float64, centred."""
    x = (rnd((1, 4, 64), seed=7).astype(np.float64) * 1e-3 + 1e4).astype(np.float32)
    got = group_norm.reference(x, np.ones(4, np.float32), np.zeros(4, np.float32), 2, 0.0)
    want = _gn_loop(x, np.ones(4), np.zeros(4), 2, 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_group_norm_reference_validates() -> None:
    with pytest.raises(ValueError):
        group_norm.reference(np.ones((1, 6, 2), np.float32), np.ones(6), np.ones(6), 4, 1e-5)


# ---- launch rules ---------------------------------------------------------------------------------
def test_batchnorm_plan() -> None:
    big = batchnorm.plan((256, 64, 56, 56), 4, 132)
    assert big["tpp"] == 256 and big["chunks"] == 1 and big["planes"] == 256 * 64
    small = batchnorm.plan((64, 512, 14, 14), 4, 132)
    assert small["tpp"] < 64 and small["chunks"] == 1            # several planes per block
    one = batchnorm.plan((1, 3, 1024, 1024), 4, 132)
    assert one["chunks"] > 1 and one["chunk_len"] % 4 == 0          # few planes: split them
    assert one["chunks"] * one["chunk_len"] >= 1024 * 1024
    rank2 = batchnorm.plan((8, 5), 2, 132)
    assert rank2["S"] == 1 and rank2["tpp"] == 1


def test_group_norm_plan() -> None:
    p = group_norm.plan((256, 64, 56, 56), 32, 4, 132)
    assert p["scheme"] == "fused" and p["threads"] * group_norm.CACHE_PER_THREAD >= p["M"]
    p = group_norm.plan((1, 320, 32, 32), 32, 4, 132)      # 32 groups of 10240: too few to fill the GPU
    assert p["scheme"] == "split" and p["chunks"] > 1
    p = group_norm.plan((1, 4, 2 ** 22), 2, 4, 132)
    assert p["scheme"] == "split" and p["chunks"] * p["chunk_len"] >= p["M"]
    with pytest.raises(ValueError):
        group_norm.plan((1, 4, 2 ** 22), 2, 4, 132, force="fused")


# ---- backends -------------------------------------------------------------------------------------
def test_select_backend_cpu_runs_references() -> None:
    be = select_backend("cpu")
    assert be.name == "cpu" and not be.is_device
    x = rnd((2, 3, 4, 4), seed=8)
    np.testing.assert_array_equal(leaky_relu.run(be, x, 0.1), leaky_relu.reference(x, 0.1))
    sc, sh = np.ones(3, np.float32), np.zeros(3, np.float32)
    np.testing.assert_array_equal(batchnorm.run(be, x, sc, sh, "Relu"), batchnorm.reference(x, sc, sh, "Relu"))
    g, b = np.ones(3, np.float32), np.zeros(3, np.float32)
    np.testing.assert_array_equal(group_norm.run(be, x, g, b, 3, 1e-5, "SiLU"),
                                  group_norm.reference(x, g, b, 3, 1e-5, "SiLU"))


def test_select_backend_errors() -> None:
    with pytest.raises(ValueError):
        select_backend("tpu")
    assert select_backend("auto").name in ("hip", "cuda", "cpu")
    try:
        from hip import hip  # noqa: F401
        has_amd = hip.hipGetDeviceCount()[1] > 0
    except Exception:
        has_amd = False
    if not has_amd:      # no AMD GPU on any machine of this project
        with pytest.raises(BackendUnavailable):
            select_backend("hip")


def test_kernel_args_exact_widths() -> None:
    a = KernelArgs("plif")
    a.set(0xDEAD_BEEF_0000_0010, -(2 ** 40), -7, 0.1)
    assert a.values()[:3] == [0xDEAD_BEEF_0000_0010, -(2 ** 40), -7]
    assert a.values()[3] == pytest.approx(np.float32(0.1))
    ptrs = (ctypes.c_void_p * 4).from_address(a.address)
    assert ctypes.c_int32.from_address(ptrs[2]).value == -7
    assert ctypes.c_uint64.from_address(ptrs[0]).value == 0xDEAD_BEEF_0000_0010
    with pytest.raises(TypeError):
        a.set(1, 2, 3)


def test_leaky_relu_grid_rule() -> None:
    # One tile (block * vpt vectors) per block, one-shot grid; block and vpt from choose_config.
    for n in (1 << 26, 1 << 20):
        _, block, vpt = leaky_relu.choose_config(n, 4)
        assert leaky_relu.grid_blocks(n, 4, 132) == (n // 4) // (block * vpt)
    assert leaky_relu.grid_blocks(1, 4, 132) == 1
    assert leaky_relu.grid_blocks(1 << 26, 2, 132, max_blocks=7) == 7
    assert leaky_relu.grid_blocks(1 << 20, 4, 132, vectors_per_thread=2, block=256) == (1 << 18) // 512
