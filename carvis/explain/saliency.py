"""``saliency`` and ``guided``: max over colour channels of |d score / d input|, at the model's
input size; SmoothGrad averages |gradient| over N noisy copies run as one batch. ``guided`` is
the same map through the guided clone (see :mod:`carvis.explain.guided`)."""

from __future__ import annotations

import numpy as np

from carvis.explain.base import Explainer


def saliency_map(grads: np.ndarray) -> np.ndarray:
    """max over colour channels of the mean over the batch of |gradient|; grads (B, H, W, C)."""
    if grads.shape[0] == 1:  # the mean of one is itself: skip its pass over the array
        return np.abs(grads[0]).max(axis=-1)
    return np.abs(grads).mean(axis=0).max(axis=-1)


class Saliency(Explainer):
    """|d target / d input|, max over colour channels; SmoothGrad over a noisy batch."""

    mode = "saliency"
    wrt = ("input",)
    uses_target = True

    def reduce(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        grads = np.asarray(outputs["@grad:input"])
        grads = grads[1:] if self.smooth_n else grads
        return saliency_map(self.target.modify(grads))


class GuidedBackprop(Saliency):
    """Guided backpropagation: saliency through ReLUs that pass only positive gradients."""

    mode = "guided"
    guided = True
