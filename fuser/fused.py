"""Fused nodes: ``fuser``-domain nodes backed by model-local ONNX functions (DESIGN §3).

Every fused op type is defined here once: its formal inputs, the attributes it carries (those the
function body references with ``ref_attr_name`` plus those only our kernels read) and a builder of its
body in standard ops at the model's opset. Stock onnxruntime (and Netron) inline the body, so a fused
model runs anywhere; our runtime recognises the op type and launches the bundled kernel instead.

Op types (domain ``fuser``, version 1):

- ``FusedConv[Add]<Act>``  inputs X, W, B [, R] [, clip_min, clip_max]  Conv(+residual Add)+activation
- ``FusedBatchNorm<Act>``  inputs X, scale, shift [, clip_min, clip_max]  per-channel affine+activation
- ``FusedLeakyRelu``       input X                                    LeakyRelu as one kernel

``<Act>`` is one of the names in :data:`fuser.kernels.activations.ACTIVATIONS` ("" for none).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx
from onnx import AttributeProto, helper

DOMAIN = "fuser"
DOMAIN_VERSION = 1

CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")
ACT_ATTRS = ("activation", "alpha", "beta", "clip_min", "clip_max")
KERNEL_ATTRS = ("kernel", "tactic")

_ATTR_TYPES = {
    "auto_pad": AttributeProto.STRING, "dilations": AttributeProto.INTS, "group": AttributeProto.INT,
    "kernel_shape": AttributeProto.INTS, "pads": AttributeProto.INTS, "strides": AttributeProto.INTS,
    "activation": AttributeProto.STRING, "alpha": AttributeProto.FLOAT, "beta": AttributeProto.FLOAT,
    "clip_min": AttributeProto.FLOAT, "clip_max": AttributeProto.FLOAT,
    "kernel": AttributeProto.STRING, "tactic": AttributeProto.STRING, "epsilon": AttributeProto.FLOAT,
}


def _ref(name: str, target: str | None = None) -> AttributeProto:
    a = AttributeProto()
    a.name = target or name
    a.ref_attr_name = name
    a.type = _ATTR_TYPES[name]
    return a


def clip_bounds_as_inputs(opset: int) -> bool:
    """Clip takes min/max as inputs from opset 11 on, as attributes before."""
    return opset >= 11


def activation_body(activation: str, x: str, y: str, opset: int) -> list[onnx.NodeProto]:
    """Standard-op nodes computing ``y = activation(x)``; parameters come from the call's attributes
    (and, for Clip at opset >= 11, from the formal inputs ``clip_min`` / ``clip_max``)."""
    if activation == "":
        return [helper.make_node("Identity", [x], [y])]
    if activation in ("Relu", "Sigmoid", "Tanh", "HardSwish"):
        return [helper.make_node(activation, [x], [y])]
    if activation == "LeakyRelu":
        n = helper.make_node("LeakyRelu", [x], [y])
        n.attribute.append(_ref("alpha"))
        return [n]
    if activation == "HardSigmoid":
        n = helper.make_node("HardSigmoid", [x], [y])
        n.attribute.extend([_ref("alpha"), _ref("beta")])
        return [n]
    if activation == "Clip":
        if clip_bounds_as_inputs(opset):
            return [helper.make_node("Clip", [x, "clip_min", "clip_max"], [y])]
        n = helper.make_node("Clip", [x], [y])
        n.attribute.extend([_ref("clip_min", "min"), _ref("clip_max", "max")])
        return [n]
    if activation == "SiLU":
        return [helper.make_node("Sigmoid", [x], [y + "_sig"]), helper.make_node("Mul", [x, y + "_sig"], [y])]
    raise ValueError(f"no body for activation {activation!r}")


@dataclass(frozen=True)
class FusedOpType:
    """One fused op type: what it is called, which kernel family runs it, how its body reads."""

    base: str  # "Conv", "BatchNorm", "LeakyRelu"
    activation: str = ""
    residual: bool = False

    @property
    def name(self) -> str:
        if self.base == "LeakyRelu":
            return "FusedLeakyRelu"
        return f"Fused{self.base}{'Add' if self.residual else ''}{self.activation}"

    @property
    def kernel(self) -> str:
        return {"Conv": "conv", "BatchNorm": "batchnorm", "LeakyRelu": "leaky_relu"}[self.base]

    def formal_inputs(self, opset: int) -> list[str]:
        ins = {"Conv": ["X", "W", "B"], "BatchNorm": ["X", "scale", "shift"], "LeakyRelu": ["X"]}[self.base]
        if self.residual:
            ins.append("R")
        if self.activation == "Clip" and clip_bounds_as_inputs(opset):
            ins += ["clip_min", "clip_max"]
        return ins

    def attributes(self) -> list[str]:
        attrs = list(CONV_ATTRS) if self.base == "Conv" else []
        attrs += list(ACT_ATTRS) + list(KERNEL_ATTRS)
        if self.base == "BatchNorm":
            attrs.append("epsilon")
        return attrs

    def function(self, opset: int) -> onnx.FunctionProto:
        nodes: list[onnx.NodeProto] = []
        if self.base == "Conv":
            conv = helper.make_node("Conv", ["X", "W", "B"], ["conv_out"])
            conv.attribute.extend(_ref(a) for a in CONV_ATTRS)
            nodes.append(conv)
            if self.residual:
                nodes.append(helper.make_node("Add", ["conv_out", "R"], ["sum_out"]))
        elif self.base == "BatchNorm":
            nodes.append(helper.make_node("Mul", ["X", "scale"], ["scaled"]))
            nodes.append(helper.make_node("Add", ["scaled", "shift"], ["affine_out"]))
        act = "LeakyRelu" if self.base == "LeakyRelu" else self.activation
        if act:
            nodes += activation_body(act, nodes[-1].output[0] if nodes else "X", "Y", opset)
        else:  # no activation: the last op writes Y itself (no Identity left after inlining)
            nodes[-1].output[0] = "Y"
        return helper.make_function(
            DOMAIN, self.name, self.formal_inputs(opset), ["Y"], nodes,
            [helper.make_opsetid("", opset)], self.attributes(),
            doc_string=f"onnx-fuse fused op: {self.base}{' + residual Add' if self.residual else ''}"
            f"{' + ' + self.activation if self.activation else ''}; runs on kernel family '{self.kernel}'.",
        )


def parse_op_type(op_type: str) -> FusedOpType | None:
    """Inverse of :attr:`FusedOpType.name` (None for op types that are not ours)."""
    from fuser.kernels.activations import ACTIVATIONS

    if op_type == "FusedLeakyRelu":
        return FusedOpType("LeakyRelu")
    for base in ("Conv", "BatchNorm"):
        prefix = "Fused" + base
        if not op_type.startswith(prefix):
            continue
        rest = op_type[len(prefix):]
        residual = rest.startswith("Add") and rest[3:] in ACTIVATIONS
        act = rest[3:] if residual else rest
        if act in ACTIVATIONS:
            return FusedOpType(base, act, residual)
    return None


@dataclass
class FusionRecord:
    """What one rewrite did, for the report, the node's provenance and the visual diff."""

    pattern: str
    source_nodes: list[str]
    fused_node: str
    op_type: str
    kernel: str
    tactic: str = ""
    detail: dict = field(default_factory=dict)

    def doc_line(self) -> str:
        return f"onnx-fuse {self.pattern}: fused {', '.join(self.source_nodes)} into {self.op_type}" + (
            f" (kernel {self.kernel})" if self.kernel else "")
