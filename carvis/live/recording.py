"""Recording while live: file names, start/stop (each start a new .avi), draining on stop; and
snapshots of the newest composed frame."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2

from carvis.errors import CarvisError
from carvis.frame import Frame
from carvis.sinks.files import AviSink
from carvis.sinks.threaded import SinkWorker

#: Where a recorder's notes go: (logging level, text).
Say = Callable[[int, str], None]


def record_names(first: str | None, folder: str) -> Iterator[Path]:
    """The files recordings go to: first, first-2, ...; without one, stamped names in folder."""
    if first:
        path = Path(first)
        yield path
        for n in itertools.count(2):
            yield path.with_name(f"{path.stem}-{n}{path.suffix}")
    while True:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path(folder) / f"carvis-{stamp}.avi"
        for n in itertools.count(2):
            if not path.exists():
                break
            path = path.with_name(f"carvis-{stamp}-{n}.avi")
        yield path


class Recorder:
    """Frames to .avi files behind a bounded queue; a stopped file drains in its own thread."""

    def __init__(self, fps: float, say: Say, *, first: str | None = None, folder: str = ".",
                 queue_size: int = 16) -> None:
        self.fps = fps
        self.queue_size = queue_size
        self.worker: SinkWorker | None = None
        self.paths: list[str] = []
        self._say = say
        self._names = record_names(first, folder)
        self._closing: list[SinkWorker] = []

    @property
    def recording(self) -> bool:
        """True while frames go to an .avi file."""
        return self.worker is not None and self.worker.alive

    def start(self) -> None:
        """Open the next file and record to it."""
        path = next(self._names)
        sink = AviSink(path, self.fps)
        self.worker = SinkWorker(sink, "record", policy="drop-new", maxsize=self.queue_size,
                                 drain_on_close=True)
        self.paths.append(str(path))
        self._say(logging.INFO, f"recording to {path}")

    def stop(self, announce: bool = True) -> None:
        """Stop recording; the file drains and closes in its worker's thread."""
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.close(timeout=0)
            self._closing.append(worker)
            if announce:
                self._say(logging.INFO, f"recording stopped: {worker.sink.path}")

    def set(self, on: bool) -> None:
        """Start or stop recording (each start writes a new file)."""
        if on and not self.recording:
            if self.worker is not None:
                self.stop()
            self.start()
        elif not on and self.worker is not None:
            self.stop()

    def put(self, frame: Frame) -> None:
        """Queue a frame for the file, if recording."""
        if self.worker is not None:
            self.worker.put(frame)

    def check(self) -> None:
        """A failed recording just stops recording (the run goes on)."""
        if self.worker is not None and self.worker.error is not None:
            self._say(logging.WARNING, f"recording stopped: {self.worker.error}")
            self.stop()

    def stats(self) -> dict[str, Any] | None:
        """The recording worker's stats (None when not recording)."""
        return self.worker.stats() if self.worker is not None else None

    def finish(self, deadline: float) -> None:
        """Wait (until the monotonic deadline) for stopped files to drain; say how each went."""
        for worker in self._closing:
            worker.close(timeout=max(0.05, deadline - time.monotonic()))
        for worker in self._closing:
            if worker.error is not None:
                self._say(logging.WARNING,
                          f"recording to {worker.sink.path} failed: {worker.error}")
            elif not worker.close(timeout=0):
                self._say(logging.WARNING,
                          f"recording to {worker.sink.path} did not finish in time")
            else:
                self._say(logging.INFO, f"recorded {worker.written} frames to "
                          f"{worker.sink.path} ({worker.dropped} dropped)")
        self._closing.clear()


def save_snapshot(frame: Frame, folder: str) -> Path:
    """Write a composed frame as a PNG in folder; its path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(folder) / f"carvis-snapshot-{stamp}-{frame.index}.png"
    if not cv2.imwrite(str(path), frame.image):
        raise CarvisError(f"cannot write snapshot {str(path)!r}; check the folder")
    return path
