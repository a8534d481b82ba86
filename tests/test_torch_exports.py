"""Models exported from PyTorch by both exporters (TorchScript at opset 17, dynamo at opset 18).

The architectures are small replicas of the blocks real CNNs are made of (ResNet, MobileNetV2/V3,
EfficientNet, Darknet/CSP, DenseNet, LeViT, a decoder with ConvTranspose) so that every pattern the
exporters emit — bias-less Convs whose bias the dynamo exporter computes with a node, ReLU6 as Clip,
Hardswish, SiLU, Linear+BatchNorm1d — meets the passes. The judge: no BatchNormalization left at top
level, no Conv→activation pair left unfused, verified against the original in onnxruntime.
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

from .test_real_models import unfused_conv_activation_pairs  # noqa: E402


def cba(cin: int, cout: int, k: int = 3, s: int = 1, g: int = 1, act: nn.Module | None = None) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(cout),
                         act if act is not None else nn.ReLU())


class ResNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = cba(3, 16, 3, 2)
        self.a = cba(16, 16)
        self.b = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16))
        self.relu = nn.ReLU()
        self.down = nn.Sequential(nn.Conv2d(16, 32, 1, 2, bias=False), nn.BatchNorm2d(32))
        self.c = cba(16, 32, 3, 2)

    def forward(self, x):
        x = self.stem(x)
        x = self.relu(self.b(self.a(x)) + x)
        return self.c(x) + self.down(x)


class MobileNetish(nn.Module):
    """Inverted residuals with ReLU6, Hardswish, SiLU and a squeeze-excite with Hardsigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cba(3, 16, 3, 2, act=nn.Hardswish())
        self.expand = cba(16, 48, 1, act=nn.ReLU6())
        self.dw = cba(48, 48, 3, 1, g=48, act=nn.SiLU())
        self.se_reduce = nn.Conv2d(48, 12, 1)
        self.se_expand = nn.Conv2d(12, 48, 1)
        self.project = nn.Sequential(nn.Conv2d(48, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.head = cba(16, 32, 1, act=nn.Tanh())
        self.gate = cba(32, 32, 1, act=nn.Sigmoid())

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(self.expand(x))
        s = torch.nn.functional.adaptive_avg_pool2d(y, 1)
        s = nn.functional.hardsigmoid(self.se_expand(torch.relu(self.se_reduce(s))))
        x = self.project(y * s) + x
        return self.gate(self.head(x))


class Darknetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        act = nn.LeakyReLU(0.1)
        self.stem = cba(3, 16, 3, 1, act=act)
        self.down = cba(16, 32, 3, 2, act=act)
        self.r1 = cba(32, 16, 1, act=act)
        self.r2 = cba(16, 32, 3, act=act)
        self.split = cba(32, 16, 1, act=nn.Mish())  # CSP uses Mish: not fusable, must stay correct

    def forward(self, x):
        x = self.down(self.stem(x))
        x = x + self.r2(self.r1(x))
        return torch.cat([self.split(x), x], 1)


class DenseNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv0 = cba(3, 16, 3, 2)
        self.norm1 = nn.BatchNorm2d(16)
        self.conv1 = nn.Conv2d(16, 16, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 8, 3, padding=1, bias=False)

    def forward(self, x):
        x = self.conv0(x)
        y = self.conv1(torch.relu(self.norm1(x)))
        x = torch.cat([x, y], 1)
        return self.conv2(torch.relu(self.norm2(x)))


class LeViTish(nn.Module):
    """Linear + BatchNorm1d over the flattened tokens, as LeViT does."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = cba(3, 32, 4, 4, act=nn.Hardswish())
        self.lin = nn.Linear(32, 64, bias=False)
        self.bn = nn.BatchNorm1d(64)
        self.lin2 = nn.Linear(64, 10)
        self.bn2 = nn.BatchNorm1d(10)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)  # [B, T, C]
        x = self.bn(self.lin(x).flatten(0, 1)).reshape(x.shape[0], x.shape[1], 64)
        return self.bn2(self.lin2(x.mean(1)))


class Decoderish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = cba(3, 16, 3, 2)
        self.up = nn.ConvTranspose2d(16, 8, 2, 2, groups=2, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.out = cba(8, 4, 3, act=nn.ReLU6())

    def forward(self, x):
        return self.out(torch.relu(self.bn(self.up(self.enc(x)))))


MODELS = {m.__name__: m for m in (ResNetish, MobileNetish, Darknetish, DenseNetish, LeViTish, Decoderish)}


def export(module: nn.Module, dynamo: bool) -> onnx.ModelProto:
    torch.manual_seed(0)
    for m in module.modules():  # non-trivial BN statistics, or folding would be tested on identities
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    module.eval()
    x = torch.randn(2, 3, 32, 32)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            prog = torch.onnx.export(module, (x,), dynamo=True, opset_version=18, verbose=False)
            prog.save(buf) if hasattr(prog, "save") else None
            model = prog.model_proto
        else:
            torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=17, input_names=["x"],
                              dynamic_axes={"x": {0: "batch"}})
            model = onnx.load_from_string(buf.getvalue())
    if model.ir_version > 10:
        model.ir_version = 10  # onnxruntime's ceiling on this machine; the graph is unchanged
    return model


@pytest.mark.slow
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_torch_export(name: str, dynamo: bool) -> None:
    try:
        model = export(MODELS[name](), dynamo)
    except Exception as e:  # an exporter that cannot handle the module here is not our failure
        pytest.skip(f"exporter failed: {type(e).__name__}: {str(e)[:100]}")
    res = fuser.optimize(model, None)
    assert res.verification.passed, res.verification.first_failure()
    c = Counter(n.op_type for n in res.model.graph.node)
    assert c.get("BatchNormalization", 0) == 0, c
    assert unfused_conv_activation_pairs(res.model) == 0, c
    assert res.model.ir_version == model.ir_version
    assert [i.name for i in res.model.graph.input] == [i.name for i in model.graph.input
                                                       if i.name not in {t.name for t in model.graph.initializer}]
