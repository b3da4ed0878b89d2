"""Running a model: the TensorFlow and LiteRT backends, the .tflite format, the cache.

Nothing here decides which backend runs: that policy is :class:`carvis.session.ModelSession`'s.
"""

from __future__ import annotations

import importlib.util
from typing import Protocol

import numpy as np

BACKENDS = ("auto", "tensorflow", "litert")
LITERT_HELP = "install it with: pip install ai-edge-litert"


class Backend(Protocol):
    """Runs the model cut at one layer: (1, H, W, C) float32 → (h, w, c) float32."""

    name: str
    layer_name: str
    input_shape: tuple[int, int, int]
    output_shape: tuple[int, ...]

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


def installed(module: str) -> bool:
    """True if a module can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def litert_available() -> bool:
    """True if ai-edge-litert is installed."""
    return installed("ai_edge_litert")


def tensorflow_available() -> bool:
    """True if TensorFlow is installed."""
    return installed("tensorflow")
