"""Frames between threads: the one place a picture is handed to another thread, and the rule.

The rule: a buffer handed to another thread is never written again by its sender. What
crosses owns its arrays:

- a source's frame is the taker's (:func:`owned` copies frames of a source that reads every
  frame into one buffer, so each frame taken is its own array);
- a composed picture is *sealed* by :meth:`Outbox.send` before any sink sees it: its memory is
  made read-only, so a sender that tried to draw into it again (a buffer kept between frames)
  fails loudly at once instead of changing a frame a writer is still encoding. Every sink
  reads; none writes;
- the model thread gets its own copy of a frame (:func:`copied`), because the loop draws on the
  original while the model reads it; a map comes back owning its arrays (maps.MapResult).

Measured side by side (scripts/handoff_bench.py, the race clip's ROI with a chart and a 1080p
frame): a fresh canvas per frame, sealed, costs 0.14-0.20 ms more than an (unsafe) kept one
(1.3-1.5x); a copy at the boundary 2.4-2.6x, a pool of four canvases that come back 1.5-2.2x.
Sealing itself is free. So pictures that need a canvas get a fresh one, the others are the
frame itself, and nothing is copied at the boundary.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

import numpy as np

from carvis.frame import Frame


class Receiver(Protocol):
    """What a frame is handed to: a sink worker (its own thread and bounded queue)."""

    def put(self, frame: Frame) -> bool: ...


def seal(image: np.ndarray) -> np.ndarray:
    """Make an array and every array its memory belongs to read-only; the array."""
    array: object = image
    while isinstance(array, np.ndarray):
        array.flags.writeable = False
        array = array.base
    return image


def copied(frame: Frame) -> Frame:
    """The frame with a copy of its pixels, for a thread that reads while this one draws."""
    return dataclasses.replace(frame, image=frame.image.copy())


def owned(frames: Iterable[Frame]) -> Iterator[Frame]:
    """Frames whose images are their own arrays: a source that reads each frame into the same
    buffer has its frames copied (detected on the second frame; carvis' sources never do)."""
    last: weakref.ref | None = None
    reuses: bool | None = None
    for frame in frames:
        image = frame.image
        if reuses is None and last is not None:
            previous = last()
            reuses = previous is not None and np.may_share_memory(previous, image)
        last = weakref.ref(image)
        yield copied(frame) if reuses is not False else frame


class Outbox:
    """Hands each composed frame, sealed, to every receiver; the only place that does."""

    def __init__(self, receivers: Sequence[Receiver] = ()) -> None:
        self.receivers = list(receivers)

    def send(self, frame: Frame) -> int:
        """Seal the frame's picture and hand it to every receiver; how many took it."""
        seal(frame.image)
        return sum(bool(receiver.put(frame)) for receiver in self.receivers)
