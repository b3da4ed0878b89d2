"""File sinks: an MJPG .avi, or a folder of numbered PNG frames."""

from __future__ import annotations

import collections
import logging
import os
import time
from pathlib import Path

import cv2
import numpy as np

from carvis.errors import CarvisError
from carvis.sinks import Sink

log = logging.getLogger("carvis")


def check_writable_dir(path: Path, what: str) -> None:
    """Fail early, in one line, if files cannot be created in this folder."""
    if not path.exists():
        raise CarvisError(f"{what} {str(path)!r}: folder does not exist; create it first")
    if not path.is_dir():
        raise CarvisError(f"{what} {str(path)!r} is not a folder")
    if not os.access(path, os.W_OK | os.X_OK):
        raise CarvisError(f"{what} {str(path)!r}: no permission to write there; "
                          "choose another output path")


class AviSink(Sink):
    """Motion-JPEG in an AVI container at the source's fps; released on close (Ctrl-C too)."""

    # Each frame is JPEG-encoded by OpenCV (libjpeg-turbo, at `quality`; 3x faster than FFmpeg's
    # MJPEG encoder, which also ignored the quality) and handed to FFmpeg's AVI muxer as a
    # finished packet; OpenCV builds without raw-packet writing fall back to FFmpeg's encoder.
    # `timings` keeps the last encode and write times (seconds).

    def __init__(self, path: str | Path, fps: float, quality: int = 95) -> None:
        self.path = Path(path)
        self.fps = float(fps)
        self.quality = quality
        self.frames = 0
        check_writable_dir(self.path.resolve().parent, "output")
        if self.path.exists() and not os.access(self.path, os.W_OK):
            raise CarvisError(f"output {str(self.path)!r} exists and is read-only; "
                              "choose another output path")
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None
        self._raw = False
        self._resized = False
        self._params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
        self.timings: dict[str, collections.deque[float]] = {
            "encode": collections.deque(maxlen=300), "write": collections.deque(maxlen=300)}

    def _open(self, size: tuple[int, int]) -> None:
        fourcc = cv2.VideoWriter_fourcc(*"MJPG")
        raw = getattr(cv2, "VIDEOWRITER_PROP_RAW_VIDEO", None)
        writer = None
        if raw is not None:
            writer = cv2.VideoWriter(str(self.path), cv2.CAP_FFMPEG, fourcc, self.fps, size,
                                     [raw, 1])
            if not writer.isOpened():
                writer = None
        self._raw = writer is not None
        if writer is None:
            writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, size)
        if not writer.isOpened():
            raise CarvisError(f"output {str(self.path)!r} cannot be written as an MJPG AVI; "
                              "check the path and the free disk space")
        if not self._raw:
            writer.set(cv2.VIDEOWRITER_PROP_QUALITY, self.quality)
        self._writer, self._size = writer, size

    def encode(self, image: np.ndarray) -> np.ndarray:
        """The frame as JPEG bytes (uint8 array), as this sink stores it."""
        ok, jpeg = cv2.imencode(".jpg", image, self._params)
        if not ok:
            raise CarvisError(f"cannot JPEG-encode a {image.shape} frame for {str(self.path)!r}")
        return jpeg

    def write(self, image: np.ndarray) -> None:
        size = (image.shape[1], image.shape[0])
        if self._writer is None:
            self._open(size)
        elif size != self._size:
            # A live view change (grid, compare) mid-recording: an .avi holds one size, so the
            # frame is fitted to it rather than lost.
            if not self._resized:
                log.warning("%s: frame size %dx%d differs from the recording's %dx%d; frames "
                            "are resized to fit", self.path.name, *size, *self._size)
                self._resized = True
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        t0 = time.perf_counter()
        if self._raw:
            packet = self.encode(image).reshape(1, -1)
            t1 = time.perf_counter()
            self._writer.write(packet)
            self.timings["encode"].append(t1 - t0)
            self.timings["write"].append(time.perf_counter() - t1)
        else:
            self._writer.write(image)
            self.timings["write"].append(time.perf_counter() - t0)
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None


class PngDirSink(Sink):
    """Numbered PNG frames (000000.png, 000001.png, ...) in source order."""

    def __init__(self, path: str | Path, compression: int = 1) -> None:
        self.path = Path(path)
        self.frames = 0
        parent = self.path.resolve().parent
        if self.path.exists() and not self.path.is_dir():
            raise CarvisError(f"output {str(self.path)!r} exists and is not a folder; give a "
                              "folder for PNG frames or a name ending in .avi")
        check_writable_dir(parent if not self.path.exists() else self.path, "output")
        earlier = sorted(self.path.glob("[0-9][0-9][0-9][0-9][0-9][0-9].png")) \
            if self.path.is_dir() else []
        if earlier:
            raise CarvisError(f"output folder {str(self.path)!r} already holds {len(earlier)} "
                              "frames of an earlier render; remove them or give another folder "
                              "(carvis never mixes two renders)")
        self.path.mkdir(exist_ok=True)
        self._params = [cv2.IMWRITE_PNG_COMPRESSION, compression]

    def write(self, image: np.ndarray) -> None:
        target = self.path / f"{self.frames:06d}.png"
        if not cv2.imwrite(str(target), image, self._params):
            raise CarvisError(f"cannot write {str(target)!r}; check the free disk space")
        self.frames += 1
