"""``FusedAttention<Variant>``: scaled-dot-product attention as one fused node (catalogued in :mod:`fuser.fused`).

Inputs are in the multi-head layout, after the head split (the projections and their Reshape/Transpose stay
outside the node, as ONNX's own Attention op defines it)::

    Q [B, H, Sq, D]   K [B, Hkv, Skv, D]   V [B, Hkv, Skv, Dv]      (Hkv = H, or 1, or H / kv groups)

and the node computes, in this order::

    S = (Q * scale) @ Kᵀ                                    (K, V repeated to H heads first when Gqa)
    S = Cast(S, to=softmax_precision)
    [Causal]   S = Where(tril(ones[Sq, Skv]), S, -inf)      (top-left aligned, as Attention-23's is_causal)
    per score term, in the order the model applied them:
      Bias     S = S + bias_i                               (additive float: padding masks as -inf/min, ALiBi,
                                                             relative-position biases; broadcast to [B,H,Sq,Skv])
      Mask     S = Where(mask_i, S, fill_i)                 (boolean, True keeps; fill is a scalar constant)
      WinBias  S = (S viewed as [B/nW, nW, H, Sq, Skv] + winbias_i[1, nW, ·, ·, ·]) viewed back
                                                            (Swin's shifted-window mask: batch b uses b % nW)
    P = Softmax(S, axis=-1)
    [NanZero]  P = Where(IsNaN(P), 0, P)                    (the SDPA decomposition's guard: fully masked rows)
    Y = Cast(P, like V) @ V                                 Y [B, H, Sq, Dv]

The op type spells the variant: ``FusedAttention`` + ``Causal``? + (``Bias`` | ``Mask`` | ``WinBias``)* +
``Gqa``? + ``NanZero``?, e.g. ``FusedAttentionBias`` (BERT), ``FusedAttentionMaskBias`` (GPT-2's causal Where
then the padding mask), ``FusedAttentionBiasWinBias`` (Swin's shifted windows), ``FusedAttentionBiasGqaNanZero``
(LLaMA through the SDPA decomposition).

Formal inputs: ``Q, K, V``, then per term ``bias<i>`` | ``mask<i>, fill<i>`` | ``winbias<i>``, then (before
opset 15 only) ``scale`` — a scalar typed like Q, because a body cannot cast an attribute to Q's type without
CastLike. From opset 15 the scale comes from the ``scale`` attribute (``Constant(value_float=@scale)``,
CastLike Q) and the softmax runs in ``softmax_precision`` (a TensorProto type: FLOAT where the model upcast
its softmax, else Q's own type, which makes both Casts no-ops). Before 15 there are no Casts at all (the pass
fuses only models that compute everything in one type there) and no Gqa/NanZero/Causal variants.

Attributes: ``num_heads``, ``kv_num_heads`` (read from the graph's shapes), ``scale`` (the product of every
scale factor the pattern applied, as a float32), ``softmax_precision``, ``causal`` (1 for the Causal variant),
``mask_kind`` (the terms, ``+``-joined, or ``none``), ``kernel``, ``tactic``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import onnx
from onnx import AttributeProto, TensorProto, helper

ATTRS = ("num_heads", "kv_num_heads", "scale", "softmax_precision", "causal", "mask_kind")
_TYPES = {"num_heads": AttributeProto.INT, "kv_num_heads": AttributeProto.INT, "scale": AttributeProto.FLOAT,
          "softmax_precision": AttributeProto.INT, "causal": AttributeProto.INT, "mask_kind": AttributeProto.STRING}
TERM_TOKENS = {"bias": "Bias", "mask": "Mask", "winbias": "WinBias"}
_NAME = re.compile(r"^(Causal)?((?:WinBias|Bias|Mask)*)(Gqa)?(NanZero)?$")
_TERM = re.compile(r"WinBias|Bias|Mask")
MAX_TERMS = 4
INT64_MAX = 2 ** 63 - 1


def casts_in_body(opset: int) -> bool:
    """CastLike exists from opset 15: below it the body computes in Q's type and takes ``scale`` as an input."""
    return opset >= 15


