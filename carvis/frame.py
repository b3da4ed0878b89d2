"""The frame every stage hands on: pixels, index, capture time, and a tub's record.

Where a frame sits in its source, as users name it: its *number* is a tub record's ``_index``
(what DonkeyCar shows; deleted records leave gaps) and otherwise its position; its *time* is
seconds into the source by the tub's own timestamps, otherwise position / fps.
"""

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
    time: float | None = None  # seconds into the source by its own clock (a tub's), if any

    @property
    def number(self) -> int:
        """What --start, --frame and summaries call this frame: a tub record's _index, else
        its position."""
        index = (self.record or {}).get("_index")
        return index if isinstance(index, int) and not isinstance(index, bool) else self.index

    def seconds(self, fps: float) -> float:
        """Seconds into the source: the source's own clock, else position / fps."""
        return self.time if self.time is not None else self.index / fps
