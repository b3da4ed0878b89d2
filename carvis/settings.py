"""The one validator of every setting, wherever it comes from: a profile file, a flag,
``/settings`` or a key.

Each setting has one checker here that normalises a value or says what is allowed; the
:class:`Origin` of the value words the one-line error, so a bad ``--threshold 300`` is blamed on
the flag and a bad ``threshold: 300`` on the profile file that holds it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import cv2

from carvis import layerspec, limits
from carvis.errors import CarvisError, shown

MODES = ("activation", "vbp", "gradcam", "saliency", "guided", "guided-gradcam", "cam",
         "occlusion", "rise")
#: Modes that need TensorFlow's gradients (never LiteRT).
GRADIENT_MODES = ("gradcam", "saliency", "guided", "guided-gradcam")
#: Modes computed from layer outputs alone: they run from a multi-output LiteRT model too.
FORWARD_MODES = ("activation", "vbp", "cam", "occlusion", "rise")
#: Names of the steering targets (plus "bin:K" and "layer" / "layer:SPEC").
TARGETS = ("predicted", "left", "right", "straight", "course")
VIEWS = ("overlay", "grid")
NORMALIZATIONS = ("minmax", "fixed", "running")
INTERPOLATIONS = ("nearest", "linear", "cubic", "area", "lanczos")
COLORS = ("bgr", "rgb")
OUTPUTS = ("roi", "frame")
ROTATIONS = (0, 90, 180, 270)
#: OpenCV colormaps by lower-case name ("inferno", "jet", "turbo", ...).
COLORMAPS: dict[str, int] = {
    name[len("COLORMAP_"):].lower(): getattr(cv2, name)
    for name in dir(cv2)
    if name.startswith("COLORMAP_")
}
#: What can be changed while running (/settings, keys), in the order the page lists them.
LIVE_KEYS = ("threshold", "channel", "layer", "colormap", "overlay", "recording",
             "mode", "target", "view", "hud", "compare")


#: An integer as text: ASCII digits only ('²'.isdigit() is True, int('²') fails), at most 9.
_INTEGER = re.compile(r"[+-]?[0-9]{1,9}", re.ASCII)


class Invalid(ValueError):
    """A checker's refusal: what is allowed (the origin adds where the value came from)."""


class Origin:
    """Where values come from; words the error for a bad one."""

    def fail(self, key: str, value: Any, allowed: str) -> CarvisError:
        return CarvisError(f"{key} {shown(value)} is not valid; {allowed}")


class ProfileOrigin(Origin):
    """A profile file (or built-in profile data)."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, value: Any, allowed: str) -> CarvisError:
        return CarvisError(f"{self.source}: {key} = {shown(value)} is not valid; {allowed}")


class FlagOrigin(Origin):
    """The command line: a bad value is the flag's, never the profile's."""

    def fail(self, key: str, value: Any, allowed: str) -> CarvisError:
        name = key.rpartition(".")[2].replace("_", "-")  # camera.fps is --fps
        return CarvisError(f"--{name} {_plain(value)} is not valid; {allowed}")


LIVE = Origin()
FLAGS = FlagOrigin()


def _plain(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return shown(value)


# --------------------------------------------------------------------------- checkers


def number(lo: float | None = None, hi: float | None = None, integer: bool = False
           ) -> Callable[[Any], float]:
    """A checker for a number (an integer) in lo..hi."""
    kind = int if integer else (int, float)

    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, kind) or not _finite(value):
            raise Invalid(f"expected {'an integer' if integer else 'a finite number'}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise Invalid(f"allowed range {lo}..{hi}")
        return value
    return check


def _finite(value: float) -> bool:
    """True for a number a float holds: not inf or nan, not a 400-digit integer."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def choice(choices: tuple[str, ...] | Mapping[str, Any]) -> Callable[[Any], str]:
    """A checker for one of some names (case-insensitive)."""
    names = tuple(sorted(choices)) if isinstance(choices, Mapping) else tuple(choices)

    def check(value: Any) -> str:
        v = value.strip().lower() if isinstance(value, str) else value
        if v not in names:
            raise Invalid(f"choose one of: {', '.join(names)}")
        return v
    return check


def flag(value: Any) -> bool:
    """true or false, nothing else."""
    if not isinstance(value, bool):
        raise Invalid("expected true or false")
    return value


def size(value: Any) -> tuple[int, int] | None:
    """[width, height] in pixels, or None; no bigger than a frame H.264 can carry."""
    if value is None:
        return None
    side, most = limits.MAX_FRAME_SIDE, limits.MAX_FRAME_PIXELS
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= side
                       for v in value) or value[0] * value[1] > most):
        raise Invalid(f"expected [width, height] in pixels, each 1..{side}, at most {most} "
                      "pixels (8192x4320)")
    return int(value[0]), int(value[1])


_CHANNELS = 1 << 31  # no layer has more channels


def channel(value: Any) -> int | str:
    """A channel: an integer index, 'mean' or 'max'."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise Invalid("give an index, 'mean' or 'max'")
    if isinstance(value, int):
        if not -_CHANNELS <= value < _CHANNELS:
            raise Invalid(f"give an index below {_CHANNELS}, 'mean' or 'max'")
        return value
    text = value.strip().lower()
    if text in ("mean", "max"):
        return text
    if _INTEGER.fullmatch(text):
        return int(text)
    raise Invalid("give an index, 'mean' or 'max'")


def layer(value: Any) -> str | int:
    """A layer spec (see carvis.layerspec)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise Invalid("give a name, an index or conv:N")
    try:
        return layerspec.parse(value)
    except CarvisError as exc:
        raise Invalid(str(exc)) from None