@dataclass(frozen=True)
class AttentionVariant:
    causal: bool = False
    terms: tuple[str, ...] = ()  # "bias", "mask", "winbias", in the order they apply
    gqa: bool = False
    nan_zero: bool = False

    @property
    def suffix(self) -> str:
        return (("Causal" if self.causal else "") + "".join(TERM_TOKENS[t] for t in self.terms)
                + ("Gqa" if self.gqa else "") + ("NanZero" if self.nan_zero else ""))

    @property
    def mask_kind(self) -> str:
        return "+".join(self.terms) or "none"

    @classmethod
    def parse(cls, suffix: str) -> AttentionVariant | None:
        m = _NAME.match(suffix)
        if m is None:
            return None
        inverse = {v: k for k, v in TERM_TOKENS.items()}
        terms = tuple(inverse[t] for t in _TERM.findall(m.group(2) or ""))
        if len(terms) > MAX_TERMS:
            return None
        return cls(bool(m.group(1)), terms, bool(m.group(3)), bool(m.group(4)))

    def needs_full_body(self) -> bool:
        return self.gqa or self.nan_zero or self.causal


def term_inputs(terms: tuple[str, ...]) -> list[str]:
    names: list[str] = []
    for i, t in enumerate(terms):
        names += [f"mask{i}", f"fill{i}"] if t == "mask" else [f"{t}{i}"]
    return names


def formal_inputs(v: AttentionVariant, opset: int) -> list[str]:
    names = ["Q", "K", "V", *term_inputs(v.terms)]
    if not casts_in_body(opset):
        names.append("scale")
    return names


def _ref(name: str, target: str) -> AttributeProto:
    a = AttributeProto()
    a.name = target
    a.ref_attr_name = name
    a.type = _TYPES[name]
    return a


def _ints(name: str, values: list[int]) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name],
                            value=helper.make_tensor(name, TensorProto.INT64, [len(values)], values))


def _repeat_kv(x: str, y: str) -> list[onnx.NodeProto]:
    """[B, Hkv, S, D] → [B, H, S, D] with H = Q's head count: each kv head repeated H / Hkv times in place
    (query head h reads kv head h // (H / Hkv): HF's repeat_kv and Attention-23's GQA). The counts come
    from the shapes at run time, so symbolic head counts work too."""
    mk = helper.make_node
    return [_ints(f"{y}_axis2", [2]), _ints(f"{y}_s0", [0]), _ints(f"{y}_s1", [1]), _ints(f"{y}_s2", [2]),
            _ints(f"{y}_s4", [4]), _ints(f"{y}_one", [1]),
            mk("Shape", ["Q"], [f"{y}_qshape"]), mk("Shape", [x], [f"{y}_shape"]),
            mk("Slice", [f"{y}_qshape", f"{y}_s1", f"{y}_s2"], [f"{y}_h"]),
            mk("Slice", [f"{y}_shape", f"{y}_s1", f"{y}_s2"], [f"{y}_hkv"]),
            mk("Div", [f"{y}_h", f"{y}_hkv"], [f"{y}_groups"]),
            mk("Unsqueeze", [x, f"{y}_axis2"], [f"{y}_5d"]),
            mk("Concat", [f"{y}_one", f"{y}_one", f"{y}_groups", f"{y}_one", f"{y}_one"], [f"{y}_reps"], axis=0),
            mk("Expand", [f"{y}_5d", f"{y}_reps"], [f"{y}_expanded"]),
            mk("Slice", [f"{y}_shape", f"{y}_s0", f"{y}_s1"], [f"{y}_b"]),
            mk("Slice", [f"{y}_shape", f"{y}_s2", f"{y}_s4"], [f"{y}_sd"]),
            mk("Concat", [f"{y}_b", f"{y}_h", f"{y}_sd"], [f"{y}_target"], axis=0),
            mk("Reshape", [f"{y}_expanded", f"{y}_target"], [y])]


