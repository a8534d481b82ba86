"""Attention tactics end to end on the CPU: with --allow-tf32 every fused attention node on fp32 tensors names
``flash_tf32`` (TF32 tensor cores) and the verification tolerance widens (said in the report); without it nothing
changes; fp16 attention never gets it; the device runtime hands the tactic to the kernel (through the CPU
emulator standing in for an NVIDIA GPU, which runs the TF32 kernel's emulated form)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fuser.api import TF32_RTOL, optimize
from fuser.fused import parse_op_type
from fuser.tune import ATTENTION_TF32, assign_attention_tactics

from .kernels import emu
from .passes.builders import fuse
from .passes.test_attention import bert_attention, simple_attention


def _attention_tactics(model: onnx.ModelProto) -> dict[str, str]:
    out = {}
    for n in model.graph.node:
        ft = parse_op_type(n.op_type) if n.domain == "fuser" else None
        if ft is not None and ft.base == "Attention":
            out[n.name] = next(helper.get_attribute_value(a).decode() for a in n.attribute if a.name == "tactic")
    return out


def test_allow_tf32_gives_fp32_attention_the_tf32_tactic() -> None:
    m, feeds = bert_attention()
    res = optimize(m, None, inputs=feeds, device="cpu", allow_tf32=True)
    tactics = _attention_tactics(res.model)
    assert tactics and set(tactics.values()) == {ATTENTION_TF32}
    recs = {f["fused_node"]: f["tactic"] for f in res.report["fusions"]}
    assert {k: recs[k] for k in tactics} == tactics
    assert res.report["options"]["allow_tf32"] is True
    assert res.verification.passed and all(c.rtol == TF32_RTOL for c in res.verification.checks)


def test_without_allow_tf32_nothing_changes() -> None:
    m, feeds = bert_attention()
    res = optimize(m, None, inputs=feeds, device="cpu")
    assert set(_attention_tactics(res.model).values()) == {"auto"}
    assert all(f["tactic"] != ATTENTION_TF32 for f in res.report["fusions"])
    assert res.verification.passed and all(c.rtol != TF32_RTOL for c in res.verification.checks)
    assert assign_attention_tactics(res.model, allow_tf32=False) == {}
    assert set(_attention_tactics(res.model).values()) == {"auto"}


def test_fp16_attention_keeps_its_tactic() -> None:
    m, _ = simple_attention(dtype=np.float16, softmax_cast=True, term="bias")
    model = fuse(m).model
    assert _attention_tactics(model)
    assert assign_attention_tactics(model, allow_tf32=True) == {}
    assert set(_attention_tactics(model).values()) == {"auto"}


def test_unknown_dtype_follows_the_softmax_precision() -> None:
    """A graph that does not type the node's inputs: fp32 when its softmax runs in FLOAT."""
    model = fuse(bert_attention()[0]).model
    node = next(n for n in model.graph.node if n.domain == "fuser")
    typed = {v.name for v in list(model.graph.value_info) + list(model.graph.input)}
    assert node.input[0] in typed
    del model.graph.value_info[:]
    assert assign_attention_tactics(model, allow_tf32=True) == {node.name: ATTENTION_TF32}
    for a in node.attribute:
        if a.name == "softmax_precision":
            a.i = TensorProto.FLOAT16
        if a.name == "tactic":
            a.s = b"auto"
    assert assign_attention_tactics(model, allow_tf32=True) == {}


@pytest.mark.skipif(emu.compiler() is None, reason="no C++ compiler for the emulator")
def test_device_runtime_runs_flash_tf32() -> None:
    """The node's tactic reaches the attention runner of the device runtime, which launches the TF32 kernel."""
    from fuser.device_runtime import DeviceExecutor
    from fuser.runtime import KernelStep, Session

    from .kernels.test_attention_tf32_emu import TF32_TOL, EmuTf32
    from .test_conv_tactics import _FakeOrt, _FakeValue

    m, feeds = simple_attention(term="bias", sq=20, skv=37, d=16)
    model = fuse(m).model
    assert set(assign_attention_tactics(model, allow_tf32=True).values()) == {ATTENTION_TF32}
    sess = Session(model, device="cpu")
    (step,) = [s for s in sess.steps if isinstance(s, KernelStep)]
    assert step.attrs["tactic"] == ATTENTION_TF32
    be = EmuTf32()
    ex = object.__new__(DeviceExecutor)
    ex.session, ex.backend, ex.ort, ex.stream, ex.ort_device = sess, be, _FakeOrt, 0, "cuda"
    ex._runners, ex._buffers, ex._consts = {}, {}, {}
    values = {name: _FakeValue(arr) for name, arr in feeds.items()}
    ex._run_kernel(step, values)
    assert be.launches[-1][0] == "fuser_attn_tf64m1cb_f32"   # [B, 1, 1, S] padding bias: the CB kernel
    got = values[step.node.output[0]].numpy().astype(np.float64)
    want = sess.run(None, feeds)[0].astype(np.float64)
    assert got.shape == want.shape
    assert np.linalg.norm(got - want) / np.linalg.norm(want) <= TF32_TOL
