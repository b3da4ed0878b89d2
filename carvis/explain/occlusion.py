"""``occlusion`` (Zeiler & Fergus, ECCV 2014): slide a patch of the frame's mean colour over the
model's input and watch the target score; a pixel's map is the mean drop of the score over the
patches that cover it (positive: hiding it lowers the score, so it supports the target).

Forward-only, so it runs on every backend (LiteRT, onnxruntime, TensorFlow): the occluded
copies go through the model in batches where the backend takes them (TensorFlow: a fixed
batch traced once; onnxruntime: its batch dimension) and one by one on LiteRT. The score is
the target's linear combination of the steering outputs (:meth:`Target.coefficients`), taken
at the whole frame's prediction: the left bins, the predicted bin, +/- the steering value.
:class:`Perturbation` is the base it shares with ``rise``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from carvis.errors import CarvisError
from carvis.explain.base import PREDICTION, Explainer, Explanation

#: Occluded copies per TensorFlow call (the tf.function is traced for this batch once).
TF_BATCH = 64


class Perturbation(Explainer):
    """Base of the forward-only causal modes: the target score of perturbed copies of the input,
    run in batches; a mode says which copies (:meth:`copies`) and how their scores make a map
    (:meth:`combine`)."""

    uses_target = True
    defaults: ClassVar[tuple] = ()

    def __init__(self, model: Any, *, params: tuple | None = None, **kwargs: Any) -> None:
        self.params = self.check(tuple(params) if params else self.defaults, model)
        super().__init__(model, **kwargs)
        if self.target.layer is not None:
            raise CarvisError(f"mode {self.mode} scores the steering output; a layer target "
                              "does not apply (use saliency for layer:L)")
        self.chunk = TF_BATCH if self.backend == "tensorflow" else \
            int(getattr(self._forward, "max_batch", 1) or 1)
        self.invokes = 0  # model calls made (a benchmark reads it)

    def check(self, params: tuple, model: Any) -> tuple:
        """The mode's parameters, checked against the model's input (one line if bad)."""
        return params

    def _resolve_layer(self, layer: str | int | None) -> str | None:
        return None  # the mode perturbs the input, no layer

    def _build(self) -> Any:
        self.batch_size = TF_BATCH  # the graph takes the perturbed copies a batch at a time
        return super()._build()

    def scores(self, batch: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
        """The target score (coefficients · steering output) of each input in a batch."""
        return self.predict(batch).astype(np.float64) @ coefficients

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """The steering output (B, units) of a batch of inputs, in the mode's batches."""
        rows = []
        for i in range(0, len(batch), self.chunk):
            part = batch[i:i + self.chunk]
            n = len(part)
            if self.backend == "tensorflow" and n < self.chunk:
                part = np.concatenate([part, np.repeat(part[-1:], self.chunk - n, axis=0)])
            rows.append(np.asarray(self._forward(np.ascontiguousarray(part))[PREDICTION])[:n])
            self.invokes += 1
        return np.concatenate(rows).reshape(len(batch), -1).astype(np.float32)

    def explain(self, batch: np.ndarray) -> Explanation:
        batch = np.asarray(batch, np.float32)
        if batch.shape[1:] != self.input_shape:
            raise CarvisError(f"input shape {batch.shape[1:]} does not match the model's "
                              f"{self.input_shape}")
        outputs = self._forward(batch[:1]) if self.chunk == 1 or self.backend != "tensorflow" \
            else {k: v[:1] for k, v in self._forward(np.repeat(batch[:1], self.chunk,
                                                               axis=0)).items()}
        prediction = np.asarray(outputs[PREDICTION])[0].astype(np.float32)
        coefficients = self.target.coefficients(prediction).astype(np.float64)
        base = float(prediction.reshape(-1) @ coefficients)
        image = batch[0]
        fill = image.reshape(-1, image.shape[-1]).mean(axis=0)
        amap = self.combine(image, fill, coefficients, base)
        outputs[PREDICTION] = np.asarray(outputs[PREDICTION])[:1]
        return Explanation(amap.astype(np.float32), prediction, outputs)

    __call__ = explain

    def combine(self, image: np.ndarray, fill: np.ndarray, coefficients: np.ndarray,
                base: float) -> np.ndarray:
        """The map of one input (H, W, C) from its perturbed copies' scores."""
        raise NotImplementedError


def positions(n: int, size: int, stride: int) -> list[int]:
    """Where a window of size slides along n pixels at stride, the last one flush with the end
    (so every pixel is covered)."""
    starts = list(range(0, n - size + 1, stride))
    if starts[-1] + size < n:
        starts.append(n - size)
    return starts


class Occlusion(Perturbation):
    """A patch of the mean colour slid over the input; the map: the mean score drop per pixel.
    Parameters (profile ``occlusion: {patch, stride}``): patch and stride in model-input pixels;
    None: a fifth of the input's shorter side, and half the patch."""

    mode = "occlusion"
    defaults = (None, None)

    def check(self, params: tuple, model: Any) -> tuple:
        h, w = tuple(model.input_shape)[:2] if not hasattr(model, "inputs") else \
            tuple(int(d) for d in model.inputs[0].shape[1:3])
        patch, stride = (tuple(params) + (None, None))[:2]
        patch = int(patch) if patch else max(2, round(min(h, w) / 5))
        stride = int(stride) if stride else max(1, patch // 2)
        if patch > min(h, w) or stride > patch:
            raise CarvisError(f"occlusion patch {patch}, stride {stride} does not fit the "
                              f"model's {w}x{h} input; give a patch up to {min(h, w)} and a "
                              "stride up to the patch (profile occlusion: {patch, stride})")
        return patch, stride

    def copies(self, image: np.ndarray, fill: np.ndarray) -> tuple[np.ndarray, list]:
        """Every occluded copy of the input, and where each patch is."""
        patch, stride = self.params
        h, w = image.shape[:2]
        spots = [(y, x) for y in positions(h, patch, stride) for x in positions(w, patch, stride)]
        batch = np.repeat(image[None], len(spots), axis=0)
        for i, (y, x) in enumerate(spots):
            batch[i, y:y + patch, x:x + patch] = fill
        return batch, spots

    def combine(self, image: np.ndarray, fill: np.ndarray, coefficients: np.ndarray,
                base: float) -> np.ndarray:
        patch = self.params[0]
        batch, spots = self.copies(image, fill)
        drops = base - self.scores(batch, coefficients)
        total = np.zeros(image.shape[:2], np.float64)
        count = np.zeros(image.shape[:2], np.float64)
        for (y, x), drop in zip(spots, drops, strict=True):
            total[y:y + patch, x:x + patch] += drop
            count[y:y + patch, x:x + patch] += 1
        return total / count