def _causal(s: str, y: str) -> list[onnx.NodeProto]:
    """Where(tril(ones[Sq, Skv]), s, -inf): query i sees keys j <= i (top-left aligned, Attention-23's)."""
    mk = helper.make_node
    ninf = mk("Constant", [], [f"{y}_ninf_f"], value_float=float("-inf"))
    return [_ints(f"{y}_m2", [-2]), _ints(f"{y}_m1", [-1]), _ints(f"{y}_max", [INT64_MAX]),
            mk("Shape", [s], [f"{y}_shape"]),
            mk("Slice", [f"{y}_shape", f"{y}_m2", f"{y}_max"], [f"{y}_dims"]),
            mk("ConstantOfShape", [f"{y}_dims"], [f"{y}_ones"],
               value=helper.make_tensor(f"{y}_one", TensorProto.FLOAT, [1], [1.0])),
            mk("Trilu", [f"{y}_ones"], [f"{y}_tril"], upper=0),
            mk("Cast", [f"{y}_tril"], [f"{y}_keep"], to=TensorProto.BOOL),
            ninf, mk("CastLike", [f"{y}_ninf_f", s], [f"{y}_ninf"]),
            mk("Where", [f"{y}_keep", s, f"{y}_ninf"], [y])]


def _window(s: str, w: str, y: str) -> list[onnx.NodeProto]:
    """s [B, H, Sq, Skv] viewed as [B/nW, nW, H, Sq, Skv], + w [1, nW, ·, ·, ·], viewed back."""
    mk = helper.make_node
    return [_ints(f"{y}_m1", [-1]), _ints(f"{y}_s1", [1]), _ints(f"{y}_s2", [2]), _ints(f"{y}_s4", [4]),
            mk("Shape", [s], [f"{y}_shape"]), mk("Shape", [w], [f"{y}_wshape"]),
            mk("Slice", [f"{y}_wshape", f"{y}_s1", f"{y}_s2"], [f"{y}_nw"]),
            mk("Slice", [f"{y}_shape", f"{y}_s1", f"{y}_s4"], [f"{y}_hqk"]),
            mk("Concat", [f"{y}_m1", f"{y}_nw", f"{y}_hqk"], [f"{y}_target"], axis=0),
            mk("Reshape", [s, f"{y}_target"], [f"{y}_5d"]),
            mk("Add", [f"{y}_5d", w], [f"{y}_sum"]),
            mk("Reshape", [f"{y}_sum", f"{y}_shape"], [y])]


def body(v: AttentionVariant, opset: int) -> list[onnx.NodeProto]:
    """The standard-op nodes computing Y (see the module docstring) at ``opset``."""
    mk = helper.make_node
    full = casts_in_body(opset)
    if v.needs_full_body() and not full:
        raise ValueError(f"FusedAttention{v.suffix} needs opset >= 15 (CastLike), not {opset}")
    nodes: list[onnx.NodeProto] = []
    scale = "scale"
    if full:
        c = mk("Constant", [], ["scale_f"])
        c.attribute.append(_ref("scale", "value_float"))
        nodes += [c, mk("CastLike", ["scale_f", "Q"], ["scale_q"])]
        scale = "scale_q"
    nodes.append(mk("Mul", ["Q", scale], ["q_scaled"]))
    k, val = "K", "V"
    if v.gqa:
        nodes += _repeat_kv("K", "k_rep") + _repeat_kv("V", "v_rep")
        k, val = "k_rep", "v_rep"
    nodes += [mk("Transpose", [k], ["k_t"], perm=[0, 1, 3, 2]), mk("MatMul", ["q_scaled", "k_t"], ["scores"])]
    s = "scores"
    if full:
        cast = mk("Cast", [s], ["scores_sp"])
        cast.attribute.append(_ref("softmax_precision", "to"))
        nodes.append(cast)
        s = "scores_sp"
    if v.causal:
        nodes += _causal(s, "causal_s")
        s = "causal_s"
    for i, t in enumerate(v.terms):
        out = f"s_{i}"
        if t == "mask":
            fill = f"fill{i}"
            if full:
                nodes.append(mk("CastLike", [fill, s], [f"fill{i}_c"]))
                fill = f"fill{i}_c"
            nodes.append(mk("Where", [f"mask{i}", s, fill], [out]))
        else:
            term = f"{t}{i}"
            if full:
                nodes.append(mk("CastLike", [term, s], [f"{term}_c"]))
                term = f"{term}_c"
            nodes += [mk("Add", [s, term], [out])] if t == "bias" else _window(s, term, out)
        s = out
    nodes.append(mk("Softmax", [s], ["probs"], axis=-1))
    p = "probs"
    if v.nan_zero:
        zero = mk("Constant", [], ["zero_f"], value_float=0.0)
        nodes += [zero, mk("CastLike", ["zero_f", p], ["zero"]), mk("IsNaN", [p], ["probs_nan"]),
                  mk("Where", ["probs_nan", "zero", p], ["probs_safe"])]
        p = "probs_safe"
    if full:
        nodes.append(mk("CastLike", [p, "V"], ["probs_v"]))
        p = "probs_v"
    nodes.append(mk("MatMul", [p, val], ["Y"]))
    return nodes


