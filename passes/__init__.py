"""Graph passes, one per module, in the order they run (DESIGN §4).

Each module has ``NAME`` and ``run(ctx) -> int`` (the number of rewrites) and a docstring that draws
the subgraph it matches, its guards and its rewrite.
"""

from __future__ import annotations

from types import ModuleType

from . import (
    attention,
    attention_terms,
    conv_activation,
    conv_shortcut,
    fold_affine,
    fold_bn,
    group_norm,
    leaky_relu,
    pack_qkv,
    standalone_bn,
)

# normalize is the pipeline's first step (fuser.normalize) and cleanup its last; both listed for --skip.
PASS_ORDER: tuple[ModuleType, ...] = (attention, pack_qkv, attention_terms, group_norm, fold_bn, fold_affine,
                                      conv_activation, conv_shortcut, standalone_bn, leaky_relu)


def pass_names() -> list[str]:
    return ["normalize", *[p.NAME for p in PASS_ORDER]]
