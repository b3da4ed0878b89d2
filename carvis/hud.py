"""Recorded vs predicted steering on the frame (labelled lines, L/R marks, throttle) and a strip
chart of the angle over the last seconds: makemovie's green and blue lines, made readable.

Both are views in supervision's annotate style: configured once, called per frame (the HUD in
place; the chart returns a new picture, the frame with the chart below it — never a buffer kept
between frames, which a writer thread might still be reading: carvis.handoff).
"""

from __future__ import annotations

import collections
import dataclasses
import math

import cv2
import numpy as np

from carvis.errors import CarvisError
from carvis.pilot import Steering
from carvis.views import (
    FONT,
    HUD_OUTLINE,
    HUD_PANEL,
    NEEDLE_MAX_DEGREES,
    bar_layout,
    draw_bins,
    draw_needle,
)

RECORDED = (0, 210, 0)     # BGR green: what the driver did (makemovie's green line)
PREDICTED = (255, 120, 0)  # BGR blue: what the model says (makemovie's blue line)
AXIS = (90, 90, 90)
MIN_LENGTH = 0.3           # a line's length at throttle 0, as a fraction of the full length


@dataclasses.dataclass(frozen=True)
class LineLayout:
    """Where the steering lines go: a pivot, the full length, and the text size."""

    pivot: tuple[int, int]
    length: int
    scale: float


