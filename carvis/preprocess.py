"""Frame → model input: crop the ROI, resize, k×k mean, colour order, scale/offset."""

from __future__ import annotations

import logging
from collections.abc import Callable

import cv2
import numpy as np

from carvis.errors import CarvisError
from carvis.profile import Crop, Profile

log = logging.getLogger("carvis")

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
    """Crop → resize → k×k mean → colour order → scale/offset, into a reused float32 buffer;
    with a car's transformations (carvis.donkeytransform: what a DonkeyCar car does to its
    RGB camera image before its pilot), those instead of the resize and the mean."""

    def __init__(self, profile: Profile, input_size: tuple[int, int], channels: int = 3,
                 transform: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        if channels not in (1, 3):
            raise CarvisError(f"the model's input has {channels} channels; carvis feeds it "
                              "camera images of 3 (colour) or 1 (gray)")
        self.profile = profile
        self.transform = transform
        self._told = False
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
        if self.transform is not None:
            return self._transformed(roi)
        if not self._told and self.profile.input_size is None:
            self._told = True  # a generic profile: a frame squeezed to fit is said, once
            (fw, fh), (mw, mh) = roi.shape[1::-1], self.input_size
            if abs((fw / fh) / (mw / mh) - 1) > 0.05:
                log.info("note: frames are %dx%d, the model takes %dx%d: each is squeezed "
                         "to fit (a DonkeyCar car: give its --config; another: a profile's "
                         "input_size and crop)", fw, fh, mw, mh)
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

    def _transformed(self, roi: np.ndarray) -> np.ndarray:
        """The car's own pipeline: RGB, its transformations, then scale (no resize: a model
        that takes another size than the car makes is refused)."""
        rgb = cv2.cvtColor(roi, cv2.COLOR_BGR2RGB)
        image = self.transform(rgb)
        image = image[:, :, None] if image.ndim == 2 else image
        if image.shape != self.batch.shape[1:]:
            h, w, c = self.batch.shape[1:]
            raise CarvisError(f"after the car's transformations a {roi.shape[1]}x{roi.shape[0]} "
                              f"frame is {image.shape[1]}x{image.shape[0]}x{image.shape[2]}, but "
                              f"the model takes {w}x{h}x{c}; give the config the model was "
                              "trained with")
        np.multiply(image, np.float32(self.profile.scale), out=self.batch[0])
        if self.profile.offset:
            np.add(self.batch, np.float32(self.profile.offset), out=self.batch)
        return self.batch
