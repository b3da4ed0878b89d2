"""``rise`` (Petsiuk, Das & Saenko, BMVC 2018): N random masks, each a coarse grid of cells kept
with probability p, bilinearly upsampled and shifted by a random fraction of a cell; a pixel's
map is the mean target score of the copies that kept it, less the mean over all copies.

Forward-only and batched like ``occlusion`` (:class:`~carvis.explain.occlusion.Perturbation`);
the hidden part of each copy is the frame's mean colour. The masks are drawn once per explainer
from a fixed seed, so a video's maps do not flicker from mask noise.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from carvis.errors import CarvisError
from carvis.explain.occlusion import Perturbation

KEEP = 0.5  # the probability that a cell is kept (RISE's p)


class RISE(Perturbation):
    """Randomized input sampling. Parameters (profile ``rise: {masks, cells}``): the number of
    masks N and the cells along the input's shorter side."""

    mode = "rise"
    defaults = (500, 6)

    def check(self, params: tuple, model: Any) -> tuple:
        masks, cells = (tuple(params) + (None, None))[:2]
        masks, cells = int(masks or self.defaults[0]), int(cells or self.defaults[1])
        if not 1 <= masks <= 20000 or not 2 <= cells <= 64:
            raise CarvisError(f"rise masks {masks}, cells {cells} is not valid; masks 1..20000, "
                              "cells 2..64 (profile rise: {masks, cells})")
        return masks, cells

    def _masks(self, h: int, w: int) -> np.ndarray:
        """N masks (N, H, W) in [0, 1], drawn once."""
        if getattr(self, "_drawn", None) is not None and self._drawn.shape[1:] == (h, w):
            return self._drawn
        n, cells = self.params
        side = min(h, w) / cells  # a cell's size in pixels
        gh, gw = int(np.ceil(h / side)), int(np.ceil(w / side))
        big_h, big_w = int(np.ceil((gh + 1) * side)), int(np.ceil((gw + 1) * side))
        rng = np.random.default_rng(0)
        grids = (rng.random((n, gh, gw)) < KEEP).astype(np.float32)
        shifts = rng.integers(0, max(1, int(side)), (n, 2))
        masks = np.empty((n, h, w), np.float32)
        for i in range(n):
            up = cv2.resize(grids[i], (big_w, big_h), interpolation=cv2.INTER_LINEAR)
            dy, dx = shifts[i]
            masks[i] = up[dy:dy + h, dx:dx + w]
        self._drawn = masks
        return masks

    def combine(self, image: np.ndarray, fill: np.ndarray, coefficients: np.ndarray,
                base: float) -> np.ndarray:
        h, w = image.shape[:2]
        masks = self._masks(h, w)
        scores = np.empty(len(masks), np.float64)
        step = max(self.chunk, 32)  # copies made a few at a time: N full frames is too much
        for i in range(0, len(masks), step):
            m = masks[i:i + step, :, :, None]
            scores[i:i + step] = self.scores(image * m + fill * (1.0 - m), coefficients)
        weights = (scores - scores.mean()).astype(np.float32)
        return np.tensordot(weights, masks, axes=1) / (len(masks) * KEEP)
