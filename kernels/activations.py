"""Activation functions shared by every kernel family that has an epilogue.

The names are the ONNX op names the graph passes fuse (plus ``SiLU`` for the x·sigmoid(x) diamond and
``""`` for none). The numpy reference here is what the CPU backend runs and what the GPU kernels are
tested against; ``ACTIVATION_HIP`` is the device-side twin, selected by the integer code in
``ACTIVATION_CODES`` (passed to kernels as an ``int`` argument so one compiled kernel serves them all).
"""

from __future__ import annotations

import numpy as np

ACTIVATIONS: tuple[str, ...] = (
    "", "Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "SiLU",
)
ACTIVATION_CODES: dict[str, int] = {name: code for code, name in enumerate(ACTIVATIONS)}

# Device twin of apply_activation. `a`, `b` carry alpha/beta (LeakyRelu: a=alpha; HardSigmoid: a=alpha,
# b=beta; Clip: a=min, b=max). Branch on a uniform kernel argument: no divergence.
ACTIVATION_HIP = r"""
__device__ __forceinline__ float fuser_activation(float y, int act, float a, float b) {
    switch (act) {
    case 1: return fmaxf(y, 0.0f);                                   // Relu
    case 2: return fmaxf(y, 0.0f) + a * fminf(y, 0.0f);              // LeakyRelu, branchless
    case 3: return fminf(fmaxf(y, a), b);                            // Clip
    case 4: return 1.0f / (1.0f + __expf(-y));                       // Sigmoid
    case 5: return fminf(fmaxf(a * y + b, 0.0f), 1.0f);              // HardSigmoid
    case 6: return y * fminf(fmaxf(y * (1.0f / 6.0f) + 0.5f, 0.0f), 1.0f);  // HardSwish
    case 7: return tanhf(y);                                         // Tanh
    case 8: return y / (1.0f + __expf(-y));                          // SiLU
    default: return y;
    }
}
"""


def activation_params(activation: str, alpha: float = 0.01, beta: float = 0.0,
                      clip_min: float = float("-inf"), clip_max: float = float("inf")) -> tuple[float, float]:
    """The (a, b) pair the device function takes for ``activation``."""
    if activation == "Clip":
        return float(clip_min), float(clip_max)
    return float(alpha), float(beta)


def apply_activation(y: np.ndarray, activation: str, alpha: float = 0.01, beta: float = 0.0,
                     clip_min: float = float("-inf"), clip_max: float = float("inf")) -> np.ndarray:
    """numpy reference of every fusable activation; keeps ``y``'s dtype."""
    if activation not in ACTIVATION_CODES:
        raise ValueError(f"unknown activation {activation!r}")
    dt = y.dtype
    if activation == "":
        return y
    x = y.astype(np.float64)
    if activation == "Relu":
        r = np.maximum(x, 0.0)
    elif activation == "LeakyRelu":
        r = np.where(x >= 0, x, alpha * x)
    elif activation == "Clip":
        r = np.minimum(np.maximum(x, clip_min), clip_max)
    elif activation == "Sigmoid":
        r = 1.0 / (1.0 + np.exp(-x))
    elif activation == "HardSigmoid":
        r = np.clip(alpha * x + beta, 0.0, 1.0)
    elif activation == "HardSwish":
        r = x * np.clip(x / 6.0 + 0.5, 0.0, 1.0)
    elif activation == "Tanh":
        r = np.tanh(x)
    else:  # SiLU
        r = x / (1.0 + np.exp(-x))
    return r.astype(dt)
