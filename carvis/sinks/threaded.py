"""A sink in its own thread behind a bounded queue, so a slow sink never slows the others.

Drop policies, chosen per sink and counted:

- ``latest`` (display, MJPEG): a queue of one; a new frame replaces one not yet taken. Viewers
  want the newest frame, not a backlog.
- ``drop-new`` (recording): a queue of N in order; when it is full the incoming frame is
  dropped, so what is written stays in capture order. On close the queue is drained first.
- ``block`` (offline render): a queue of N in order; when it is full ``put`` waits, so every
  frame is written (completeness beats latency). On close the queue is drained first.

Frames reach a worker through :class:`carvis.handoff.Outbox`, sealed: a sink only reads them.

A sink with a ``write_frame(frame)`` method gets the whole Frame (its capture time: a recording
keeps real time, the MJPEG parts carry it); others get ``write(image)``.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

import numpy as np

from carvis.frame import Frame
from carvis.sinks import Sink

POLICIES = ("latest", "drop-new", "block")


def percentile_ms(samples: collections.deque, q: float) -> float | None:
    """The q-th percentile of a ring of seconds, in ms (None if empty)."""
    values = list(samples)
    return float(np.percentile(values, q)) * 1e3 if values else None


class SinkWorker:
    """Feeds one sink from its own thread; ``put`` never blocks the caller."""

    def __init__(self, sink: Sink, name: str, *, policy: str = "latest", maxsize: int = 1,
                 drain_on_close: bool = False, ring: int = 300,
                 idle_interval: float | None = None) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy {policy!r} is not one of {POLICIES}")
        self.sink = sink
        self.name = name
        self.policy = policy
        self.maxsize = 1 if policy == "latest" else max(1, int(maxsize))
        self.drain_on_close = drain_on_close
        # A sink with an idle() method (the display's event pump) gets it called this often
        # while no frame comes.
        self._idle = getattr(sink, "idle", None)
        self.idle_interval = idle_interval if self._idle is not None else None
        self._write: Callable[[Frame], None] = getattr(
            sink, "write_frame", lambda frame: sink.write(frame.image))
        self.on_write: Callable[[float], None] | None = None  # seconds each write took
        self.written = 0
        self.dropped = 0
        self.error: BaseException | None = None
        self.write_times: collections.deque[float] = collections.deque(maxlen=ring)
        self.latencies: collections.deque[float] = collections.deque(maxlen=ring)
        self._items: collections.deque[Frame] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"carvis-sink-{name}",
                                        daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """True while the worker takes frames (not closed, no error)."""
        return self._thread.is_alive() and not self._closing and self.error is None

    def put(self, frame: Frame) -> bool:
        """Queue a frame for the sink; False (and counted) if it was dropped. Under ``block``
        it waits for room (interruptible: Ctrl-C reaches the caller)."""
        with self._cond:
            while self.policy == "block" and len(self._items) >= self.maxsize \
                    and not self._closing and self.error is None:
                self._cond.wait(0.1)
            if self._closing or self.error is not None:
                return False
            if len(self._items) >= self.maxsize:
                self.dropped += 1
                if self.policy == "drop-new":
                    return False
                self._items.popleft()
            self._items.append(frame)
            self._cond.notify_all()
        return True

    def _next(self) -> Frame | None:
        """The next frame to write, None when idle; raises StopIteration when finished."""
        with self._cond:
            if not self._items and not self._closing:
                self._cond.wait(self.idle_interval)
            if self._closing and (not self.drain_on_close or not self._items):
                self.dropped += len(self._items)
                self._items.clear()
                raise StopIteration
            item = self._items.popleft() if self._items else None
            self._cond.notify_all()  # room for a blocked put
            return item

    def _run(self) -> None:
        try:
            while True:
                try:
                    frame = self._next()
                except StopIteration:
                    break
                if frame is None:
                    if self._idle is not None:
                        self._idle()
                    continue
                t0 = time.perf_counter()
                self._write(frame)
                took = time.perf_counter() - t0
                self.write_times.append(took)
                if self.on_write is not None:
                    self.on_write(took)
                self.latencies.append(time.monotonic() - frame.timestamp)
                self.written += 1
        except BaseException as exc:  # noqa: BLE001 - kept, reported by the live loop
            self.error = exc
        finally:
            try:
                self.sink.close()
            except BaseException as exc:  # noqa: BLE001 - kept, reported by the live loop
                self.error = self.error or exc

    def close(self, timeout: float | None = None) -> bool:
        """Stop taking frames, finish (drain if asked) and close the sink; True if done."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def stats(self) -> dict:
        """Counts and timings of this sink, JSON-ready."""
        times = percentile_ms(self.write_times, 50)
        return {
            "written": self.written,
            "dropped": self.dropped,
            "queued": len(self._items),
            "write_ms": round(times, 2) if times is not None else None,
            "latency_p50_ms": _round(percentile_ms(self.latencies, 50)),
            "latency_p99_ms": _round(percentile_ms(self.latencies, 99)),
            "error": str(self.error) if self.error else None,
        }


def _round(v: float | None) -> float | None:
    return round(v, 2) if v is not None else None
