"""Frames in: video files, folders of images, the synthetic track (and live sources).

A source is an iterator of :class:`Frame` plus ``close()``; it is also a context manager.
File and folder sources never drop a frame; live sources (camera, URL) are read through a
capture thread that keeps only the latest frame.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import cv2
import numpy as np

from carvis.errors import CarvisError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclasses.dataclass
class Frame:
    """One captured frame: BGR uint8 pixels, its index in the source, its capture time."""

    image: np.ndarray
    index: int
    timestamp: float  # time.monotonic() when it was captured / decoded
    name: str = ""


class Source:
    """Base class: iterate to get frames; close() releases the device or file."""

    live = False
    fps: float = 30.0
    frame_count: int | None = None
    name = "source"

    def read(self) -> Frame | None:
        """The next frame, or None at the end."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[Frame]:
        while True:
            frame = self.read()
            if frame is None:
                return
            yield frame

    def close(self) -> None:
        """Release whatever the source holds."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VideoFileSource(Source):
    """Anything OpenCV's VideoCapture reads; every frame, in order."""

    def __init__(self, path: str | Path, loop: bool = False) -> None:
        self.path = str(path)
        self.name = Path(self.path).name
        self.loop = loop
        if not Path(self.path).is_file():
            raise CarvisError(f"source {self.path!r} not found; give a video file, a folder "
                              "of images, a camera index or 'synthetic'")
        self._cap = cv2.VideoCapture(self.path)
        ok, first = (self._cap.read() if self._cap.isOpened() else (False, None))
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
        self._cap.release()


def _number_key(path: Path) -> tuple:
    """Sort key: the last number in the name (frame3556.jpg → 3556), then the name."""
    numbers = re.findall(r"\d+", path.stem)
    return (int(numbers[-1]) if numbers else -1, path.name)


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
        while True:
            if self._pos >= len(self.files):
                if not self.loop or self._index == 0:
                    return None
                self._pos = 0
            path = self.files[self._pos]
            self._pos += 1
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                if str(path) not in self.skipped:
                    self.skipped.append(str(path))
                    print(f"carvis: warning: skipping {path.name}: not a readable image",
                          file=sys.stderr)
                continue
            frame = Frame(image, self._index, time.monotonic(), path.name)
            self._index += 1
            return frame


class SyntheticSource(Source):
    """The project's own track generator as a frame source (a finite clip by default)."""

    def __init__(self, seed: int = 0, frames: int | None = 300, size: tuple[int, int] = (640, 480),
                 fps: float = 30.0, loop: bool = False) -> None:
        from carvis.synthetic import SyntheticTrack

        self.name = f"synthetic:{seed}"
        self.fps = fps
        self.frame_count = None if loop else frames
        self.track = SyntheticTrack(width=size[0], height=size[1], fps=fps, seed=seed)
        self._index = 0

    def read(self) -> Frame | None:
        if self.frame_count is not None and self._index >= self.frame_count:
            return None
        frame = Frame(self.track.frame(self._index), self._index, time.monotonic(), self.name)
        self._index += 1
        return frame


def parse_synthetic(spec: str) -> dict:
    """'synthetic[:seed=S,frames=N,size=WxH]' → keyword arguments."""
    kwargs: dict = {}
    _, _, rest = spec.partition(":")
    for part in filter(None, rest.split(",")):
        key, _, value = part.partition("=")
        try:
            if key == "seed":
                kwargs["seed"] = int(value)
            elif key == "frames":
                kwargs["frames"] = int(value)
            elif key == "size":
                w, h = value.lower().split("x")
                kwargs["size"] = (int(w), int(h))
            else:
                raise ValueError(key)
        except ValueError:
            raise CarvisError(f"source {spec!r}: bad option {part!r}; use "
                              "synthetic:seed=0,frames=300,size=640x480") from None
    return kwargs


def open_source(spec: str, *, loop: bool = False, fps: float | None = None) -> Source:
    """Open a file source from its spec: a video path, an image folder or 'synthetic[...]'."""
    spec = str(spec)
    if spec == "synthetic" or spec.startswith("synthetic:"):
        kwargs = parse_synthetic(spec)
        if fps:
            kwargs["fps"] = fps
        return SyntheticSource(loop=loop, **kwargs)
    path = Path(spec)
    if path.is_dir():
        return FolderSource(path, fps=fps or 30.0, loop=loop)
    return VideoFileSource(path, loop=loop)
