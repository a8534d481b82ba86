"""Build the small real-architecture models shipped in examples/ (deterministic: rerun → same bytes).

- darknet_tiny.onnx: a Darknet-53-style stem and two residual stages — Conv+BN+LeakyReLU(0.1) blocks,
  1x1 then 3x3, and Darknet's shortcut Add after the activation.
- resnet_block.onnx: a ResNet basic stage — Conv+BN+ReLU, Conv+BN, residual Add, ReLU, a downsampling
  projection shortcut, and a DenseNet-style pre-activation BN+ReLU before a 1x1 Conv.

Weights are seeded random (He-scaled) and BN statistics non-trivial, so verification is meaningful.
Usage: python examples/make_examples.py [OUTDIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
IR_VERSION = 8


class Builder:
    def __init__(self, name: str, seed: int) -> None:
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def _id(self, kind: str) -> str:
        self.count += 1
        return f"{kind}{self.count}"

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, bias: bool = False) -> str:
        n = self._id("conv")
        w = self.rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))
        ins = [x, self.const(f"{n}.weight", w)]
        if bias:
            ins.append(self.const(f"{n}.bias", self.rng.standard_normal(cout) * 0.1))
        self.nodes.append(helper.make_node("Conv", ins, [n], name=n, kernel_shape=[k, k], strides=[stride] * 2,
                                           pads=[k // 2] * 4))
        return n

    def bn(self, x: str, c: int) -> str:
        n = self._id("bn")
        r = self.rng
        params = [self.const(f"{n}.{p}", v) for p, v in (
            ("weight", 1.0 + 0.2 * r.standard_normal(c)), ("bias", 0.1 * r.standard_normal(c)),
            ("running_mean", 0.1 * r.standard_normal(c)), ("running_var", 0.5 + r.random(c)))]
        self.nodes.append(helper.make_node("BatchNormalization", [x, *params], [n], name=n, epsilon=1e-5))
        return n

    def op(self, op: str, inputs: list[str], **attrs) -> str:
        n = self._id(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [n], name=n, **attrs))
        return n

    def model(self, x_shape: list, out: str, out_shape: list) -> onnx.ModelProto:
        g = helper.make_graph(
            self.nodes, self.name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, x_shape)],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)], self.inits)
        self.nodes.append(helper.make_node("Identity", [out], ["output"], name="output_identity"))
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name="onnx-fuse examples", doc_string=f"{self.name}: example model")
        m.graph.node.extend(self.nodes[len(m.graph.node):])
        onnx.checker.check_model(m, full_check=True)
        return m


def darknet_tiny() -> onnx.ModelProto:
    b = Builder("darknet_tiny", seed=53)

    def cbl(x: str, cin: int, cout: int, k: int, stride: int = 1) -> str:
        return b.op("LeakyRelu", [b.bn(b.conv(x, cin, cout, k, stride), cout)], alpha=0.1)

    x = cbl("input", 3, 16, 3)
    x = cbl(x, 16, 32, 3, 2)
    for _ in range(2):  # residual stage: 1x1 squeeze, 3x3 expand, shortcut Add after the activation
        y = cbl(cbl(x, 32, 16, 1), 16, 32, 3)
        x = b.op("Add", [x, y])
    x = cbl(x, 32, 64, 3, 2)
    y = cbl(cbl(x, 64, 32, 1), 32, 64, 3)
    x = b.op("Add", [x, y])
    x = b.op("GlobalAveragePool", [x])
    return b.model(["N", 3, 64, 64], x, ["N", 64, 1, 1])


def resnet_block() -> onnx.ModelProto:
    b = Builder("resnet_block", seed=50)
    x = b.op("Relu", [b.bn(b.conv("input", 3, 32, 3), 32)])
    for cin, cout, stride in ((32, 32, 1), (32, 64, 2)):
        y = b.op("Relu", [b.bn(b.conv(x, cin, cout, 3, stride), cout)])
        y = b.bn(b.conv(y, cout, cout, 3), cout)
        short = x if stride == 1 and cin == cout else b.bn(b.conv(x, cin, cout, 1, stride), cout)
        x = b.op("Relu", [b.op("Add", [y, short])])
    # DenseNet-style transition: pre-activation BN + ReLU, then a 1x1 Conv with bias
    x = b.conv(b.op("Relu", [b.bn(x, 64)]), 64, 32, 1, bias=True)
    x = b.op("GlobalAveragePool", [x])
    return b.model(["N", 3, 56, 56], x, ["N", 32, 1, 1])


def main(outdir: str | None = None) -> None:
    out = Path(outdir) if outdir else Path(__file__).parent
    for build in (darknet_tiny, resnet_block):
        m = build()
        path = out / f"{m.graph.name}.onnx"
        path.write_bytes(m.SerializeToString(deterministic=True))
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB, {len(m.graph.node)} nodes)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
