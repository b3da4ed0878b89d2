"""The overlay as one H.264 stream to a media server (RTMP, RTSP, SRT) that does the fan-out.

A car's Wi-Fi carries one stream; a relay (nginx-rtmp, MediaMTX, an OBS or YouTube ingest)
serves the viewers. The encoder is the MP4 output's (:class:`carvis.sinks.video.H264Encoder`)
tuned for live: ``zerolatency`` (no lookahead, no B-frames: a frame leaves as it is encoded),
a constant bitrate with a one-second VBV buffer, and a keyframe every second, so a viewer
joins within two seconds. Timestamps are the frames' capture times, so the stream keeps real
time when frames are dropped.

A relay that goes away (restart, Wi-Fi) costs frames, never the run: the publisher drops what
comes while it is away, tries again with back-off (0.5 s doubling to 8 s) and counts it all
(``reconnects``, ``dropped_offline``, ``bytes_sent``) for ``/stats``. PyAV opens network outputs
without FFmpeg's timeouts, so a relay that vanishes without closing its connection would leave a
write blocked until TCP gives up (minutes); the publisher gives its TCP connection a deadline for
unacknowledged data (``TCP_USER_TIMEOUT``) so such a write fails within seconds instead.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import time
from fractions import Fraction
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from carvis.errors import CarvisError
from carvis.frame import Frame
from carvis.sinks import Sink
from carvis.sinks.threaded import SinkWorker
from carvis.sinks.video import (
    KEYFRAME_SECONDS,
    H264Encoder,
    check_fps,
    even_size,
    import_av,
    keyframe_interval,
)

log = logging.getLogger("carvis")

IO_TIMEOUT = 5.0  # seconds a relay may leave sent data unacknowledged before it counts as gone
# Scheme → (FFmpeg muxer, its options, the default TCP port: None for UDP).
SCHEMES: dict[str, tuple[str, dict[str, str], int | None]] = {
    "rtmp": ("flv", {}, 1935),
    "rtmps": ("flv", {}, 443),
    "rtsp": ("rtsp", {"rtsp_transport": "tcp", "timeout": str(int(IO_TIMEOUT * 1e6))}, 554),
    "srt": ("mpegts", {}, None),
}
DEFAULT_BITRATE = 2_000_000
PRESET = "veryfast"  # a Pi 4 core encodes 640x480 at 30 fps with it; ultrafast costs bitrate
BACKOFF = (0.5, 8.0)  # the first wait and the longest between two connection attempts
QUEUE = 4  # frames waiting for the encoder (~130 ms at 30 fps); the oldest goes first
TIME_BASE = Fraction(1, 1000)  # FLV's own resolution (ms)


def parse_bitrate(text: str | int) -> int:
    """'2M', '800k' or '1500000' → bits per second."""
    value = str(text).strip().lower().removesuffix("bps").removesuffix("b")
    scale = {"k": 1_000, "m": 1_000_000}.get(value[-1:], 1)
    try:
        bits = float(value[:-1] if scale > 1 else value) * scale
    except ValueError:
        bits = 0
    if not 100_000 <= bits <= 50_000_000:
        raise CarvisError(f"--bitrate {text!r} is not valid; give bits per second between "
                          "100k and 50M, e.g. 2M or 800k")
    return int(bits)


def check_url(url: str) -> str:
    """The URL if carvis can publish to it, else a one-line error."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in SCHEMES or not parts.hostname:
        raise CarvisError(f"--publish {url!r} is not a relay carvis publishes to; give "
                          "rtmp://HOST[:PORT]/APP/KEY, rtsp://HOST[:PORT]/PATH or "
                          "srt://HOST:PORT")
    return url