def line_layout(frame_shape: tuple[int, ...], bins: int = 0) -> LineLayout:
    """The lines' pivot at the bottom centre (above a bins bar, if one is drawn)."""
    h, w = int(frame_shape[0]), int(frame_shape[1])
    bottom = h - 1 - max(4, h // 40)
    if bins:  # above the bar, clear of the lines' round ends
        bottom = bar_layout(frame_shape, bins).panel[1] - 3 - max(4, min(h, w) // 30)
    length = max(10, min(bottom - 2, min(h, w) // 2))
    return LineLayout((w // 2, bottom), length, max(0.35, min(h, w) / 640))


def line_tip(layout: LineLayout, angle: float, throttle: float | None) -> tuple[int, int]:
    """The end of a steering line: turned by angle x 60 deg, longer with more throttle."""
    theta = math.radians(max(-1.0, min(1.0, float(angle))) * NEEDLE_MAX_DEGREES)
    share = 1.0 if throttle is None else MIN_LENGTH + (1 - MIN_LENGTH) * min(
        max(float(throttle), 0.0), 1.0)
    length = layout.length * share
    x, y = layout.pivot
    return round(x + length * math.sin(theta)), round(y - length * math.cos(theta))


def label(name: str, steering: Steering) -> str:
    """'predicted -0.32 thr 0.41': a line's legend."""
    text = f"{name} {steering.angle:+.2f}"
    return text if steering.throttle is None else f"{text} thr {steering.throttle:.2f}"


class SteeringHud:
    """The model's steering and, on a tub, the recorded one: lines, L/R marks, a legend."""

    def __init__(self, thickness: int | None = None) -> None:
        self.thickness = thickness

    def __call__(self, frame: np.ndarray, predicted: Steering | None,
                 recorded: Steering | None = None) -> np.ndarray:
        """Draw on the frame in place; a bare steering value keeps the needle."""
        if predicted is None:
            return frame
        bins = predicted.angle_bins
        if bins is not None:
            draw_bins(frame, bins)
        if recorded is None and predicted.throttle is None:
            return frame if bins is not None else draw_needle(frame, predicted.angle)
        layout = line_layout(frame.shape, 0 if bins is None else len(bins))
        self._axis(frame, layout)
        thick = self.thickness or max(2, layout.length // 30)
        rows = []
        if recorded is not None:
            cv2.line(frame, layout.pivot, line_tip(layout, recorded.angle, recorded.throttle),
                     RECORDED, thick + 2, cv2.LINE_AA)
            rows.append((label("recorded", recorded), RECORDED))
        cv2.line(frame, layout.pivot, line_tip(layout, predicted.angle, predicted.throttle),
                 PREDICTED, thick, cv2.LINE_AA)
        rows.append((label("predicted", predicted), PREDICTED))
        legend(frame, rows, layout.scale)
        return frame

    @staticmethod
    def _axis(frame: np.ndarray, layout: LineLayout) -> None:
        """The arc the lines sweep, with L and R at its ends."""
        cv2.ellipse(frame, layout.pivot, (layout.length, layout.length), 0,
                    270 - NEEDLE_MAX_DEGREES, 270 + NEEDLE_MAX_DEGREES, HUD_OUTLINE, 1,
                    cv2.LINE_AA)
        for text, side in (("L", -1.0), ("R", 1.0)):
            x, y = line_tip(dataclasses.replace(layout, length=layout.length + 4), side, None)
            tw = cv2.getTextSize(text, FONT, layout.scale, 1)[0][0]
            x = x - tw if side < 0 else x
            cv2.putText(frame, text, (x, y), FONT, layout.scale, HUD_OUTLINE, 1, cv2.LINE_AA)


def legend(frame: np.ndarray, rows: list[tuple[str, tuple[int, int, int]]], scale: float
           ) -> None:
    """Coloured lines of text on a dark panel at the top left (in place)."""
    sizes = [cv2.getTextSize(text, FONT, scale, 1) for text, _ in rows]
    line_h = max(th + base for (_, th), base in sizes) + 3
    width = max(tw for (tw, _), _ in sizes) + 8
    cv2.rectangle(frame, (0, 0), (min(width, frame.shape[1] - 1), line_h * len(rows) + 3),
                  HUD_PANEL, cv2.FILLED)
    for k, (text, color) in enumerate(rows):
        cv2.putText(frame, text, (4, line_h * (k + 1) - 2), FONT, scale, color, 1, cv2.LINE_AA)


@dataclasses.dataclass(frozen=True)
class ChartLayout:
    """The strip chart below a frame: its rows, and where angle 0 and ±1 fall."""

    top: int      # first row of the chart in the output image
    height: int
    x0: int       # first column of the plot (after the axis labels)
    x1: int       # last column: the newest sample

    def y(self, angle: float) -> int:
        """The row of an angle: +1 (right) at the top, -1 (left) at the bottom."""
        half = (self.height - 8) / 2
        return self.top + round(self.height / 2 - max(-1.0, min(1.0, angle)) * half)

    def x(self, age: float, span: float) -> int:
        """The column of a sample `age` seconds older than the newest (at the right edge)."""
        return round(self.x1 - age / span * (self.x1 - self.x0))


class StripChart:
    """Recorded and predicted angle over the last seconds (of the source's own clock: a tub's
    timestamps), in a strip below the frame."""

    def __init__(self, seconds: float = 5.0, fps: float = 20.0,
                 height: int | None = None) -> None:
        if not seconds > 0 or not fps > 0:
            raise CarvisError(f"a strip chart needs seconds > 0 and fps > 0, got {seconds} s "
                              f"at {fps} fps; give e.g. --plot-seconds 5")
        self.seconds, self.fps, self.height = float(seconds), float(fps), height
        # (time, recorded, predicted), the oldest first; a gap of more than GAP frames breaks
        # the lines (deleted records, a paused recording).
        self.samples: collections.deque[tuple[float, float | None, float | None]] = \
            collections.deque()
        self._count = 0

    GAP = 4.0

    def layout(self, frame_shape: tuple[int, ...]) -> ChartLayout:
        """Where the chart goes below a frame of this shape."""
        h, w = int(frame_shape[0]), int(frame_shape[1])
        height = self.height or max(48, h // 4)
        scale = max(0.35, min(h, w) / 640)
        x0 = cv2.getTextSize("R", FONT, scale, 1)[0][0] + 8
        return ChartLayout(h, height, x0, w - 4)

    def __call__(self, frame: np.ndarray, recorded: float | None, predicted: float | None,
                 seconds: float | None = None) -> np.ndarray:
        """The frame with the chart below it (a new picture); this frame's angles, at its time
        in the source (default: frames counted at the chart's fps), join the history."""
        now = seconds if seconds is not None else self._count / self.fps
        self._count += 1
        if self.samples and now < self.samples[-1][0]:
            self.samples.clear()  # the clock went back (a loop, a new session): start over
        self.samples.append((now, recorded, predicted))
        while self.samples[0][0] < now - self.seconds - 1e-9:
            self.samples.popleft()
        chart = self.layout(frame.shape)
        out = np.empty((frame.shape[0] + chart.height, frame.shape[1], 3), np.uint8)
        out[:frame.shape[0]] = frame
        out[frame.shape[0]:] = HUD_PANEL
        self._axes(out, chart)
        for k, color in ((1, RECORDED), (2, PREDICTED)):
            self._line(out, chart, now, k, color)
        return out

    def _axes(self, out: np.ndarray, chart: ChartLayout) -> None:
        scale = max(0.35, min(out.shape[:2]) / 640)
        for angle in (1.0, 0.0, -1.0):
            y = chart.y(angle)
            cv2.line(out, (chart.x0, y), (chart.x1, y), AXIS, 1, cv2.LINE_8)
        for text, angle in (("R", 1.0), ("L", -1.0)):
            cv2.putText(out, text, (3, chart.y(angle) + (10 if angle > 0 else -2)), FONT, scale,
                        HUD_OUTLINE, 1, cv2.LINE_AA)
        title = f"angle, last {self.seconds:g} s"
        width = cv2.getTextSize(title, FONT, scale, 1)[0][0]
        cv2.putText(out, title, (chart.x1 - width - 2, chart.y(0.0) - 4), FONT, scale,
                    HUD_OUTLINE, 1, cv2.LINE_AA)

    def _line(self, out: np.ndarray, chart: ChartLayout, now: float, k: int,
              color: tuple[int, int, int]) -> None:
        """One history as polylines, broken where a value is missing or time jumps."""
        run: list[tuple[int, int]] = []
        last: float | None = None
        for sample in [*self.samples, (now, None, None)]:
            t, value = sample[0], sample[k]
            jump = last is not None and t - last > self.GAP / self.fps
            if (value is None or jump) and run:
                cv2.polylines(out, [np.array(run, np.int32)], False, color, 1, cv2.LINE_8)
                run = []
            if value is not None:
                run.append((chart.x(now - t, self.seconds), chart.y(value)))
            last = t
