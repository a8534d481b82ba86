"""Real models: the onnx package's light model zoo and pytorch-converted node tests, and examples/.

Exact counts of what must be folded/fused, plus numerical verification (onnxruntime with function
bodies and our runtime) — through the public API, as a user runs it.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import numpy_helper, version_converter

import fuser
from fuser.runtime import Session
from fuser.verify import check_output, ort_run

from .conftest import EXAMPLES, LIGHT, PYTORCH_CONVERTED

ACTIVATIONS = {"Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh"}


def counts(model: onnx.ModelProto) -> Counter:
    return Counter((f"{n.domain}::" if n.domain else "") + n.op_type for n in model.graph.node)


def unfused_conv_activation_pairs(model: onnx.ModelProto) -> int:
    users: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    return sum(1 for n in model.graph.node if n.op_type == "Conv" and n.domain == ""
               and any(u.op_type in ACTIVATIONS for u in users.get(n.output[0], [])))


# (model, expected fused/left op counts)
LIGHT_EXPECTED = {
    "resnet50": {"fuser::FusedConvRelu": 33, "fuser::FusedConvAddRelu": 16, "Conv": 4},
    "densenet121": {"fuser::FusedConvRelu": 59, "fuser::FusedBatchNormRelu": 62, "Conv": 62},
    "inception_v2": {"fuser::FusedConvRelu": 69, "Conv": 0},
    "shufflenet": {"fuser::FusedConvRelu": 17, "fuser::FusedConvAddRelu": 13, "Conv": 19},
    "squeezenet": {"fuser::FusedConvRelu": 26, "Conv": 0},
    "bvlc_alexnet": {"fuser::FusedConvRelu": 5, "Conv": 0},
    "inception_v1": {"fuser::FusedConvRelu": 57, "Conv": 0},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LIGHT_EXPECTED))
def test_light_zoo(name: str, tmp_path) -> None:
    src = LIGHT / f"light_{name}.onnx"
    before = src.read_bytes()
    out = tmp_path / "fused.onnx"
    res = fuser.optimize(src, out)
    assert res.verification is not None and res.verification.passed
    paths = {c.path for c in res.verification.checks}
    assert paths == {"onnxruntime", "runtime:cpu"}
    model = onnx.load(out)
    c = counts(model)
    for op, n in LIGHT_EXPECTED[name].items():
        assert c.get(op, 0) == n, (op, c)
    assert c.get("BatchNormalization", 0) == 0
    assert unfused_conv_activation_pairs(model) == 0
    assert model.ir_version == onnx.load(src).ir_version
    onnx.checker.check_model(model)
    assert src.read_bytes() == before  # input untouched


@pytest.mark.slow
def test_light_vgg19_without_verification(tmp_path) -> None:
    # 548 MB of folded weights: the pass itself, no verification (that is covered on smaller models)
    res = fuser.optimize(LIGHT / "light_vgg19.onnx", None, verify_result=False)
    c = counts(res.model)
    assert c["fuser::FusedConvRelu"] == 16 and c.get("Conv", 0) == 0


def _pytorch_case(name: str) -> tuple[onnx.ModelProto, dict, list[np.ndarray]]:
    d = PYTORCH_CONVERTED / name
    # these node tests are stamped opset 6, which onnxruntime (and so onnx-fuse) refuses: upgrade them
    # the way the error message tells a user to
    model = version_converter.convert_version(onnx.load(d / "model.onnx"), 9)
    ds = d / "test_data_set_0"
    inits = {t.name for t in model.graph.initializer}
    real = [i.name for i in model.graph.input if i.name not in inits]
    feeds = {}
    for i, nm in enumerate(real):
        t = onnx.TensorProto()
        t.ParseFromString((ds / f"input_{i}.pb").read_bytes())
        feeds[nm] = numpy_helper.to_array(t)
    outs = []
    for f in sorted(ds.glob("output_*.pb")):
        t = onnx.TensorProto()
        t.ParseFromString(f.read_bytes())
        outs.append(numpy_helper.to_array(t))
    return model, feeds, outs


PYTORCH_EXPECTED = {
    "test_BatchNorm1d_3d_input_eval": {"fuser::FusedBatchNorm": 1},
    "test_BatchNorm2d_eval": {"fuser::FusedBatchNorm": 1},
    "test_BatchNorm2d_momentum_eval": {"fuser::FusedBatchNorm": 1},
    "test_BatchNorm3d_eval": {"fuser::FusedBatchNorm": 1},
    "test_BatchNorm3d_momentum_eval": {"fuser::FusedBatchNorm": 1},
    "test_LeakyReLU": {"fuser::FusedLeakyRelu": 1},
    "test_LeakyReLU_with_negval": {"fuser::FusedLeakyRelu": 1},
    "test_Conv2d_groups": {"Conv": 1},
    "test_Conv2d_depthwise": {"Conv": 1},
    "test_Conv2d_depthwise_with_multiplier": {"Conv": 1},
    "test_Conv3d_groups": {"Conv": 1},
    "test_ConvTranspose2d": {"ConvTranspose": 1},
    "test_ConvTranspose2d_no_bias": {"ConvTranspose": 1},
}


@pytest.mark.parametrize("name", sorted(PYTORCH_EXPECTED))
def test_pytorch_converted(name: str) -> None:
    model, feeds, expected = _pytorch_case(name)
    res = fuser.optimize(model, None, inputs=feeds)
    assert res.verification.passed
    c = counts(res.model)
    for op, n in PYTORCH_EXPECTED[name].items():
        assert c.get(op, 0) == n, c
    got = ort_run(res.model, feeds)
    run = Session(res.model).run(None, feeds)
    for ref, a, b in zip(expected, got.values(), run, strict=True):
        assert check_output("y", "ort", ref, a, 1e-5, 1e-6).passed
        assert check_output("y", "runtime", ref, b, 1e-5, 1e-6).passed


@pytest.mark.parametrize("example,expected", [
    ("darknet_tiny", {"fuser::FusedConvLeakyRelu": 6, "fuser::FusedConvLeakyReluAdd": 3, "Add": 0,
                      "BatchNormalization": 0, "LeakyRelu": 0, "Conv": 0}),
    ("resnet_block", {"fuser::FusedConvRelu": 3, "fuser::FusedConvAddRelu": 2,
                      "fuser::FusedBatchNormRelu": 1, "BatchNormalization": 0, "Conv": 2}),
])
def test_examples(example: str, expected: dict, tmp_path) -> None:
    out = tmp_path / "f.onnx"
    res = fuser.optimize(EXAMPLES / f"{example}.onnx", out)
    assert res.verification.passed
    worst = max(c.rel_l2 for c in res.verification.checks)
    assert 0 < worst <= 1e-5  # folding changes rounding a little, never more
    c = counts(onnx.load(out))
    for op, n in expected.items():
        assert c.get(op, 0) == n, c


def test_examples_are_reproducible(tmp_path) -> None:
    """The committed example models are exactly what examples/make_examples.py builds."""
    import runpy

    runpy.run_path(str(EXAMPLES / "make_examples.py"), run_name="not_main")["main"](str(tmp_path))
    for name in ("darknet_tiny", "resnet_block"):
        assert (tmp_path / f"{name}.onnx").read_bytes() == (EXAMPLES / f"{name}.onnx").read_bytes()
