"""``gradcam``: ReLU(sum_c mean_ij(d score / d A_c) * A_c) on a spatial layer A (by default the
last conv layer); ``guided-gradcam``: guided backprop x Grad-CAM bilinearly resized to the input.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from carvis import models
from carvis.errors import CarvisError
from carvis.explain.base import Explainer
from carvis.explain.facts import ModelFacts
from carvis.explain.saliency import saliency_map


def gradcam_map(activation: np.ndarray, grads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ReLU(sum_c w_c A_c), w) with w_c the spatial mean of the gradients; A is (h, w, c)."""
    weights = grads.mean(axis=(0, 1), dtype=np.float64).astype(np.float32)
    cam = (activation * weights).sum(axis=-1, dtype=np.float32)  # elementwise: no BLAS pool
    return np.maximum(cam, 0.0), weights


def last_conv(model: Any) -> str:
    """The name of the model's last spatial conv layer (a Keras model, or its facts)."""
    rows = model.rows if isinstance(model, ModelFacts) else models.layer_table(model)
    convs = [info.name for info in rows if info.is_conv and info.is_spatial]
    if not convs:
        raise CarvisError(f"model {model.name!r} has no conv layer; pass --layer L")
    return convs[-1]


class GradCAM(Explainer):
    """Grad-CAM on a spatial layer for a target callable."""

    mode = "gradcam"
    wrt = ("layer",)
    uses_target = True

    def _output_layers(self) -> tuple[str, ...]:
        if self.layer is None:
            self.layer = last_conv(self.model)
        return super()._output_layers()

    def reduce(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        grads = self.target.modify(np.asarray(outputs["@grad:layer"])[0])
        cam, weights = gradcam_map(np.asarray(outputs[self.layer])[0], grads)
        outputs["@weights"] = weights
        return cam


class GuidedGradCAM(GradCAM):
    """Guided backpropagation times Grad-CAM (bilinearly resized to the input)."""

    mode = "guided-gradcam"
    wrt = ("layer", "input")
    guided = True

    def reduce(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        cam = super().reduce(outputs)
        h, w = self.input_shape[:2]
        up = cv2.resize(cam, (w, h), interpolation=cv2.INTER_LINEAR)
        guided = saliency_map(self.target.modify(np.asarray(outputs["@grad:input"])))
        return guided * up
