"""A track's maps laid on frames without the model: the model render's pictures, re-drawn.

The map of a track row goes through carvis.overlay (normalise, bicubic up, threshold, colormap,
add: :meth:`carvis.overlay.Overlay.draw`), then the views the model render has (steering HUD,
side by side, output size). A re-render keeps the track's preprocessing (its maps belong to
that ROI) and takes the drawing settings from the profile and flags given.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from carvis import hud, pilot, settings, views
from carvis import overlay as ov
from carvis import profile as prof
from carvis.backends.cache import file_sha256
from carvis.errors import CarvisError
from carvis.frame import Frame
from carvis.pipeline import StageTimes, render
from carvis.review.track import InOrder, Track
from carvis.sinks import Sink

log = logging.getLogger("carvis")

#: The profile keys a re-render may change (the rest belongs to the track's maps).
DRAWING = ("normalize", "range", "decay", "ema", "threshold", "colormap", "output",
           "output_size", "view", "hud", "compare")
#: What the review page may change, each checked by carvis.settings.
PAGE_KEYS = ("threshold", "colormap", "overlay", "view", "hud", "compare", "normalize")
GRID_HELP = ("view grid needs every channel of the layer and a track keeps one map; re-render "
             "with the model (carvis render SOURCE -o OUT --view grid)")


def drawing_profile(track: Track, profile: prof.Profile | None = None,
                    changes: Mapping[str, Any] | None = None) -> prof.Profile:
    """The track's profile with the drawing settings of another profile and of flags."""
    data = dict(track.meta["profile"])
    if profile is not None:
        given = profile.to_dict()
        data.update({key: given[key] for key in DRAWING})
    base = prof.parse(data, source=f"{track.path.name} (profile)", base=None)
    changes = {k: v for k, v in (changes or {}).items() if v is not None}
    checked = {k: settings.check(k, v, settings.FLAGS) for k, v in changes.items()}
    return base.replace(**checked) if checked else base


