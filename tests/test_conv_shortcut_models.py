"""Darknet-53 and CSPDarknet-53 (timm's architectures) through the whole pipeline: every shortcut Add
(after the LeakyReLU) lands in a ``FusedConvLeakyReluAdd`` and no Add is left standing, verified against
the original in onnxruntime and in the runtime (``fuser.optimize`` verifies by default).

The replicas below have timm's topology layer for layer (stem; five stages of a stride-2 3x3 down conv and
(1, 2, 8, 8, 4) Darknet blocks — 1x1 then 3x3 Conv+BN+LeakyReLU and the shortcut Add; CSP stages add the
1x1 expansion, the channel Split, the 1x1 transitions and the Concat) at a quarter of the width, so the
CPU run stays short; their exports are checked against the op counts of timm's own TorchScript exports.
Where timm imports, the timm models themselves are checked too (full width, 64x64).
"""

from __future__ import annotations

import io
import warnings
from collections import Counter

import onnx
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import fuser  # noqa: E402

DEPTHS = (1, 2, 8, 8, 4)
# fused/left op counts after fuser.optimize (the same for the replicas and timm's models)
EXPECTED = {
    "darknet53": {"fuser::FusedConvLeakyReluAdd": 23, "fuser::FusedConvLeakyRelu": 29, "Add": 0, "Conv": 0,
                  "LeakyRelu": 0, "BatchNormalization": 0},
    "cspdarknet53": {"fuser::FusedConvLeakyReluAdd": 23, "fuser::FusedConvLeakyRelu": 44, "Split": 5, "Concat": 5,
                     "Add": 0, "Conv": 0, "LeakyRelu": 0, "BatchNormalization": 0},
}
# op counts of timm 1.0's TorchScript exports (opset 17) that the replicas must reproduce
TIMM_EXPORT_OPS = {
    "darknet53": {"Conv": 52, "LeakyRelu": 52, "Add": 23, "Split": 0, "Concat": 0},
    "cspdarknet53": {"Conv": 67, "LeakyRelu": 67, "Add": 23, "Split": 5, "Concat": 5},
}


def cba(cin: int, cout: int, k: int, s: int = 1) -> nn.Sequential:
    """timm's ConvNormAct: bias-less Conv, BN, LeakyReLU(0.01)."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.01))


class DarkBlock(nn.Module):
    def __init__(self, c: int, mid: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = cba(c, mid, 1), cba(mid, c, 3)

    def forward(self, x):
        return self.conv2(self.conv1(x)) + x


class DarkStage(nn.Module):
    def __init__(self, cin: int, cout: int, depth: int) -> None:
        super().__init__()
        self.conv_down = cba(cin, cout, 3, 2)
        self.blocks = nn.Sequential(*[DarkBlock(cout, cout // 2) for _ in range(depth)])

    def forward(self, x):
        return self.blocks(self.conv_down(x))


class CrossStage(nn.Module):
    def __init__(self, cin: int, cout: int, depth: int, expand: int, bottle: float) -> None:
        super().__init__()
        self.conv_down = cba(cin, cout, 3, 2)
        self.conv_exp = cba(cout, cout * expand, 1)
        self.half = cout * expand // 2
        self.blocks = nn.Sequential(*[DarkBlock(self.half, int(self.half * bottle)) for _ in range(depth)])
        self.conv_transition_b = cba(self.half, self.half, 1)
        self.conv_transition = cba(2 * self.half, cout, 1)

    def forward(self, x):
        xs, xb = self.conv_exp(self.conv_down(x)).split(self.half, dim=1)
        xb = self.conv_transition_b(self.blocks(xb))
        return self.conv_transition(torch.cat([xs, xb], dim=1))


class Darknet(nn.Module):
    def __init__(self, csp: bool, width: int = 16) -> None:
        super().__init__()
        chs = [width * 2 ** i for i in range(5)]
        self.stem = cba(3, width // 2, 3)
        stages, prev = [], width // 2
        for i, (c, d) in enumerate(zip(chs, DEPTHS, strict=True)):
            stages.append(CrossStage(prev, c, d, 2 if i == 0 else 1, 0.5 if i == 0 else 1.0) if csp
                          else DarkStage(prev, c, d))
            prev = c
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(prev, 10)

    def forward(self, x):
        return self.fc(self.stages(self.stem(x)).mean((2, 3)))


def randomize_bn(m: nn.Module) -> nn.Module:
    """Non-trivial BN statistics (as bench/corpus_cnn.py does), eval mode."""
    torch.manual_seed(0)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


def export(m: nn.Module, res: int = 64) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.randn(1, 3, res, res),), buf, dynamo=False, opset_version=17, input_names=["x"])
    model = onnx.load_from_string(buf.getvalue())
    model.ir_version = min(model.ir_version, 10)  # onnxruntime's ceiling on this machine
    return model


def op_counts(model: onnx.ModelProto) -> Counter:
    return Counter((f"{n.domain}::" if n.domain else "") + n.op_type for n in model.graph.node)


def adds_reading_a_fused_conv(model: onnx.ModelProto) -> list[str]:
    made_by = {o: n for n in model.graph.node for o in n.output}
    return [n.name for n in model.graph.node if n.op_type in ("Add", "Sum") and not n.domain
            and any(made_by.get(i) is not None and made_by[i].op_type.startswith("FusedConv") for i in n.input)]


def check_fused(model: onnx.ModelProto, name: str) -> None:
    res = fuser.optimize(model, None)
    assert res.verification.passed, res.verification.first_failure()
    assert {c.path for c in res.verification.checks} == {"onnxruntime", "runtime:cpu"}
    c = op_counts(res.model)
    assert {k: c.get(k, 0) for k in EXPECTED[name]} == EXPECTED[name], c
    assert adds_reading_a_fused_conv(res.model) == []
    assert res.pass_counts["conv_shortcut"] == 23
    assert Counter(f.pattern for f in res.fusions)["conv_leakyrelu_add"] == 23


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_replica(name: str) -> None:
    model = export(randomize_bn(Darknet(csp=name.startswith("csp"))))
    c = op_counts(model)
    assert {k: c.get(k, 0) for k in TIMM_EXPORT_OPS[name]} == TIMM_EXPORT_OPS[name], c
    check_fused(model, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_timm(name: str) -> None:
    try:
        import timm
    except Exception as e:  # not installed, or its torchvision does not import against this torch build
        pytest.skip(f"timm unavailable: {type(e).__name__}: {str(e)[:80]}")
    model = export(randomize_bn(timm.create_model(name, pretrained=False)))
    c = op_counts(model)
    assert {k: c.get(k, 0) for k in TIMM_EXPORT_OPS[name]} == TIMM_EXPORT_OPS[name], c
    check_fused(model, name)
