"""Every kernel family, by name. A family is a module of ``fuser.kernels`` exposing ``NAME``, ``SOURCE``
(HIP-dialect device code without the prelude; ``""`` means reference-only for now), ``VARIANTS``
(entry-point names) and ``reference(...)``."""

from __future__ import annotations

import importlib
from types import ModuleType

# Order is the order `onnx-fuse kernels list` prints.
FAMILY_NAMES: tuple[str, ...] = ("conv", "conv_mma", "conv_wgmma", "conv_depthwise", "conv_winograd", "batchnorm",
                                  "leaky_relu", "group_norm", "attention", "linear")


def get_family(name: str) -> ModuleType:
    if name not in FAMILY_NAMES:
        raise KeyError(f"unknown kernel family {name!r}; known: {', '.join(FAMILY_NAMES)}")
    return importlib.import_module(f"{__package__}.{name}")


def families() -> list[ModuleType]:
    """The importable families. A family whose module does not exist yet is left out (conv lands in a
    separate change); any other import error propagates."""
    out = []
    for name in FAMILY_NAMES:
        try:
            out.append(get_family(name))
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.{name}":
                raise
    return out


def has_device_code(family: ModuleType) -> bool:
    return bool(getattr(family, "SOURCE", ""))
