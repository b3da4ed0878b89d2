"""File sources: a video file read by OpenCV, a folder of numbered images; never a dropped frame."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import cv2
import numpy as np

from carvis.errors import CarvisError
from carvis.frame import Frame
from carvis.sources.base import Source
from carvis.tfquiet import held_stderr

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

log = logging.getLogger("carvis")


class VideoFileSource(Source):
    """Anything OpenCV's VideoCapture reads; every frame, in order."""

    def __init__(self, path: str | Path, loop: bool = False) -> None:
        self.path = str(path)
        self.name = Path(self.path).name
        self.loop = loop
        if not Path(self.path).is_file():
            raise CarvisError(f"source {self.path!r} not found; give a video file, a folder "
                              "of images, a camera index or 'synthetic'")
        with held_stderr() as said:  # FFmpeg's own "moov atom not found" and the like
            self._cap = cv2.VideoCapture(self.path)
            ok, first = (self._cap.read() if self._cap.isOpened() else (False, None))
        for line in said:
            log.debug("%s: %s", self.name, line)
        if not ok or first is None:
            self._cap.release()
            raise CarvisError(f"source {self.path!r} cannot be read as a video "
                              "(corrupt, or a format OpenCV does not decode); convert it with "
                              "ffmpeg -i IN -c:v libx264 OUT.mp4")
        self._pending: np.ndarray | None = first
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else 30.0
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_count = count if count > 0 else None
        self.size = (first.shape[1], first.shape[0])
        self._index = 0

    def read(self) -> Frame | None:
        """The next decoded frame (from the start again when looping), or None at the end."""
        if self._pending is not None:
            image, self._pending = self._pending, None
        else:
            ok, image = self._cap.read()
            if not ok and self.loop and self._index > 0:
                self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, image = self._cap.read()
            if not ok:
                return None
        frame = Frame(image, self._index, time.monotonic(), self.name)
        self._index += 1
        return frame

    def close(self) -> None:
        """Release the capture."""
        self._cap.release()


def _number_key(path: Path) -> tuple:
    """Sort key: the last number in the name (frame3556.jpg → 3556), then the name."""
    numbers = re.findall(r"\d+", path.stem)
    return (int(numbers[-1]) if numbers else -1, path.name)


def read_image(path: Path) -> tuple[np.ndarray | None, str]:
    """(the image, "") or (None, what is wrong with it); a JPEG cut short (a power cut while
    the car wrote it) is caught before libjpeg decodes half of it and complains on stderr."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"
    if path.suffix.lower() in (".jpg", ".jpeg"):
        if not data.startswith(b"\xff\xd8"):
            return None, "not a JPEG (no start marker)"
        # EOI (FF D9) ends every whole JPEG; FF in the entropy-coded data is always followed
        # by 00 or a restart marker, so a cut-off file does not end in one by chance. Some
        # writers pad the file after it.
        if b"\xff\xd9" not in data[-64:]:
            return None, "truncated JPEG (no end marker; written during a power cut?)"
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return None, "not a readable image"
    return image, ""


class FolderSource(Source):
    """A folder of images, sorted by the number in their names; corrupt ones are skipped."""

    def __init__(self, path: str | Path, fps: float = 30.0, loop: bool = False) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self.fps = float(fps)
        self.loop = loop
        self.files = sorted((p for p in self.path.iterdir()
                             if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                            key=_number_key)
        if not self.files:
            raise CarvisError(f"source folder {str(self.path)!r} holds no images "
                              f"({', '.join(IMAGE_SUFFIXES)})")
        self.frame_count = len(self.files)
        self.skipped: list[str] = []
        self._pos = 0
        self._index = 0

    def read(self) -> Frame | None:
        """The next readable image (a corrupt one is logged once and skipped), or None."""
        while True:
            if self._pos >= len(self.files):
                if not self.loop or self._index == 0:
                    return None
                self._pos = 0
            path = self.files[self._pos]
            self._pos += 1
            image, problem = read_image(path)
            if image is None:
                if str(path) not in self.skipped:
                    self.skipped.append(str(path))
                    log.warning("skipping %s: %s", path.name, problem)
                continue
            frame = Frame(image, self._index, time.monotonic(), path.name)
            self._index += 1
            return frame
