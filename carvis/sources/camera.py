"""Cameras: a V4L2 index or stream URL through OpenCV, the Raspberry Pi camera through picamera2."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from carvis import settings as checks
from carvis.errors import CarvisError
from carvis.frame import Frame
from carvis.sources.base import Source

PICAMERA_HELP = ("on Raspberry Pi OS install it with: sudo apt install -y python3-picamera2, "
                 "and make the venv see it: python3 -m venv --system-site-packages .venv")



def picamera_import_error(exc: Exception) -> str:
    """One line for picamera2 failing to import: not installed, or built against another numpy
    ABI than the venv's ("numpy.dtype size changed", picamera2 #1088, #1211)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, ValueError) or "numpy" in str(exc).lower() or "_ARRAY_API" in str(exc):
        pip = Path(sys.prefix) / "bin" / "pip"
        own = "" if np.__file__.startswith("/usr/lib/python3/") else " (this venv's own)"
        return (f"picamera2 cannot be imported ({text}): numpy {np.__version__}{own} is not the "
                f"system numpy picamera2 was built against; fix it (in the carvis folder) with: "
                f"{pip} uninstall -y numpy && {pip} install -e '.[litert]' -c "
                "constraints/pi-$(. /etc/os-release && echo $VERSION_CODENAME).txt")
    return f"source 'picamera' needs the picamera2 library ({text}); {PICAMERA_HELP}"


MAX_CORRUPT = 10  # broken frames in a row before a camera counts as lost

_ROTATIONS = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180,
              270: cv2.ROTATE_90_COUNTERCLOCKWISE}


@dataclasses.dataclass
class CameraSettings:
    """How a camera is opened: size (width, height), frame rate, flips and rotation."""

    size: tuple[int, int] | None = (1280, 720)
    fps: float = 30.0
    hflip: bool = False
    vflip: bool = False
    rotate: int = 0

    @classmethod
    def from_profile(cls, camera: dict | None = None, *, origin: checks.Origin = checks.LIVE,
                     **overrides: object) -> CameraSettings:
        """The profile's ``camera:`` section with flag overrides (None = keep the profile's).

        Every value is checked by :func:`carvis.settings.camera`: the section's in the words of
        ``origin``, the overrides' as flags (``--fps 500 is not valid; ...``).
        """
        cam = checks.camera(camera or {}, origin)
        flags = {k: v for k, v in overrides.items() if v is not None}
        cam.update(checks.camera(flags, checks.FLAGS))
        size = cam.get("size")
        return cls(
            size=(int(size[0]), int(size[1])) if size else None,
            fps=float(cam.get("fps", 30.0)),
            hflip=bool(cam.get("hflip", False)),
            vflip=bool(cam.get("vflip", False)),
            rotate=int(cam.get("rotate", 0)),
        )


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
        self.timeout_ms = timeout_ms
        self.name = device if isinstance(device, str) else f"camera {device}"
        self.corrupt = 0  # frames the device delivered broken, skipped
        self._index = 0
        self._cap, first = self._open()
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else self.settings.fps
        self._pending: np.ndarray | None = first
        image = self._orient(first)
        self.size = (image.shape[1], image.shape[0])

    def _open(self) -> tuple[cv2.VideoCapture, np.ndarray]:
        """Open the device or URL; (the capture, its first frame)."""
        with _QuietOpenCV():
            if isinstance(self.device, str):
                cap = cv2.VideoCapture(self.device, cv2.CAP_FFMPEG,
                                       [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self.timeout_ms,
                                        cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.timeout_ms])
            else:
                cap = cv2.VideoCapture(self.device)
            if not cap.isOpened():
                cap.release()
                raise CarvisError(self._failure("cannot be opened"))
            if not isinstance(self.device, str):
                if self.settings.size:
                    cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.settings.size[0])
                    cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.settings.size[1])
                cap.set(cv2.CAP_PROP_FPS, self.settings.fps)
                cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # a deep driver queue is latency
            ok, first = cap.read()
        if not ok or not _whole(first):
            cap.release()
            raise CarvisError(self._failure("opened but delivers no frames"))
        return cap, first

    def reopen(self) -> None:
        """Release the device and open it again (after it was lost); CarvisError if it is
        still gone."""
        self._cap.release()
        self._cap, self._pending = self._open()

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
        """The next frame, flipped and rotated as set, or None when the device stops."""
        if self._pending is not None:
            image, self._pending = self._pending, None
        else:
            for _ in range(MAX_CORRUPT):
                ok, image = self._cap.read()
                if not ok:
                    return None
                if _whole(image):
                    break
                self.corrupt += 1  # a broken frame (a shaken connector): the next one
            else:
                raise CarvisError(f"{self.name} delivers only broken frames")
        frame = Frame(self._orient(image), self._index, time.monotonic(), self.name)
        self._index += 1
        return frame

    def close(self) -> None:
        """Release the device."""
        self._cap.release()


def _whole(image: np.ndarray | None) -> bool:
    """True for a frame a camera can deliver: a non-empty 8-bit colour image."""
    return (image is not None and image.ndim == 3 and image.shape[2] == 3 and image.size > 0
            and image.dtype == np.uint8)


class PiCameraSource(Source):
    """The Raspberry Pi camera through picamera2 (imported only when this source is used)."""

    live = True

    def __init__(self, settings: CameraSettings | None = None, camera_num: int = 0) -> None:
        self.settings = s = settings or CameraSettings()
        self.name = f"picamera {camera_num}"
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # numpy 2's own multi-line banner
                import libcamera
                from picamera2 import Picamera2
        except (ImportError, ValueError) as exc:
            raise CarvisError(picamera_import_error(exc)) from None
        self._camera_num = camera_num
        self._camera = self._start(Picamera2, libcamera)
        self._modules = (Picamera2, libcamera)
        self.fps = float(s.fps)
        self._index = 0
        self._closed = False

    def _start(self, picamera2: type, libcamera: object) -> object:
        """Open, configure and start the camera."""
        s = self.settings
        # libcamera flips in hardware; 180 degrees is both flips, 90/270 are done in software.
        half_turn = s.rotate == 180
        self._rotate = s.rotate if s.rotate in (90, 270) else 0
        try:
            camera = picamera2(self._camera_num)
        except (RuntimeError, IndexError, OSError) as exc:
            raise CarvisError(f"no Raspberry Pi camera {self._camera_num} found ({exc}); check "
                              "the ribbon cable and that rpicam-hello --list-cameras lists it"
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
        return camera

    def reopen(self) -> None:
        """Close the camera and start it again (after a picamera2 error)."""
        try:
            self._camera.stop()
            self._camera.close()
        except Exception:  # noqa: BLE001, S110 - the camera is already broken; start afresh
            pass
        self._camera = self._start(*self._modules)

    def read(self) -> Frame | None:
        """The next camera frame (BGR, rotated as set), or None once closed."""
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
        """Stop and close the camera (once)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._camera.stop()
        finally:
            self._camera.close()


def running_on_pi() -> bool:
    """True on a Raspberry Pi (device-tree model) or wherever picamera2 is importable."""
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