def standard_form(v: AttentionVariant, fills: list[float]) -> bool:
    """Can one ONNX Attention-23 compute this node exactly? Its semantics: scale, top-left is_causal, GQA
    from the 4-D shapes, one attn_mask (float: added; bool: True attends, False = -inf), softmax_precision, and
    fully masked rows give 0. So: at most one term, not windowed; a boolean term only with fill -inf; and a
    term only with the NaN guard (without it, a fully -inf row would be NaN in the original)."""
    if not v.terms:
        return True
    if len(v.terms) > 1 or v.terms[0] == "winbias" or not v.nan_zero:
        return False
    return v.terms[0] == "bias" or (len(fills) == 1 and fills[0] == float("-inf"))


def standard_node(v: AttentionVariant, inputs: list[str], output: str, attrs: dict, name: str) -> onnx.NodeProto:
    """The Attention-23 node for :func:`standard_form` variants (a bool mask term passes its mask alone)."""
    ins = list(inputs[:3])
    if v.terms:
        ins.append(inputs[3])
    kw = {"scale": float(attrs["scale"]), "is_causal": int(bool(v.causal))}
    sp = int(attrs.get("softmax_precision", 0))
    if sp:
        kw["softmax_precision"] = sp
    return helper.make_node("Attention", ins, [output], name=name, **kw)


def standard_attention_nodes(model: onnx.ModelProto, opset: int) -> int:
    """``--target onnx`` at opset >= 23: every fused attention node that one ONNX Attention computes exactly
    (:func:`standard_form`) becomes that node, named ``<fused name>/Attention`` with the fused node's
    provenance; the others keep their call and are inlined as standard ops afterwards. Returns how many."""
    from onnx import numpy_helper

    from .fused import DOMAIN

    if opset < 23:
        return 0
    from .layout_views import value_dims

    inits = {t.name: t for t in model.graph.initializer}
    dims = value_dims(model)
    dims.update({t.name: list(t.dims) for t in model.graph.initializer})
    count = 0
    for n in model.graph.node:
        if n.domain != DOMAIN or not n.op_type.startswith("FusedAttention"):
            continue
        v = AttentionVariant.parse(n.op_type[len("FusedAttention"):])
        if v is None:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        fills: list[float] = []
        pos = 3
        for t in v.terms:
            if t == "mask":
                init = inits.get(n.input[pos + 1])
                fills.append(float(numpy_helper.to_array(init).reshape(-1)[0]) if init is not None else float("nan"))
                pos += 2
            else:
                pos += 1
        if not standard_form(v, fills):
            continue
        if v.terms:  # onnxruntime's Attention does not broadcast the mask over the query axis
            mq, qs = dims.get(n.input[3]), dims.get(n.input[0])
            if not mq or not qs or len(mq) < 2 or mq[-2] is None or mq[-2] != qs[2]:
                continue
        props = {p.key: p.value for p in n.metadata_props if p.key.startswith("fuser.")}
        props["fuser.fused_node"] = n.name
        new = standard_node(v, list(n.input), n.output[0], attrs, f"{n.name}/Attention")
        new.doc_string = f"onnx-fuse {props.get('fuser.pattern', 'attention')}: {n.name} as one standard Attention"
        for k, val in props.items():
            new.metadata_props.add(key=k, value=val)
        n.CopyFrom(new)
        count += 1
    return count
