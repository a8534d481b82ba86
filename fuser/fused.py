"""Fused nodes: ``fuser``-domain nodes backed by model-local ONNX functions (DESIGN §3).

Every fused op type is defined here once: its formal inputs, the attributes it carries (those the
function body references with ``ref_attr_name`` plus those only our kernels read) and a builder of its
body in standard ops at the model's opset. Stock onnxruntime (and Netron) inline the body, so a fused
model runs anywhere; our runtime recognises the op type and launches the bundled kernel instead.

Op types (domain ``fuser``, version 1):

- ``FusedConv[Add]<Act>``  inputs X, W, B [, R] [, clip_min, clip_max]  Conv(+residual Add)+activation
- ``FusedConv<Act>Add``    inputs X, W, B, R [, clip_min, clip_max]  Conv+activation, then the shortcut Add
  (Darknet's order: ``act(conv(x) + b) + R``; ``<Act>`` never empty — without one the orders agree)
- ``FusedBatchNorm<Act>``  inputs X, scale, shift [, clip_min, clip_max]  per-channel affine+activation
- ``FusedLeakyRelu``       input X                                    LeakyRelu as one kernel
- ``FusedGroupNorm<Act>``  inputs X, gamma, beta [, eps, group_shape]  GroupNormalization+activation
- ``FusedAttention<Variant>``  inputs Q, K, V [, per-term bias/mask/fill] [, scale]  scaled-dot-product
  attention (:mod:`fuser.fused_attention` defines the variants and the body)

``<Act>`` is one of the names in :data:`fuser.kernels.activations.ACTIVATIONS` ("" for none). The op
type's name reads in the order the body computes: ``FusedConvAddRelu`` adds R before the Relu (ResNet),
``FusedConvLeakyReluAdd`` after the LeakyRelu (Darknet). No activation name starts or ends with "Add",
so the two never collide.
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
    "num_groups": AttributeProto.INT,
}
# GroupNorm's epilogue takes the (alpha, beta) pair only: Clip's bounds do not reach its kernel.
GROUP_NORM_ACTIVATIONS = ("", "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "SiLU")


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


def group_norm_constants_as_inputs(opset: int) -> bool:
    """Before opset 15 a function body cannot cast back to X's type (no CastLike), so a GroupNorm body
    computes in X's type and takes epsilon (typed like X) and the [0, G, -1] reshape target as inputs."""
    return opset < 15


def _const_ints(name: str, values: list[int]) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name],
                            value=helper.make_tensor(name, onnx.TensorProto.INT64, [len(values)], values))


def _reduce_mean(x: str, y: str, opset: int) -> list[onnx.NodeProto]:
    """ReduceMean over axis 2 of [N, G, M], keepdims: axes an attribute before opset 18, an input from 18."""
    if opset >= 18:
        return [_const_ints(y + "_axes", [2]), helper.make_node("ReduceMean", [x, y + "_axes"], [y], keepdims=1)]
    return [helper.make_node("ReduceMean", [x], [y], axes=[2], keepdims=1)]


