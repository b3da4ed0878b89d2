"""The HTTP side of carvis' servers: requests read in one event loop, answered in threads.

:class:`Server` accepts connections and reads every request's line, headers and body in one
thread (selectors, non-blocking sockets): a slow client costs a buffer and a socket, never a
thread, so a slow-loris that reconnects cannot hold the page. Only a whole request is handed to
a thread of its own (at most MAX_ANSWERING at once); what was not whole after HEADER_TIMEOUT is
cut with a 408, and at MAX_READING connections still sending, the oldest is cut for the new one.

:class:`Handler` answers the live routes for a :class:`Site` (what to serve) and a
:class:`Controller` (the live settings and stats); once a stream's headers are sent its socket
is adopted by the site's pump. Before any route, :mod:`carvis.sinks.httpguard` checks the Host,
the token, and a POST's Origin and JSON. Every refusal is a 4xx with its reason in one line of
JSON, a client that hangs up is counted, and nothing reaches the car's console as a traceback.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import json
import logging
import selectors
import socket
import sys
import threading
import time
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from carvis.errors import CarvisError
from carvis.sinks.httpguard import (
    HANGUPS,
    MAX_BODY,  # noqa: F401 - the body cap, where it was
    Exchange,
    Guard,
    Refused,
    request_size,
)

BOUNDARY = b"carvisframe"
HEADER_TIMEOUT = 8.0  # seconds a client has to send its request line, headers and body
MAX_HEAD = 32 * 1024  # request line and headers
MAX_READING = 256  # connections still sending their request (a buffer each, no thread)
MAX_ANSWERING = 32  # whole requests being answered at once (streams are not counted)
LINGER = 2.0  # seconds a closed answer waits for the client's leftover bytes (no lost answer)
ROUTES = ("/", "/index.html", "/stream.mjpg", "/snapshot.jpg", "/stats", "/settings",
          "/metrics", "/favicon.ico")

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


class _Reading:
    """A connection still sending its request: what came so far, and until when it may."""

    __slots__ = ("addr", "buf", "due", "size")

    def __init__(self, addr: Any, due: float) -> None:
        self.addr, self.due, self.buf = addr, due, bytearray()
        self.size: int | None = None  # of the whole request, once its head is in


class Server:
    """Accepts connections and reads their requests in one event loop; answers each whole one
    in a thread; serves one Site (``owner``) under one Guard."""

    def __init__(self, address: tuple[str, int], handler: type, token: str | None = None
                 ) -> None:
        host, port = address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.create_server((host, port), family=family, backlog=128)
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()
        self.guard = Guard(host, self.server_address[1], token)
        self.handler = handler
        self.owner: Any = None
        self.counts = {"hangups": 0, "slow_cut": 0, "busy": 0, "denied": 0, "forged": 0,
                       "refused": 0, "errors": 0}
        self._lock = threading.Lock()
        self._reading: dict[socket.socket, _Reading] = {}  # in arrival order
        self._lingering: dict[socket.socket, float] = {}
        self._done: list[socket.socket] = []  # answered, to linger (from the threads)
        self._answering = 0
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._closing = False
        self._stopped = threading.Event()

    def count(self, event: str) -> None:
        """Count an HTTP event (for /stats and /metrics)."""
        with self._lock:
            self.counts[event] += 1

    def serve_forever(self, poll_interval: float = 0.1) -> None:
        """Accept, read and hand over requests until shutdown()."""
        self._sel.register(self.socket, selectors.EVENT_READ, "accept")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._closing:
                events = self._sel.select(poll_interval)
                # What has arrived first, new connections last (at the cap a new one pushes
                # out the oldest unfinished request: finish what can be finished first).
                for key, _ in sorted(events, key=lambda e: e[0].data == "accept"):
                    # (an event of this batch may be for a socket an earlier one closed)
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        while self._recv(self._wake_r):
                            pass
                    elif key.data == "linger":
                        if key.fileobj in self._lingering and self._recv(key.fileobj) == b"":
                            self._close(key.fileobj)
                    elif self._reading.get(key.fileobj) is key.data:
                        self._read(key.fileobj, key.data)
                self._tidy(time.monotonic())
        finally:
            for sock in [*self._reading, *self._lingering]:
                self._close(sock)
            self._stopped.set()

    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, addr = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors: make room
                self.count("errors")
                log.debug("HTTP server cannot accept a connection: %s", exc)
                victim = next(iter(self._lingering), None) or next(iter(self._reading), None)
                if victim is None:
                    time.sleep(0.05)  # nothing of ours to close: do not spin
                else:
                    self._close(victim)
                return
            sock.setblocking(False)
            if len(self._reading) >= MAX_READING:  # the oldest unfinished request gives way
                self.count("slow_cut")
                self._say(next(iter(self._reading)), 408, f"{MAX_READING} clients were "
                          "sending requests at once and this one had been sending longest")
            self._reading[sock] = _Reading(addr, time.monotonic() + HEADER_TIMEOUT)
            self._sel.register(sock, selectors.EVENT_READ, self._reading[sock])

    def _read(self, sock: socket.socket, req: _Reading) -> None:
        data = self._recv(sock)
        if not data:
            if data == b"":
                self.count("hangups")
                self._close(sock)
            return
        req.buf += data
        if req.size is None:  # the head is not all there yet: look where it may end
            req.size = request_size(req.buf, max(0, len(req.buf) - len(data) - 3))
            if req.size is None and len(req.buf) > MAX_HEAD:
                self.count("refused")
                self._say(sock, 431, f"request line and headers over {MAX_HEAD // 1024} KiB")
        if req.size is None or len(req.buf) < req.size:
            return
        self._sel.unregister(sock)
        del self._reading[sock]
        with self._lock:
            busy = self._answering >= MAX_ANSWERING
            self._answering += not busy
        if busy:
            self.count("busy")
            self._say(sock, 503, "carvis is answering too many requests; try again in a "
                      "moment", forget=False)
            return
        threading.Thread(target=self._answer, args=(sock, req.addr, bytes(req.buf[:req.size])),
                         name="carvis-http-answer", daemon=True).start()

    def _answer(self, sock: socket.socket, addr: Any, data: bytes) -> None:
        """Answer one whole request (a thread of its own)."""
        try:
            sock.setblocking(True)
            self.handler((sock, data), addr, self)
        except Exception:  # noqa: BLE001 - one line, never a traceback on the console
            self.handle_error(sock, addr)
        finally:
            with self._lock:
                self._answering -= 1
                if not self.owner.owns(sock):
                    self._done.append(sock)
            self._wake()

    def _tidy(self, now: float) -> None:
        """Linger the answered, cut requests late past HEADER_TIMEOUT, close lingerers."""
        with self._lock:
            done, self._done = self._done, []
        for sock in done:
            self._linger(sock)
        while self._reading:
            sock, req = next(iter(self._reading.items()))
            if req.due > now:
                break
            self.count("slow_cut")
            self._say(sock, 408, f"the request did not arrive within {HEADER_TIMEOUT:g} s; "
                      "send it whole")
        while self._lingering and next(iter(self._lingering.values())) < now:
            self._close(next(iter(self._lingering)))

    def _say(self, sock: socket.socket, status: int, reason: str, forget: bool = True) -> None:
        """A short answer from the loop itself (it never waits for the client), then linger."""
        if forget:
            self._sel.unregister(sock)
            del self._reading[sock]
        body = json.dumps({"error": reason}).encode()
        head = (f"HTTP/1.0 {status} {HTTPStatus(status).phrase}\r\nContent-Type: "
                f"application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
                + ("Retry-After: 1\r\n" if status == 503 else "") + "\r\n")
        try:
            sock.send(head.encode() + body)
        except OSError:
            pass
        self._linger(sock)

    def _linger(self, sock: socket.socket) -> None:
        """Close the sending side; read what the client still sends for up to LINGER seconds,
        so that closing with unread bytes (a reset) cannot destroy the answer in flight."""
        try:
            sock.setblocking(False)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        if self._closing:
            sock.close()
            return
        if len(self._lingering) >= MAX_READING:
            self._close(next(iter(self._lingering)))
        self._lingering[sock] = time.monotonic() + LINGER
        self._sel.register(sock, selectors.EVENT_READ, "linger")

    def _recv(self, sock: Any) -> bytes | None:
        """What the socket has (b'' once the peer is gone), None when nothing is there yet."""
        try:
            return sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return b""

    def _close(self, sock: Any) -> None:
        for table in (self._reading, self._lingering):
            if table.pop(sock, None) is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self._sel.unregister(sock)
        sock.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # full (a wake-up is pending) or closed

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up is counted; anything else is one line, never a traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, HANGUPS) or (isinstance(exc, OSError) and exc.errno in (9, 32, 104)):
            self.count("hangups")
            return
        self.count("errors")
        log.warning("HTTP request from %s failed: %s: %s", client_address[0],
                    type(exc).__name__, exc)

    def shutdown(self) -> None:
        """Stop serve_forever and wait for it to end."""
        self._closing = True
        self._wake()
        self._stopped.wait(5.0)

    def server_close(self) -> None:
        """Close the listening socket (after shutdown)."""
        self._closing = True
        self.socket.close()
        if self._stopped.is_set() or not self._sel.get_map():
            self._sel.close()
            self._wake_r.close()
            self._wake_w.close()


class Handler(Exchange):
    """The live routes: page, stream, snapshot, stats, metrics and settings of the Site."""

    PAGES = ("/", "/index.html")
    GETS = ROUTES
    POSTS = ("/settings",)
    GET_HINT = "try /, /stream.mjpg, /snapshot.jpg, /stats, /metrics or /settings"
    POST_HINT = "POST JSON to /settings"

    def do_GET(self) -> None:
        self._answer(self.GETS, self.get, f"no such page {{!r}}; {self.GET_HINT}")

    do_HEAD = do_GET

    def do_POST(self) -> None:
        self._answer(self.POSTS, self.post, f"cannot POST to {{!r}}; {self.POST_HINT}")

    def _answer(self, routes: Any, route: Any, missing: str) -> None:
        """Check the request (Host, route, token, Origin, JSON), then hand it to its route."""
        path = "?"
        try:
            if not self.path.startswith("/") or self.path.startswith("//"):
                raise Refused(400, f"request target {self.path[:80]!r} is not a path; ask for "
                                   "e.g. GET /")
            url = urlsplit(self.path)
            path, query = url.path, {k: v[-1] for k, v in parse_qs(url.query).items()}
            self.server.guard.check_host(self.headers)
            if path not in routes:
                raise Refused(404, missing.format(path))
            extra = self.server.guard.admit(self.command, path, self.headers, query)
            if path in self.PAGES and "Set-Cookie" in extra:  # token now in the cookie: out of
                self._send(303, b"", "text/plain", {**extra, "Location": path})  # the address
                return
            route(path, query, extra)
        except CarvisError as exc:
            status = getattr(exc, "http_status", 400)
            self.server.count(getattr(exc, "counter", "refused"))
            if status == 401 and path in self.PAGES:
                self._send(401, f"<!doctype html><title>carvis</title><p>{exc}</p>".encode(),
                           "text/html; charset=utf-8")
            else:
                self._error(status, str(exc))

    def get(self, path: str, query: dict[str, str], extra: dict[str, str]) -> None:
        """Answer a GET (or HEAD) the guard let through."""
        owner: Site = self.server.owner
        if path in self.PAGES:
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

    def post(self, path: str, query: dict[str, str], extra: dict[str, str]) -> None:
        """Change the live settings (a CarvisError from them is the 400 with its reason)."""
        self._json(200, self.server.owner.controller.change(self._body()))

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

