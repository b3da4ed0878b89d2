"""The capture thread: reads a source as fast as it delivers into a latest-frame slot.

Latency beats completeness: the slot keeps only the newest frame (a frame the loop did not take
in time is dropped and counted); a file source is paced at its own fps, as a camera would
deliver it. A live source that fails (unplugged, dropped stream, a camera error) is reopened
with back-off while :class:`NoSignal` ticks keep the outputs going at the camera's rate; a file
source just ends.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time

import cv2
import numpy as np

from carvis.errors import CarvisError
from carvis.frame import Frame
from carvis.sources.base import Source

MAX_LAG = 0.5  # seconds a paced file may fall behind its clock before the clock restarts
BACKOFF = (0.25, 0.5, 1.0, 2.0, 4.0)  # seconds between two attempts to reopen a lost source

log = logging.getLogger("carvis")


@dataclasses.dataclass(frozen=True)
class NoSignal:
    """A tick while the source is lost: the outputs show a placeholder in its place."""

    timestamp: float
    lost_for: float  # seconds since the source was lost

    def text(self) -> str:
        """The placeholder's words."""
        return f"no signal - {self.lost_for:.1f} s"

    def image(self, shape: tuple[int, ...]) -> np.ndarray:
        """The placeholder: dark grey, its words in the middle, the size of the outputs."""
        h, w = shape[:2]
        image = np.full((h, w, 3), 48, np.uint8)
        text, scale = self.text(), max(0.4, w / 640)
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 2)
        org = (max(0, (w - tw) // 2), (h + th) // 2)
        cv2.putText(image, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (230, 230, 230), 2,
                    cv2.LINE_AA)
        return image


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
        self.losses = 0
        self.reconnects = 0
        self.lost_since: float | None = None
        self.last_loss: str | None = None
        # Only a live source that can be reopened comes back; a file ends.
        self._reopen = getattr(source, "reopen", None) if source.live else None
        self.error: CarvisError | None = None
        self.done = False
        self.read_times: collections.deque[float] = collections.deque(maxlen=300)
        self.rate = RateMeter()
        self._frame: Frame | NoSignal | None = None
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
                frame = self._read()
                if frame is None:
                    if self._reopen is not None and not self._stop.is_set() \
                            and self._recover(interval):
                        continue
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

    def _read(self) -> Frame | None:
        """The source's next frame; None at its end, or when a live source failed (noted)."""
        if self._reopen is None:
            return self.source.read()
        try:
            frame = self.source.read()
        except Exception as exc:  # noqa: BLE001 - a device error: the source is reopened
            self.last_loss = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}" \
                if str(exc).strip() else type(exc).__name__
            return None
        if frame is None:
            self.last_loss = "the source stopped delivering frames"
        return frame

    def _recover(self, interval: float) -> bool:
        """Tick NoSignal at the camera's rate while reopening with back-off; True once back."""
        lost = time.monotonic()
        self.losses += 1
        self.lost_since = lost
        log.warning("lost %s (%s); reopening it, no-signal frames meanwhile", self.source.name,
                    self.last_loss)
        attempt: list[BaseException | None] = []
        worker: threading.Thread | None = None
        tries, next_try, due = 0, lost + BACKOFF[0], lost
        while not self._stop.is_set():
            now = time.monotonic()
            if worker is None and now >= next_try:
                attempt = []
                worker = threading.Thread(target=self._attempt, args=(attempt,),
                                          name="carvis-reopen", daemon=True)
                worker.start()
            elif worker is not None and not worker.is_alive():
                if attempt and attempt[0] is None:
                    self.reconnects += 1
                    self.lost_since = None
                    log.info("%s is back after %.1f s", self.source.name, now - lost)
                    return True
                tries += 1
                worker, next_try = None, now + BACKOFF[min(tries, len(BACKOFF) - 1)]
            self._publish(NoSignal(now, now - lost))
            due = max(due + interval, now - interval)
            self._stop.wait(max(0.0, due - time.monotonic()))
        return False

    def _attempt(self, outcome: list[BaseException | None]) -> None:
        try:
            self._reopen()
            outcome.append(None)
        except Exception as exc:  # noqa: BLE001 - tried again after the back-off
            outcome.append(exc)

    def _publish(self, frame: Frame | NoSignal) -> None:
        real = isinstance(frame, Frame)
        with self._cond:
            if isinstance(self._frame, Frame):
                self.dropped += 1  # the loop did not take the previous one in time
            self._frame = frame
            self.captured += real
            self._cond.notify()
        if real:
            self.rate.tick(frame.timestamp)

    def get(self, timeout: float) -> Frame | NoSignal | None:
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
