"""The steering dashboard below the picture and the strip chart below that: recorded vs
predicted (makemovie's green and blue lines, made readable), drawn at the output's resolution
and never over the picture, so a 160x120 DonkeyCar frame keeps its overlay visible.

Both are views in supervision's annotate style: configured once, called per frame, and each
call returns a new picture (the frame with its panel below) — never a buffer kept between
frames, which a writer thread might still be reading (carvis.handoff).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math

import cv2
import numpy as np

from carvis.errors import CarvisError
from carvis.pilot import Steering
from carvis.views import FONT, HUD_OUTLINE, HUD_PANEL, TEXT, draw_bins

RECORDED = (0, 210, 0)     # BGR green: what the driver did (makemovie's green line)
PREDICTED = (255, 120, 0)  # BGR blue: what the model says (makemovie's blue line)
AXIS = (90, 90, 90)
MIN_LENGTH = 0.3           # a line's length at throttle 0, as a fraction of the full length
MAX_DEGREES = 60.0         # an angle of ±1 turns a line this far from straight ahead


def text_scale(row_height: float) -> float:
    """The Hershey font scale whose text (with its descent) fits a row of this height."""
    return max(0.3, row_height / 30.0)


def label(name: str, steering: Steering) -> str:
    """'predicted -0.32 thr 0.41': a line's legend."""
    text = f"{name} {steering.angle:+.2f}"
    if steering.throttle is not None:
        text += f" thr {steering.throttle:.2f}"
    return text if steering.location is None else f"{text} loc {steering.location}"


# --------------------------------------------------------------------------- the dashboard


@dataclasses.dataclass(frozen=True)
class PanelLayout:
    """The dashboard below a picture: the gauge, the legend and the bins' places."""

    top: int          # first row of the panel in the output
    height: int
    pivot: tuple[int, int]  # the gauge's lines start here
    length: int       # a line's full length
    text_x: int       # the legend's left edge
    bins: tuple[int, int, int, int]  # x0, y0, x1, y1 of the bins' area (right of the legend)

    @property
    def scale(self) -> float:
        """The legend's font scale: three rows fill the panel."""
        return text_scale(self.height / 3.4)


