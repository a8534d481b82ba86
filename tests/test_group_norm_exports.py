"""GroupNorm models exported from PyTorch by both exporters: TorchScript (opset 17), dynamo (opset 18,
and 21 where the exporter writes GroupNormalization-21 itself).

The full ResNet-50 layout with GroupNorm(32, C) (53 of them) and small replicas of the other places
GroupNorm lives in: a ResNet bottleneck, BiT's pre-activation bottleneck (GroupNorm+ReLU before timm's
weight-standardized Convs), two GroupNorms of one tensor (which dynamo's CSE merges), a diffusion UNet
ResBlock (GroupNorm+SiLU, eps 1e-6), wav2vec2's feature encoder (Conv1d → GroupNorm with groups ==
channels → GELU), GroupNorm without affine on a 5-D input, fp16; and, when ``transformers`` is
installed, a tiny Wav2Vec2Model built from a config (no download). The judge: every nn.GroupNorm is
exactly one fused node, nothing of it is left behind, and the model verifies against the original in
onnxruntime; with ``--target onnx`` the output has no ``fuser`` domain and, at opset 21, one
GroupNormalization per GroupNorm.
"""

from __future__ import annotations

import io
import warnings
from collections import Counter

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import fuser  # noqa: E402

LEFTOVERS = ("InstanceNormalization", "GroupNormalization")


