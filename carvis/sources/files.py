"""File sources: a video file read by OpenCV, a folder of numbered images; never a dropped frame."""

from __future__ import annotations

import logging
import re
import struct
import time
from pathlib import Path

import cv2
import numpy as np

from carvis import limits
from carvis.errors import CarvisError, first_line
from carvis.frame import Frame
from carvis.sources.base import Source
from carvis.sources.region import RegionDecoder, open_region
from carvis.tfquiet import held_stderr

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

log = logging.getLogger("carvis")


class VideoFileSource(Source):
    """Anything OpenCV's VideoCapture reads; every frame, in order."""

    def __init__(self, path: str | Path, loop: bool = False) -> None:
        self.path = str(path)
        self.name = Path(self.path).name
        self.loop = loop
        limits.check_regular(self.path, "source")
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
        self._position = 0  # frames read since the start (looping: since the last start)
        self._region: RegionDecoder | None = None
        self._box: tuple[int, int, int, int] | None = None
        self._threads = 0

    def crop_at_decode(self, box: tuple[int, int, int, int]) -> bool:
        """From the first frame on, give only the (top, bottom, left, right) box of each frame,
        cut before the colour conversion (carvis.sources.region) if that gives OpenCV's pixels
        exactly, as checked on the first frame; False: frames stay whole."""
        if self._index or self._pending is None or self._region is not None:
            return False
        top, bottom, left, right = box
        self._threads = int(self._cap.get(cv2.CAP_PROP_N_THREADS) or 0)
        region = open_region(self.path, box, self._threads)
        if region is None:
            return False
        try:
            first = region.read()
        except Exception as exc:  # noqa: BLE001 - PyAV's, of any kind: OpenCV decodes
            first = None
            log.debug("%s: frames are decoded whole (%s)", self.name, first_line(exc))
        expected = self._pending[top:bottom, left:right]
        if first is None or not np.array_equal(first, expected):
            if first is not None:
                log.debug("%s: frames are decoded whole (PyAV's pixels differ from OpenCV's)",
                          self.name)
            region.close()
            return False
        self._cap.release()
        self._region, self._box, self._pending = region, box, first
        return True

    def read(self) -> Frame | None:
        """The next decoded frame (from the start again when looping), or None at the end."""
        if self._pending is not None:
            image, self._pending = self._pending, None
        else:
            image = self._next_image()
            if image is None and self.loop and self._index > 0:
                self._rewind()
                image = self._next_image()
            if image is None:
                return None
        frame = Frame(image, self._index, time.monotonic(), self.name)
        self._index += 1
        self._position += 1
        return frame

    def _next_image(self) -> np.ndarray | None:
        """The next frame: OpenCV's, or its box: PyAV's, and OpenCV's from a frame PyAV fails
        at (OpenCV reads the frames before it again and drops them)."""
        if self._region is not None:
            try:
                return self._region.read()
            except Exception as exc:  # noqa: BLE001 - PyAV's, of any kind: OpenCV decodes
                log.debug("%s: PyAV stopped at frame %d (%s); OpenCV decodes the rest",
                          self.name, self._position, first_line(exc))
            self._region.close()
            self._region = None
            with held_stderr():
                self._cap = cv2.VideoCapture(self.path)
                for _ in range(self._position):
                    if not self._cap.grab():
                        return None
        ok, image = self._cap.read()
        if not ok:
            return None
        if self._box is not None:
            top, bottom, left, right = self._box
            image = image[top:bottom, left:right]
        return image

    def _rewind(self) -> None:
        """Back to the first frame (looping)."""
        self._position = 0
        if self._region is not None:
            self._region.close()
            self._region = open_region(self.path, self._box, self._threads)
            if self._region is None:  # PyAV cannot open it again: OpenCV from the start
                self._cap = cv2.VideoCapture(self.path)
        else:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)

    def close(self) -> None:
        """Release the capture."""
        self._cap.release()
        if self._region is not None:
            self._region.close()


def _number_key(path: Path) -> tuple:
    """Sort key: the last number in the name (frame3556.jpg → 3556), then the name."""
    numbers = re.findall(r"\d+", path.stem)
    return (int(numbers[-1]) if numbers else -1, path.name)


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header (SOFn), walking the segments before it."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header first
            return None
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return width, height
        pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a TIFF's first image directory (tags 256 and 257)."""
    order = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", data[4:8])
    (count,) = struct.unpack(order + "H", data[ifd:ifd + 2])
    found: dict[int, int] = {}
    for k in range(min(count, 512)):
        entry = data[ifd + 2 + 12 * k:ifd + 14 + 12 * k]
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag in (256, 257):
            found[tag] = struct.unpack(order + ("H" if kind == 3 else "I"),
                                       entry[8:10] if kind == 3 else entry[8:12])[0]
    return (found[256], found[257]) if len(found) == 2 else None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        return (int.from_bytes(data[24:27], "little") + 1,
                int.from_bytes(data[27:30], "little") + 1)
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


def _bmp_size(data: bytes) -> tuple[int, int]:
    if struct.unpack("<I", data[14:18])[0] == 12:  # the OS/2 header: 16-bit sizes
        return struct.unpack("<HH", data[18:22])
    width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)


#: What carvis decodes, by the bytes a file starts with: its name and how to read its size.
_FORMATS = (
    (b"\xff\xd8", "JPEG", _jpeg_size),
    (b"\x89PNG\r\n\x1a\n", "PNG", lambda d: struct.unpack(">II", d[16:24])),
    (b"BM", "BMP", _bmp_size),
    (b"II*\x00", "TIFF", _tiff_size),
    (b"MM\x00*", "TIFF", _tiff_size),
    (b"RIFF", "WebP", lambda d: _webp_size(d) if d[8:12] == b"WEBP" else None),
)


def image_size(data: bytes) -> tuple[str, tuple[int, int] | None] | None:
    """(format, (width, height) its header declares, or None if unreadable) for the formats
    carvis decodes; None for anything else."""
    for magic, name, read in _FORMATS:
        if data.startswith(magic):
            try:
                size = read(data)
            except (struct.error, IndexError, ValueError):
                size = None
            return name, (tuple(size) if size else None)
    return None


def check_image(data: bytes) -> str:
    """What is wrong with an image file's bytes before any pixel is decoded ('' if nothing):
    an unknown format, a header without a size, more than limits.MAX_IMAGE_PIXELS."""
    found = image_size(data)
    if found is None:
        return f"not a {', '.join(dict.fromkeys(n for _, n, _ in _FORMATS))} image"
    name, size = found
    if size is None or min(size) < 1:
        return f"a {name} without a readable size in its header (damaged?)"
    width, height = size
    if width * height > limits.MAX_IMAGE_PIXELS:
        return (f"its {name} header declares {width}x{height} pixels, more than carvis "
                f"decodes ({limits.MAX_IMAGE_PIXELS // 1_000_000} megapixels)")
    return ""


def read_image(path: Path) -> tuple[np.ndarray | None, str]:
    """(the image, "") or (None, what is wrong with it), checked before it is decoded: not a
    regular file, too big a file or a header declaring too many pixels (a 1 KB JPEG can claim
    30000x30000); a JPEG cut short (a power cut while the car wrote it) is caught before
    libjpeg decodes half of it and complains on stderr."""
    try:
        data = limits.read_bytes(path, "image", limits.MAX_IMAGE_BYTES)
    except CarvisError as exc:
        return None, str(exc)  # not a regular file, or too big a file
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
    problem = check_image(data)
    if problem:
        return None, problem
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        return None, f"not a readable image ({first_line(exc)})"
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
