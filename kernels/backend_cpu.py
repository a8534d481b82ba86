"""CPU backend: runs each family's numpy reference. What CI and machines without a GPU use."""

from __future__ import annotations

import os

from .backend import Backend


class CpuBackend(Backend):
    name = "cpu"
    arch = "numpy"
    is_device = False

    def __init__(self) -> None:
        self.num_sms = os.cpu_count() or 1
