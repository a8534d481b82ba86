"""Conv tactics end to end on the CPU: every fused conv node of a fused model names its tactic (heuristic),
--allow-tf32 widens the verification tolerance and says so, --tune refuses without a GPU, the device
runtime's conv routing (library / 3-D stay in onnxruntime; a residual is a runtime input), and the
device runtime's kernel step with a runner whose output shape differs from its input (through the CPU
emulator standing in for the GPU and fake OrtValues standing in for onnxruntime's)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fuser.api import TF32_RTOL, optimize
from fuser.errors import InputError
from fuser.fused import parse_op_type
from fuser.kernels import conv

from .kernels import emu

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
KNOWN = {"library", "igemm", "mma_tf32", "mma_tf32_ms", "wgmma_tf32", "mma_f16", "depthwise", "winograd"}


def _tactics(model: onnx.ModelProto) -> dict[str, str]:
    out = {}
    for n in model.graph.node:
        ft = parse_op_type(n.op_type) if n.domain == "fuser" else None
        if ft is not None and ft.base == "Conv":
            out[n.name] = next(helper.get_attribute_value(a).decode() for a in n.attribute if a.name == "tactic")
    return out


def conv_model(x_shape, w_shape, attrs, residual=True, act="LeakyRelu", seed=0, opset=17,
               shortcut=False) -> onnx.ModelProto:
    """Conv (+ Add R) + act; ``shortcut``: Conv + act + Add R (Darknet's order, FusedConv<Act>Add)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32)
    y_shape = conv.conv_reference(np.zeros(x_shape), w.astype(np.float64), **attrs).shape
    nodes = [helper.make_node("Conv", ["X", "W", "B"], ["c"], **attrs)]
    ins = [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)]
    last = "c"
    if residual or shortcut:
        ins.append(helper.make_tensor_value_info("R", TensorProto.FLOAT, y_shape))
    if residual and not shortcut:
        nodes.append(helper.make_node("Add", ["c", "R"], ["s"]))
        last = "s"
    act_attrs = {"alpha": 0.1} if act == "LeakyRelu" else {}
    if shortcut:
        nodes += [helper.make_node(act, [last], ["a"], **act_attrs), helper.make_node("Add", ["a", "R"], ["Y"])]
    else:
        nodes.append(helper.make_node(act, [last], ["Y"], **act_attrs))
    g = helper.make_graph(nodes, "g", ins, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, y_shape)],
                          [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def test_every_fused_conv_names_its_tactic() -> None:
    res = optimize(EXAMPLES / "darknet_tiny.onnx", None, device="cpu")
    tactics = _tactics(res.model)
    assert tactics and all(conv.parse_tactic(t)[0] in KNOWN for t in tactics.values()), tactics
    assert not any(t.startswith("mma_tf32") for t in tactics.values())
    recs = {f["fused_node"]: f for f in res.report["fusions"] if f["op_type"].startswith("FusedConv")}
    assert {k: recs[k]["tactic"] for k in tactics} == tactics
    assert res.verification.passed


def test_allow_tf32_picks_tf32_and_widens_tolerance() -> None:
    m = conv_model((1, 32, 64, 64), (64, 32, 3, 3), {"pads": [1, 1, 1, 1]}, residual=False)
    res = optimize(m, None, device="cpu", allow_tf32=True)
    assert set(_tactics(res.model).values()) == {"mma_tf32_ms"}
    assert res.report["options"]["allow_tf32"] is True
    assert all(c.rtol == TF32_RTOL for c in res.verification.checks)
    plain = optimize(m, None, device="cpu")
    assert set(_tactics(plain.model).values()) == {"winograd"}
    assert all(c.rtol == 1e-5 for c in plain.verification.checks)


def test_allow_tf32_on_hopper_picks_wgmma(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --tune the heuristic knows the GPU it fuses on: on sm_90 the warpgroup-MMA tactic where it measured
    faster (large_batch of the seed set), elsewhere mma_tf32_ms."""
    import fuser.api as api

    assert api._tf32_target("cpu") == ("cuda", "")
    m = conv_model((8, 64, 128, 128), (128, 64, 3, 3), {"pads": [1, 1, 1, 1]}, residual=False)
    monkeypatch.setattr(api, "_tf32_target", lambda device: ("cuda", "sm_90"))
    res = optimize(m, None, device="cpu", allow_tf32=True, verify_result=False)
    assert set(_tactics(res.model).values()) == {"wgmma_tf32"}
    monkeypatch.setattr(api, "_tf32_target", lambda device: ("cuda", "sm_80"))
    res = optimize(m, None, device="cpu", allow_tf32=True, verify_result=False)
    assert set(_tactics(res.model).values()) == {"mma_tf32_ms"}


def test_3d_and_unknown_shapes_get_library_or_heuristic() -> None:
    m = conv_model((1, 2, 4, 4, 4), (3, 2, 1, 1, 1), {}, residual=False, act="Relu")
    res = optimize(m, None, device="cpu")
    assert set(_tactics(res.model).values()) == {"library"}


def test_tune_needs_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from fuser.kernels import backend

    monkeypatch.setattr(backend, "select_backend", lambda device="auto": backend._make("cpu"))
    m = conv_model((1, 8, 8, 8), (8, 8, 3, 3), {"pads": [1, 1, 1, 1]})
    with pytest.raises(InputError, match="--tune needs a GPU"):
        optimize(m, None, device="cpu", tune=True)
    with pytest.raises(InputError, match="--target hip"):
        optimize(m, None, target="onnx", tune=True)


def test_cli_tactic_options(tmp_path: Path) -> None:
    out = tmp_path / "o.onnx"
    p = subprocess.run([sys.executable, "-m", "fuser.cli.main", str(EXAMPLES / "darknet_tiny.onnx"), "-o", str(out),
                        "--allow-tf32", "--device", "cpu", "-q", "--report", str(tmp_path / "r.json")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert all(t in KNOWN or conv.parse_tactic(t) for t in _tactics(onnx.load(out)).values())
    help_text = subprocess.run([sys.executable, "-m", "fuser.cli.main", "fuse", "--help"], capture_output=True,
                               text=True).stdout
    assert "--tune" in help_text and "--allow-tf32" in help_text


def test_runs_on_device_routing() -> None:
    from fuser.device_runtime import runs_on_device

    res = optimize(conv_model((1, 4, 8, 8), (6, 4, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}), None,
                   device="cpu", verify_result=False)
    inits = {t.name: t for t in res.model.graph.initializer}
    node = next(n for n in res.model.graph.node if n.domain == "fuser")
    ft = parse_op_type(node.op_type)
    assert ft.residual and runs_on_device(node, ft, inits)   # R is a runtime input, not a constant
    # a residual that is a constant (an Add of a weight the passes could not fold) is not a runtime input: the
    # node stays in an island rather than run a kernel that would leave R out
    const_r = numpy_helper.from_array(np.zeros((1, 6, 4, 4), np.float32), node.input[3])
    assert not runs_on_device(node, ft, {**inits, node.input[3]: const_r})
    for a in node.attribute:
        if a.name == "tactic":
            a.s = b"library"
    assert not runs_on_device(node, ft, inits)
    m3 = optimize(conv_model((1, 2, 4, 4, 4), (3, 2, 1, 1, 1), {}, residual=False, act="Relu"), None,
                  device="cpu", verify_result=False).model
    n3 = next(n for n in m3.graph.node if n.domain == "fuser")
    assert not runs_on_device(n3, parse_op_type(n3.op_type), {t.name: t for t in m3.graph.initializer})


class _FakeValue:
    """Stands in for an onnxruntime OrtValue on the device (host memory under the emulator)."""

    def __init__(self, arr: np.ndarray) -> None:
        self.arr = np.ascontiguousarray(arr)

    def shape(self) -> list[int]:
        return list(self.arr.shape)

    def data_type(self) -> str:
        return {np.float32: "tensor(float)", np.float16: "tensor(float16)"}[self.arr.dtype.type]

    def data_ptr(self) -> int:
        return self.arr.ctypes.data

    def numpy(self) -> np.ndarray:
        return self.arr


class _FakeOrt:
    class OrtValue:
        @staticmethod
        def ortvalue_from_shape_and_type(shape, dtype, device, index):
            return _FakeValue(np.full(shape, np.nan, dtype=dtype))


@pytest.mark.skipif(emu.compiler() is None, reason="no C++ compiler for the emulator")
@pytest.mark.parametrize("attrs", [{"pads": [1, 1, 1, 1], "strides": [2, 2]}, {"pads": [0, 1, 2, 1]}])
@pytest.mark.parametrize("shortcut", [False, True], ids=["FusedConvAddLeakyRelu", "FusedConvLeakyReluAdd"])
def test_device_kernel_step_with_output_shape(attrs, shortcut) -> None:
    from fuser.device_runtime import DeviceExecutor
    from fuser.runtime import KernelStep, Session

    m = conv_model((2, 4, 9, 8), (6, 4, 3, 3), attrs, seed=4, shortcut=shortcut)
    fused = optimize(m, None, device="cpu", verify_result=False).model
    sess = Session(fused, device="cpu")
    (step,) = [s for s in sess.steps if isinstance(s, KernelStep)]
    assert step.node.op_type == ("FusedConvLeakyReluAdd" if shortcut else "FusedConvAddLeakyRelu")
    ex = object.__new__(DeviceExecutor)
    ex.session, ex.backend, ex.ort, ex.stream, ex.ort_device = sess, emu.EmuBackend(), _FakeOrt, 0, "cuda"
    ex._runners, ex._buffers, ex._consts = {}, {}, {}
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 4, 9, 8)).astype(np.float32)
    y_shape = conv.geometry(x.shape, (6, 4, 3, 3), **attrs).output_shape
    r = rng.standard_normal(y_shape).astype(np.float32)
    values = {"X": _FakeValue(x), "R": _FakeValue(r)}
    ex._run_kernel(step, values)
    got = values[step.node.output[0]].numpy()
    assert got.shape == y_shape
    want = sess.run(None, {"X": x, "R": r})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(emu.compiler() is None, reason="no C++ compiler for the emulator")
@pytest.mark.parametrize("shortcut", [False, True], ids=["FusedConvAddLeakyRelu", "FusedConvLeakyReluAdd"])
def test_tune_times_candidates_and_sets_winners(monkeypatch: pytest.MonkeyPatch, shortcut: bool) -> None:
    """The tuning loop itself, with the CPU emulator standing in for the GPU (timings meaningless)."""
    from fuser import tune
    from fuser.kernels import backend

    be = emu.EmuBackend()
    monkeypatch.setattr(backend, "select_backend", lambda device="auto": be)
    monkeypatch.setattr(tune, "TIMING", {"min_calls": 1, "min_s": 0.0, "warmup": 1, "rounds": 1})
    m = conv_model((1, 8, 6, 6), (8, 8, 3, 3), {"pads": [1, 1, 1, 1]}, shortcut=shortcut)
    fused = optimize(m, None, device="cpu", verify_result=False).model
    infos = tune.tune_tactics(fused, allow_tf32=True, device="cuda")
    (info,) = infos
    assert info.residual and info.residual_after == shortcut
    assert "library" not in info.timings_ms                            # no GPU onnxruntime / torch here
    assert set(info.timings_ms) == {"winograd", "igemm_32x32"}       # mma_* are offered on CUDA only
    assert "Error" not in info.note
    assert info.tactic == min(info.timings_ms, key=info.timings_ms.get)
    assert _tactics(fused) == {info.node.name: info.tactic}
