"""Targets: what "score" is, as small callables on the steering output (pytorch-grad-cam's
``ClassifierOutputTarget``, tf-keras-vis' ``Score``): pulls left, pulls right, holds course.

Bin order assumption for a softmax of steering bins: bin 0 is hard left, the last bin hard
right (Axionaut, DonkeyCar categorical).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from carvis import models, settings
from carvis.errors import CarvisError
from carvis.explain.facts import ModelFacts
from carvis.explain.graph import SteeringHead

# keras-vis' small_values gradient modifier: |1 / (g + K.epsilon())|, epsilon = 1e-7.
SMALL_VALUES_EPS = 1e-7


class Target:
    """A score per batch item computed from the steering output (tf-keras-vis `Score` style)."""

    name = "target"
    layer: str | None = None  # set for targets on a layer's activation instead of the output

    def __call__(self, prediction: Any) -> Any:
        """(B, units) steering output tensor → (B,) scores, in TensorFlow ops."""
        raise NotImplementedError

    def coefficients(self, prediction: np.ndarray) -> np.ndarray:
        """The score as a linear combination of the outputs (for CAM's Dense columns)."""
        raise CarvisError(f"target {self.name!r} is not a combination of the steering outputs; "
                          "use it with saliency or guided")

    def modify(self, grads: np.ndarray) -> np.ndarray:
        """Gradient modifier applied before the map is formed (identity here)."""
        return grads


def first_output(prediction: Any) -> Any:
    """(B, units) → (B,) the first unit, without a slice: a slice's gradient (StridedSliceGrad)
    is not among TFLite's built-in ops, a reshape's and a product's are (the value is the
    same)."""
    import tensorflow as tf

    units = int(prediction.shape[-1])
    if units == 1:
        return tf.reshape(prediction, (-1,))
    return tf.reduce_sum(prediction * tf.one_hot(0, units, dtype=prediction.dtype), axis=1)


class BinsTarget(Target):
    """The sum of some steering bins of the output (probabilities for a softmax head)."""

    def __init__(self, name: str, bins: Sequence[int]) -> None:
        self.name = name
        self.bins = tuple(int(b) for b in bins)

    def __call__(self, prediction: Any) -> Any:
        import tensorflow as tf

        return tf.reduce_sum(tf.gather(prediction, list(self.bins), axis=1), axis=1)

    def coefficients(self, prediction: np.ndarray) -> np.ndarray:
        out = np.zeros(np.asarray(prediction).shape[-1], np.float32)
        out[list(self.bins)] = 1.0
        return out


class PredictedBin(Target):
    """The bin the model predicts (argmax): pytorch-grad-cam's default category."""

    name = "predicted"

    def __call__(self, prediction: Any) -> Any:
        import tensorflow as tf

        return tf.reduce_max(prediction, axis=1)

    def coefficients(self, prediction: np.ndarray) -> np.ndarray:
        p = np.asarray(prediction, np.float32).reshape(-1)
        out = np.zeros_like(p)
        out[int(np.argmax(p))] = 1.0
        return out


class SteerTarget(Target):
    """A regression output times a sign: left = -y, right = +y; predicted = |y|."""

    def __init__(self, name: str, sign: float | None) -> None:
        self.name = name
        self.sign = sign  # None: the sign of the current prediction (|y|)

    def __call__(self, prediction: Any) -> Any:
        import tensorflow as tf

        y = first_output(prediction)
        return tf.abs(y) if self.sign is None else self.sign * y

    def coefficients(self, prediction: np.ndarray) -> np.ndarray:
        y = float(np.asarray(prediction).reshape(-1)[0])
        sign = self.sign if self.sign is not None else (1.0 if y >= 0 else -1.0)
        return np.array([sign], np.float32)


class CourseTarget(SteerTarget):
    """Regression 'holds course': score y, gradients through keras-vis' small_values
    modifier |1 / (g + 1e-7)|, which lights up what the prediction is least sensitive to."""

    def __init__(self) -> None:
        super().__init__("course", None)

    def __call__(self, prediction: Any) -> Any:
        return first_output(prediction)

    def modify(self, grads: np.ndarray) -> np.ndarray:
        return np.abs(1.0 / (grads + np.float32(SMALL_VALUES_EPS)))


class LayerTarget(Target):
    """The mean activation of a layer (keras-vis' saliency per layer)."""

    def __init__(self, layer: str) -> None:
        self.name = f"layer:{layer}"
        self.layer = layer

    def __call__(self, activation: Any) -> Any:
        import tensorflow as tf

        return tf.reduce_mean(tf.reshape(activation, (tf.shape(activation)[0], -1)), axis=1)


def side_bins(units: int) -> dict[str, tuple[int, ...]]:
    """Bins of each side for n steering bins, bin 0 = hard left: left, straight, right."""
    half = units // 2
    left = tuple(range(half))
    right = tuple(range(units - half, units))
    straight = (half,) if units % 2 else (half - 1, half)
    return {"left": left, "straight": straight, "right": right}


def parse_target(spec: Any) -> str:
    """A target spec, checked for shape only (the one checker: carvis.settings)."""
    return settings.check("target", spec)


def make_target(spec: str | Target | None, head: SteeringHead, model: Any = None,
                layer: str | None = None) -> Target:
    """A target callable for a spec and a steering head (callables pass through)."""
    if isinstance(spec, Target):
        return spec
    text = parse_target(spec)
    if text == "layer" or text.startswith("layer:"):
        chosen = text[6:] if text.startswith("layer:") else layer
        if chosen is None:
            raise CarvisError("target 'layer' needs a layer; pass --layer L or target layer:L")
        if isinstance(model, ModelFacts):
            chosen = model.resolve(chosen)
        elif model is not None:
            chosen = models.resolve_layer(model, chosen).name
        return LayerTarget(chosen)
    if head.kind == "bins":
        if text == "course" or text == "predicted":
            return PredictedBin()
        if text.startswith("bin:"):
            k = int(text[4:])
            if k >= head.units:
                raise CarvisError(f"target {text!r} is out of range: {head.describe()} has bins "
                                  f"0..{head.units - 1} (bin 0 = hard left)")
            return BinsTarget(text, (k,))
        return BinsTarget(text, side_bins(head.units)[text])
    if text in ("straight",) or text.startswith("bin:"):
        raise CarvisError(f"target {text!r} needs steering bins, but the model has "
                          f"{head.describe()}; use left, right, course or predicted")
    if text == "course":
        return CourseTarget()
    return SteerTarget(text, {"left": -1.0, "right": 1.0, "predicted": None}[text])
