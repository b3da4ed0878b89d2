"""``cam``: class activation mapping, for heads GlobalAveragePooling2D → Dense: the last spatial
map weighted by the Dense kernel's columns for the target. Forward-only (LiteRT too)."""

from __future__ import annotations

from typing import Any

import numpy as np

from carvis.errors import CarvisError
from carvis.explain.base import PREDICTION, Explainer
from carvis.explain.facts import ModelFacts
from carvis.explain.graph import SteeringHead, inbound, layer_configs, steering_head

# Layers between the Dense head and the pooling that change no value CAM reads.
_PASS_THROUGH_HEAD = {"Dropout", "Flatten", "GaussianDropout", "GaussianNoise", "AlphaDropout",
                      "Identity", "ActivityRegularization"}


def cam_head(model: Any, head: SteeringHead) -> tuple[str, np.ndarray]:
    """(the layer before GlobalAveragePooling2D, the Dense kernel) of a GAP → Dense head."""
    entries = layer_configs(model)
    path: list[str] = []
    name = head.layer
    dense = None
    for _ in range(len(entries)):
        layer = model.get_layer(name)
        cls = type(layer).__name__
        path.append(f"{cls} ({name!r})")
        feeds = inbound(entries[name])
        if cls == "GlobalAveragePooling2D" and dense is not None:
            if len(feeds) != 1:
                break
            return feeds[0], np.asarray(dense.get_weights()[0], np.float32)
        if cls == "Dense":
            if dense is not None:
                break
            dense = layer
        elif cls in _PASS_THROUGH_HEAD or (cls in ("Activation", "Softmax") and dense is None):
            pass
        else:
            break
        if len(feeds) != 1:
            break
        name = feeds[0]
    ends = " ← ".join(path[:3])
    raise CarvisError(f"cam needs a head GlobalAveragePooling2D → Dense, but model "
                      f"{model.name!r} ends in {ends}; use --mode gradcam, which works on any "
                      "conv layer")


class CAM(Explainer):
    """Class activation mapping: the map before GAP weighted by the Dense columns."""

    mode = "cam"
    uses_target = True

    def __init__(self, model: Any, **kwargs: Any) -> None:
        self.cam_layer, self.kernel = (model.cam_head() if isinstance(model, ModelFacts)
                                       else cam_head(model, steering_head(model)))
        super().__init__(model, **kwargs)
        if self.target.layer is not None:
            raise CarvisError("cam weighs the map by the Dense head; a layer target does not "
                              "apply (use saliency for layer:L)")

    def _resolve_layer(self, layer: str | int | None) -> str | None:
        return None  # CAM uses the layer before global average pooling

    def _output_layers(self) -> tuple[str, ...]:
        return (self.cam_layer,)

    def reduce(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        prediction = np.asarray(outputs[PREDICTION])[0]
        weights = (self.kernel * self.target.coefficients(prediction)).sum(axis=1)
        return (np.asarray(outputs[self.cam_layer])[0] * weights).sum(axis=-1, dtype=np.float32)
