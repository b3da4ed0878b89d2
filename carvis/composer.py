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

import time
from typing import Any

import cv2
import numpy as np

from carvis import hud, views
from carvis import overlay as ov
from carvis.maps import MapResult, StageTimes
from carvis.pilot import Steering
from carvis.preprocess import Roi
from carvis.profile import Profile

#: The settings a composer owns (the map maker owns the model's).
DRAW_KEYS = ("threshold", "colormap", "overlay", "view", "hud", "compare")


class Composer:
    """Lays maps on frames for a profile's drawing settings; configured once, called per frame."""

    def __init__(self, profile: Profile, chart: hud.StripChart | None = None, *,
                 times: StageTimes | None = None) -> None:
        self.profile = profile
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
                 recorded: Steering | None = None, seconds: float | None = None) -> np.ndarray:
        """The picture of a frame: its map laid on its ROI (in place), then the views; None
        (no map yet) leaves the pixels as they are. The caller gives the frame up. seconds:
        the frame's time in its source (the strip chart's clock)."""
        t0 = time.perf_counter()
        roi = self.roi(image)
        out = roi if self.profile.output == "roi" else image
        raw = out.copy() if self.compare else None
        if result is not None and self.enabled and self.view == "overlay":
            self.overlay.draw(roi, result.norm, same_map=result is self._composed)
            self._composed = result
        self.times.add("overlay", time.perf_counter() - t0)
        out = self._views(out, raw, result, recorded, seconds)
        if self.profile.output_size is not None:
            out = cv2.resize(out, self.profile.output_size, interpolation=cv2.INTER_AREA)
        return out

    def _views(self, out: np.ndarray, raw: np.ndarray | None, result: MapResult | None,
               recorded: Steering | None, seconds: float | None) -> np.ndarray:
        """Feature grid, steering HUD, side by side and strip chart on the overlaid output."""
        t0 = time.perf_counter()
        grid = self.view == "grid" and result is not None and result.act is not None
        steering = None if result is None else result.steering
        if grid:
            shape = ", ".join(str(d) for d in result.act.shape)
            out = views.feature_grid(result.act, self.overlay.colormap,
                                     title=f"{result.layer} ({shape})")
        elif self.hud and steering is not None:
            self.steering_hud(out, steering, recorded)
        if raw is not None:
            label = "grid" if grid else (result.mode if result is not None else "overlay")
            out = views.side_by_side(raw, out, labels=("frame", label))
        if self.chart is not None and steering is not None:
            out = self.chart(out, None if recorded is None else recorded.angle, steering.angle,
                             seconds)
        if grid or self.hud or raw is not None or self.chart is not None:
            self.times.add("views", time.perf_counter() - t0)
        return out
