"""Frame → model input: crop the ROI, resize, k×k mean, colour order, scale/offset."""

from __future__ import annotations

import cv2
import numpy as np

from carvis.profile import Crop, Profile

INTERPOLATION_FLAGS = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}


class Roi:
    """The profile's region of interest of a frame: a view, its box cached per frame size.
    The one place a crop becomes pixels (the map maker and the composer both cut with it)."""

    def __init__(self, crop: Crop | None) -> None:
        self.crop = crop
        self._for: tuple[int, int] | None = None
        self._box: tuple[int, int, int, int] = (0, 0, 0, 0)

    def box(self, frame: np.ndarray) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) of the ROI for this frame's size."""
        h, w = frame.shape[:2]
        if self._for != (h, w):
            self._box = self.crop.pixels(h, w) if self.crop is not None else (0, h, 0, w)
            self._for = (h, w)
        return self._box

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """The region of interest of a frame (a view, no copy)."""
        t, b, lft, r = self.box(frame)
        return frame[t:b, lft:r]


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
        self.roi = Roi(profile.crop)

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
