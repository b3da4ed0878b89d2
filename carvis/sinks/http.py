"""The HTTP side of the MJPEG server: routes, the token, the settings POST, handing streams over.

The handler knows only a :class:`Site` (what to serve) and a :class:`Controller` (the live
settings and stats); once a stream's headers are sent its socket is adopted by the site's pump.

What a car on a shared Wi-Fi needs: a token that guards every route but the icon (given once as
``?token=``, kept in a cookie so the page's own requests carry it); request headers and bodies
read against a deadline (a slow-loris holds a thread at most ``HEADER_TIMEOUT`` seconds) and
bodies capped; connections capped; fixed routes only, nothing read from disk per request; and a
client that hangs up is counted, never a traceback on the car's console.
"""

from __future__ import annotations

import hmac
import importlib.resources
import json
import logging
import socket
import sys
import threading
import time
from http import cookies
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from carvis import __version__
from carvis.errors import CarvisError

BOUNDARY = b"carvisframe"
MAX_BODY = 64 * 1024
HEADER_TIMEOUT = 8.0  # seconds a client has to send its request line, headers and body
MAX_CONNECTIONS = 32  # requests being read or answered at once (streams are not counted)
COOKIE = "carvis_token"
ROUTES = ("/", "/index.html", "/stream.mjpg", "/snapshot.jpg", "/stats", "/settings",
          "/metrics", "/favicon.ico")
#: What a client that hangs up or times out raises: counted, not reported.
HANGUPS = (ConnectionError, TimeoutError, socket.timeout, BrokenPipeError)

log = logging.getLogger("carvis")


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

    def metrics(self) -> str | None: ...

    def adopt(self, sock: socket.socket) -> None: ...

    def can_adopt(self) -> bool: ...

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

    def __init__(self, address: tuple[str, int], handler: type) -> None:
        super().__init__(address, handler)
        self._lock = threading.Lock()
        self._deadlines: dict[socket.socket, float] = {}
        self.counts = {"hangups": 0, "slow_cut": 0, "busy": 0, "denied": 0, "errors": 0}

    def count(self, event: str) -> None:
        """Count an HTTP event (for /stats and /metrics)."""
        with self._lock:
            self.counts[event] += 1

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        """A thread per request, up to MAX_CONNECTIONS; beyond, a quick 503."""
        with self._lock:
            busy = len(self._deadlines) >= MAX_CONNECTIONS
            if not busy:
                self._deadlines[request] = time.monotonic() + HEADER_TIMEOUT
        if busy:
            self.count("busy")
            try:
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n"
                                b"Retry-After: 1\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def read_done(self, request: socket.socket) -> None:
        """The request is read: its deadline no longer applies."""
        with self._lock:
            self._deadlines[request] = float("inf")

    def service_actions(self) -> None:
        """Cut the connections still sending their request after HEADER_TIMEOUT."""
        now = time.monotonic()
        with self._lock:
            late = [sock for sock, due in self._deadlines.items() if due < now]
            for sock in late:
                self._deadlines[sock] = float("inf")
        for sock in late:
            self.count("slow_cut")
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up is counted; anything else is one line, never a traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, HANGUPS) or (isinstance(exc, OSError) and exc.errno in (9, 32, 104)):
            self.count("hangups")
            return
        self.count("errors")
        log.warning("HTTP request from %s failed: %s: %s", client_address[0],
                    type(exc).__name__, exc)

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        """Leave stream sockets open: the pump has taken them over."""
        with self._lock:
            self._deadlines.pop(request, None)
        if not self.owner.owns(request):
            super().shutdown_request(request)


