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


# -- live sources ---------------------------------------------------------------------------

URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")


@dataclasses.dataclass
class CameraSettings:
    """How a camera is opened: size (width, height), frame rate, flips and rotation."""

    size: tuple[int, int] | None = (1280, 720)
    fps: float = 30.0
    hflip: bool = False
    vflip: bool = False
    rotate: int = 0

    @classmethod
    def from_profile(cls, camera: dict | None = None, **overrides: object) -> CameraSettings:
        """The profile's ``camera:`` section with flag overrides (None = keep the profile's)."""
        cam = dict(camera or {})
        cam.update({k: v for k, v in overrides.items() if v is not None})
        size = cam.get("size")
        settings = cls(
            size=(int(size[0]), int(size[1])) if size else None,
            fps=float(cam.get("fps", 30.0)),
            hflip=bool(cam.get("hflip", False)),
            vflip=bool(cam.get("vflip", False)),
            rotate=int(cam.get("rotate", 0)),
        )
        if settings.rotate not in (0, 90, 180, 270):
            raise CarvisError(f"camera rotate {settings.rotate} is not valid; "
                              "choose one of: 0, 90, 180, 270")
        if not 1 <= settings.fps <= 240:
            raise CarvisError(f"camera fps {settings.fps:g} is not valid; allowed range 1..240")
        if settings.size is not None and not all(1 <= v <= 16384 for v in settings.size):
            raise CarvisError(f"camera size {settings.size} is not valid; "
                              "expected WIDTHxHEIGHT in pixels, 1..16384")
        return settings


_ROTATIONS = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180,
              270: cv2.ROTATE_90_COUNTERCLOCKWISE}


def orient(image: np.ndarray, hflip: bool = False, vflip: bool = False, rotate: int = 0
           ) -> np.ndarray:
    """Flip, then rotate clockwise by 0/90/180/270 degrees (a new array unless nothing to do)."""
    if hflip or vflip:
        image = cv2.flip(image, -1 if hflip and vflip else (1 if hflip else 0))
    if rotate:
        image = cv2.rotate(image, _ROTATIONS[rotate])
    return image


class _QuietOpenCV:
    """Silences OpenCV's and FFmpeg's own log lines while a device is opened (we say it once)."""

    def __enter__(self) -> None:
        import os

        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
        self._level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

    def __exit__(self, *exc: object) -> None:
        cv2.utils.logging.setLogLevel(self._level)


class CameraSource(Source):
    """A camera index (V4L2 / webcam) or a stream URL (rtsp://, http://) read by OpenCV."""

    live = True

    def __init__(self, device: int | str, settings: CameraSettings | None = None,
                 timeout_ms: int = 5000) -> None:
        self.device = device
        self.settings = settings or CameraSettings()
        is_url = isinstance(device, str)
        self.name = device if is_url else f"camera {device}"
        with _QuietOpenCV():
            if is_url:
                cap = cv2.VideoCapture(device, cv2.CAP_FFMPEG,
                                       [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms,
                                        cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms])
            else:
                cap = cv2.VideoCapture(device)
            if not cap.isOpened():
                cap.release()
                raise CarvisError(self._failure("cannot be opened"))
            if not is_url:
                if self.settings.size:
                    cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.settings.size[0])
                    cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.settings.size[1])
                cap.set(cv2.CAP_PROP_FPS, self.settings.fps)
                cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # a deep driver queue is latency
            ok, first = cap.read()
        if not ok or first is None:
            cap.release()
            raise CarvisError(self._failure("opened but delivers no frames"))
        self._cap = cap
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else self.settings.fps
        self._pending: np.ndarray | None = first
        self._index = 0
        image = self._orient(first)
        self.size = (image.shape[1], image.shape[0])

    def _failure(self, what: str) -> str:
        if isinstance(self.device, str):
            return (f"stream {self.device!r} {what}; check the URL and that the sender is "
                    "running (try it with ffplay)")
        return (f"camera {self.device} {what} (no such device, or in use by another "
                "program); check ls /dev/video*, or pass --source FILE|URL|synthetic")

    def _orient(self, image: np.ndarray) -> np.ndarray:
        s = self.settings
        return orient(image, s.hflip, s.vflip, s.rotate)

    def read(self) -> Frame | None:
        if self._pending is not None:
            image, self._pending = self._pending, None
        else:
            ok, image = self._cap.read()
            if not ok or image is None:
                return None
        frame = Frame(self._orient(image), self._index, time.monotonic(), self.name)
        self._index += 1
        return frame

    def close(self) -> None:
        self._cap.release()


