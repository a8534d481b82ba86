"""Convolution family: fused Conv + bias (+ residual Add) + activation.

This module holds the numpy reference (what the CPU backend runs and what every GPU conv tactic is
tested against). It implements ONNX Conv exactly: N-D (1-D/2-D/3-D), groups and depthwise, strides,
explicit pads or ``auto_pad``, dilations; accumulation in float64, output in the input's dtype.
"""

from __future__ import annotations

import numpy as np

from .activations import apply_activation

NAME = "conv"
SOURCE = ""  # reference-only until the conv kernels land (implicit GEMM, Winograd, tensor cores)
VARIANTS: list[str] = []


def conv_pads(in_spatial: tuple[int, ...], kernel: tuple[int, ...], strides: tuple[int, ...],
              dilations: tuple[int, ...], pads: tuple[int, ...] | None, auto_pad: str) -> list[int]:
    """Explicit [begin..., end...] pads for any ``auto_pad`` mode (ONNX Conv semantics)."""
    nd = len(kernel)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for i in range(nd):
            out = -(-in_spatial[i] // strides[i])
            eff = (kernel[i] - 1) * dilations[i] + 1
            total = max(0, (out - 1) * strides[i] + eff - in_spatial[i])
            small, big = total // 2, total - total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else big)
            end.append(big if auto_pad == "SAME_UPPER" else small)
        return begin + end
    if auto_pad == "VALID" or not pads:
        return [0] * (2 * nd)
    return list(pads)


def conv_reference(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, *, group: int = 1,
                   strides=None, pads=None, dilations=None, auto_pad: str = "NOTSET",
                   kernel_shape=None) -> np.ndarray:
    nd = w.ndim - 2
    kernel = tuple(int(k) for k in (kernel_shape or w.shape[2:]))
    strides = tuple(int(s) for s in (strides or (1,) * nd))
    dilations = tuple(int(d) for d in (dilations or (1,) * nd))
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    p = conv_pads(x.shape[2:], kernel, strides, dilations, pads, auto_pad)
    x64 = np.pad(x.astype(np.float64), [(0, 0), (0, 0)] + [(p[i], p[i + nd]) for i in range(nd)])
    eff = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True))
    win = np.lib.stride_tricks.sliding_window_view(x64, eff, axis=tuple(range(2, 2 + nd)))
    win = win[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)
              + tuple(slice(None, None, d) for d in dilations)]
    n, c = x.shape[:2]
    out_sp = win.shape[2:2 + nd]
    m = w.shape[0]
    cg, mg = c // group, m // group
    ksize = int(np.prod(kernel))
    # [N, C, O..., K...] → [G, N·O, Cg·K]
    cols = np.moveaxis(win, 1, 1 + nd).reshape(n, *out_sp, group, cg * ksize)
    cols = np.moveaxis(cols, -2, 0).reshape(group, -1, cg * ksize)
    wg = w.astype(np.float64).reshape(group, mg, cg * ksize)
    y = np.matmul(cols, np.swapaxes(wg, 1, 2))  # [G, N·O, Mg]
    y = y.reshape(group, n, *out_sp, mg)
    y = np.moveaxis(y, 0, -2).reshape(n, *out_sp, m)
    y = np.moveaxis(y, -1, 1)
    if b is not None:
        y = y + b.astype(np.float64).reshape((1, m) + (1,) * nd)
    return y


def reference(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, residual: np.ndarray | None = None,
              activation: str = "", alpha: float = 0.01, beta: float = 0.0,
              clip_min: float = float("-inf"), clip_max: float = float("inf"), **conv_attrs) -> np.ndarray:
    """Fused Conv(+bias)(+residual)+activation; ``conv_attrs`` are ONNX Conv attributes."""
    y = conv_reference(x, w, b, **conv_attrs)
    if residual is not None:
        y = y + residual.astype(np.float64)
    y = apply_activation(y, activation, alpha, beta, clip_min, clip_max)
    return y.astype(x.dtype)
