"""The review page's HTTP side: the page, its charting library, frames, timeline and settings.

Built like the live server (carvis.sinks.http: a ThreadingHTTPServer, JSON errors of one line,
a token for what changes state when it serves beyond this machine); it serves a
:class:`~carvis.review.app.Review` and never a model.

Routes: ``/`` the page, ``/vendor/...`` uPlot, ``/info``, ``/timeline``, ``/frame.jpg?i=N&m=K``,
``/frame.png?i=N`` (every model side by side), ``/stats``, ``/settings`` (GET; POST JSON to
change), ``POST /export.mp4`` with ``{"start": A, "end": B}``.
"""

from __future__ import annotations

import hmac
import importlib.resources
import json
import tempfile
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import cv2

from carvis.errors import CarvisError
from carvis.review.app import Review
from carvis.sinks import http

JPEG_QUALITY = 85
VENDOR = {"uPlot.iife.min.js": "application/javascript", "uPlot.min.css": "text/css",
          "uPlot.LICENSE": "text/plain; charset=utf-8"}


def web_file(*parts: str) -> bytes:
    """A file shipped in carvis/web."""
    return (importlib.resources.files("carvis") / "web").joinpath(*parts).read_bytes()


class ReviewHandler(http.Handler):
    """The review routes (the live handler's helpers: _send, _json, _error)."""

    def _query(self) -> tuple[str, dict[str, str]]:
        url = urlsplit(self.path)
        return url.path, {k: v[-1] for k, v in parse_qs(url.query).items()}

    def _int(self, query: dict[str, str], key: str, default: int | None = None) -> int:
        text = query.get(key)
        if text is None and default is not None:
            return default
        if text is None or not text.lstrip("-").isdigit():
            raise CarvisError(f"{key}={text!r} is not a whole number; give e.g. ?{key}=0")
        return int(text)

    def do_GET(self) -> None:
        site: ReviewServer = self.server.owner
        review = site.review
        path, query = self._query()
        try:
            if path in ("/", "/index.html", "/review.html"):
                self._send(200, site.page, "text/html; charset=utf-8")
            elif path.startswith("/vendor/") and path[8:] in VENDOR:
                self._send(200, web_file("vendor", path[8:]), VENDOR[path[8:]],
                           {"Cache-Control": "max-age=86400"})
            elif path == "/info":
                self._json(200, review.info())
            elif path == "/timeline":
                self._json(200, review.timeline())
            elif path == "/settings":
                self._json(200, review.settings())
            elif path == "/stats":
                self._json(200, review.stats())
            elif path == "/frame.jpg":
                image = review.picture(self._int(query, "i"), self._int(query, "m", 0))
                data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1]
                self._send(200, data.tobytes(), "image/jpeg")
            elif path == "/frame.png":
                n = self._int(query, "i")
                self._send(200, review.png(n), "image/png", {
                    "Content-Disposition": f'attachment; filename="{site.stem}-{n:05d}.png"'})
            elif path == "/favicon.ico":
                self._send(204, b"", "image/x-icon")
            else:
                self._error(404, f"no such page {path!r}; try /, /info, /timeline, "
                                 "/frame.jpg?i=N or /settings")
        except CarvisError as exc:
            self._error(400, str(exc))

    do_HEAD = do_GET

    def do_POST(self) -> None:
        site: ReviewServer = self.server.owner
        path, query = self._query()
        if path not in ("/settings", "/export.mp4"):
            self._error(404, f"cannot POST to {path!r}; POST JSON to /settings or /export.mp4")
            return
        if not site.allowed(self.headers.get("X-Carvis-Token") or query.get("token", "")):
            self._error(403, "a valid token is needed here (X-Carvis-Token header or "
                             "?token=..., as in the address carvis review printed)")
            return
        try:
            body = self._body()
            if path == "/settings":
                self._json(200, site.review.change(body))
            else:
                data = site.export(body)
                name = f"{site.stem}-{body['start']:05d}-{body['end']:05d}.mp4"
                self._send(200, data, "video/mp4",
                           {"Content-Disposition": f'attachment; filename="{name}"'})
        except CarvisError as exc:
            self._error(400, str(exc))

    def _body(self) -> Any:
        length = self.headers.get("Content-Length", "")
        if not length.isdigit() or int(length) > http.MAX_BODY:
            raise CarvisError(f"a POST needs a JSON body of at most {http.MAX_BODY} bytes "
                              "with its Content-Length")
        try:
            return json.loads(self.rfile.read(int(length)) or b"null")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CarvisError(f"body is not valid JSON ({exc}); send e.g. "
                              "{\"threshold\": 120}") from None


class ReviewServer:
    """The review page on host:port, in its own threads."""

    def __init__(self, review: Review, host: str = "127.0.0.1", port: int = 0,
                 token: str | None = None) -> None:
        self.review = review
        self.token = token or None
        self.page = web_file("review.html")
        self.stem = Path(review.name).stem or "frame"
        self._exporting = threading.Lock()
        self._server = _bind(host, port)
        self._server.owner = self
        self.host, self.port = self._server.server_address[:2]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Where the page is (with the token, when there is one)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    def allowed(self, given: str) -> bool:
        """True when no token is needed or the one given is right."""
        return self.token is None or hmac.compare_digest(given.encode(), self.token.encode())

    def owns(self, sock: object) -> bool:
        """No stream sockets here: the HTTP server closes every one."""
        return False

    def export(self, body: Any) -> bytes:
        """The MP4 of a range the page marked (one export at a time)."""
        if not isinstance(body, dict) or not all(
                isinstance(body.get(k), int) and not isinstance(body.get(k), bool)
                for k in ("start", "end")):
            raise CarvisError("export needs {\"start\": FRAME, \"end\": FRAME}")
        with self._exporting, tempfile.TemporaryDirectory(prefix="carvis-export-") as tmp:
            path = Path(tmp) / "range.mp4"
            self.review.export(body["start"], body["end"], path)
            return path.read_bytes()

    def start(self) -> ReviewServer:
        """Start answering requests, in a thread of their own."""
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,),
                                        name="carvis-review-http", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop answering."""
        if self._thread is not None and self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()


def _bind(host: str, port: int) -> http.Server:
    """The HTTP server on host:port, or one line saying why not."""
    try:
        return http.Server((host, port), ReviewHandler)
    except OSError as exc:
        raise CarvisError(f"review page: cannot listen on {host}:{port} "
                          f"({exc.strerror or exc}); give another --serve [HOST:]PORT") from None
