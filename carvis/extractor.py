"""Frame → model input → activation map of one layer, through a backend built once.

A backend takes the preprocessed input, shape (1, H, W, C) float32, and returns the chosen
layer's raw float activation, shape (h, w, c). Normalisation and colour are overlay's job.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from carvis.errors import CarvisError
from carvis.profile import Profile

INTERPOLATION_FLAGS = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}


class Preprocessor:
    """Crop → resize → k×k mean → colour order → scale/offset, into a reused float32 buffer."""

    def __init__(self, profile: Profile, input_size: tuple[int, int], channels: int = 3) -> None:
        self.profile = profile
        self.input_size = input_size  # (width, height)
        self.channels = channels
        self.interpolation = INTERPOLATION_FLAGS[profile.interpolation]
        k = profile.smooth
        self.kernel = np.ones((k, k), np.float32) / (k * k) if k > 1 else None
        w, h = input_size
        self.batch = np.empty((1, h, w, channels), np.float32)
        self._small = np.empty((h, w, 3), np.uint8)
        self._smooth = np.empty((h, w, 3), np.uint8)
        self._rgb = np.empty((h, w, 3), np.uint8)
        self._crop_for: tuple[int, int] | None = None
        self._crop_px: tuple[int, int, int, int] = (0, 0, 0, 0)

    def crop_box(self, frame: np.ndarray) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) of the ROI for this frame size (cached per size)."""
        h, w = frame.shape[:2]
        if self._crop_for != (h, w):
            crop = self.profile.crop
            self._crop_px = crop.pixels(h, w) if crop is not None else (0, h, 0, w)
            self._crop_for = (h, w)
        return self._crop_px

    def roi(self, frame: np.ndarray) -> np.ndarray:
        """The region of interest of a frame (a view, no copy)."""
        t, b, lft, r = self.crop_box(frame)
        return frame[t:b, lft:r]

    def __call__(self, roi: np.ndarray) -> np.ndarray:
        """Model input for an ROI, shape (1, H, W, C) float32; the returned array is reused."""
        small = cv2.resize(roi, self.input_size, dst=self._small,
                           interpolation=self.interpolation)
        if self.kernel is not None:
            # The seed's cv2.filter2D mean filter, kept in uint8 as it was.
            small = cv2.filter2D(small, -1, self.kernel, dst=self._smooth)
        if self.profile.color == "rgb":
            small = cv2.cvtColor(small, cv2.COLOR_BGR2RGB, dst=self._rgb)
        if self.channels == 1:
            gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
            np.multiply(gray, np.float32(self.profile.scale), out=self.batch[0, :, :, 0])
        else:
            np.multiply(small, np.float32(self.profile.scale), out=self.batch[0])
        if self.profile.offset:
            np.add(self.batch, np.float32(self.profile.offset), out=self.batch)
        return self.batch


class Backend(Protocol):
    """Runs the truncated model: (1, H, W, C) float32 → (h, w, c) float32."""

    name: str
    layer_name: str
    input_shape: tuple[int, int, int]
    output_shape: tuple[int, ...]

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


class TensorFlowBackend:
    """The model truncated at one layer, run through one tf.function with a fixed signature."""

    name = "tensorflow"

    def __init__(self, model: Any, layer: Any) -> None:
        import tensorflow as tf

        from carvis import models

        self.model = model
        self.layer = layer
        self.layer_name = layer.name
        self.truncated = models.truncated_model(model, layer)
        shape = tuple(int(d) for d in self.truncated.inputs[0].shape[1:])
        self.input_shape = shape
        self.output_shape = tuple(int(d) for d in self.truncated.outputs[0].shape[1:])
        truncated = self.truncated

        @tf.function(input_signature=[tf.TensorSpec((1,) + shape, tf.float32)],
                     reduce_retracing=True)
        def run(x):
            return truncated(x, training=False)

        self._run = run

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self._run(batch).numpy()[0]


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


class ModelSession:
    """One loaded model and the backends for its layers, built once per layer and kept."""

    def __init__(self, path: str | Path, backend: str = "tensorflow",
                 lambda_policy: str = "error") -> None:
        self.path = Path(path)
        self.backend_name = backend
        if backend not in ("auto", "tensorflow"):
            raise CarvisError(f"backend {backend!r} is not available; use tensorflow")
        _quiet_tensorflow()
        from carvis import models

        self.model = models.load_model(self.path, lambda_policy=lambda_policy)
        self._backends: dict[str, Backend] = {}

    def input_shape(self) -> tuple[int, int, int]:
        """The model's input (H, W, C)."""
        return tuple(int(d) for d in self.model.inputs[0].shape[1:])

    def conv_layers(self) -> list[str]:
        """Names of the model's spatial conv layers, in order (for 'next layer' keys)."""
        from carvis import models

        return [info.name for info in models.layer_table(self.model)
                if info.is_conv and info.is_spatial]

    def backend(self, layer_spec: str | int) -> Backend:
        """The backend for a layer spec (name, index or conv:N), built on first use."""
        from carvis import models

        layer = models.resolve_layer(self.model, layer_spec)
        if layer.name not in self._backends:
            self._backends[layer.name] = TensorFlowBackend(self.model, layer)
        return self._backends[layer.name]