def panel_layout(picture_shape: tuple[int, ...], bins: bool) -> PanelLayout:
    """Where the dashboard goes below a picture of this shape (its size follows the width)."""
    h, w = int(picture_shape[0]), int(picture_shape[1])
    height = max(64, min(150, round(w * 0.18)))
    length = round(height * 0.72)
    pivot = (8 + length, h + height - 8)
    text_x = pivot[0] + length + 14
    right = w - 8 if bins else w
    bins_x0 = max(text_x + 4, w - 8 - min(w // 4, 24 * 20)) if bins else w
    return PanelLayout(h, height, pivot, length, text_x,
                       (bins_x0, h + 8, right, h + height - 8))


def line_tip(layout: PanelLayout, angle: float, throttle: float | None) -> tuple[int, int]:
    """The end of a steering line: turned by angle x 60 deg, longer with more throttle."""
    theta = math.radians(max(-1.0, min(1.0, float(angle))) * MAX_DEGREES)
    share = 1.0 if throttle is None else MIN_LENGTH + (1 - MIN_LENGTH) * min(
        max(float(throttle), 0.0), 1.0)
    length = layout.length * share
    x, y = layout.pivot
    return round(x + length * math.sin(theta)), round(y - length * math.cos(theta))


class SteeringHud:
    """Recorded and predicted steering in a panel below the picture: a gauge (lines turned by
    the angle, long by the throttle, L and R at its ends), a legend naming the frame (record,
    time, mode) and both values, and the pilot's bins. What does not change from frame to
    frame (the panel, the arc, L and R) is drawn once per picture size and copied."""

    def __init__(self) -> None:
        self._panels: dict[tuple[int, int, bool], np.ndarray] = {}

    def __call__(self, picture: np.ndarray, predicted: Steering | None,
                 recorded: Steering | None = None, caption: str | None = None) -> np.ndarray:
        """The picture with the panel below it (a new array); nothing to show: the picture."""
        if predicted is None:
            return picture
        bins = [b for b in (predicted.angle_bins, predicted.throttle_bins) if b is not None]
        layout = panel_layout(picture.shape, bool(bins))
        h, w = picture.shape[:2]
        out = np.empty((h + layout.height, w, 3), np.uint8)
        out[:h] = picture
        out[h:] = self._panel(layout, w, bool(bins))
        thick = max(2, layout.length // 25)
        if recorded is not None:
            cv2.line(out, layout.pivot, line_tip(layout, recorded.angle, recorded.throttle),
                     RECORDED, thick + 2, cv2.LINE_AA)
        cv2.line(out, layout.pivot, line_tip(layout, predicted.angle, predicted.throttle),
                 PREDICTED, thick, cv2.LINE_AA)
        rows = [(caption, TEXT)] if caption else []
        if recorded is not None:
            rows.append((label("recorded", recorded), RECORDED))
        rows.append((label("predicted", predicted), PREDICTED))
        legend(out, rows, layout.text_x, layout.top, layout.height, layout.bins[0] - 8)
        x0, y0, x1, y1 = layout.bins
        for k, values in enumerate(bins):  # the angle's bins above the throttle's
            band = (y1 - y0 + 1) // len(bins)
            draw_bins(out, values, (x0, y0 + k * band, x1, y0 + (k + 1) * band - 4))
        return out

    def _panel(self, layout: PanelLayout, width: int, bins: bool) -> np.ndarray:
        """The panel with the arc and L and R on it, drawn once per size."""
        key = (layout.height, width, bins)
        panel = self._panels.get(key)
        if panel is None:
            canvas = np.empty((layout.top + layout.height, width, 3), np.uint8)
            canvas[layout.top:] = HUD_PANEL
            cv2.ellipse(canvas, layout.pivot, (layout.length, layout.length), 0,
                        270 - MAX_DEGREES, 270 + MAX_DEGREES, HUD_OUTLINE, 1, cv2.LINE_AA)
            scale = layout.scale * 0.8
            for text, side in (("L", -1.0), ("R", 1.0)):
                x, y = line_tip(dataclasses.replace(layout, length=layout.length + 3), side,
                                None)
                tw = cv2.getTextSize(text, FONT, scale, 1)[0][0]
                cv2.putText(canvas, text, (x - tw if side < 0 else x, y), FONT, scale,
                            HUD_OUTLINE, 1, cv2.LINE_AA)
            panel = self._panels[key] = canvas[layout.top:].copy()
        return panel


def legend(out: np.ndarray, rows: list[tuple[str, tuple[int, int, int]]], x: int, top: int,
           height: int, right: int) -> None:
    """Coloured lines of text in a panel's rows (in place), shrunk to fit the width."""
    if not rows:
        return
    row_h = height / max(3.4, len(rows) + 0.4)
    scale = _fitted_scale(text_scale(row_h), max(len(text) for text, _ in rows), right - x)
    for k, (text, color) in enumerate(rows):
        y = top + round(row_h * (k + 1))
        cv2.putText(out, text, (x, y), FONT, scale, color, 1, cv2.LINE_AA)


@functools.lru_cache(maxsize=64)
def _fitted_scale(scale: float, chars: int, room: int) -> float:
    """The font scale at which a row of this many characters fits the room (measured on the
    widest characters a legend has, so the scale stays put from frame to frame)."""
    widest = cv2.getTextSize("0" * chars, FONT, scale, 1)[0][0]
    return scale * room / widest if widest > room > 0 else scale


# --------------------------------------------------------------------------- the strip chart


@dataclasses.dataclass(frozen=True)
class ChartLayout:
    """The strip chart below a picture: an angle band above a throttle band."""

    top: int      # first row of the chart in the output image
    height: int
    x0: int       # first column of the plot (after the axis labels)
    x1: int       # last column: the newest sample

    def band(self, k: int) -> tuple[int, int]:
        """(top, height) of band k: 0 the angle, 1 the throttle."""
        half = self.height // 2
        return self.top + k * half, half

    def y(self, value: float, k: int = 0) -> int:
        """The row of a value in band k: +1 (right, full throttle) at the top, -1 at the
        bottom."""
        top, height = self.band(k)
        half = (height - 6) / 2
        return top + round(height / 2 - max(-1.0, min(1.0, value)) * half)

    def x(self, age: float, span: float) -> int:
        """The column of a sample `age` seconds older than the newest (at the right edge)."""
        return round(self.x1 - age / span * (self.x1 - self.x0))


class StripChart:
    """Recorded and predicted angle and throttle over the last seconds (of the source's own
    clock: a tub's timestamps), in a strip below the picture."""

    GAP = 4.0  # a gap of more than this many frames breaks the lines (deleted records, a pause)

    def __init__(self, seconds: float = 5.0, fps: float = 20.0,
                 height: int | None = None) -> None:
        if not seconds > 0 or not fps > 0:
            raise CarvisError(f"a strip chart needs seconds > 0 and fps > 0, got {seconds} s "
                              f"at {fps} fps; give e.g. --plot-seconds 5")
        self.seconds, self.fps, self.height = float(seconds), float(fps), height
        # (time, recorded angle, predicted angle, recorded throttle, predicted throttle)
        self.samples: collections.deque[tuple[float, ...]] = collections.deque()
        self._count = 0

    def layout(self, picture_shape: tuple[int, ...]) -> ChartLayout:
        """Where the chart goes below a picture of this shape."""
        h, w = int(picture_shape[0]), int(picture_shape[1])
        height = self.height or max(64, min(200, round(w * 0.22)))
        x0 = cv2.getTextSize("thr", FONT, text_scale(height / 8), 1)[0][0] + 8
        return ChartLayout(h, height, x0, w - 4)

    def __call__(self, picture: np.ndarray, recorded: Steering | None,
                 predicted: Steering | None, seconds: float | None = None) -> np.ndarray:
        """The picture with the chart below it (a new picture); this frame's values, at its
        time in the source (default: frames counted at the chart's fps), join the history."""
        now = seconds if seconds is not None else self._count / self.fps
        self._count += 1
        if self.samples and now < self.samples[-1][0]:
            self.samples.clear()  # the clock went back (a loop, a new session): start over
        self.samples.append((now, *_values(recorded), *_values(predicted)))
        while self.samples[0][0] < now - self.seconds - 1e-9:
            self.samples.popleft()
        chart = self.layout(picture.shape)
        out = np.empty((picture.shape[0] + chart.height, picture.shape[1], 3), np.uint8)
        out[:picture.shape[0]] = picture
        out[picture.shape[0]:] = HUD_PANEL
        self._axes(out, chart)
        for k, color, band in ((1, RECORDED, 0), (3, PREDICTED, 0), (2, RECORDED, 1),
                               (4, PREDICTED, 1)):
            self._line(out, chart, now, k, band, color)
        return out

    def _axes(self, out: np.ndarray, chart: ChartLayout) -> None:
        scale = text_scale(chart.height / 8)
        for band in (0, 1):
            for value in (1.0, 0.0, -1.0):
                y = chart.y(value, band)
                cv2.line(out, (chart.x0, y), (chart.x1, y), AXIS, 1, cv2.LINE_8)
        marks = (("R", 1.0, 0), ("L", -1.0, 0), ("thr", 0.0, 1))
        for text, value, band in marks:
            y = chart.y(value, band) + (round(10 * scale / 0.35) if value > 0 else -2)
            cv2.putText(out, text, (3, y), FONT, scale, HUD_OUTLINE, 1, cv2.LINE_AA)
        title = f"angle and throttle, last {self.seconds:g} s"
        width = cv2.getTextSize(title, FONT, scale, 1)[0][0]
        cv2.putText(out, title, (chart.x1 - width - 2, chart.y(0.0) - 4), FONT, scale,
                    HUD_OUTLINE, 1, cv2.LINE_AA)

    def _line(self, out: np.ndarray, chart: ChartLayout, now: float, k: int, band: int,
              color: tuple[int, int, int]) -> None:
        """One history as polylines, broken where a value is missing or time jumps."""
        run: list[tuple[int, int]] = []
        last: float | None = None
        for sample in [*self.samples, (now, None, None, None, None)]:
            t, value = sample[0], sample[k]
            jump = last is not None and t - last > self.GAP / self.fps
            if (value is None or jump) and run:
                cv2.polylines(out, [np.array(run, np.int32)], False, color, 1, cv2.LINE_8)
                run = []
            if value is not None:
                run.append((chart.x(now - t, self.seconds), chart.y(value, band)))
            last = t


def _values(steering: Steering | None) -> tuple[float | None, float | None]:
    if steering is None:
        return None, None
    return steering.angle, steering.throttle
