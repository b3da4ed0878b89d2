"""MJPEG over HTTP: each frame JPEG-encoded once, broadcast to any number of viewers.

The encoder publishes the newest frame into one shared slot (one multipart part, bytes). A
single pump thread sends it to every viewer whose socket can take more, without blocking: a
viewer still busy with an older frame finishes that one and then gets the newest (the frames
in between are skipped and counted); a viewer that takes nothing for ``send_timeout`` seconds
is dropped. No viewer is ever buffered beyond the one frame it is sending, and none can hold
up another, the encoder or the capture.

Each part carries its frame's capture time in an ``X-Timestamp`` header (µStreamer's convention:
seconds since the epoch, with a fraction), so a client can measure glass-to-glass delay.

Routes (served by :mod:`carvis.sinks.http`): ``/`` the control page, ``/stream.mjpg``,
``/snapshot.jpg``, ``/stats`` (JSON), ``/metrics`` (Prometheus), ``/settings`` (GET the live
settings; POST JSON to change them); all behind the token when there is one.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Callable

import cv2
import numpy as np

from carvis.errors import CarvisError
from carvis.frame import Frame
from carvis.sinks import Sink
from carvis.sinks.http import BOUNDARY, Controller, Handler, Server, load_page
from carvis.sinks.httpguard import reachable_addresses

__all__ = ["BOUNDARY", "Broadcast", "JpegEncoder", "MjpegServer", "StreamPump", "Viewers",
           "parse_address"]

MAX_VIEWERS = 64  # streams at once (the pump is one thread; the car's Wi-Fi is the limit)


class Broadcast:
    """The newest encoded frame, shared by all viewers; publishing never waits for them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seq = 0
        self._part: bytes | None = None
        self._header_len = 0
        self.listeners: list[Callable[[], None]] = []  # called after each publish

    def publish(self, jpeg: np.ndarray | bytes, timestamp: float | None = None) -> int:
        """Make this JPEG the newest frame (captured at epoch time timestamp); its number."""
        stamp = b"" if timestamp is None else b"X-Timestamp: %.6f\r\n" % timestamp
        header = (b"--%s\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n%s\r\n"
                  % (BOUNDARY, len(jpeg), stamp))
        # One multipart part, built once: every viewer is sent these very bytes.
        part = b"".join((header, jpeg, b"\r\n"))
        with self._lock:
            self._seq += 1
            self._part, self._header_len = part, len(header)
            seq = self._seq
        for listener in self.listeners:
            listener()
        return seq

    def latest(self) -> tuple[int, bytes | None]:
        """(seq, multipart part) of the newest frame; (0, None) before the first."""
        with self._lock:
            return self._seq, self._part

    def jpeg(self) -> bytes | None:
        """The newest JPEG on its own (for /snapshot.jpg)."""
        with self._lock:
            part, start = self._part, self._header_len
        return None if part is None else part[start:-2]


class _Client:
    """One viewer of the pump: its socket and the part it is in the middle of sending."""

    __slots__ = ("last", "offset", "pending", "progress", "seq", "sock", "writing")

    def __init__(self, sock: socket.socket, last: int) -> None:
        self.sock = sock
        self.last = last  # seq of the last frame sent in full
        self.seq = 0
        self.pending: memoryview | None = None
        self.offset = 0
        self.progress = time.monotonic()
        self.writing = False  # registered for EVENT_WRITE too


