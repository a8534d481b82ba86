"""The linear family on an NVIDIA GPU (run on the GPU machine): widen → cuBLAS DGEMM → epilogue against the
float64 numpy reference, and fp32 models in ``fuser.runtime.Session`` with linear steps against onnxruntime.

Fresh seeded random inputs; outputs poisoned with NaN and checked fully written, the poison around them untouched;
odd sizes; X, R and Y at 4-byte (one element) offsets, which take the scalar paths.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

from fuser.kernels import linear  # noqa: E402

PAD = 32


def linear_models():
    """tests/linear_models.py by path: GPU runs import the installed project with --import-mode=importlib, so the
    tests directory is not a package on sys.path there."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("linear_models", Path(__file__).parents[1] / "linear_models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def be():
    from fuser.kernels.backend import select_backend

    return select_backend("cuda")


def rnd(shape, seed: int, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def guarded(host: np.ndarray, off: int) -> torch.Tensor:
    buf = torch.full((host.size + off + PAD,), float("nan"), dtype=torch.float32, device="cuda")
    buf[off:off + host.size] = torch.from_numpy(host.ravel()).cuda()
    return buf


SHAPES = [((1,), 1, 1), ((3,), 5, 7), ((2, 7), 33, 10), ((5, 13), 64, 96), ((2, 197), 768, 2304)]


@pytest.mark.parametrize("lead,k,n", SHAPES, ids=[f"{'x'.join(map(str, s[0]))}-{s[1]}-{s[2]}" for s in SHAPES])
@pytest.mark.parametrize("bias,gelu,residual", [(False, False, False), (True, False, False), (True, True, False),
                                                 (True, False, True), (True, True, True)],
                         ids=["plain", "bias", "bias-gelu", "bias-res", "bias-gelu-res"])
@pytest.mark.parametrize("offs", [(0, 0, 0), (1, 1, 1), (1, 0, 1)], ids=["aligned", "off-all", "off-x-r"])
def test_linear_matches_reference(be, lead, k, n, bias, gelu, residual, offs) -> None:
    seed = zlib.crc32(repr((lead, k, n, bias, gelu, residual, offs)).encode())
    x = rnd((*lead, k), seed)
    w = rnd((k, n), seed + 1, k ** -0.5)
    b = rnd((n,), seed + 2) if bias else None
    r = rnd((*lead, n), seed + 3) if residual else None
    want = linear.reference(x, w, b, r, gelu)
    runner = linear.Runner(be, x.shape, w, b, residual=residual, gelu=gelu)
    assert runner.output_shape == want.shape
    xo, yo, ro = offs
    xb = guarded(x, xo)
    yb = torch.full((want.size + yo + PAD,), float("nan"), dtype=torch.float32, device="cuda")
    ins = [xb.data_ptr() + 4 * xo]
    if residual:
        rb = guarded(r, ro)
        ins.append(rb.data_ptr() + 4 * ro)
    runner(ins, yb.data_ptr() + 4 * yo, torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    got = yb.cpu().numpy()
    assert np.isnan(got[:yo]).all() and np.isnan(got[yo + want.size:]).all(), "wrote outside Y"
    y = got[yo:yo + want.size].reshape(want.shape)
    assert np.isfinite(y).all(), "Y not fully written"
    # 1e-5 relative, plus 1e-6 of the largest output in absolute terms: an fp32 GELU of a negative input is
    # 1 + erf(v/√2) after cancellation, where one ulp of erf is ~1e-4 of the result
    err = np.abs(y.astype(np.float64) - want) - 1e-5 * np.abs(want) - 1e-6 * np.abs(want).max()
    assert float(err.max()) <= 0.0, float(err.max())
    # more exact than fp32 SGEMM: against the float64 truth the product part is one rounding
    if not (bias or gelu or residual):
        truth = x.astype(np.float64) @ w.astype(np.float64)
        assert np.max(np.abs(y - truth) / (np.abs(truth) + 1e-30)) <= 2.0 ** -24 * 1.0001


@pytest.mark.parametrize("lead,k,n", [((3,), 5, 7), ((2, 7), 33, 10), ((5, 13), 64, 96)])
def test_fp64_handoff_is_the_fp32_path_exactly(be, lead, k, n) -> None:
    """y_f64 writes the fp32 results widened; x_f64 reading them gives bit for bit what widening fp32 Y does."""
    seed = zlib.crc32(repr(("handoff", lead, k, n)).encode())
    x, w1, b1, w2 = rnd((*lead, k), seed), rnd((k, n), seed + 1, k ** -0.5), rnd((n,), seed + 2), rnd((n, 3), seed + 3)
    stream = torch.cuda.current_stream().cuda_stream
    xb = torch.from_numpy(x).cuda()
    y32 = torch.full((*lead, n), float("nan"), dtype=torch.float32, device="cuda")
    y64 = torch.full((*lead, n), float("nan"), dtype=torch.float64, device="cuda")
    linear.Runner(be, x.shape, w1, b1, gelu=True)([xb.data_ptr()], y32.data_ptr(), stream)
    r64 = linear.Runner(be, x.shape, w1, b1, gelu=True, y_f64=True)
    assert r64.output_dtype == np.float64
    r64([xb.data_ptr()], y64.data_ptr(), stream)
    z32 = torch.full((*lead, 3), float("nan"), dtype=torch.float32, device="cuda")
    z64 = torch.full((*lead, 3), float("nan"), dtype=torch.float32, device="cuda")
    linear.Runner(be, y32.shape, w2)([y32.data_ptr()], z32.data_ptr(), stream)
    linear.Runner(be, y64.shape, w2, x_f64=True)([y64.data_ptr()], z64.data_ptr(), stream)
    torch.cuda.synchronize()
    assert torch.equal(y64, y32.double()) and torch.isfinite(z32).all() and torch.equal(z32, z64)


# model, input shape, (activation, residual) of each planned linear step
SESSION_CASES = {"mlp": ("mlp_model", (2, 37, 64), [("Gelu", False), ("", True), ("", False)]),
                 "gemm": ("gemm_model", (80, 64), [("", False), ("", False)])}


@pytest.mark.parametrize("case", list(SESSION_CASES))
def test_session_runs_linear_steps(be, case: str) -> None:
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider")
    from fuser.runtime import Session

    make, x_shape, want_types = SESSION_CASES[case]
    m = getattr(linear_models(), make)()
    x = rnd(x_shape, 11)
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    s = Session(m, device="cuda", fp64_linear=True)
    assert s.linear_steps and s.kernel_steps == len(s.steps) == len(want_types)  # nothing left for onnxruntime
    assert [(st.ftype.activation, st.ftype.residual) for st in s.steps] == want_types
    for _ in range(3):  # eager, capture + replay check, replay
        got = s.run(None, {"X": x})[0]
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    assert s.graph_status == "on"
    # a second session has its own stream, so its own cuBLAS handle and scratch: interleaved runs cannot collide
    s2 = Session(m, device="cuda", fp64_linear=True)
    assert np.abs(s2.run(None, {"X": x})[0] - want).max() <= 1e-5 * np.abs(want).max()
    assert s2._device._linear is not None and s2._device._linear is not s._device._linear
    off = Session(m, device="cuda", fp64_linear=False)
    assert off.kernel_steps == 0
    assert np.abs(off.run(None, {"X": x})[0] - want).max() <= 1e-4 * np.abs(want).max()


def test_session_shares_weights_across_input_shapes(be) -> None:
    """A dynamic batch/sequence builds one runner per shape; they share one fp64 copy of each weight."""
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider")
    from fuser.runtime import Session

    m = linear_models().mlp_model(lead=("B", "S"))
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    s = Session(m, device="cuda", fp64_linear=True)
    assert s.kernel_steps == len(s.steps) == 3
    for i, lead in enumerate([(2, 37), (3, 41), (2, 37)]):
        x = rnd((*lead, 64), 20 + i)
        want = ref.run(None, {"X": x})[0]
        assert np.abs(s.run(None, {"X": x})[0] - want).max() <= 1e-5 * np.abs(want).max()
    assert len(s._device._linear.weights) == 3  # W1, W2, W3 once each, for both shapes
