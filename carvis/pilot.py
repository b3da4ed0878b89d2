"""A pilot's outputs as angle and throttle, a tub record's recorded ones, and how far apart.

DonkeyCar's pilots (donkeycar/parts/keras.py): ``KerasLinear`` has one value per output
(``n_outputs0`` angle, ``n_outputs1`` throttle); ``KerasCategorical`` a softmax of 15 angle bins
over [-1, 1] and one of 20 throttle bins over [0, 0.5), read by ``linear_unbin`` at the argmax.
The bin layout comes from the output's length, so the default model's 5 bins read the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

THROTTLE_RANGE = 0.5  # DonkeyCar's MODEL_CATEGORICAL_MAX_THROTTLE_RANGE
RECORDED_ANGLE, RECORDED_THROTTLE = "user/angle", "user/throttle"


@dataclasses.dataclass(frozen=True)
class Steering:
    """An angle in [-1, 1] (left negative), a throttle if known, and the bins behind them."""

    angle: float
    throttle: float | None = None
    angle_bins: np.ndarray | None = None     # probabilities of a categorical angle head
    throttle_bins: np.ndarray | None = None  # probabilities of a categorical throttle head
    location: int | None = None  # a localizer pilot's location (its argmax)


def probabilities(values: np.ndarray, softmax: bool = True) -> np.ndarray:
    """Bins as probabilities: as they are after a softmax, else softmax'd logits."""
    v = np.asarray(values, np.float64).reshape(-1)
    if softmax:
        return v
    e = np.exp(v - v.max())
    return e / e.sum()


def angle_of_bins(bins: np.ndarray) -> float:
    """DonkeyCar's linear_unbin for N angle bins spread evenly over [-1, 1]: the argmax's."""
    n = int(np.asarray(bins).size)
    return -1.0 + 2.0 * int(np.argmax(bins)) / (n - 1) if n > 1 else 0.0


def throttle_of_bins(bins: np.ndarray, throttle_range: float = THROTTLE_RANGE) -> float:
    """DonkeyCar's linear_unbin(offset=0, R=range) for N throttle bins: argmax x R / N."""
    n = int(np.asarray(bins).size)
    return int(np.argmax(bins)) * throttle_range / n


def read(prediction: np.ndarray, throttle: np.ndarray | None = None, softmax: bool = True,
         throttle_range: float = THROTTLE_RANGE) -> Steering:
    """The Steering of a pilot's angle output (one value or bins) and throttle output."""
    p = np.asarray(prediction, np.float64).reshape(-1)
    angle_bins = probabilities(p, softmax) if p.size > 1 else None
    angle = angle_of_bins(angle_bins) if angle_bins is not None else float(p[0])
    if throttle is None:
        return Steering(angle, None, angle_bins)
    t = np.asarray(throttle, np.float64).reshape(-1)
    if t.size == 1:
        return Steering(angle, float(t[0]), angle_bins)
    t = probabilities(t, bool(np.isclose(t.sum(), 1.0, atol=1e-3) and t.min() >= 0))
    return Steering(angle, throttle_of_bins(t, throttle_range), angle_bins, t)


def throttle_output(names: Sequence[str]) -> str | None:
    """Which of a pilot's other outputs is the throttle: named so, or the only one."""
    for name in names:
        if "throttle" in name.lower():
            return name
    return names[0] if len(names) == 1 else None


def read_explanation(explanation: Any, head: Any, others: Sequence[str] = ()) -> Steering | None:
    """The Steering of an explainer's run: its prediction, and the throttle among outputs."""
    if explanation is None or explanation.prediction is None:
        return None
    name = throttle_output(others)
    value = explanation.outputs.get(name) if name is not None else None
    throttle = None if value is None else np.asarray(value)[0]
    return read(explanation.prediction, throttle, bool(getattr(head, "softmax", True)))


def recorded(record: Mapping[str, Any] | None) -> Steering | None:
    """The steering a tub recorded (user/angle, user/throttle), or None if it has none."""
    if not record or record.get(RECORDED_ANGLE) is None:
        return None
    try:
        angle = float(record[RECORDED_ANGLE])
        throttle = record.get(RECORDED_THROTTLE)
        return Steering(angle, None if throttle is None else float(throttle))
    except (TypeError, ValueError):
        return None


@dataclasses.dataclass(frozen=True)
class Difference:
    """One frame's recorded and predicted angle."""

    frame: int          # the frame's number: a tub's record index, else its position
                        # (what --start and --frame take)
    record: Any         # the tub's _index of the record
    recorded: float
    predicted: float

    @property
    def error(self) -> float:
        """|recorded − predicted|."""
        return abs(self.recorded - self.predicted)


class SteeringLog:
    """Recorded vs predicted angle, frame by frame, and the summary of a render."""

    def __init__(self) -> None:
        self.rows: list[Difference] = []

    def add(self, frame: int, record: Mapping[str, Any] | None, predicted: Steering | None
            ) -> None:
        """Keep a frame's pair (nothing without a recorded or a predicted angle)."""
        rec = recorded(record)
        if rec is not None and predicted is not None:
            self.rows.append(Difference(frame, record.get("_index"), rec.angle,
                                        predicted.angle))

    def mean_error(self) -> float:
        """Mean |recorded − predicted| angle over the frames kept."""
        return float(np.mean([row.error for row in self.rows])) if self.rows else 0.0

    def worst(self, n: int = 5) -> list[Difference]:
        """The n frames where the two differ most (largest first, earlier frame on a tie)."""
        return sorted(self.rows, key=lambda row: (-row.error, row.frame))[:n]

    def summary(self, n: int = 5) -> str:
        """One line: the mean difference and the frames (a tub's records) to look at."""
        if not self.rows:
            return "no frame had both a recorded and a predicted angle"
        tub = self.rows[0].record is not None
        what = "records" if tub else "frames"
        head = (f"recorded vs predicted angle over {len(self.rows)} {what}: mean |difference| "
                f"{self.mean_error():.3f}")
        worst = [row for row in self.worst(n) if row.error > 0]
        if not worst:
            return f"{head}; they agree on every one"
        where = ", ".join(f"{row.frame} ({row.recorded:+.2f} vs {row.predicted:+.2f})"
                          for row in worst)
        return (f"{head}; they differ most at {'record' if tub else 'frame'} {where} "
                "(carvis inspect MODEL SOURCE --frame N)")