PICAMERA_HELP = ("on Raspberry Pi OS install it with: sudo apt install -y python3-picamera2, "
                 "and make the venv see it: python3 -m venv --system-site-packages .venv")


class PiCameraSource(Source):
    """The Raspberry Pi camera through picamera2 (imported only when this source is used)."""

    live = True

    def __init__(self, settings: CameraSettings | None = None, camera_num: int = 0) -> None:
        self.settings = s = settings or CameraSettings()
        self.name = f"picamera {camera_num}"
        try:
            import libcamera
            from picamera2 import Picamera2
        except ImportError as exc:
            raise CarvisError(f"source 'picamera' needs the picamera2 library ({exc}); "
                              f"{PICAMERA_HELP}") from None
        # libcamera flips in hardware; 180 degrees is both flips, 90/270 are done in software.
        half_turn = s.rotate == 180
        self._rotate = s.rotate if s.rotate in (90, 270) else 0
        try:
            camera = Picamera2(camera_num)
        except (RuntimeError, IndexError, OSError) as exc:
            raise CarvisError(f"no Raspberry Pi camera {camera_num} found ({exc}); check the "
                              "ribbon cable and that rpicam-hello --list-cameras lists it"
                              ) from None
        try:
            size = tuple(s.size) if s.size else (1280, 720)
            config = camera.create_video_configuration(
                main={"size": size, "format": "RGB888"},
                controls={"FrameRate": float(s.fps)},
                transform=libcamera.Transform(hflip=int(s.hflip != half_turn),
                                              vflip=int(s.vflip != half_turn)),
            )
            camera.configure(config)
            camera.start()
        except (RuntimeError, ValueError, OSError) as exc:
            camera.close()
            raise CarvisError(f"the Raspberry Pi camera cannot be started at {size[0]}x"
                              f"{size[1]} {s.fps:g} fps ({exc}); try another camera size "
                              "or fps in the profile's camera section") from None
        self._camera = camera
        self.fps = float(s.fps)
        self._index = 0
        self._closed = False

    def read(self) -> Frame | None:
        if self._closed:
            return None
        # "RGB888" is stored B, G, R in memory: already OpenCV's order. capture_array copies
        # the camera buffer, so each frame is a fresh array.
        image = self._camera.capture_array("main")
        if self._rotate:
            image = cv2.rotate(image, _ROTATIONS[self._rotate])
        frame = Frame(image, self._index, time.monotonic(), self.name)
        self._index += 1
        return frame

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._camera.stop()
        finally:
            self._camera.close()


def running_on_pi() -> bool:
    """True on a Raspberry Pi (device-tree model) or wherever picamera2 is importable."""
    import importlib.util

    try:
        model = Path("/proc/device-tree/model").read_bytes()
    except OSError:
        model = b""
    if b"Raspberry Pi" in model:
        return True
    try:
        return importlib.util.find_spec("picamera2") is not None
    except (ImportError, ValueError):
        return False


def default_live_spec() -> str:
    """The source `carvis run` uses when none is given: picamera on a Pi, else camera 0."""
    return "picamera" if running_on_pi() else "0"


def open_live_source(spec: str | None, profile: object = None, *, loop: bool = False,
                     **overrides: object) -> Source:
    """Open a source for live mode: picamera, a camera index, a URL, a file or synthetic.

    ``profile`` is a Profile (its ``camera:`` section is used) or that section as a dict;
    ``overrides`` (size, fps, hflip, vflip, rotate) are flags that win over it. File sources
    are returned as they are; the capture thread paces them at their own fps.
    """
    spec = default_live_spec() if spec is None else str(spec).strip()
    camera = profile if isinstance(profile, dict) or profile is None else profile.camera
    settings = CameraSettings.from_profile(camera, **overrides)
    if spec == "picamera" or spec.startswith("picamera:"):
        num = spec.partition(":")[2] or "0"
        if not num.isdigit():
            raise CarvisError(f"source {spec!r}: use picamera or picamera:N (camera number)")
        return PiCameraSource(settings, int(num))
    if spec.isdigit():
        return CameraSource(int(spec), settings)
    scheme, sep, _ = spec.partition("://")
    if sep:
        if scheme.lower() not in URL_SCHEMES:
            raise CarvisError(f"source {spec!r}: unsupported URL scheme {scheme!r}; use one of "
                              f"{', '.join(URL_SCHEMES)}")
        return CameraSource(spec, settings)
    return open_source(spec, loop=loop)