def group_norm_body(opset: int, y: str) -> list[onnx.NodeProto]:
    """Standard ops computing ``y = gamma[c] * (x - mean) / sqrt(var + epsilon) + beta[c]`` per (n, group).

    X [N, C, *spatial] (any rank >= 2, symbolic dims welcome) is viewed as [N, C, S] and [N, G, C/G*S]
    through Reshapes with 0/-1 targets, never static sizes; gamma/beta are [C]. From opset 15 the
    statistics and the affine run in float32 (X cast, like GroupNormalization-21's stash_type=1 and like
    our kernel) and the result is CastLike'd back; num_groups and epsilon come from the node's attributes
    through ``Constant(value_int / value_float = @attr)``. Before 15 everything runs in X's type and the
    inputs ``eps`` / ``group_shape`` carry them (see :func:`group_norm_constants_as_inputs`)."""
    mk = helper.make_node
    stash = not group_norm_constants_as_inputs(opset)
    nodes = [_const_ints("flat_target", [0, 0, -1]), _const_ints("column_target", [-1, 1])]
    x, gamma, beta = "X", "gamma", "beta"
    if stash:
        nodes += [mk("Cast", ["X"], ["X_f"], to=onnx.TensorProto.FLOAT),
                  mk("Cast", ["gamma"], ["gamma_f"], to=onnx.TensorProto.FLOAT),
                  mk("Cast", ["beta"], ["beta_f"], to=onnx.TensorProto.FLOAT)]
        x, gamma, beta = "X_f", "gamma_f", "beta_f"
        groups = mk("Constant", [], ["groups"])
        groups.attribute.append(_ref("num_groups", "value_int"))
        eps = mk("Constant", [], ["eps"])
        eps.attribute.append(_ref("epsilon", "value_float"))
        nodes += [groups, eps, _const_ints("one_target", [1]), _const_ints("zero_1", [0]),
                  _const_ints("minus_1", [-1]), mk("Reshape", ["groups", "one_target"], ["groups_1"]),
                  mk("Concat", ["zero_1", "groups_1", "minus_1"], ["group_shape"], axis=0)]
    nodes += [mk("Reshape", [x, "flat_target"], ["x_flat"]),            # [N, C, S]
              mk("Reshape", ["x_flat", "group_shape"], ["x_grouped"])]  # [N, G, C/G*S]
    nodes += _reduce_mean("x_grouped", "mean", opset)
    nodes += [mk("Sub", ["x_grouped", "mean"], ["centered"]), mk("Mul", ["centered", "centered"], ["squared"])]
    nodes += _reduce_mean("squared", "var", opset)
    nodes += [mk("Add", ["var", "eps"], ["var_eps"]), mk("Sqrt", ["var_eps"], ["std"]),
              mk("Div", ["centered", "std"], ["normed"]), mk("Shape", ["x_flat"], ["flat_shape"]),
              mk("Reshape", ["normed", "flat_shape"], ["normed_flat"]),
              mk("Reshape", [gamma, "column_target"], ["gamma_col"]),
              mk("Reshape", [beta, "column_target"], ["beta_col"]),
              mk("Mul", ["normed_flat", "gamma_col"], ["scaled"]), mk("Add", ["scaled", "beta_col"], ["affine"]),
              mk("Shape", ["X"], ["x_shape"])]
    if stash:
        nodes += [mk("Reshape", ["affine", "x_shape"], ["affine_f"]), mk("CastLike", ["affine_f", "X"], [y])]
    else:
        nodes.append(mk("Reshape", ["affine", "x_shape"], [y]))
    return nodes


def group_norm_standard_body(y: str) -> list[onnx.NodeProto]:
    """The same computation as one standard GroupNormalization-21 (per-channel scale/bias, statistics in
    float32): what ``--target onnx`` writes where the model's opset has it."""
    n = helper.make_node("GroupNormalization", ["X", "gamma", "beta"], [y], stash_type=1)
    n.attribute.extend([_ref("num_groups"), _ref("epsilon")])
    return [n]