class Handler(BaseHTTPRequestHandler):
    """The routes: page, stream, snapshot, stats, metrics and settings of the server's Site."""

    server: Server
    server_version = "carvis"
    sys_version = ""

    def version_string(self) -> str:
        """The Server header: carvis/VERSION (http.server would add a space and Python's)."""
        return f"carvis/{__version__}"
    timeout = HEADER_TIMEOUT  # per read; the server's deadline bounds the whole request

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the live stats say what matters."""

    # -- helpers ----------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: Any) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _error(self, status: int, reason: str) -> None:
        self._json(status, {"error": reason})

    def _given_token(self, query: dict[str, list[str]]) -> tuple[str, bool]:
        """(the token the request carries, whether it came in the address)."""
        jar = cookies.SimpleCookie()
        try:
            jar.load(self.headers.get("Cookie", ""))
        except cookies.CookieError:
            pass
        in_query = query.get("token", [""])[0]
        given = (self.headers.get("X-Carvis-Token")
                 or self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
                 or in_query or (jar[COOKIE].value if COOKIE in jar else ""))
        return given, bool(in_query)

    def _allowed(self, path: str, query: dict[str, list[str]]) -> dict[str, str] | None:
        """Headers to add (a cookie) if the request may go on; None once refused (answered)."""
        token = self.server.owner.token
        if token is None or path == "/favicon.ico":
            return {}
        given, in_query = self._given_token(query)
        if hmac.compare_digest(given.encode(), token.encode()):
            return {"Set-Cookie": f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"} \
                if in_query else {}
        self.server.count("denied")
        reason = ("this carvis needs its token: open the address printed when it started "
                  "(it ends in ?token=...)")
        if path in ("/", "/index.html"):
            self._send(401, f"<!doctype html><title>carvis</title><p>{reason}</p>".encode(),
                       "text/html; charset=utf-8")
        else:
            self._error(401 if not given else 403, reason if not given else "wrong token")
        return None

    # -- routes -----------------------------------------------------------------------------
    def do_GET(self) -> None:
        self.server.read_done(self.connection)
        owner = self.server.owner
        url = urlsplit(self.path)
        path = url.path
        if path not in ROUTES:
            self._error(404, f"no such page {path!r}; try /, /stream.mjpg, /snapshot.jpg, "
                             "/stats, /metrics or /settings")
            return
        extra = self._allowed(path, parse_qs(url.query))
        if extra is None:
            return
        if path in ("/", "/index.html"):
            if "Set-Cookie" in extra:  # the token is in the cookie now: out of the address bar
                self._send(303, b"", "text/plain", {**extra, "Location": "/"})
            else:
                self._send(200, owner.page, "text/html; charset=utf-8")
        elif path == "/stream.mjpg":
            self._stream(extra)
        elif path == "/snapshot.jpg":
            jpeg = owner.snapshot()
            if jpeg is None:
                self._error(503, "no frame encoded yet; try again in a moment")
            else:
                self._send(200, jpeg, "image/jpeg", extra)
        elif path == "/stats":
            self._send(200, json.dumps(owner.stats()).encode(), "application/json", extra)
        elif path == "/metrics" and (text := owner.metrics()) is not None:
            self._send(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8", extra)
        elif path == "/settings":
            self._send(200, json.dumps(owner.controller.settings()).encode(),
                       "application/json", extra)
        elif path == "/favicon.ico":
            self._send(204, b"", "image/x-icon")
        else:
            self._error(404, f"no such page {path!r}")

    do_HEAD = do_GET

    def do_POST(self) -> None:
        owner = self.server.owner
        url = urlsplit(self.path)
        if url.path != "/settings":
            self.server.read_done(self.connection)
            self._error(404, f"cannot POST to {url.path!r}; POST JSON to /settings")
            return
        if self._allowed(url.path, parse_qs(url.query)) is None:
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
        self.server.read_done(self.connection)
        if len(body) < length:
            return  # the client hung up (or was cut off) mid-body
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

    def _stream(self, extra: dict[str, str]) -> None:
        if not self.server.owner.can_adopt():
            self.server.count("busy")
            self._error(503, "too many viewers; try again later")
            return
        self.send_response(200)
        self.send_header("Content-Type",
                         f"multipart/x-mixed-replace; boundary={BOUNDARY.decode()}")
        self.send_header("Cache-Control", "no-store, no-cache, must-revalidate")
        self.send_header("Pragma", "no-cache")
        self.send_header("Connection", "close")
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        if self.command == "GET":
            self.server.owner.adopt(self.connection)
