"""Recording while live: file names, start/stop (each start a new file), real time kept, a failed
disk noticed; and snapshots of the newest composed frame.

A live recording plays at wall-clock speed: each frame is placed on the camera's clock by its
capture time, and a gap (frames dropped to stay live) holds the frame before it, as the screen
did. The default is Matroska (H.264), which is playable while written: a power cut loses about
the last second. An .avi (MJPG) survives a kill too, but OpenCV does not report failed writes,
so every recording is also watched for a file that stops growing (a full disk).
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from carvis.errors import CarvisError
from carvis.frame import Frame
from carvis.sinks import Sink
from carvis.sinks.table import SinkOptions, open_sink
from carvis.sinks.threaded import SinkWorker

#: Where a recorder's notes go: (logging level, text).
Say = Callable[[int, str], None]

RECORD_SUFFIXES = (".mkv", ".mp4", ".avi")
DEFAULT_SUFFIX = ".mkv"
LIVE_PRESET = "ultrafast"  # x264 for a car: little CPU, no lookahead (nothing held back)
STALL_SECONDS = 3.0  # a file that takes frames and does not grow for this long has failed
MAX_GAP_SECONDS = 10.0  # a longer gap is held this long (a suspended laptop, not a camera)


def check_record_path(path: str | Path, what: str = "--record") -> Path:
    """Refuse, in one line, a recording name carvis cannot write, by trying to create it."""
    path = Path(path)
    if path.suffix.lower() not in RECORD_SUFFIXES:
        raise CarvisError(f"{what} {str(path)!r}: give a file name ending in "
                          f"{', '.join(RECORD_SUFFIXES)} (.mkv plays even after a power cut)")
    existed = path.exists()
    try:
        with open(path, "ab"):
            pass
    except OSError as exc:
        raise CarvisError(f"{what} {str(path)!r} cannot be written ({exc.strerror or exc}); "
                          "choose a folder you can write to") from None
    if not existed:
        path.unlink(missing_ok=True)
    return path


def open_recording(path: Path, fps: float) -> Sink:
    """The sink for a live recording, by its suffix (the sinks table's)."""
    return open_sink(path, SinkOptions(fps, preset=LIVE_PRESET), allowed=RECORD_SUFFIXES)


class Timeline(Sink):
    """Frames onto the camera's clock: a gap repeats the frame before it; the file is watched."""

    def __init__(self, sink: Sink, path: Path, fps: float) -> None:
        self.sink = sink
        self.path = path
        self.fps = float(fps)
        self.frames = 0  # frames in the file, repeats included
        self.repeated = 0  # of those, frames held over a gap to keep the file on the clock
        self.skipped = 0  # frames taken but left out: a second frame in one slot
        self._start: float | None = None
        self._slot = -1
        self._last: np.ndarray | None = None
        self._size = -1
        self._grown = time.monotonic()

    def write_frame(self, frame: Frame) -> None:
        """Write a frame at its slot on the clock (two in one slot: the newer is skipped)."""
        if self._start is None:
            self._start = frame.timestamp
        slot = round((frame.timestamp - self._start) * self.fps)
        if slot <= self._slot:
            self.skipped += 1  # two frames in one slot of the file's clock
            return
        held = min(slot - self._slot - 1, int(MAX_GAP_SECONDS * self.fps))
        if self._last is not None:
            for _ in range(held):
                self._write(self._last)
            self.repeated += held
        self._write(frame.image)
        self._slot, self._last = slot, frame.image
        self._watch()

    def write(self, image: np.ndarray) -> None:
        self._write(image)

    def _write(self, image: np.ndarray) -> None:
        self.sink.write(image)
        self.frames += 1

    def _watch(self) -> None:
        """Fail when the file stopped growing although frames keep coming (a full disk)."""
        now = time.monotonic()
        try:
            size = os.stat(self.path).st_size
        except OSError:
            size = -1  # not created yet (an encoder holds the first frames back), or gone
        if size != self._size and size >= 0:
            self._size, self._grown = size, now
        elif now - self._grown > STALL_SECONDS:
            raise CarvisError(f"nothing reached the file for {now - self._grown:.0f} s "
                              "(disk full, or the file was removed?)")

    def close(self) -> None:
        self.sink.close()


def record_names(first: str | None, folder: str) -> Iterator[Path]:
    """The files recordings go to: first, first-2, ... (a name that exists is passed over,
    never overwritten); without one, stamped names in folder."""
    if first:
        path = Path(first)
        for candidate in itertools.chain([path], (path.with_name(f"{path.stem}-{n}{path.suffix}")
                                                  for n in itertools.count(2))):
            if not candidate.exists():
                yield candidate
    while True:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path(folder) / f"carvis-{stamp}{DEFAULT_SUFFIX}"
        for n in itertools.count(2):
            if not path.exists():
                break
            path = path.with_name(f"carvis-{stamp}-{n}{DEFAULT_SUFFIX}")
        yield path


class Recorder:
    """Frames to files behind a bounded queue; a stopped file drains in its own thread."""

    def __init__(self, fps: float, say: Say, *, first: str | None = None, folder: str = ".",
                 queue_size: int = 16) -> None:
        self.fps = fps
        self.queue_size = queue_size
        self.worker: SinkWorker | None = None
        self.paths: list[str] = []
        self.failures: list[str] = []  # one line per recording that failed
        self._say = say
        self._names = record_names(first, folder)
        self._first = Path(first) if first else None
        self._closing: list[SinkWorker] = []

    @property
    def recording(self) -> bool:
        """True while frames go to a file."""
        worker = self.worker
        return worker is not None and worker.alive

    @property
    def failure(self) -> str | None:
        """The last recording failure, for the page and /stats."""
        return self.failures[-1] if self.failures else None

    def start(self) -> None:
        """Open the next file and record to it."""
        path = check_record_path(next(self._names), "recording")
        sink = Timeline(open_recording(path, self.fps), path, self.fps)
        if self._first is not None and path != self._first and not self.paths:
            self._say(logging.WARNING, f"{self._first} exists: recording to {path} instead "
                      "(carvis never overwrites a recording)")
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

    def put(self, frame: Frame) -> bool:
        """Queue a frame for the file, if recording; True if it was taken."""
        worker = self.worker
        return worker is not None and worker.put(frame)

    def check(self) -> bool:
        """A failed recording stops recording, in one line (stream and display go on); True
        when it just did."""
        worker = self.worker
        if worker is None or worker.error is None:
            return False
        self.worker = None
        worker.close(timeout=0)
        line = f"recording to {worker.sink.path} stopped: {_one_line(worker.error)}"
        self.failures.append(line)
        self._say(logging.ERROR, line)
        return True

    def stats(self) -> dict[str, Any] | None:
        """The recording worker's stats (None when not recording)."""
        worker = self.worker
        if worker is None:
            return None
        sink: Timeline = worker.sink
        return {**worker.stats(), "path": str(sink.path), "file_frames": sink.frames,
                "repeated": sink.repeated}

    def finish(self, deadline: float) -> None:
        """Wait (until the monotonic deadline) for stopped files to drain; say how each went."""
        for worker in self._closing:
            worker.close(timeout=max(0.05, deadline - time.monotonic()))
        for worker in self._closing:
            sink: Timeline = worker.sink
            if worker.error is not None:
                line = f"recording to {sink.path} failed: {_one_line(worker.error)}"
                if not any(str(sink.path) in f for f in self.failures):
                    self.failures.append(line)
                    self._say(logging.ERROR, line)
            elif not worker.close(timeout=0):
                self._say(logging.WARNING, f"recording to {sink.path} did not finish in time")
            else:
                dropped = worker.dropped + sink.skipped
                self._say(logging.INFO, f"recorded {sink.frames} frames to {sink.path} "
                          f"({sink.frames - sink.repeated} camera frames and "
                          f"{sink.repeated} repeats that keep it on the wall clock; "
                          f"{dropped} frames not recorded to stay live)")
        self._closing.clear()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def save_snapshot(frame: Frame, folder: str) -> Path:
    """Write a composed frame as a PNG in folder; its path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(folder) / f"carvis-snapshot-{stamp}-{frame.index}.png"
    if not cv2.imwrite(str(path), frame.image):
        raise CarvisError(f"cannot write snapshot {str(path)!r}; check the folder")
    return path
