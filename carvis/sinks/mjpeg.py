"""MJPEG over HTTP: each frame JPEG-encoded once, broadcast to any number of viewers.

The encoder publishes the newest frame into one shared slot (bytes + sequence number + a
condition variable). Every viewer has its own thread that sends the newest frame whenever its
socket is ready for more, so a slow viewer skips frames, a stalled one is dropped after its
send timeout, and no viewer is ever buffered without bound or holds up another.

Routes: ``/`` the control page, ``/stream.mjpg``, ``/snapshot.jpg``, ``/stats`` (JSON),
``/settings`` (GET the live settings; POST JSON to change them, optionally token-protected).
"""

from __future__ import annotations

import hmac
import importlib.resources
import json
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np

from carvis.errors import CarvisError
from carvis.sinks import Sink

BOUNDARY = b"carvisframe"
MAX_BODY = 64 * 1024


class Broadcast:
    """The newest encoded frame, shared by all viewers; publishing never waits for them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._seq = 0
        self._part: bytes | None = None
        self._header_len = 0
        self._closed = False

    def publish(self, jpeg: np.ndarray | bytes) -> int:
        """Make this JPEG the newest frame; returns its sequence number."""
        header = (b"--%s\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                  % (BOUNDARY, len(jpeg)))
        # One multipart part, built once: each viewer sends these very bytes.
        part = b"".join((header, jpeg, b"\r\n"))
        with self._cond:
            self._seq += 1
            self._part, self._header_len = part, len(header)
            self._cond.notify_all()
            return self._seq

    @property
    def seq(self) -> int:
        """Sequence number of the newest frame (0 before the first)."""
        return self._seq

    @property
    def closed(self) -> bool:
        """True once the stream has ended."""
        return self._closed

    def jpeg(self) -> bytes | None:
        """The newest JPEG on its own (for /snapshot.jpg)."""
        with self._cond:
            part, start = self._part, self._header_len
        return None if part is None else part[start:-2]

    def wait(self, after: int, timeout: float) -> tuple[int, bytes] | None:
        """(seq, multipart part) of a frame newer than ``after``; None on timeout or close."""
        with self._cond:
            if self._seq <= after and not self._closed:
                self._cond.wait_for(lambda: self._seq > after or self._closed, timeout)
            if self._closed or self._seq <= after or self._part is None:
                return None
            return self._seq, self._part

    def close(self) -> None:
        """End the stream: waiting viewers return at once."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class JpegEncoder(Sink):
    """A sink that JPEG-encodes each frame it is given, once, into a Broadcast."""

    def __init__(self, broadcast: Broadcast, quality: int = 80) -> None:
        if not 1 <= quality <= 100:
            raise CarvisError(f"JPEG quality {quality} is not valid; allowed range 1..100")
        self.broadcast = broadcast
        self.params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
        self.encodes = 0

    def write(self, image: np.ndarray) -> None:
        ok, jpeg = cv2.imencode(".jpg", image, self.params)
        if not ok:
            raise CarvisError(f"JPEG encoding failed for a frame of shape {image.shape}")
        self.encodes += 1
        self.broadcast.publish(jpeg)


class Controller(Protocol):
    """What the server needs from the live pipeline (it knows nothing else of it)."""

    def settings(self) -> dict[str, Any]: ...

    def change(self, changes: Any) -> dict[str, Any]: ...

    def stats(self) -> dict[str, Any]: ...


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


