"""Test doubles for live mode that honour the real APIs: picamera2 + libcamera (injected through
sys.modules), cv2.VideoCapture, a still or hand-fed live source, a tiny Keras model, and an
MJPEG viewer that reads a real HTTP stream from a socket."""

from __future__ import annotations

import importlib.machinery
import json
import re
import socket
import threading
import time
import types
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np

from carvis.frame import Frame
from carvis.sources import Source

REPO = Path(__file__).resolve().parents[1]


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    """Poll a condition; fail the test with what was awaited if it never holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.01)


# -- picamera2 / libcamera ------------------------------------------------------------------

def page_url(proc: Any) -> str:
    """The page address a starting `carvis run --serve` prints (read from its stderr)."""
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "carvis: running" in line:
            break
    url = re.search(r"page (http://\S+/)", "".join(lines))
    assert url, "".join(lines)
    return url[1]


def pattern(width: int, height: int, index: int) -> np.ndarray:
    """A BGR test card: blue left half, red right half, a white top-left corner, index in
    the bottom-right pixel's green value, so colour order, flips and rotation are visible."""
    img = np.zeros((height, width, 3), np.uint8)
    img[:, : width // 2] = (255, 0, 0)
    img[:, width // 2:] = (0, 0, 255)
    img[: height // 4, : width // 4] = 255
    img[-1, -1, 1] = index % 256
    return img


class FakeTransform:
    """libcamera.Transform(hflip=0, vflip=0, transpose=0, rotation=0)."""

    def __init__(self, hflip: int = 0, vflip: int = 0, transpose: int = 0,
                 rotation: int = 0) -> None:
        self.hflip, self.vflip, self.transpose = bool(hflip), bool(vflip), bool(transpose)
        if rotation == 180:
            self.hflip, self.vflip = not self.hflip, not self.vflip
        elif rotation:
            raise ValueError("libcamera Transform: rotation must be 0 or 180 without transpose")


class FakePicamera2:
    """The subset of picamera2.Picamera2 carvis uses, with the real names and signatures."""

    instances: ClassVar[list[FakePicamera2]] = []
    cameras = 1  # how many cameras the fake system has

    def __init__(self, camera_num: int = 0, verbose_console: object = None,
                 tuning: object = None, allocator: object = None) -> None:
        if camera_num >= self.cameras:
            # What picamera2 raises without a camera.
            raise RuntimeError("Camera(s) not found (Do not forget to disable legacy camera "
                               "with raspi-config).")
        self.camera_num = camera_num
        self.calls: list[str] = []
        self.config: dict | None = None
        self.started = False
        self.closed = False
        self.frames = 0
        FakePicamera2.instances.append(self)

    def create_video_configuration(self, main: dict | None = None, lores: dict | None = None,
                                   raw: dict | None = None, transform: object = None,
                                   colour_space: object = None, buffer_count: int = 6,
                                   controls: dict | None = None, display: str = "main",
                                   encode: str = "main", queue: bool = True,
                                   sensor: dict | None = None, use_case: str = "video"
                                   ) -> dict:
        self.calls.append("create_video_configuration")
        main = {"format": "XBGR8888", "size": (1280, 720), **(main or {})}
        if not isinstance(main["size"], tuple) or len(main["size"]) != 2:
            raise RuntimeError("size in main stream should be a tuple of two ints")
        return {"use_case": use_case, "transform": transform or FakeTransform(),
                "buffer_count": buffer_count, "queue": queue, "main": main, "lores": lores,
                "controls": dict(controls or {})}

    def configure(self, camera_config: dict | None = None) -> None:
        self.calls.append("configure")
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        self.config = camera_config

    def start(self, config: dict | None = None, show_preview: bool = False) -> None:
        self.calls.append("start")
        if self.config is None:
            raise RuntimeError("Camera has not been configured")
        self.started = True

    def capture_array(self, name: str = "main", wait: object = None,
                      signal_function: object = None) -> np.ndarray:
        if not self.started:
            raise RuntimeError("Camera is not running")
        stream = self.config[name]
        width, height = stream["size"]
        img = pattern(width, height, self.frames)  # BGR in memory, as "RGB888" is
        if stream["format"] != "RGB888":
            img = img[..., ::-1]
        t = self.config["transform"]
        if t.hflip:
            img = img[:, ::-1]
        if t.vflip:
            img = img[::-1]
        self.frames += 1
        time.sleep(1 / float(self.config["controls"].get("FrameRate", 30.0)))
        return np.ascontiguousarray(img)  # a copy, as picamera2's make_array

    def stop(self) -> None:
        self.calls.append("stop")
        self.started = False

    def close(self) -> None:
        self.calls.append("close")
        self.closed = True


def fake_picamera_modules() -> dict[str, types.ModuleType]:
    """Modules to put in sys.modules: picamera2 and libcamera."""
    picamera2 = types.ModuleType("picamera2")
    picamera2.Picamera2 = FakePicamera2
    picamera2.__spec__ = importlib.machinery.ModuleSpec("picamera2", None)
    libcamera = types.ModuleType("libcamera")
    libcamera.Transform = FakeTransform
    libcamera.__spec__ = importlib.machinery.ModuleSpec("libcamera", None)
    return {"picamera2": picamera2, "libcamera": libcamera}


# -- cv2.VideoCapture -----------------------------------------------------------------------

class FakeVideoCapture:
    """cv2.VideoCapture for a camera index or URL: frames at a set pace, each a new array with
    its number in the top-left pixels (rows 0..1), or gated by a semaphore. Configure a
    subclass per test with capture_class(...)."""

    delay = 0.0  # seconds per read (the camera's frame interval)
    gate: threading.Semaphore | None = None  # if set, each read waits for a release
    opens = True
    frames_limit: int | None = None
    size = (64, 48)
    plugged: threading.Event | None = None  # if set: a camera that is there only while set
    created: ClassVar[list[FakeVideoCapture]] = []

    def __init__(self, *args: object) -> None:
        self.args = args
        self.props: dict[int, float] = {}
        self.count = 0
        self.released = False
        type(self).created.append(self)

    def isOpened(self) -> bool:
        if self.plugged is not None and not self.plugged.is_set():
            return False
        return self.opens and not self.released

    def set(self, prop: int, value: float) -> bool:
        self.props[prop] = value
        return True

    def get(self, prop: int) -> float:
        return 30.0 if prop == cv2.CAP_PROP_FPS else self.props.get(prop, 0.0)

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.gate is not None:
            if not self.gate.acquire(timeout=5):
                return False, None
        elif self.delay:
            time.sleep(self.delay)
        if self.released or (self.frames_limit is not None and self.count >= self.frames_limit):
            return False, None
        if self.plugged is not None and not self.plugged.is_set():
            return False, None  # unplugged: V4L2 reads fail until the device is opened again
        w, h = self.size
        img = np.full((h, w, 3), 90, np.uint8)
        img[h // 2:, : w // 2] = 200
        img[0:2, 0:2] = (self.count % 256, self.count // 256 % 256, 7)
        self.count += 1
        return True, img

    def release(self) -> None:
        self.released = True


def capture_class(**config: object) -> type[FakeVideoCapture]:
    """A FakeVideoCapture subclass with its own settings and its own list of instances."""
    return type("FakeVideoCapture", (FakeVideoCapture,), {"created": [], **config})


def index_in(image: np.ndarray) -> int:
    """The frame number FakeVideoCapture wrote into the top-left pixel."""
    return int(image[0, 0, 0]) + 256 * int(image[0, 0, 1])


# -- live sources ---------------------------------------------------------------------------

class StillSource(Source):
    """A live source that delivers copies of one image at a fixed rate (a parked car)."""

    live = True

    def __init__(self, image: np.ndarray, fps: float = 30.0) -> None:
        self.image = image
        self.fps = fps
        self.name = "still"
        self._index = 0
        self._closed = threading.Event()

    def read(self) -> Frame | None:
        if self._closed.wait(1 / self.fps):
            return None
        frame = Frame(self.image.copy(), self._index, time.monotonic(), self.name)
        self._index += 1
        return frame

    def close(self) -> None:
        self._closed.set()


class FedSource(Source):
    """A live source whose frames the test hands in one by one with feed()."""

    live = True
    fps = 30.0
    name = "fed"

    def __init__(self) -> None:
        self._frames: list[np.ndarray] = []
        self._cond = threading.Condition()
        self._index = 0
        self._closed = False

    def feed(self, image: np.ndarray) -> None:
        with self._cond:
            self._frames.append(image)
            self._cond.notify_all()

    def read(self) -> Frame | None:
        with self._cond:
            self._cond.wait_for(lambda: self._frames or self._closed)
            if self._closed:
                return None
            image = self._frames.pop(0)
        frame = Frame(image, self._index, time.monotonic(), self.name)
        self._index += 1
        return frame

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def test_image(width: int = 160, height: int = 120, seed: int = 0) -> np.ndarray:
    """A structured frame (the synthetic track) the model responds to."""
    from carvis.synthetic import SyntheticTrack

    return SyntheticTrack(width=width, height=height, seed=seed).frame(5)


test_image.__test__ = False  # not a pytest test


# -- models ---------------------------------------------------------------------------------

def tiny_model(path: Path) -> Path:
    """A small two-conv Keras 3 model, seeded, saved as .keras (input 48x64x3)."""
    import keras

    keras.utils.set_random_seed(7)
    inp = keras.Input((48, 64, 3), name="image")
    x = keras.layers.Conv2D(6, 3, activation="relu", name="conv_a")(inp)
    x = keras.layers.MaxPooling2D(name="pool_a")(x)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv_b")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(3, activation="softmax", name="steer")(x)
    keras.Model(inp, out, name="tiny").save(path)
    return path


_SESSIONS: dict[str, object] = {}


def session_and_profile(tmp_dir: Path) -> tuple[object, object]:
    """One ModelSession per test run (backends are built once per layer), and its profile."""
    from carvis.session import ModelSession

    if "default" not in _SESSIONS:
        path, profile = model_and_profile(tmp_dir)
        _SESSIONS["default"] = (ModelSession(path), profile, path)
    session, profile, _ = _SESSIONS["default"]
    return session, profile


def model_path() -> Path:
    """The path of the model session_and_profile() loaded."""
    return _SESSIONS["default"][2]


def model_and_profile(tmp_dir: Path) -> tuple[Path, object]:
    """The project's default model and profile if present, else the tiny model, generic."""
    from carvis import profile as prof

    default_model = REPO / "models" / "default.keras"
    if default_model.is_file() and prof.DEFAULT_PROFILE.is_file():
        p = prof.load(prof.DEFAULT_PROFILE)
        return default_model, p.replace(output="frame", crop=None)
    return tiny_model(tmp_dir / "tiny.keras"), prof.generic()


# -- HTTP -----------------------------------------------------------------------------------

def http(method: str, url: str, body: object = None, headers: dict | None = None,
         raw: bytes | None = None, timeout: float = 15.0) -> tuple[int, object]:
    """(status, decoded JSON or bytes) of one request; HTTP errors are returned, not raised."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, payload, ctype = resp.status, resp.read(), resp.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        status, payload, ctype = exc.code, exc.read(), exc.headers["Content-Type"]
    if ctype and ctype.startswith("application/json"):
        return status, json.loads(payload)
    return status, payload


class Viewer:
    """An MJPEG viewer on a raw socket: parses parts by Content-Length, counts and keeps the
    newest JPEG. ``stall=True`` connects, asks for the stream and never reads a byte."""

    def __init__(self, host: str, port: int, path: str = "/stream.mjpg",
                 stall: bool = False) -> None:
        self.frames = 0
        self.jpegs: list[bytes] = []
        self.stamps: list[float] = []  # each part's X-Timestamp
        self.error: BaseException | None = None
        self.boundary: bytes | None = None
        self.headers = b""
        self._stop = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if stall:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect((host, port))
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        self.thread = None
        if not stall:
            self.thread = threading.Thread(target=self._read, daemon=True)
            self.thread.start()

    def _read(self) -> None:
        buf = bytearray()
        try:
            self.sock.settimeout(10)  # inside: a viewer closed before its thread ran is not an error
            while not self._stop.is_set():
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    return
                buf += chunk
                if self.boundary is None:
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        continue
                    self.headers = bytes(buf[:end])
                    ctype = next(line for line in self.headers.split(b"\r\n")
                                 if line.lower().startswith(b"content-type:"))
                    self.boundary = b"--" + ctype.split(b"boundary=")[1].strip()
                    del buf[: end + 4]
                while True:
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        break
                    head = bytes(buf[:end]).split(b"\r\n")
                    assert head[0] == self.boundary, head[0]
                    length = int(next(h for h in head if h.lower().startswith(
                        b"content-length:")).split(b":")[1])
                    if len(buf) < end + 4 + length + 2:
                        break
                    jpeg = bytes(buf[end + 4: end + 4 + length])
                    self.stamps += [float(h.split(b":")[1]) for h in head
                                    if h.lower().startswith(b"x-timestamp:")]
                    del buf[: end + 4 + length + 2]
                    self.jpegs = [*self.jpegs[-4:], jpeg]
                    self.frames += 1
        except OSError as exc:
            if not self._stop.is_set():
                self.error = exc

    @property
    def last(self) -> bytes | None:
        return self.jpegs[-1] if self.jpegs else None

    def close(self) -> None:
        self._stop.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        if self.thread is not None:
            self.thread.join(5)


def decode(jpeg: bytes) -> np.ndarray:
    """A JPEG as a BGR array."""
    return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)

