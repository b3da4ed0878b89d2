"""The capture thread: reads a source as fast as it delivers into a latest-frame slot.

Latency beats completeness: the slot keeps only the newest frame (a frame the loop did not take
in time is dropped and counted); a file source is paced at its own fps, as a camera would
deliver it.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time

from carvis.errors import CarvisError
from carvis.frame import Frame
from carvis.sources.base import Source

MAX_LAG = 0.5  # seconds a paced file may fall behind its clock before the clock restarts


class RateMeter:
    """Events per second over the last few seconds."""

    def __init__(self, window: float = 2.0, size: int = 512) -> None:
        self.window = window
        self._times: collections.deque[float] = collections.deque(maxlen=size)

    def tick(self, t: float | None = None) -> None:
        """Count one event (now, or at monotonic time t)."""
        self._times.append(time.monotonic() if t is None else t)

    def rate(self) -> float:
        """Events per second in the window (0 with fewer than two events)."""
        now = time.monotonic()
        times = [t for t in tuple(self._times) if now - t <= self.window]
        if len(times) < 2 or times[-1] <= times[0]:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])


class CaptureThread:
    """Reads a source as fast as it delivers into a latest-frame slot; drops are counted."""

    def __init__(self, source: Source, *, pace: bool | None = None) -> None:
        self.source = source
        # A file has no clock of its own: in live mode it plays at its native fps.
        self.pace = (not source.live) if pace is None else pace
        self.captured = 0
        self.dropped = 0
        self.error: CarvisError | None = None
        self.done = False
        self.read_times: collections.deque[float] = collections.deque(maxlen=300)
        self.rate = RateMeter()
        self._frame: Frame | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="carvis-capture", daemon=True)

    def start(self) -> CaptureThread:
        """Start capturing."""
        self._thread.start()
        return self

    def _run(self) -> None:
        interval = 1.0 / max(self.source.fps, 1e-3)
        due: float | None = None
        try:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                frame = self.source.read()
                if frame is None:
                    break
                self.read_times.append(time.perf_counter() - t0)
                if self.pace:
                    # Play the file as a camera would film it: frame k is due k/fps after the
                    # start. A frame decoded late is handed on at once (the loop takes the
                    # newest, so the clock is kept and late frames count as drops); after a
                    # long stall (over MAX_LAG) the clock restarts rather than burst.
                    now = time.monotonic()
                    if due is None or now - due > MAX_LAG:
                        due = now
                    elif due > now and self._stop.wait(due - now):
                        break
                    due += interval
                    frame = dataclasses.replace(frame, timestamp=time.monotonic())
                self._publish(frame)
        except CarvisError as exc:
            self.error = exc
        except Exception as exc:  # noqa: BLE001 - a device failing mid-run: one line
            self.error = CarvisError(f"source {self.source.name!r} failed: "
                                     f"{type(exc).__name__}: {exc}")
        finally:
            with self._cond:
                self.done = True
                self._cond.notify_all()

    def _publish(self, frame: Frame) -> None:
        with self._cond:
            if self._frame is not None:
                self.dropped += 1  # the loop did not take the previous one in time
            self._frame = frame
            self.captured += 1
            self._cond.notify()
        self.rate.tick(frame.timestamp)

    def get(self, timeout: float) -> Frame | None:
        """The newest frame not yet taken (each is handed out once), or None on timeout/end."""
        with self._cond:
            if self._frame is None and not self.done:
                self._cond.wait(timeout)
            frame, self._frame = self._frame, None
            return frame

    @property
    def finished(self) -> bool:
        """True once the source has ended (or failed) and its last frame was taken."""
        return self.done and self._frame is None

    def stop(self, timeout: float = 1.0) -> bool:
        """Ask the thread to stop; True if it ended within the timeout."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()