class StreamPump:
    """One thread that sends the newest frame to every viewer that can take it (selectors,
    non-blocking sockets); viewers that stop reading are dropped after ``send_timeout``."""

    def __init__(self, broadcast: Broadcast, viewers: Viewers, send_timeout: float) -> None:
        self.broadcast = broadcast
        self.viewers = viewers
        self.send_timeout = send_timeout
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        for sock in (self._wake_r, self._wake_w):
            sock.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._adopted: list[socket.socket] = []
        self._owned: set[socket.socket] = set()
        self._clients: dict[socket.socket, _Client] = {}
        self._closed = False
        broadcast.listeners.append(self.wake)
        self._thread = threading.Thread(target=self._run, name="carvis-mjpeg-pump",
                                        daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Make the pump look at the newest frame and new viewers now."""
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # full (a wake-up is already pending) or closed

    def adopt(self, sock: socket.socket) -> None:
        """Take over a viewer's socket once the stream's HTTP headers are sent."""
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        with self._lock:
            self._owned.add(sock)
            self._adopted.append(sock)
        self.viewers.add()
        self.wake()

    def owns(self, sock: object) -> bool:
        """True for a socket the pump has taken over (the HTTP server must not close it)."""
        return sock in self._owned

    def _run(self) -> None:
        while not self._closed:
            for key, mask in self._sel.select(0.25):
                if key.data is None:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except OSError:
                        pass
                    continue
                client: _Client = key.data
                if mask & selectors.EVENT_READ and not self._peer_alive(client):
                    continue
                if mask & selectors.EVENT_WRITE:
                    self._send(client)
            with self._lock:
                adopted, self._adopted = self._adopted, []
            seq, part = self.broadcast.latest()
            for sock in adopted:
                client = _Client(sock, max(0, seq - 1))  # starts with the newest frame
                self._clients[sock] = client
                self._sel.register(sock, selectors.EVENT_READ, client)
            now = time.monotonic()
            for client in list(self._clients.values()):
                if client.pending is None:
                    if part is not None and seq > client.last:
                        client.seq, client.pending, client.offset = seq, memoryview(part), 0
                        self._send(client)
                elif now - client.progress > self.send_timeout:
                    self._drop(client, stalled=True)
        for client in list(self._clients.values()):
            self._drop(client, stalled=False)

    def _peer_alive(self, client: _Client) -> bool:
        """Read (and discard) what a viewer sends; drop it if it has hung up."""
        try:
            if self._clients.get(client.sock) is client and client.sock.recv(4096):
                return True
        except BlockingIOError:
            return True
        except OSError:
            pass
        self._drop(client, stalled=False)
        return False

    def _send(self, client: _Client) -> None:
        if self._clients.get(client.sock) is not client or client.pending is None:
            return
        try:
            sent = client.sock.send(client.pending[client.offset:])
        except BlockingIOError:
            sent = 0
        except OSError:
            self._drop(client, stalled=False)
            return
        if sent:
            client.offset += sent
            client.progress = time.monotonic()
        writing = client.offset < len(client.pending)
        if writing != client.writing:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0)
            self._sel.modify(client.sock, events, client)
            client.writing = writing
        if not writing:
            self.viewers.sent_one(client.seq - client.last - 1 if client.last else 0)
            client.last, client.pending = client.seq, None

    def _drop(self, client: _Client, stalled: bool) -> None:
        if self._clients.pop(client.sock, None) is None:
            return
        self._sel.unregister(client.sock)
        with contextlib.suppress(OSError):
            client.sock.shutdown(socket.SHUT_RDWR)
        client.sock.close()
        with self._lock:
            self._owned.discard(client.sock)
        self.viewers.remove(stalled)

    def close(self, timeout: float = 1.0) -> None:
        """Stop sending and hang up on every viewer."""
        self._closed = True
        self.wake()
        self._thread.join(timeout)
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()


class JpegEncoder(Sink):
    """A sink that JPEG-encodes each frame it is given, once, into a Broadcast."""

    def __init__(self, broadcast: Broadcast, quality: int = 80) -> None:
        if not 1 <= quality <= 100:
            raise CarvisError(f"JPEG quality {quality} is not valid; allowed range 1..100")
        self.broadcast = broadcast
        self.params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
        self.encodes = 0

    def write(self, image: np.ndarray, timestamp: float | None = None) -> None:
        ok, jpeg = cv2.imencode(".jpg", image, self.params)
        if not ok:
            raise CarvisError(f"JPEG encoding failed for a frame of shape {image.shape}")
        self.encodes += 1
        self.broadcast.publish(jpeg, timestamp)

    def write_frame(self, frame: Frame) -> None:
        """Encode a frame; its part carries the capture time (monotonic → epoch)."""
        self.write(frame.image, time.time() - (time.monotonic() - frame.timestamp))


class Viewers:
    """Who is watching: counts for /stats."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active = 0
        self.total = 0
        self.dropped = 0  # viewers cut off because they stopped reading
        self.skipped = 0  # frames viewers did not get because they were busy or slow
        self.sent = 0

    def add(self) -> None:
        with self._lock:
            self.active += 1
            self.total += 1

    def sent_one(self, skipped: int) -> None:
        with self._lock:
            self.sent += 1
            self.skipped += skipped

    def remove(self, dropped: bool) -> None:
        with self._lock:
            self.active -= 1
            self.dropped += int(dropped)

    def stats(self) -> dict[str, int]:
        return {"viewers": self.active, "viewers_total": self.total,
                "viewers_dropped": self.dropped, "viewer_frames_sent": self.sent,
                "viewer_frames_skipped": self.skipped}


class MjpegServer:
    """The HTTP server: page, MJPEG stream, snapshot, stats and settings, in its own threads."""

    def __init__(self, host: str, port: int, controller: Controller, *,
                 token: str | None = None, send_timeout: float = 5.0,
                 stats: Callable[[], dict] | None = None,
                 metrics: Callable[[], str] | None = None) -> None:
        self.broadcast = Broadcast()
        self.viewers = Viewers()
        self.controller = controller
        self.token = token or None
        self.send_timeout = float(send_timeout)
        self.page = load_page()
        self.closing = False
        self.pump = StreamPump(self.broadcast, self.viewers, self.send_timeout)
        self._stats = stats or controller.stats
        self._metrics = metrics
        try:
            self._server = Server((host, port), Handler, self.token)
        except OSError as exc:
            raise CarvisError(f"cannot serve on {host}:{port} ({exc.strerror or exc}); pick "
                              "another port with --serve HOST:PORT") from None
        self._server.owner = self
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1},
                                        name="carvis-http", daemon=True)

    @property
    def url(self) -> str:
        """Where the page is (the address it is bound to)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def urls(self) -> list[str]:
        """The addresses to open the page at, with the token: this machine's reachable ones
        for a wildcard bind (never 0.0.0.0)."""
        hosts = [self.host]
        if self.host in ("0.0.0.0", "::", ""):
            hosts = reachable_addresses() or ["127.0.0.1"]
        query = f"?token={self.token}" if self.token else ""
        return [f"http://{f'[{h}]' if ':' in h else h}:{self.port}/{query}" for h in hosts]

    def start(self) -> MjpegServer:
        """Start answering requests."""
        self._thread.start()
        return self

    def stats(self) -> dict:
        """The pipeline's stats plus the viewers' and the HTTP side's counts."""
        with self._server._lock:
            http = dict(self._server.counts)
        return {**self._stats(), **self.viewers.stats(), "http": http}

    def metrics(self) -> str | None:
        """The Prometheus text of /metrics (None: not offered)."""
        return self._metrics() if self._metrics is not None else None

    def can_adopt(self) -> bool:
        """True while another viewer may join."""
        return self.viewers.active < MAX_VIEWERS

    def snapshot(self) -> bytes | None:
        """The newest JPEG (for /snapshot.jpg)."""
        return self.broadcast.jpeg()

    def adopt(self, sock: socket.socket) -> None:
        """Hand a viewer's stream socket to the pump."""
        self.pump.adopt(sock)

    def owns(self, sock: object) -> bool:
        """True for a socket the pump has taken over."""
        return self.pump.owns(sock)

    def close(self) -> None:
        """Stop the server and end all streams (viewer threads return within a moment)."""
        if self.closing:
            return
        self.closing = True
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
        self.pump.close()


def parse_address(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """'[HOST:]PORT' → (host, port); the host defaults to loopback."""
    text = str(text).strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = default_host, text
    host = host.strip("[]") or default_host
    if not (port.isascii() and port.isdigit() and len(port) <= 5) or not 0 <= int(port) <= 65535:
        raise CarvisError(f"--serve {text!r} is not valid; give PORT or HOST:PORT, "
                          "e.g. 8080 or 0.0.0.0:8080")
    return host, int(port)

