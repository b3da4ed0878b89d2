"""One frame → one picture of a layer: all its channels as a labelled grid, and the first
conv layer's filters as images below (`carvis inspect MODEL FRAME -o grid.png`; the frame an
image file, or a frame of a video, tub or folder: `carvis inspect MODEL TUB --frame 120`)."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from carvis import limits, sources, views
from carvis.errors import CarvisError
from carvis.preprocess import Preprocessor
from carvis.profile import Profile
from carvis.session import ModelSession
from carvis.sources.files import read_image

log = logging.getLogger("carvis")


def read_frame(path: str | Path) -> np.ndarray:
    """A BGR image from a file, or one line saying why not."""
    p = Path(path)
    limits.check_regular(p, "frame")
    if not p.is_file():
        raise CarvisError(f"{path}: frame not found; give an image file (JPEG, PNG)")
    frame, problem = read_image(p)
    if frame is None:
        raise CarvisError(f"{path}: cannot read this image: {problem}; give a JPEG or PNG")
    return frame


def load_frame(spec: str | Path, position: str | int | None = None) -> np.ndarray:
    """An image file, or frame `position` (an index or '12.5s') of a video, tub or folder."""
    path = Path(spec)
    is_image = path.is_file() and path.suffix.lower() in sources.IMAGE_SUFFIXES
    if position is None:
        if not is_image and (path.is_dir() or path.is_file() or str(spec).startswith("synthetic")):
            raise CarvisError(f"{spec}: a video, tub or folder holds many frames; say which "
                              "with --frame N (an index) or --frame 12.5s (a time)")
        return read_frame(path)
    if is_image:
        raise CarvisError(f"--frame {position}: {spec} is one image; drop --frame, or give "
                          "the video, tub or folder it came from")
    return sources.frame_at(str(spec), position).image


def stack(images: list[np.ndarray], gap: int = 6) -> np.ndarray:
    """Images one below the other on the grid background, left-aligned."""
    width = max(img.shape[1] for img in images)
    height = sum(img.shape[0] for img in images) + gap * (len(images) - 1)
    out = np.empty((height, width, 3), np.uint8)
    out[:] = views.BACKGROUND
    y = 0
    for img in images:
        out[y:y + img.shape[0], :img.shape[1]] = img
        y += img.shape[0] + gap
    return out


def inspect_frame(session: ModelSession, frame: np.ndarray, profile: Profile,
                  layer: str | int | None = None, filters: bool = True) -> np.ndarray:
    """The feature grid of a layer for one frame, with the first conv layer's filters below."""
    backend = session.backend(profile.layer if layer is None else layer)
    if len(backend.output_shape) != 3:
        raise CarvisError(f"layer {backend.layer_name!r} has output shape "
                          f"{backend.output_shape}, not a spatial map; pick a conv layer "
                          f"({', '.join(session.conv_layers())})")
    h, w, c = backend.input_shape
    pre = Preprocessor(profile, (w, h), c)
    act = backend(pre(pre.roi(frame)))
    shape = ", ".join(str(d) for d in act.shape)
    parts = [views.feature_grid(act, profile.colormap,
                                title=f"{backend.layer_name} ({shape})")]
    if filters and session.kind.name == "tflite":
        log.info("no filters below the grid: a .tflite keeps its first layer's kernels in its "
                 "own graph, not as Keras weights; give the .h5/.keras model to see them")
    if filters and session.model is not None:
        from carvis import models

        model = session.model
        first = next((info for info in models.layer_table(model) if info.is_conv), None)
        weights = model.layers[first.index].get_weights() if first is not None else []
        if weights and np.asarray(weights[0]).ndim == 4:
            parts.append(views.filter_images(weights[0], rgb=profile.color == "rgb",
                                             title=f"{first.name} filters"))
    return stack(parts)


def check_output(path: str | Path) -> Path:
    """The picture's path, refused in one line before any model is loaded if it cannot be."""
    p = Path(path)
    if p.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise CarvisError(f"output {str(p)!r} must end in .png or .jpg")
    if not p.resolve().parent.is_dir():
        raise CarvisError(f"output {str(p)!r}: folder does not exist; create it first")
    return p


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write an image file (PNG or JPEG by its extension), or one line saying why not."""
    p = check_output(path)
    if not cv2.imwrite(str(p), image):
        raise CarvisError(f"output {str(p)!r}: OpenCV could not write it; check the path")
