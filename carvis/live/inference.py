"""The model thread: runs the model on the newest frame it is handed, as fast as it can.

The output loop hands it a copy of a frame whenever it is idle and lays the newest map on every
frame it sends out, so the frame rate is the camera's whatever the model costs. A map is laid on
the frame it was computed from or a later one, never an older one. This thread owns the map
maker: its settings change here too, between two maps (carvis.live.controls).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

from carvis import handoff
from carvis.frame import Frame
from carvis.live.capture import RateMeter
from carvis.maps import MapMaker, MapResult


@dataclasses.dataclass(frozen=True)
class Map:
    """A computed map and the frame it came from (the loop's sequence number, capture time)."""

    result: MapResult
    seq: int
    timestamp: float
    compute_s: float


class MapThread:
    """Computes maps on the newest offered frame in its own thread; the newest is ``latest``."""

    def __init__(self, maker: MapMaker, between: Callable[[], None]) -> None:
        self.maker = maker
        self.between = between  # run between two maps (the map maker's settings changes)
        self.latest: Map | None = None
        self.error: BaseException | None = None
        self.rate = RateMeter()
        self.computed = 0
        self._offered: tuple[int, Frame] | None = None
        self._busy = False
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="carvis-model", daemon=True)

    def start(self) -> MapThread:
        """Start computing."""
        self._thread.start()
        return self

    @property
    def idle(self) -> bool:
        """True when the model waits for a frame (an offer would be taken at once)."""
        return not self._busy and self._offered is None

    def offer(self, seq: int, frame: Frame) -> bool:
        """Hand a frame over if the model is idle (a copy: the loop draws on the original)."""
        with self._cond:
            if self._busy or self._offered is not None:
                return False
            self._offered = (seq, handoff.copied(frame))
            self._cond.notify_all()
        return True

    def wait_for(self, seq: int, timeout: float) -> Map | None:
        """The newest map, waiting up to timeout for the one of frame seq."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (self.latest is None or self.latest.seq < seq) and self.error is None:
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    break
                self._cond.wait(left)
            return self.latest

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.between()
                with self._cond:
                    if self._offered is None:
                        self._cond.wait(0.05)
                    item, self._offered = self._offered, None
                    self._busy = item is not None
                if item is None:
                    continue
                seq, frame = item
                t0 = time.perf_counter()
                result = self.maker(frame.image, frame.record)
                done = Map(result, seq, frame.timestamp, time.perf_counter() - t0)
                with self._cond:
                    self.latest, self._busy = done, False
                    self.computed += 1
                    self._cond.notify_all()
                self.rate.tick()
        except BaseException as exc:  # noqa: BLE001 - raised again by the output loop
            with self._cond:
                self.error = exc
                self._cond.notify_all()

    def stop(self, timeout: float = 1.0) -> bool:
        """Stop after the map being computed; True if the thread ended within the timeout."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        return not self._thread.is_alive()