class StdConv2d(nn.Conv2d):
    """BiT's weight-standardized Conv as timm writes it (batch_norm in training mode over the weight): the
    standardization is in the exported graph, on constants."""

    def forward(self, x):
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True, momentum=0.0,
                         eps=1e-8).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class ResNetGN(nn.Module):
    """A ResNet-50 bottleneck with GroupNorm(32 groups → 4 here) instead of BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.GroupNorm(4, 16), nn.ReLU())
        self.c1 = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.GroupNorm(4, 8), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, bias=False), nn.GroupNorm(4, 8), nn.ReLU())
        self.c3 = nn.Sequential(nn.Conv2d(8, 32, 1, bias=False), nn.GroupNorm(8, 32))
        self.down = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.GroupNorm(8, 32))

    def forward(self, x):
        x = self.stem(x)
        return torch.relu(self.c3(self.c2(self.c1(x))) + self.down(x))


class Bottleneck(nn.Module):
    """torchvision's ResNet-50 Bottleneck (stride on the 3x3) with norm_layer = GroupNorm(32, C)."""

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * 4
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.GroupNorm(32, width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.GroupNorm(32, width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.GroupNorm(32, cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.GroupNorm(32, cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet50GN(nn.Module):
    """The full ResNet-50 layout (3, 4, 6, 3 bottlenecks) with GroupNorm(32, C): 53 GroupNorms."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.GroupNorm(32, 64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], 64
        for width, n, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for i in range(n):
                blocks.append(Bottleneck(cin, width, stride if i == 0 else 1))
                cin = width * 4
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(2048, 10)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1))


class GroupNormAct(nn.GroupNorm):
    def forward(self, x):
        return torch.relu(super().forward(x))


class BiTish(nn.Module):
    """timm's ResNetV2 (BiT): a PreActBottleneck (norm1 → downsample and conv1; GroupNorm+ReLU before each
    weight-standardized Conv), then the final norm."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = StdConv2d(3, 32, 3, 2, 1, bias=False)
        self.norm1 = GroupNormAct(8, 32)
        self.downsample = StdConv2d(32, 64, 1, bias=False)
        self.conv1 = StdConv2d(32, 16, 1, bias=False)
        self.norm2 = GroupNormAct(8, 16)
        self.conv2 = StdConv2d(16, 16, 3, 1, 1, bias=False)
        self.norm3 = GroupNormAct(8, 16)
        self.conv3 = StdConv2d(16, 64, 1, bias=False)
        self.norm = GroupNormAct(32, 64)

    def forward(self, x):
        x = self.stem(x)
        x_preact = self.norm1(x)
        shortcut = self.downsample(x_preact)
        x = self.conv3(self.norm3(self.conv2(self.norm2(self.conv1(x_preact)))))
        return self.norm(x + shortcut)


class SharedInput(nn.Module):
    """Two GroupNorms of one tensor with the same groups and eps: dynamo's CSE merges their normalisation."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, 1, 1)
        self.a = nn.GroupNorm(4, 16)
        self.b = nn.GroupNorm(4, 16)

    def forward(self, x):
        x = self.conv(x)
        return torch.relu(self.a(x)), self.b(x)


class UNetish(nn.Module):
    """A diffusion UNet ResBlock: GroupNorm+SiLU → Conv, twice, with a 1x1 skip; diffusers' eps 1e-6."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(4, 32, 3, 1, 1)
        self.norm1 = nn.GroupNorm(8, 32, eps=1e-6)
        self.conv1 = nn.Conv2d(32, 48, 3, 1, 1)
        self.norm2 = nn.GroupNorm(8, 48, eps=1e-6)
        self.conv2 = nn.Conv2d(48, 48, 3, 1, 1)
        self.skip = nn.Conv2d(32, 48, 1)
        self.norm_out = nn.GroupNorm(16, 48, eps=1e-6)
        self.conv_out = nn.Conv2d(48, 4, 3, 1, 1)

    def forward(self, x):
        h0 = self.conv_in(x)
        h = self.conv1(F.silu(self.norm1(h0)))
        h = self.conv2(F.silu(self.norm2(h))) + self.skip(h0)
        return self.conv_out(F.silu(self.norm_out(h)))


class Wav2Vec2ish(nn.Module):
    """wav2vec2's feature encoder: Conv1d → GroupNorm(C, C) → GELU → Conv1d → GELU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv1d(1, 32, 10, 5, bias=False)
        self.norm0 = nn.GroupNorm(32, 32)
        self.conv1 = nn.Conv1d(32, 32, 3, 2, bias=False)

    def forward(self, x):
        x = F.gelu(self.norm0(self.conv0(x.unsqueeze(1))))
        return F.gelu(self.conv1(x)).transpose(1, 2)


class Volumetric(nn.Module):
    """Conv3d → GroupNorm without affine → LeakyReLU; GroupNorm(1) (one group) → Sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 8, 3, 1, 1)
        self.norm = nn.GroupNorm(2, 8, affine=False)
        self.conv2 = nn.Conv3d(8, 8, 1)
        self.norm2 = nn.GroupNorm(1, 8)

    def forward(self, x):
        return torch.sigmoid(self.norm2(self.conv2(F.leaky_relu(self.norm(self.conv(x)), 0.2))))


MODELS = {"resnet_gn": (ResNetGN, (2, 3, 32, 32)), "resnet50_gn": (ResNet50GN, (1, 3, 32, 32)),
          "bit": (BiTish, (2, 3, 32, 32)), "unet": (UNetish, (2, 4, 16, 16)), "wav2vec2": (Wav2Vec2ish, (2, 1600)),
          "volumetric": (Volumetric, (2, 2, 6, 8, 8)), "shared_input": (SharedInput, (2, 3, 16, 16))}
EXPORTERS = {"torchscript17": (False, 17), "dynamo18": (True, 18), "dynamo21": (True, 21)}


def randomize_norms(module: nn.Module) -> int:
    """Non-trivial γ/β (identities would hide a wrong channel order); returns the GroupNorm count."""
    torch.manual_seed(0)
    count = 0
    for m in module.modules():
        if isinstance(m, nn.GroupNorm):
            count += 1
            if m.affine:
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.5, 0.5)
    return count


def export(module: nn.Module, shape: tuple[int, ...], dynamo: bool, opset: int,
           dtype=torch.float32) -> onnx.ModelProto:
    module = module.eval().to(dtype)
    x = torch.randn(*shape, dtype=dtype)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            model = torch.onnx.export(module, (x,), dynamo=True, opset_version=opset, verbose=False).model_proto
        else:  # symbolic batch and spatial dims: they must survive the fusion
            axes = {0: "batch", **{i: f"d{i}" for i in range(2, len(shape))}} if len(shape) > 2 else {0: "batch"}
            torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=opset, input_names=["x"],
                              dynamic_axes={"x": axes})
            model = onnx.load_from_string(buf.getvalue())
    if model.ir_version > 10:
        model.ir_version = 10  # onnxruntime's ceiling on this machine; the graph is unchanged
    return model


def fused_group_norms(model: onnx.ModelProto) -> int:
    return sum(1 for n in model.graph.node if n.domain == "fuser" and n.op_type.startswith("FusedGroupNorm"))


def check_fused(model: onnx.ModelProto, n_gn: int, shapes: dict | None = None) -> fuser.OptimizeResult:
    res = fuser.optimize(model, None, shapes=shapes)
    assert res.verification.passed, res.verification.first_failure()
    ops = Counter(n.op_type for n in res.model.graph.node)
    assert fused_group_norms(res.model) == n_gn, ops
    assert not any(ops.get(k) for k in LEFTOVERS), ops
    assert [o.name for o in res.model.graph.output] == [o.name for o in model.graph.output]
    assert [o.type for o in res.model.graph.output] == [o.type for o in model.graph.output]  # symbolic dims kept
    return res


def check_target_onnx(model: onnx.ModelProto, n_gn: int, opset: int, shapes: dict | None = None) -> None:
    res = fuser.optimize(model, None, target="onnx", shapes=shapes)
    assert res.verification.passed, res.verification.first_failure()
    assert all(n.domain in ("", "ai.onnx") for n in res.model.graph.node) and not res.model.functions
    gn = sum(1 for n in res.model.graph.node if n.op_type == "GroupNormalization")
    assert gn == (n_gn if opset >= 21 else 0)