def public_url(url: str) -> str:
    """The URL without what may be secret: user, password, query, the stream key."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    where = f"{host}:{parts.port}" if parts.port else host
    path = parts.path.rsplit("/", 1)[0] + "/…" if parts.path.count("/") > 1 else parts.path
    return f"{parts.scheme}://{where}{path}"


class Publisher(Sink):
    """H.264 at a bitrate to a relay URL; reconnects with back-off, never raises for the network."""

    def __init__(self, url: str, fps: float | None, bitrate: int = DEFAULT_BITRATE, *,
                 preset: str = PRESET, backoff: tuple[float, float] = BACKOFF) -> None:
        self.url = check_url(url)
        self.name = public_url(url)
        scheme = urlsplit(url).scheme.lower()
        self.muxer, self.options, default_port = SCHEMES[scheme]
        self.port = urlsplit(url).port or default_port
        self.fps = check_fps(fps or 30.0, f"--publish {self.name}")
        self.bitrate = int(bitrate)
        self.preset = preset
        self.backoff = backoff
        self._av = import_av("--publish")
        self._container: Any = None
        self._encoder: H264Encoder | None = None
        self._size: tuple[int, int] | None = None
        self._start = 0.0  # capture time (monotonic) of stream time 0 of this connection
        self._before: dict[int, str] = {}  # sockets open before this connection
        self._last_pts = -1
        self._last_key: float | None = None  # capture time of the last keyframe sent
        self._wait = backoff[0]
        self._next_try = 0.0
        self._lost_at: float | None = None
        self.connections = 0
        self.reconnects = 0
        self.frames = 0
        self.dropped_offline = 0
        self.bytes_sent = 0
        self.last_error: str | None = None
        self.stream_start_epoch: float | None = None  # wall time of this stream's time 0
        self._sent: collections.deque[tuple[float, int]] = collections.deque(maxlen=256)

    @property
    def connected(self) -> bool:
        """True while a connection to the relay is open."""
        return self._container is not None

    def write(self, image: np.ndarray) -> None:
        self.write_frame(Frame(image, self.frames, time.monotonic()))

    def write_frame(self, frame: Frame) -> None:
        """Encode and send one frame; while the relay is away, drop it (counted)."""
        if self._container is None and not self._open(frame):
            self.dropped_offline += 1
            return
        pts = max(self._last_pts + 1, round((frame.timestamp - self._start) * 1000))
        # Keyframes on the capture clock, not every N frames: under load frames are dropped,
        # and N frames then spanned 1.3-1.4 s (a viewer joining waits for a keyframe).
        key = self._last_key is None or frame.timestamp - self._last_key >= KEYFRAME_SECONDS
        try:
            # The first packet of a connection writes the header: that is when FFmpeg connects.
            packets = self._encoder.encode(frame.image, pts, keyframe=key)
            self._container.mux(packets)
        except (OSError, self._av.FFmpegError) as exc:
            self._lost(exc)
            self.dropped_offline += 1
            return
        if self._last_pts < 0:
            self._connected(frame)
        if key:
            self._last_key = frame.timestamp
        self._last_pts = pts
        self.frames += 1
        self.bytes_sent += sum(p.size for p in packets)
        self._sent.append((time.monotonic(), self.bytes_sent))

    def _open(self, frame: Frame) -> bool:
        """A new container and encoder when the back-off allows; True if opened."""
        if time.monotonic() < self._next_try:
            return False
        self._size = self._size or even_size(frame.image).shape[1::-1]
        self._before = _sockets()
        try:
            container = self._av.open(self.url, mode="w", format=self.muxer,
                                      options=self.options)
            # The GOP in frames is only a backstop: keyframes come every second of capture
            # time (write_frame), however many frames that second kept.
            self._encoder = H264Encoder(self._av, container, self._size, self.fps,
                                        self._tuning(), time_base=TIME_BASE, name=self.name,
                                        gop=4 * keyframe_interval(self.fps))
        except (OSError, self._av.FFmpegError) as exc:
            self._lost(exc)
            return False
        self._container, self._start, self._last_pts = container, frame.timestamp, -1
        self._last_key = None
        return True

    def _connected(self, frame: Frame) -> None:
        """The first frame went through: count the connection, bound its TCP writes."""
        if self.port is not None:
            _limit_unacknowledged(self._before, self.port, IO_TIMEOUT)
        self.stream_start_epoch = time.time() - (time.monotonic() - frame.timestamp)
        self.connections += 1
        if self.connections > 1:
            self.reconnects += 1
            log.info("publish: %s back after %.1f s (reconnect %d)", self.name,
                     time.monotonic() - (self._lost_at or time.monotonic()), self.reconnects)
        self._lost_at, self._wait = None, self.backoff[0]

    def _tuning(self) -> dict[str, str]:
        """libx264 for live: no lookahead, CBR-like with a 1 s buffer (the GOP is video.py's)."""
        rate = str(self.bitrate)
        return {"preset": self.preset, "tune": "zerolatency", "b": rate, "maxrate": rate,
                "bufsize": rate, "forced-idr": "1"}

    def _lost(self, exc: BaseException) -> None:
        """Drop the connection; try again after the back-off, which doubles up to its cap."""
        self._close_container()
        now = time.monotonic()
        self.last_error = str(exc)
        if self._lost_at is None:
            self._lost_at = now
            log.warning("publish: %s unreachable (%s); frames are dropped while it is away, "
                        "retrying", self.name, exc)
        self._next_try = now + self._wait
        self._wait = min(self._wait * 2, self.backoff[1])

    def _close_container(self) -> None:
        container, self._container = self._container, None
        if container is None:
            return
        try:
            container.mux(self._encoder.flush())
        except (OSError, self._av.FFmpegError) as exc:
            log.debug("publish: flush to %s failed: %s", self.name, exc)
        try:
            container.close()
        except (OSError, self._av.FFmpegError) as exc:  # the relay is gone: nothing to tell it
            log.debug("publish: closing %s: %s", self.name, exc)

    def kbit_s(self, window: float = 5.0) -> float:
        """Upload rate over the last `window` seconds, kbit/s (H.264 payload)."""
        now = time.monotonic()
        recent = [(t, b) for t, b in self._sent if now - t <= window]
        if len(recent) < 2 or recent[-1][0] <= recent[0][0]:
            return 0.0
        return (recent[-1][1] - recent[0][1]) * 8 / 1e3 / (recent[-1][0] - recent[0][0])

    def stats(self) -> dict[str, Any]:
        """Connection state and counters, JSON-ready."""
        return {"url": self.name, "connected": self.connected, "connections": self.connections,
                "reconnects": self.reconnects, "bytes_sent": self.bytes_sent,
                "kbit_s": round(self.kbit_s(), 1), "frames_sent": self.frames,
                "dropped_offline": self.dropped_offline, "bitrate": self.bitrate,
                "last_error": self.last_error, "stream_start_epoch": self.stream_start_epoch}

    def close(self) -> None:
        self._close_container()


class PublishWorker(SinkWorker):
    """The publisher in its own thread behind a queue of a few frames, the oldest dropped."""

    def __init__(self, publisher: Publisher, queue: int = QUEUE) -> None:
        super().__init__(publisher, "publish", policy="latest")
        # "latest" drops the oldest frame when full; a few frames absorb a network hiccup.
        self.maxsize = max(1, int(queue))

    def stats(self) -> dict[str, Any]:
        """The worker's counts and the publisher's connection counters."""
        return {**super().stats(), **self.sink.stats()}


def _sockets() -> dict[int, str]:
    """This process' open sockets, fd → 'socket:[inode]' (empty where /proc is not)."""
    found = {}
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return found
    for name in names:
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:"):
            found[int(name)] = target
    return found


def _limit_unacknowledged(before: dict[int, str], port: int, seconds: float) -> int:
    """TCP_USER_TIMEOUT on the TCP connections to `port` opened since `before`; how many."""
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    done = 0
    for fd, inode in _sockets().items():
        if option is None or before.get(fd) == inode:
            continue
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        with sock:
            try:
                if sock.type == socket.SOCK_STREAM and sock.getpeername()[1] == port:
                    sock.setsockopt(socket.IPPROTO_TCP, option, int(seconds * 1000))
                    done += 1
            except (OSError, IndexError, TypeError):
                continue
    return done
