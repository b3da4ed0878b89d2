"""Running a model: the TensorFlow and LiteRT backends, the .tflite format, the cache.

Nothing here decides which backend runs: that policy is :class:`carvis.session.ModelSession`'s.
"""

from __future__ import annotations

import importlib.util
from typing import Protocol

import numpy as np

BACKENDS = ("auto", "tensorflow", "litert")
#: LiteRT's Interpreter, from the first of these installed: (module, pip name).
RUNTIMES = (("ai_edge_litert.interpreter", "ai-edge-litert"),
            ("tflite_runtime.interpreter", "tflite-runtime"),
            ("tensorflow", "tensorflow"))
LITERT_HELP = ("install one: pip install ai-edge-litert (or tflite-runtime, as on a DonkeyCar "
               "Pi; TensorFlow's tf.lite works too)")


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


def litert_runtime() -> str | None:
    """The pip name of the LiteRT runtime carvis would use (None if there is none), found
    without importing it: ai-edge-litert, else tflite-runtime, else tensorflow (tf.lite)."""
    for module, package in RUNTIMES:
        if installed(module.split(".")[0]):
            return package
    return None


def litert_available() -> bool:
    """True if a LiteRT runtime is installed (ai-edge-litert, tflite-runtime or TensorFlow)."""
    return litert_runtime() is not None


def tensorflow_available() -> bool:
    """True if TensorFlow is installed."""
    return installed("tensorflow")
