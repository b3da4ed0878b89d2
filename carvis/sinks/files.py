"""File sinks: an MJPG .avi (through PyAV), or a folder of numbered PNG frames."""

from __future__ import annotations

import collections
import logging
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from carvis.errors import CarvisError
from carvis.sinks import Sink
from carvis.sinks.checks import check_writable_dir, check_writable_file, write_failed
from carvis.sinks.video import check_fps, frame_rate, import_av

log = logging.getLogger("carvis")


class AviSink(Sink):
    """Motion-JPEG in an AVI container at the source's fps; released on close (Ctrl-C too).

    Each frame is JPEG-encoded by OpenCV (libjpeg-turbo, at `quality`; 3x faster than
    FFmpeg's MJPEG encoder) and muxed by FFmpeg's AVI muxer through PyAV as a finished packet,
    so a failed write (a full disk) raises, as it does for .mp4/.mkv. `timings` keeps the last
    encode and write times (seconds).
    """

    def __init__(self, path: str | Path, fps: float, quality: int = 95) -> None:
        self.path = Path(path)
        self.fps = check_fps(fps, f"output {str(self.path)!r}")
        self.quality = quality
        self.frames = 0
        check_writable_file(self.path)
        self._av = import_av("writing .avi")
        self._container: Any = None
        self._stream: Any = None
        self._size: tuple[int, int] | None = None
        self._resized = False
        self._params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
        self.timings: dict[str, collections.deque[float]] = {
            "encode": collections.deque(maxlen=300), "write": collections.deque(maxlen=300)}

    def _open(self, size: tuple[int, int]) -> None:
        try:
            container = self._av.open(str(self.path), mode="w", format="avi")
        except (OSError, self._av.FFmpegError) as exc:
            raise write_failed(self.path, exc, self.frames) from None
        rate = frame_rate(self.fps)
        stream = container.add_stream("mjpeg", rate=rate)
        self._time_base = 1 / rate  # packets are numbered in frames
        stream.width, stream.height = size
        stream.pix_fmt = "yuvj420p"
        self._container, self._stream, self._size = container, stream, size

    def encode(self, image: np.ndarray) -> np.ndarray:
        """The frame as JPEG bytes (uint8 array), as this sink stores it."""
        ok, jpeg = cv2.imencode(".jpg", image, self._params)
        if not ok:
            raise CarvisError(f"cannot JPEG-encode a {image.shape} frame for {str(self.path)!r}")
        return jpeg

    def write(self, image: np.ndarray) -> None:
        size = (image.shape[1], image.shape[0])
        if self._container is None:
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
        packet = self._av.Packet(self.encode(image).tobytes())
        t1 = time.perf_counter()
        packet.stream = self._stream
        packet.pts = packet.dts = self.frames
        packet.time_base = self._time_base
        packet.is_keyframe = True
        try:
            self._container.mux(packet)
        except (OSError, self._av.FFmpegError) as exc:
            raise write_failed(self.path, exc, self.frames) from None
        self.timings["encode"].append(t1 - t0)
        self.timings["write"].append(time.perf_counter() - t1)
        self.frames += 1

    def close(self) -> None:
        container, self._container = self._container, None
        if container is None:
            return
        try:
            container.close()  # writes the index: a failure here is a write that failed too
        except (OSError, self._av.FFmpegError) as exc:
            raise write_failed(self.path, exc, self.frames) from None


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
        ok, data = cv2.imencode(".png", image, self._params)
        if not ok:
            raise CarvisError(f"cannot PNG-encode a {image.shape} frame for {str(target)!r}")
        try:
            target.write_bytes(data.tobytes())
        except OSError as exc:
            target.unlink(missing_ok=True)  # a cut PNG is no frame
            raise write_failed(target, exc, self.frames) from None
        self.frames += 1
