"""The composer: arrays in, a picture out — the only code that draws a frame.

A frame and its map (:class:`carvis.maps.MapResult`, from the model or from a track) become
the picture every output shows: the overlay on the region of interest (normalised map →
bicubic up → threshold → colormap → add), then the views — feature grid, steering HUD, side by
side, strip chart — and the output size. `render`, live, the DonkeyCar parts and review's
replay all draw through it.

Ownership: the composer draws on the frame it is handed (the caller gives the frame up) and
returns either a view of that frame or a new array; it keeps no picture between calls, so what
it returns can be handed to another thread (:mod:`carvis.handoff`) while the next frame is
drawn. One thread owns a Composer (live: the output loop); settings change through
:meth:`apply` in that thread.
"""

from __future__ import annotations

import math
import time
from typing import Any

import cv2
import numpy as np

from carvis import hud, pilot, views
from carvis import overlay as ov
from carvis.frame import Frame
from carvis.maps import MapResult, StageTimes
from carvis.preprocess import Roi
from carvis.profile import Profile

#: The settings a composer owns (the map maker owns the model's).
DRAW_KEYS = ("threshold", "colormap", "overlay", "view", "hud", "compare")
#: `scale=None`: small pictures are scaled up to at least this many rows (makemovie's --scale).
MIN_HEIGHT = 480


def auto_scale(height: int, min_height: int = MIN_HEIGHT) -> int:
    """The whole-number factor that brings a picture this tall to at least min_height."""
    return max(1, math.ceil(min_height / max(1, height)))


def caption(frame: Frame | None, fps: float) -> str | None:
    """What the HUD says of a frame: its number (a tub's record), its time, a tub's mode."""
    if frame is None:
        return None
    record = frame.record or {}
    parts = [f"{'record' if '_index' in record else 'frame'} {frame.number}",
             f"{frame.seconds(fps):.2f} s"]
    mode = record.get("user/mode")
    if isinstance(mode, str) and mode.isprintable() and len(mode) <= 20:
        parts.append(f"mode {mode}")
    return "  ".join(parts)


class Composer:
    """Lays maps on frames for a profile's drawing settings; configured once, called per frame."""

    def __init__(self, profile: Profile, chart: hud.StripChart | None = None, *,
                 times: StageTimes | None = None, scale: int | None = 1,
                 fps: float = 30.0) -> None:
        self.profile = profile
        self.scale = scale  # the picture scaled up before the views are drawn; None: auto
        self.fps = fps
        self.roi = Roi(profile.crop)
        self.overlay = ov.Overlay(profile.threshold, profile.colormap)
        self.steering_hud = hud.SteeringHud()
        self.chart = chart
        self.times = times if times is not None else StageTimes()
        self.enabled = True
        self.view, self.hud, self.compare = profile.view, profile.hud, profile.compare
        self._composed: MapResult | None = None  # the map laid last (its colour layer is kept)

    def settings(self) -> dict[str, Any]:
        """The drawing settings in force."""
        return {"threshold": self.overlay.threshold, "colormap": self.overlay.colormap,
                "overlay": self.enabled, "view": self.view, "hud": self.hud,
                "compare": self.compare}

    def apply(self, values: dict[str, Any]) -> None:
        """Apply checked drawing settings (carvis.settings); other keys are not its own."""
        colormap = values.get("colormap", self.overlay.colormap)
        ov.colormap_id(colormap)  # a bad name changes nothing
        self.overlay.threshold = float(values.get("threshold", self.overlay.threshold))
        self.overlay.colormap = colormap
        self.enabled = values.get("overlay", self.enabled)
        self.view = values.get("view", self.view)
        self.hud = values.get("hud", self.hud)
        self.compare = values.get("compare", self.compare)

    def __call__(self, image: np.ndarray, result: MapResult | None,
                 frame: Frame | None = None) -> np.ndarray:
        """The picture of a frame: its map laid on its ROI (in place), scaled, then the views;
        None (no map yet) leaves the pixels as they are. The caller gives the image up; frame
        (the source's: its record, number and time) is what the HUD and the chart say."""
        t0 = time.perf_counter()
        roi = self.roi(image)
        out = roi if self.profile.output == "roi" else image
        raw = out.copy() if self.compare else None
        if result is not None and self.enabled and self.view == "overlay":
            self.overlay.draw(roi, result.norm, same_map=result is self._composed)
            self._composed = result
        self.times.add("overlay", time.perf_counter() - t0)
        scale = self.scale or auto_scale(out.shape[0])
        if scale > 1:  # views are drawn at the output's resolution, over pixels kept crisp
            out = cv2.resize(out, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
            if raw is not None:
                raw = cv2.resize(raw, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        out = self._views(out, raw, result, frame)
        if self.profile.output_size is not None:
            out = cv2.resize(out, self.profile.output_size, interpolation=cv2.INTER_AREA)
        return out

    def _views(self, out: np.ndarray, raw: np.ndarray | None, result: MapResult | None,
               frame: Frame | None) -> np.ndarray:
        """Feature grid, side by side, the steering panel and the strip chart below."""
        t0 = time.perf_counter()
        grid = self.view == "grid" and result is not None and result.act is not None
        steering = None if result is None else result.steering
        recorded = pilot.recorded(frame.record) if frame is not None else None
        if grid:
            shape = ", ".join(str(d) for d in result.act.shape)
            out = views.feature_grid(result.act, self.overlay.colormap,
                                     title=f"{result.layer} ({shape})")
        if raw is not None:
            label = "grid" if grid else (result.mode if result is not None else "overlay")
            out = views.side_by_side(raw, out, labels=("frame", label))
        if self.hud and steering is not None:
            out = self.steering_hud(out, steering, recorded, caption(frame, self.fps))
        if self.chart is not None and steering is not None:
            out = self.chart(out, recorded, steering,
                             None if frame is None else frame.time)
        if grid or self.hud or raw is not None or self.chart is not None:
            self.times.add("views", time.perf_counter() - t0)
        return out
