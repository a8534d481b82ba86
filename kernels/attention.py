"""Attention family: scaled-dot-product attention, ``Y = softmax(scale * Q Kᵀ + terms) V``.

Placeholder while the device kernels are written: the numpy reference only (see the module's final form).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NAME = "attention"
SOURCE = ""
VARIANTS: list[str] = []


def _heads(x: np.ndarray, heads: int) -> np.ndarray:
    """[B, Hkv, S, D] → [B, heads, S, D]: kv head g serves query heads g*r .. g*r+r-1 (r = heads / Hkv)."""
    hkv = x.shape[1]
    if hkv == heads or hkv == 1:
        return x
    if heads % hkv:
        raise ValueError(f"{heads} query heads cannot share {hkv} kv heads")
    return np.repeat(x, heads // hkv, axis=1)


def reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None,
              bias: np.ndarray | None = None, scale: float | None = None, causal: bool = False,
              fill: float = float("-inf"), terms: Sequence[tuple] | None = None, nan_zero: bool = False,
              softmax_dtype: np.dtype | None = None) -> np.ndarray:
    """numpy reference in float64, result in q's dtype.

    q [B, H, Sq, D], k [B, Hkv, Skv, D], v [B, Hkv, Skv, Dv] (Hkv divides H; batch 1 broadcasts).
    ``scale`` defaults to 1/sqrt(D). ``causal``: query i attends keys j <= i (top-left aligned).
    Score terms apply in order: ``terms`` is a sequence of ``("bias", t)`` (S += t, broadcast),
    ``("mask", m, fill)`` (S = where(m, S, fill); True keeps) and ``("winbias", w)`` (w [1, nW, ·, ·, ·]:
    batch b adds w[0, b % nW]); without ``terms``, ``bias`` then ``mask`` (with ``fill``) apply.
    ``nan_zero``: NaN probabilities (fully masked rows) become 0. ``softmax_dtype`` only documents the
    model's choice: the reference always computes the softmax in float64.
    """
    del softmax_dtype
    q = np.asarray(q)
    if q.ndim != 4 or np.ndim(k) != 4 or np.ndim(v) != 4:
        raise ValueError(f"attention takes [B, H, S, D] tensors, got {np.shape(q)}, {np.shape(k)}, {np.shape(v)}")
    heads = q.shape[1]
    q64 = q.astype(np.float64)
    k64 = _heads(np.asarray(k).astype(np.float64), heads)
    v64 = _heads(np.asarray(v).astype(np.float64), heads)
    if scale is None:
        scale = 1.0 / np.sqrt(q.shape[-1])
    s = np.matmul(q64 * float(scale), np.swapaxes(k64, -1, -2))
    if causal:
        sq, skv = s.shape[-2:]
        keep = np.arange(skv)[None, :] <= np.arange(sq)[:, None]
        s = np.where(keep, s, -np.inf)
    if terms is None:
        terms = []
        if bias is not None:
            terms.append(("bias", bias))
        if mask is not None:
            terms.append(("mask", mask, fill))
    for t in terms:
        kind = t[0]
        if kind == "bias":
            s = s + np.asarray(t[1]).astype(np.float64)
        elif kind == "mask":
            s = np.where(np.asarray(t[1]).astype(bool), s, float(np.asarray(t[2]).reshape(-1)[0]))
        elif kind == "winbias":
            w = np.asarray(t[1]).astype(np.float64)
            shape = s.shape
            s = (s.reshape((-1, w.shape[1]) + shape[1:]) + w).reshape(shape)
        else:
            raise ValueError(f"unknown score term {kind!r}")
    with np.errstate(invalid="ignore", over="ignore"):
        m = np.max(s, axis=-1, keepdims=True)
        e = np.exp(s - m)
        p = e / np.sum(e, axis=-1, keepdims=True)
    if nan_zero:
        p = np.where(np.isnan(p), 0.0, p)
    return np.matmul(p, v64).astype(q.dtype)


def reference_node(variant, attrs: dict, args: list[np.ndarray | None]) -> np.ndarray:
    """The CPU executor of a ``FusedAttention<Variant>`` node: its inputs in the node's order (Q, K, V, then
    per term ``bias`` | ``mask, fill`` | ``winbias``, then ``scale`` before opset 15) and attributes."""
    q, k, v = args[0], args[1], args[2]
    terms, i = [], 3
    for kind in variant.terms:
        if kind == "mask":
            terms.append(("mask", args[i], args[i + 1]))
            i += 2
        else:
            terms.append((kind, args[i]))
            i += 1
    scale = float(attrs["scale"]) if "scale" in attrs else float(np.asarray(args[i]).reshape(-1)[0])
    return reference(q, k, v, scale=scale, causal=bool(variant.causal), terms=terms, nan_zero=variant.nan_zero)