def load_page() -> bytes:
    """The control page shipped in carvis/web/index.html."""
    return (importlib.resources.files("carvis") / "web" / "index.html").read_bytes()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128
    allow_reuse_address = True

    owner: MjpegServer


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "carvis"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the live stats say what matters."""

    # -- helpers ----------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: Any) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _error(self, status: int, reason: str) -> None:
        self._json(status, {"error": reason})

    # -- routes -----------------------------------------------------------------------------
    def do_GET(self) -> None:
        owner = self.server.owner
        path = urlsplit(self.path).path
        if path in ("/", "/index.html"):
            self._send(200, owner.page, "text/html; charset=utf-8")
        elif path == "/stream.mjpg":
            self._stream()
        elif path == "/snapshot.jpg":
            jpeg = owner.broadcast.jpeg()
            if jpeg is None:
                self._error(503, "no frame encoded yet; try again in a moment")
            else:
                self._send(200, jpeg, "image/jpeg")
        elif path == "/stats":
            self._json(200, owner.stats())
        elif path == "/settings":
            self._json(200, owner.controller.settings())
        else:
            self._error(404, f"no such page {path!r}; try /, /stream.mjpg, /snapshot.jpg, "
                             "/stats or /settings")

    do_HEAD = do_GET

    def do_POST(self) -> None:
        owner = self.server.owner
        url = urlsplit(self.path)
        if url.path != "/settings":
            self._error(404, f"cannot POST to {url.path!r}; POST JSON to /settings")
            return
        if owner.token is not None:
            given = (self.headers.get("X-Carvis-Token")
                     or self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
                     or parse_qs(url.query).get("token", [""])[0])
            if not hmac.compare_digest(given.encode(), owner.token.encode()):
                self._error(403, "a valid token is needed to change settings (X-Carvis-Token "
                                 "header or ?token=...)")
                return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._error(411, "POST /settings needs a Content-Length")
            return
        if not 0 <= length <= MAX_BODY:
            self._error(413, f"settings body of {length} bytes is too large (max {MAX_BODY})")
            return
        body = self.rfile.read(length)
        try:
            changes = json.loads(body or b"null")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self._error(400, f"body is not valid JSON ({exc}); send e.g. {{\"threshold\": 120}}")
            return
        try:
            result = owner.controller.change(changes)
        except CarvisError as exc:
            self._error(getattr(exc, "http_status", 400), str(exc))
            return
        self._json(200, result)

    def _stream(self) -> None:
        owner = self.server.owner
        broadcast = owner.broadcast
        self.send_response(200)
        self.send_header("Content-Type",
                         f"multipart/x-mixed-replace; boundary={BOUNDARY.decode()}")
        self.send_header("Cache-Control", "no-store, no-cache, must-revalidate")
        self.send_header("Pragma", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.flush()
        sock: socket.socket = self.connection
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The whole part must be taken within this time, or the viewer has stopped reading.
        sock.settimeout(owner.send_timeout)
        viewers = owner.viewers
        viewers.add()
        dropped = False
        last = max(0, broadcast.seq - 1)  # start with the newest frame
        try:
            while not owner.closing:
                got = broadcast.wait(last, 0.5)
                if got is None:
                    if broadcast.closed:
                        break
                    continue
                seq, part = got
                sock.sendall(part)
                viewers.sent_one(seq - last - 1 if last else 0)
                last = seq
        except TimeoutError:
            dropped = True
        except OSError:
            pass  # the viewer went away
        finally:
            viewers.remove(dropped)
            self.close_connection = True


class MjpegServer:
    """The HTTP server: page, MJPEG stream, snapshot, stats and settings, in its own threads."""

    def __init__(self, host: str, port: int, controller: Controller, *,
                 token: str | None = None, send_timeout: float = 5.0,
                 stats: Callable[[], dict] | None = None) -> None:
        self.broadcast = Broadcast()
        self.viewers = Viewers()
        self.controller = controller
        self.token = token or None
        self.send_timeout = float(send_timeout)
        self.page = load_page()
        self.closing = False
        self._stats = stats or controller.stats
        try:
            self._server = _Server((host, port), _Handler)
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
        """Where the page is."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> MjpegServer:
        """Start answering requests."""
        self._thread.start()
        return self

    def stats(self) -> dict:
        """The pipeline's stats plus the viewers'."""
        return {**self._stats(), **self.viewers.stats()}

    def close(self) -> None:
        """Stop the server and end all streams (viewer threads return within a moment)."""
        if self.closing:
            return
        self.closing = True
        self.broadcast.close()
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()


def parse_address(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """'[HOST:]PORT' → (host, port); the host defaults to loopback."""
    text = str(text).strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = default_host, text
    host = host.strip("[]") or default_host
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise CarvisError(f"--serve {text!r} is not valid; give PORT or HOST:PORT, "
                          "e.g. 8080 or 0.0.0.0:8080")
    return host, int(port)

