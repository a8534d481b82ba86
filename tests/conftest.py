from __future__ import annotations

import os
from pathlib import Path

import onnx
import pytest

ONNX_DATA = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data"
LIGHT = ONNX_DATA / "light"
PYTORCH_CONVERTED = ONNX_DATA / "pytorch-converted"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def examples_dir() -> Path:
    return EXAMPLES