class Composer:
    """One track's maps on frames, with settings that change through :meth:`apply`."""

    def __init__(self, track: Track, profile: prof.Profile | None = None) -> None:
        self.track = track
        self.profile = profile or drawing_profile(track)
        p = self.profile
        self.overlay = ov.Overlay(p.threshold, p.colormap)
        self.enabled = True
        self.view, self.hud, self.compare, self.normalize = p.view, p.hud, p.compare, p.normalize
        if self.view == "grid":
            raise CarvisError(GRID_HELP)
        self.steering_hud = hud.SteeringHud()
        self.lock = threading.Lock()  # the overlay's buffers are reused
        self.lo, self.hi = self.ranges(self.normalize)

    def settings(self) -> dict[str, Any]:
        """The drawing settings in force."""
        return {"threshold": self.overlay.threshold, "colormap": self.overlay.colormap,
                "overlay": self.enabled, "view": self.view, "hud": self.hud,
                "compare": self.compare, "normalize": self.normalize}

    def apply(self, values: Mapping[str, Any]) -> None:
        """Apply settings checked by carvis.settings.validate (all or nothing)."""
        if values.get("view") == "grid":
            raise CarvisError(GRID_HELP)
        normalize = values.get("normalize", self.normalize)
        lo, hi = self.ranges(normalize)
        with self.lock:
            self.overlay.threshold = float(values.get("threshold", self.overlay.threshold))
            self.overlay.colormap = values.get("colormap", self.overlay.colormap)
            self.enabled = values.get("overlay", self.enabled)
            self.view = values.get("view", self.view)
            self.hud = values.get("hud", self.hud)
            self.compare = values.get("compare", self.compare)
            self.normalize, self.lo, self.hi = normalize, lo, hi

    def ranges(self, normalize: str) -> tuple[np.ndarray, np.ndarray]:
        """Each row's (low, high) under a normalisation, as MapNormalizer would have them."""
        t = self.track
        lo, hi = t.map_min.astype(np.float64), t.map_max.astype(np.float64)
        if normalize == "fixed":
            low, high = self.profile.range or (float(lo.min()), float(hi.max()))
            return np.full(len(t), low), np.full(len(t), high)
        if normalize == "running":  # MapNormalizer's recurrence, on the per-frame extremes
            decay = self.profile.decay
            lo, hi = lo.copy(), hi.copy()
            for n in range(1, len(t)):
                hi[n] = max(hi[n], hi[n - 1] * decay)
                lo[n] = min(lo[n], lo[n - 1] * decay)
        return lo, hi

    def norm(self, row: int) -> np.ndarray:
        """A row's map normalised to 0..255 (random access: the EMA is left out)."""
        raw = self.track.raw(row)
        if self.normalize == "minmax":
            return ov.normalize_minmax(raw)
        return ov.normalize_range(raw, float(self.lo[row]), float(self.hi[row]))

    def roi(self, image: np.ndarray) -> np.ndarray:
        """The profile's region of interest of a frame (a view)."""
        h, w = image.shape[:2]
        crop = self.profile.crop
        t, b, left, r = crop.pixels(h, w) if crop is not None else (0, h, 0, w)
        return image[t:b, left:r]

    def compose(self, image: np.ndarray, row: int, norm: np.ndarray | None = None
                ) -> np.ndarray:
        """Lay row's map on the frame (in place, as Renderer.compose): the ROI or the frame."""
        with self.lock:
            roi = self.roi(image)
            out = roi if self.profile.output == "roi" else image
            raw = out.copy() if self.compare else None
            if self.enabled:
                self.overlay.draw(roi, self.norm(row) if norm is None else norm)
            steering = self.track.steering(row)
            if self.hud and steering is not None:
                self.steering_hud(out, steering, self.recorded(row))
            if raw is not None:
                out = views.side_by_side(raw, out, labels=("frame", self.track.meta["mode"]))
            if self.profile.output_size is not None:
                out = cv2.resize(out, self.profile.output_size, interpolation=cv2.INTER_AREA)
            return out

    def recorded(self, row: int) -> pilot.Steering | None:
        """The steering a tub recorded for a row, or None."""
        angle, throttle = float(self.track.recorded_angle[row]), \
            float(self.track.recorded_throttle[row])
        if not np.isfinite(angle):
            return None
        return pilot.Steering(angle, throttle if np.isfinite(throttle) else None)


class Replay(InOrder):
    """What pipeline.render needs of a Renderer, drawn from a track: frames in order, the
    maps through the profile's own MapNormalizer (running range and EMA exactly)."""

    def __init__(self, composer: Composer) -> None:
        self.composer = composer
        p = composer.profile
        value_range = p.range
        if p.normalize == "fixed" and value_range is None:
            value_range = (float(composer.lo[0]), float(composer.hi[0]))
        self.normalizer = ov.MapNormalizer(p.normalize, value_range, p.decay, p.ema)
        self.times = StageTimes()

    def process_frame(self, frame: Frame) -> np.ndarray:
        """The frame with its row's map laid on it."""
        self.following = frame.index + 1
        row = self.composer.track.row(frame.index)
        norm = self.normalizer(self.composer.track.raw(row))
        return self.composer.compose(frame.image, row, norm)


def open_track(path: str | Path | Track, source: Any = None, model: str | Path | None = None
               ) -> Track:
    """A track, refused in one line if it does not match the source or the model asked for."""
    track = path if isinstance(path, Track) else Track(path)
    sha = file_sha256(model) if model is not None else None
    track.check(source, sha, Path(model).name if model is not None else "the model")
    return track


def rerender(source: Any, track: str | Path | Track, sink: Sink,
             profile: prof.Profile | None = None, changes: Mapping[str, Any] | None = None,
             model: str | Path | None = None, progress: Callable[[int], None] | None = None
             ) -> int:
    """Every frame of the source with its track map re-drawn (no model); frames written."""
    track = open_track(track, source, model)
    composer = Composer(track, drawing_profile(track, profile, changes))
    return render(source, Replay(composer), sink, progress)