def target(value: Any) -> str:
    """A target: a name of TARGETS, 'bin:K', 'layer', 'layer:L' (checked for shape only)."""
    allowed = (f"choose one of: {', '.join(TARGETS)}, bin:K (a steering bin), layer or layer:L "
               "(mean activation of a layer)")
    if value is None:
        return "predicted"
    if not isinstance(value, str):
        raise Invalid(allowed)
    text = value.strip().lower()
    if text in TARGETS or text == "layer" or re.fullmatch(r"bin:[0-9]{1,9}", text, re.ASCII):
        return text
    if text.startswith("layer:") and len(value.strip()) > 6:
        return "layer:" + value.strip()[6:].strip()
    raise Invalid(allowed)


def smoothgrad(value: Any) -> tuple[int, float] | None:
    """SmoothGrad as (N, SIGMA) from [N, SIGMA] or "N,SIGMA"; None or 0 copies: off."""
    if value is None:
        return None
    allowed = ("expected [N, SIGMA] or N,SIGMA: N noisy copies 0..256, SIGMA 0..1 "
               "(a fraction of the input's value range)")
    parts = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
    try:
        n, sigma = parts
        n_int, sigma_f = int(n), float(sigma)
        whole = n_int == float(n)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf), float(10**400)
        raise Invalid(allowed) from None
    if isinstance(n, bool) or isinstance(sigma, bool) or not whole or not 0 <= n_int <= 256 \
            or not 0.0 <= sigma_f <= 1.0:
        raise Invalid(allowed)
    return (n_int, sigma_f) if n_int else None


def value_range(value: Any) -> tuple[float, float] | None:
    """[low, high] with low < high, or None."""
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and _finite(v)
                       for v in value)
            or value[0] >= value[1]):
        raise Invalid("expected [low, high], finite numbers with low < high")
    return float(value[0]), float(value[1])


def rotation(value: Any) -> int:
    """A clockwise rotation in degrees: 0, 90, 180 or 270."""
    if isinstance(value, bool) or value not in ROTATIONS:
        raise Invalid(f"choose one of: {', '.join(map(str, ROTATIONS))}")
    return int(value)


def _float(check: Callable[[Any], float]) -> Callable[[Any], float]:
    return lambda value: float(check(value))


#: Every setting's checker, by its key (profile keys use their dotted path).
CHECKERS: dict[str, Callable[[Any], Any]] = {
    "threshold": _float(number(0, 255)),
    "colormap": choice(COLORMAPS),
    "layer": layer,
    "channel": channel,
    "mode": choice(MODES),
    "target": target,
    "smoothgrad": smoothgrad,
    "view": choice(VIEWS),
    "hud": flag,
    "compare": flag,
    "overlay": flag,
    "recording": flag,
    "normalize": choice(NORMALIZATIONS),
    "range": value_range,
    "decay": _float(number(0.0, 1.0)),
    "ema": _float(number(0.0, 0.99)),
    "output": choice(OUTPUTS),
    "output_size": size,
    "preprocess.input_size": size,
    "preprocess.interpolation": choice(INTERPOLATIONS),
    "preprocess.smooth": lambda v: int(number(0, 31, integer=True)(v)),
    "preprocess.color": choice(COLORS),
    "preprocess.scale": _float(number()),
    "preprocess.offset": _float(number()),
    "camera.size": size,
    "camera.fps": _float(number(1, 240)),
    "camera.hflip": flag,
    "camera.vflip": flag,
    "camera.rotate": rotation,
    "map_fps": _float(number(0.1, 240)),
    # occlusion's patch and stride, rise's masks and cells (None: from the input's size)
    "occlusion.patch": lambda v: None if v is None else int(number(1, 4096, integer=True)(v)),
    "occlusion.stride": lambda v: None if v is None else int(number(1, 4096, integer=True)(v)),
    "rise.masks": lambda v: None if v is None else int(number(1, 20000, integer=True)(v)),
    "rise.cells": lambda v: None if v is None else int(number(2, 64, integer=True)(v)),
}


def check(key: str, value: Any, origin: Origin = LIVE) -> Any:
    """One setting, normalised; a bad value is one line worded by its origin."""
    try:
        return CHECKERS[key](value)
    except Invalid as exc:
        raise origin.fail(key, value, str(exc)) from None


def validate(changes: Any, origin: Origin = LIVE, keys: tuple[str, ...] = LIVE_KEYS
             ) -> dict[str, Any]:
    """A settings change (a JSON object or key presses): every value checked, normalised."""
    if not isinstance(changes, dict):
        raise CarvisError(f"settings must be a JSON object such as {{\"threshold\": 120}}, "
                          f"got {type(changes).__name__}")
    out: dict[str, Any] = {}
    for key, value in changes.items():
        if key not in keys:
            raise CarvisError(f"unknown setting {shown(key)}; settings: {', '.join(keys)}")
        out[key] = check(key, value, origin)
    return out


def camera(values: Mapping[str, Any], origin: Origin = LIVE) -> dict[str, Any]:
    """A camera section (size, fps, hflip, vflip, rotate), each value checked."""
    out = dict(values)
    for key in ("size", "fps", "hflip", "vflip", "rotate"):
        if key in out and out[key] is not None:
            out[key] = check(f"camera.{key}", out[key], origin)
    return out
