"""The frame every stage hands on: pixels, index, capture time, and a tub's record."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass
class Frame:
    """One captured frame: BGR uint8 pixels, its index in the source, its capture time."""

    image: np.ndarray
    index: int
    timestamp: float  # time.monotonic() when it was captured / decoded
    name: str = ""
    record: dict[str, Any] | None = None  # a DonkeyCar tub's record for this frame, if any
