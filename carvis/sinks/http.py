"""The HTTP side of the MJPEG server: routes, the settings POST, and handing streams over.

The handler knows only a :class:`Site` (what to serve) and a :class:`Controller` (the live
settings and stats); once a stream's headers are sent its socket is adopted by the site's pump.
"""

from __future__ import annotations

import hmac
import importlib.resources
import json
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from carvis.errors import CarvisError

BOUNDARY = b"carvisframe"
MAX_BODY = 64 * 1024


class Controller(Protocol):
    """What the server needs from the live pipeline (it knows nothing else of it)."""

    def settings(self) -> dict[str, Any]: ...

    def change(self, changes: Any) -> dict[str, Any]: ...

    def stats(self) -> dict[str, Any]: ...


class Site(Protocol):
    """What the HTTP side serves (an MjpegServer): the page, frames, stats and settings."""

    page: bytes
    token: str | None
    controller: Controller

    def snapshot(self) -> bytes | None: ...

    def stats(self) -> dict: ...

    def adopt(self, sock: socket.socket) -> None: ...

    def owns(self, sock: object) -> bool: ...


def load_page() -> bytes:
    """The control page shipped in carvis/web/index.html."""
    return (importlib.resources.files("carvis") / "web" / "index.html").read_bytes()


class Server(ThreadingHTTPServer):
    """A threading HTTP server for one Site; streams outlive their request threads."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128
    allow_reuse_address = True

    owner: Site

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        """Leave stream sockets open: the pump has taken them over."""
        if not self.owner.owns(request):
            super().shutdown_request(request)


class Handler(BaseHTTPRequestHandler):
    """The routes: page, stream, snapshot, stats and settings of the server's Site."""

    server: Server
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
            jpeg = owner.snapshot()
            if jpeg is None:
                self._error(503, "no frame encoded yet; try again in a moment")
            else:
                self._send(200, jpeg, "image/jpeg")
        elif path == "/stats":
            self._json(200, owner.stats())
        elif path == "/settings":
            self._json(200, owner.controller.settings())
        elif path == "/favicon.ico":
            self._send(204, b"", "image/x-icon")
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
        self.send_response(200)
        self.send_header("Content-Type",
                         f"multipart/x-mixed-replace; boundary={BOUNDARY.decode()}")
        self.send_header("Cache-Control", "no-store, no-cache, must-revalidate")
        self.send_header("Pragma", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        self.server.owner.adopt(self.connection)