@dataclass(frozen=True)
class FusedOpType:
    """One fused op type: what it is called, which kernel family runs it, how its body reads."""

    base: str  # "Conv", "BatchNorm", "LeakyRelu", "GroupNorm", "Attention"
    activation: str = ""
    residual: bool = False  # a residual input R (Conv only)
    variant: str = ""  # Attention: the op-type suffix (fuser.fused_attention.AttentionVariant)
    residual_after: bool = False  # R is added after the activation (Darknet's shortcut), not before it

    def __post_init__(self) -> None:
        # act(v) + R and act(v + R) are one thing without an activation: one name for it (residual before)
        if self.residual_after and not (self.base == "Conv" and self.residual and self.activation):
            raise ValueError("residual_after needs a Conv with a residual and an activation")

    @property
    def name(self) -> str:
        if self.base == "LeakyRelu":
            return "FusedLeakyRelu"
        if self.base == "Attention":
            return "FusedAttention" + self.variant
        if self.residual_after:
            return f"Fused{self.base}{self.activation}Add"
        return f"Fused{self.base}{'Add' if self.residual else ''}{self.activation}"

    @property
    def kernel(self) -> str:
        return {"Conv": "conv", "BatchNorm": "batchnorm", "LeakyRelu": "leaky_relu", "GroupNorm": "group_norm",
                "Attention": "attention"}[self.base]

    def attention_variant(self):
        from .fused_attention import AttentionVariant

        return AttentionVariant.parse(self.variant)

    def formal_inputs(self, opset: int) -> list[str]:
        if self.base == "Attention":
            from .fused_attention import formal_inputs

            return formal_inputs(self.attention_variant(), opset)
        ins = {"Conv": ["X", "W", "B"], "BatchNorm": ["X", "scale", "shift"], "LeakyRelu": ["X"],
               "GroupNorm": ["X", "gamma", "beta"]}[self.base]
        if self.base == "GroupNorm" and group_norm_constants_as_inputs(opset):
            ins += ["eps", "group_shape"]
        if self.residual:
            ins.append("R")
        if self.activation == "Clip" and clip_bounds_as_inputs(opset):
            ins += ["clip_min", "clip_max"]
        return ins

    def attributes(self) -> list[str]:
        if self.base == "Attention":
            from .fused_attention import ATTRS

            return list(ATTRS) + list(KERNEL_ATTRS)
        attrs = list(CONV_ATTRS) if self.base == "Conv" else []
        if self.base == "GroupNorm":
            attrs += ["num_groups", "epsilon"]
        attrs += list(ACT_ATTRS) + list(KERNEL_ATTRS)
        if self.base == "BatchNorm":
            attrs.append("epsilon")
        return attrs

    def function(self, opset: int, standard_group_norm: bool = False) -> onnx.FunctionProto:
        """The body at ``opset``. ``standard_group_norm`` (GroupNorm at opset >= 21 only): one
        GroupNormalization-21 instead of its decomposition (``--target onnx``)."""
        nodes: list[onnx.NodeProto] = []
        if self.base == "Attention":
            from .fused_attention import body

            v = self.attention_variant()
            return helper.make_function(
                DOMAIN, self.name, self.formal_inputs(opset), ["Y"], body(v, opset),
                [helper.make_opsetid("", opset)], self.attributes(),
                doc_string=f"onnx-fuse fused op: scaled-dot-product attention (score terms: {v.mask_kind}"
                f"{', causal' if v.causal else ''}{', grouped KV heads' if v.gqa else ''}"
                f"{', NaN rows to 0' if v.nan_zero else ''}); runs on kernel family 'attention'.")
        if self.base == "Conv":
            conv = helper.make_node("Conv", ["X", "W", "B"], ["conv_out"])
            conv.attribute.extend(_ref(a) for a in CONV_ATTRS)
            nodes.append(conv)
            if self.residual and not self.residual_after:
                nodes.append(helper.make_node("Add", ["conv_out", "R"], ["sum_out"]))
        elif self.base == "BatchNorm":
            nodes.append(helper.make_node("Mul", ["X", "scale"], ["scaled"]))
            nodes.append(helper.make_node("Add", ["scaled", "shift"], ["affine_out"]))
        elif self.base == "GroupNorm":
            if standard_group_norm and opset < 21:
                raise ValueError(f"GroupNormalization-21 is not available at opset {opset}")
            nodes += group_norm_standard_body("gn_out") if standard_group_norm else group_norm_body(opset, "gn_out")
        act = "LeakyRelu" if self.base == "LeakyRelu" else self.activation
        if act:
            nodes += activation_body(act, nodes[-1].output[0] if nodes else "X", "Y", opset)
        else:  # no activation: the last op writes Y itself (no Identity left after inlining)
            nodes[-1].output[0] = "Y"
        if self.residual_after:  # the shortcut Add reads the activation's output and writes Y
            for n in nodes:
                n.output[:] = ["act_out" if o == "Y" else o for o in n.output]
            nodes.append(helper.make_node("Add", ["act_out", "R"], ["Y"]))
        what = {"GroupNorm": "GroupNormalization"}.get(self.base, self.base)
        steps = [what] + (["residual Add"] if self.residual and not self.residual_after else [])
        steps += [self.activation] if self.activation else []
        steps += ["shortcut Add"] if self.residual_after else []
        return helper.make_function(
            DOMAIN, self.name, self.formal_inputs(opset), ["Y"], nodes,
            [helper.make_opsetid("", opset)], self.attributes(),
            doc_string=f"onnx-fuse fused op: {' + '.join(steps)}; runs on kernel family '{self.kernel}'.",
        )


def parse_op_type(op_type: str) -> FusedOpType | None:
    """Inverse of :attr:`FusedOpType.name` (None for op types that are not ours)."""
    from fuser.kernels.activations import ACTIVATIONS

    if op_type == "FusedLeakyRelu":
        return FusedOpType("LeakyRelu")
    if op_type.startswith("FusedAttention"):
        from .fused_attention import AttentionVariant

        suffix = op_type[len("FusedAttention"):]
        return FusedOpType("Attention", variant=suffix) if AttentionVariant.parse(suffix) is not None else None
    if op_type.startswith("FusedGroupNorm"):
        act = op_type[len("FusedGroupNorm"):]
        return FusedOpType("GroupNorm", act) if act in GROUP_NORM_ACTIVATIONS else None
    for base in ("Conv", "BatchNorm"):
        prefix = "Fused" + base
        if not op_type.startswith(prefix):
            continue
        rest = op_type[len(prefix):]
        if rest in ACTIVATIONS:
            return FusedOpType(base, rest)
        if base != "Conv":  # only a conv has a residual input
            return None
        if rest.startswith("Add") and rest[3:] in ACTIVATIONS:  # FusedConvAdd<Act>: R before the activation
            return FusedOpType(base, rest[3:], True)
        if rest.endswith("Add") and rest[:-3] in ACTIVATIONS and rest[:-3]:  # FusedConv<Act>Add: R after it
            return FusedOpType(base, rest[:-3], True, residual_after=True)
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


def node_attrs(node: onnx.NodeProto) -> dict:
    """A node's attributes as plain Python values (strings decoded)."""
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out
