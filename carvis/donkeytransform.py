"""A DonkeyCar car's image transformations (its config's TRANSFORMATIONS and
POST_TRANSFORMATIONS), applied to the camera's RGB image before its pilot sees it, as
``donkeycar/parts/image_transformations.py`` and ``donkeycar/parts/cv.py`` apply them: one entry
per transformation, the same OpenCV calls (CROP and TRAPEZE keep the pixels inside and make the
rest black; they do not cut the image).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from carvis.donkeyconfig import CarConfig
from carvis.errors import CarvisError

Transform = Callable[[np.ndarray], np.ndarray]


def _polygon_mask(points: Callable[[int, int], list[list[int]]]) -> Transform:
    """cv.py's masks: pixels inside the polygon kept, the rest 0; one mask per image shape."""
    masks: dict[tuple[int, ...], np.ndarray] = {}

    def run(image: np.ndarray) -> np.ndarray:
        mask = masks.get(image.shape)
        if mask is None:
            h, w = image.shape[:2]
            canvas = np.zeros(image.shape, np.int32)
            cv2.fillConvexPoly(canvas, np.array(points(h, w), np.int32),
                               [255] * (image.shape[2] if image.ndim == 3 else 1))
            mask = masks[image.shape] = canvas.astype(bool)
        return np.multiply(image, mask).astype(image.dtype)

    return run


def _crop(k: dict[str, Any]) -> Transform:
    left, top = k["ROI_CROP_LEFT"] or 0, k["ROI_CROP_TOP"] or 0
    right, bottom = k["ROI_CROP_RIGHT"], k["ROI_CROP_BOTTOM"]
    return _polygon_mask(lambda h, w: [[left, top], [w - (right or 0), top],
                                       [w - (right or 0), h - (bottom or 0)],
                                       [left, h - (bottom or 0)]])


def _trapeze(k: dict[str, Any]) -> Transform:
    return _polygon_mask(lambda h, w: [
        [k["ROI_TRAPEZE_UL"], k["ROI_TRAPEZE_MIN_Y"]], [k["ROI_TRAPEZE_UR"], k["ROI_TRAPEZE_MIN_Y"]],
        [k["ROI_TRAPEZE_LR"], k["ROI_TRAPEZE_MAX_Y"]], [k["ROI_TRAPEZE_LL"], k["ROI_TRAPEZE_MAX_Y"]]])


def _trapeze_edge(k: dict[str, Any]) -> Transform:
    return _polygon_mask(lambda h, w: [
        [k["ROI_TRAPEZE_UL"], k["ROI_TRAPEZE_MIN_Y"]],
        [w - k["ROI_TRAPEZE_UR"], k["ROI_TRAPEZE_MIN_Y"]],
        [w - k["ROI_TRAPEZE_LR"], h - k["ROI_TRAPEZE_MAX_Y"]],
        [k["ROI_TRAPEZE_LL"], h - k["ROI_TRAPEZE_MAX_Y"]]])


def _blur(k: dict[str, Any]) -> Transform:
    size = (k["BLUR_KERNEL"], k["BLUR_KERNEL_Y"] if k["BLUR_KERNEL_Y"] is not None
            else k["BLUR_KERNEL"])
    if k["BLUR_GAUSSIAN"]:
        return lambda image: cv2.GaussianBlur(image, size, 0)
    return lambda image: cv2.blur(image, size)


def _colour(code: int) -> Callable[[dict[str, Any]], Transform]:
    return lambda _k: lambda image: cv2.cvtColor(image, code)


#: DonkeyCar's transformation name → a builder from the config keys it reads.
TRANSFORMS: dict[str, Callable[[dict[str, Any]], Transform]] = {
    "CROP": _crop,
    "TRAPEZE": _trapeze,
    "TRAPEZE_EDGE": _trapeze_edge,
    "CANNY": lambda k: lambda image: cv2.Canny(image, k["CANNY_LOW_THRESHOLD"],
                                               k["CANNY_HIGH_THRESHOLD"],
                                               apertureSize=k["CANNY_APERTURE"]),
    "BLUR": _blur,
    "RESIZE": lambda k: lambda image: cv2.resize(image, (k["RESIZE_WIDTH"],
                                                         k["RESIZE_HEIGHT"])),
    "SCALE": lambda k: lambda image: cv2.resize(
        image, (0, 0), fx=k["SCALE_WIDTH"],
        fy=k["SCALE_HEIGHT"] if k["SCALE_HEIGHT"] is not None else k["SCALE_WIDTH"]),
    "RGB2BGR": _colour(cv2.COLOR_RGB2BGR), "BGR2RGB": _colour(cv2.COLOR_BGR2RGB),
    "RGB2HSV": _colour(cv2.COLOR_RGB2HSV), "HSV2RGB": _colour(cv2.COLOR_HSV2RGB),
    "BGR2HSV": _colour(cv2.COLOR_BGR2HSV), "HSV2BGR": _colour(cv2.COLOR_HSV2BGR),
    "RGB2GRAY": _colour(cv2.COLOR_RGB2GRAY), "BGR2GRAY": _colour(cv2.COLOR_BGR2GRAY),
    "HSV2GRAY": _colour(cv2.COLOR_BGR2GRAY),  # cv.py's ImgHSV2GRAY converts as BGR
    "GRAY2RGB": _colour(cv2.COLOR_GRAY2RGB), "GRAY2BGR": _colour(cv2.COLOR_GRAY2BGR),
}


def chain(config: CarConfig) -> Transform | None:
    """The car's transformations as one function on its RGB uint8 image (None: there are
    none); a value a transformation cannot use is one line naming the key."""
    steps = []
    for name, keys in config.transformations():
        try:
            steps.append((name, TRANSFORMS[name](keys)))
        except (TypeError, KeyError) as exc:
            where = config.where("TRANSFORMATIONS")
            raise CarvisError(f"transformation {name} cannot use the car's config ({exc}); "
                              f"check {', '.join(keys)} ({where})") from None
    if not steps:
        return None

    def run(image: np.ndarray) -> np.ndarray:
        for name, step in steps:
            try:
                image = step(image)
            except cv2.error as exc:
                raise CarvisError(f"transformation {name} failed on a {image.shape} image "
                                  f"({str(exc).strip().splitlines()[-1][:120]}); check the "
                                  "car's config") from None
        return image

    return run