def rel_l2s(res) -> list[float]:
    return [c.rel_l2 for c in res.verification.checks]


@pytest.mark.slow
@pytest.mark.parametrize("exporter", sorted(EXPORTERS))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_group_norm_export(name: str, exporter: str) -> None:
    cls, shape = MODELS[name]
    module = cls()
    n_gn = randomize_norms(module)
    dynamo, opset = EXPORTERS[exporter]
    try:
        model = export(module, shape, dynamo, opset)
    except Exception as e:  # an exporter that cannot handle the module here is not our failure
        pytest.skip(f"exporter failed: {type(e).__name__}: {str(e)[:100]}")
    shapes = {model.graph.input[0].name: list(shape)}
    res = check_fused(model, n_gn, shapes)
    assert max(rel_l2s(res)) < 1e-5
    check_target_onnx(model, n_gn, opset, shapes)


@pytest.mark.slow
@pytest.mark.parametrize("exporter", sorted(EXPORTERS))
def test_group_norm_export_fp16(exporter: str) -> None:
    module = UNetish()
    n_gn = randomize_norms(module)
    dynamo, opset = EXPORTERS[exporter]
    try:
        model = export(module, (1, 4, 16, 16), dynamo, opset, dtype=torch.float16)
    except Exception as e:
        pytest.skip(f"exporter failed on fp16: {type(e).__name__}: {str(e)[:100]}")
    res = check_fused(model, n_gn, {model.graph.input[0].name: [1, 4, 16, 16]})
    assert max(rel_l2s(res)) < 1e-2
    f = next(n for n in res.model.graph.node if n.op_type.startswith("FusedGroupNorm"))
    gamma = next(t for t in res.model.graph.initializer if t.name == f.input[1])
    assert gamma.data_type == onnx.TensorProto.FLOAT16


@pytest.mark.slow
@pytest.mark.parametrize("opset", [18, 21])
@pytest.mark.parametrize("name", ["unet", "wav2vec2", "resnet_gn"])
def test_dynamo_dynamic_shapes(name: str, opset: int) -> None:
    """dynamo with a symbolic batch and symbolic spatial/time dims: still one fused node per GroupNorm."""
    cls, shape = MODELS[name]
    module = cls().eval()
    n_gn = randomize_norms(module)
    dims = {0: torch.export.Dim("batch", min=1, max=64), **{i: torch.export.Dim.AUTO for i in range(2, len(shape))}}
    if len(shape) == 2:
        dims[1] = torch.export.Dim.AUTO
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = torch.onnx.export(module, (torch.randn(*shape),), dynamo=True, opset_version=opset,
                                      dynamic_shapes=(dims,), verbose=False).model_proto
    except Exception as e:
        pytest.skip(f"exporter failed: {type(e).__name__}: {str(e)[:100]}")
    model.ir_version = min(model.ir_version, 10)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the batch is symbolic
    check_fused(model, n_gn, {model.graph.input[0].name: list(shape)})


@pytest.mark.slow
def test_symbolic_dims_run_at_other_sizes() -> None:
    """The fused model of a dynamic-axes export runs at sizes other than the verification's."""
    import onnxruntime as ort

    module = UNetish()
    randomize_norms(module)
    model = export(module, (2, 4, 16, 16), False, 17)
    res = check_fused(model, 3)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    a = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(res.model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    for shape in ((1, 4, 8, 24), (3, 4, 20, 12)):
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        ra, rb = a.run(None, {"x": x})[0], b.run(None, {"x": x})[0]
        assert np.linalg.norm(ra - rb) / np.linalg.norm(ra) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("exporter", sorted(EXPORTERS))
def test_transformers_wav2vec2(exporter: str) -> None:
    """A tiny Wav2Vec2Model (feature encoder with GroupNorm, projection, transformer encoder) built from a
    config: no weights are downloaded."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(32, 32, 32),
        conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3), feat_extract_norm="group", num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4)
    torch.manual_seed(0)
    model_hf = transformers.Wav2Vec2Model(cfg).eval()

    class LastHidden(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model_hf

        def forward(self, x):
            return self.m(x).last_hidden_state

    module = LastHidden()
    n_gn = randomize_norms(module)
    assert n_gn == 1
    dynamo, opset = EXPORTERS[exporter]
    try:
        model = export(module, (2, 1600), dynamo, opset)
    except Exception as e:
        pytest.skip(f"exporter failed: {type(e).__name__}: {str(e)[:100]}")
    shapes = {model.graph.input[0].name: [2, 1600]}
    res = check_fused(model, n_gn, shapes)
    assert max(rel_l2s(res)) < 1e-5
