"""Any frame of a source by its index, fast: a cache of the frames as JPEGs, or a video decoder
that seeks to the keyframe before a frame (measured against each other in
scripts/review_bench.py: the race clip has a keyframe every 217 frames at worst, so seeking
decodes up to 216 frames for one; the cache decodes one JPEG).

The cache is one file of JPEGs end to end and an index of (offset, length) per frame, written
beside each other as ``.part`` and renamed when whole; reads are ``os.pread`` (thread-safe).
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from carvis.errors import CarvisError
from carvis.frame import Frame

QUALITY = 95


class FrameCache:
    """Read side: frame n's pixels (BGR) from the cache file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.index = np.load(self.path.with_suffix(".idx.npy"))
        self._fd = os.open(self.path, os.O_RDONLY)

    @staticmethod
    def exists(path: str | Path) -> bool:
        """True when a whole cache is at path."""
        path = Path(path)
        return path.is_file() and path.with_suffix(".idx.npy").is_file()

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def jpeg(self, n: int) -> bytes:
        """Frame n as the JPEG bytes kept."""
        if not 0 <= n < len(self):
            raise CarvisError(f"frame {n} is out of range; the source has frames "
                              f"0..{len(self) - 1}")
        offset, length = (int(v) for v in self.index[n])
        return os.pread(self._fd, length, offset)

    def get(self, n: int) -> np.ndarray:
        """Frame n, decoded (a new array)."""
        return cv2.imdecode(np.frombuffer(self.jpeg(n), np.uint8), cv2.IMREAD_COLOR)

    def close(self) -> None:
        """Release the file."""
        with contextlib.suppress(OSError):
            os.close(self._fd)


class CacheWriter:
    """Write side: frames handed in order are encoded in a thread of their own."""

    def __init__(self, path: str | Path, quality: int = QUALITY) -> None:
        self.path = Path(path)
        self.part = self.path.with_name(self.path.name + ".part")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.part, "wb")  # noqa: SIM115 - closed in close()/abort()
        self._params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
        self._rows: list[tuple[int, int]] = []
        self.count = 0
        self._queue: queue.Queue = queue.Queue(maxsize=8)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="carvis-frame-cache",
                                        daemon=True)
        self._thread.start()

    def __call__(self, frame: Frame) -> None:
        """Keep a frame (its index must be the next one)."""
        if self._error is not None:
            raise self._error
        if frame.index != self.count:
            raise CarvisError(f"frame cache: frame {frame.index} came out of order")
        self.count += 1
        self._queue.put(frame.image.copy())

    def _run(self) -> None:
        offset = 0
        while (image := self._queue.get()) is not None:
            try:
                ok, data = cv2.imencode(".jpg", image, self._params)
                if not ok:
                    raise CarvisError(f"JPEG encoding failed for a frame of shape {image.shape}")
                self._file.write(data.tobytes())
                self._rows.append((offset, len(data)))
                offset += len(data)
            except BaseException as exc:  # noqa: BLE001 - raised by the caller's next call
                self._error = exc

    def close(self) -> FrameCache:
        """Finish the file and put it in its place."""
        self._queue.put(None)
        self._thread.join()
        self._file.close()
        if self._error is not None:
            self.abort()
            raise self._error
        index = self.path.with_suffix(".idx.npy")
        np.save(str(index) + ".part.npy", np.asarray(self._rows, np.int64).reshape(-1, 2))
        os.replace(str(index) + ".part.npy", index)
        os.replace(self.part, self.path)
        return FrameCache(self.path)

    def abort(self) -> None:
        """Drop what was written."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._file.close()
        self.part.unlink(missing_ok=True)


def _import_av() -> Any:
    try:
        import av
    except ImportError as exc:
        raise CarvisError(f"seeking in a video needs PyAV ({exc}); pip install av") from None
    return av


class SeekingDecoder:
    """Frame n of a video by seeking to the keyframe at or before it and decoding on (PyAV);
    the next frame after the last one read is decoded without a seek."""

    def __init__(self, path: str | Path) -> None:
        av = _import_av()
        self._container = av.open(str(path))
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        pts, keys = [], []
        for packet in self._container.demux(stream):  # packets only, nothing decoded
            if packet.pts is not None:
                pts.append(packet.pts)
                if packet.is_keyframe:
                    keys.append(packet.pts)
        self.pts = sorted(pts)
        self.keyframes = sorted(keys)
        self._stream = stream
        self._frames: Any = None
        self._next = -1  # the frame the open decoder gives next

    def __len__(self) -> int:
        return len(self.pts)

    def get(self, n: int) -> np.ndarray:
        """Frame n (BGR)."""
        target = self.pts[n]
        if n != self._next:
            key = max(k for k in self.keyframes if k <= target)
            self._container.seek(key, stream=self._stream, backward=True)
            self._frames = self._container.decode(self._stream)
        for frame in self._frames:
            if frame.pts is not None and frame.pts >= target:
                self._next = n + 1
                return frame.to_ndarray(format="bgr24")
        raise CarvisError(f"frame {n} could not be decoded")

    def close(self) -> None:
        """Release the file."""
        self._container.close()
