"""The review page's HTTP side: the page, its charting library, frames, timeline and settings.

Served like the live page (carvis.sinks.http: requests read in one event loop, JSON errors of
one line, the Host checked, a POST only from the page itself and only JSON, and off loopback
the token on every route but the icon); it serves a :class:`~carvis.review.app.Review` and never
a model.

Routes: ``/`` the page, ``/vendor/...`` uPlot, ``/info``, ``/timeline``, ``/frame.jpg?i=N&m=K``,
``/frame.png?i=N`` (every model side by side), ``/stats``, ``/settings`` (GET; POST JSON to
change), ``POST /export.mp4`` with ``{"start": A, "end": B}``.

A season (:class:`SeasonServer`): ``/`` its index, ``/season`` its rows, and every route above
for run K under ``/run/K/`` (the review page's own addresses are relative).
"""

from __future__ import annotations

import contextlib
import importlib.resources
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import cv2

from carvis.errors import CarvisError
from carvis.review.app import Review
from carvis.sinks import http
from carvis.sinks.httpguard import Refused

JPEG_QUALITY = 85
VENDOR = {"uPlot.iife.min.js": "application/javascript", "uPlot.min.css": "text/css",
          "uPlot.LICENSE": "text/plain; charset=utf-8"}


def web_file(*parts: str) -> bytes:
    """A file shipped in carvis/web."""
    return (importlib.resources.files("carvis") / "web").joinpath(*parts).read_bytes()


class ReviewHandler(http.Handler):
    """The review routes; the live handler checks each request first (Host, the token off
    loopback on every route, a POST's Origin and JSON), as for `run --serve`."""

    def site(self) -> ReviewSite:
        """The review this request is for."""
        return self.server.owner.site

    PAGES = ("/", "/index.html", "/review.html")
    GETS = (*PAGES, "/info", "/timeline", "/settings", "/stats", "/frame.jpg", "/frame.png",
            "/favicon.ico", *(f"/vendor/{name}" for name in VENDOR))
    POSTS = ("/settings", "/export.mp4")
    GET_HINT = "try /, /info, /timeline, /frame.jpg?i=N or /settings"
    POST_HINT = "POST JSON to /settings or /export.mp4"

    def get(self, path: str, query: dict[str, str], extra: dict[str, str]) -> None:
        """Answer a GET (or HEAD) the guard let through."""
        site = self.site()
        if path.startswith("/vendor/"):
            self._send(200, web_file("vendor", path[8:]), VENDOR[path[8:]],
                       {"Cache-Control": "max-age=86400"})
            return
        review = site.review
        if path in self.PAGES:
            self._send(200, site.page, "text/html; charset=utf-8")
        elif path in ("/info", "/timeline", "/settings", "/stats"):
            self._json(200, getattr(review, path[1:])())
        elif path == "/frame.jpg":
            image = review.picture(_int(query, "i"), _int(query, "m", 0))
            data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1]
            self._send(200, data.tobytes(), "image/jpeg")
        elif path == "/frame.png":
            n = _int(query, "i")
            self._send(200, review.png(n), "image/png",
                       {"Content-Disposition": attachment(f"{site.stem}-{n:05d}.png")})
        else:
            self._send(204, b"", "image/x-icon")

    def post(self, path: str, query: dict[str, str], extra: dict[str, str]) -> None:
        """Change the drawing settings, or export a range as MP4 (sent from its file)."""
        site = self.site()
        body = self._body()
        if path == "/settings":
            self._json(200, site.review.change(body))
            return
        with site.export(body) as (mp4, name):
            size = mp4.stat().st_size
            self.send_response(200)
            for key, value in (("Content-Type", "video/mp4"), ("Content-Length", str(size)),
                               ("Content-Disposition", attachment(name)),
                               ("Cache-Control", "no-store")):
                self.send_header(key, value)
            self.end_headers()
            with mp4.open("rb") as f:
                shutil.copyfileobj(f, self.wfile, 1 << 20)


def _int(query: dict[str, str], key: str, default: int | None = None) -> int:
    text = query.get(key)
    if text is None and default is not None:
        return default
    if text is None or not re.fullmatch(r"-?[0-9]{1,12}", text):
        raise CarvisError(f"{key}={(text or '')[:20]!r} is not a whole number; give e.g. ?{key}=0")
    return int(text)


def attachment(name: str) -> str:
    """A Content-Disposition for a download named name (RFC 6266): the name in UTF-8, and an
    ASCII stand-in for old clients; never a quote, backslash or line break raw."""
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_"
                       for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


class ReviewSite:
    """One review as the page sees it: the review, its page, its downloads' names."""

    def __init__(self, review: Review) -> None:
        self.review = review
        self.page = web_file("review.html")
        self.stem = Path(review.name).stem or "frame"
        self._exporting = threading.Lock()

    @contextlib.contextmanager
    def export(self, body: Any) -> Iterator[tuple[Path, str]]:
        """(the MP4 file, its download name) of a range the page marked, while in the block
        (one export computed at a time; the file goes after)."""
        if not isinstance(body, dict) or not all(
                isinstance(body.get(k), int) and not isinstance(body.get(k), bool)
                for k in ("start", "end")):
            raise CarvisError("export needs {\"start\": FRAME, \"end\": FRAME}")
        start, end = body["start"], body["end"]
        with tempfile.TemporaryDirectory(prefix="carvis-export-") as tmp:
            path = Path(tmp) / "range.mp4"
            with self._exporting:
                self.review.export(start, end, path)
            yield path, f"{self.stem}-{start:05d}-{end:05d}.mp4"


class _Listening:
    """An HTTP server of the review's handlers on host:port, in a thread of its own."""

    def __init__(self, handler: type, host: str, port: int, token: str | None) -> None:
        self.token = token or None
        self._server = _bind(host, port, self.token, handler)
        self._server.owner = self
        self.host, self.port = self._server.server_address[:2]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Where the page is (with the token, when there is one)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    def owns(self, sock: object) -> bool:
        """No stream sockets here: the HTTP server closes every one."""
        return False

    def start(self) -> _Listening:
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


class ReviewServer(_Listening):
    """The review page on host:port, in its own threads."""

    def __init__(self, review: Review, host: str = "127.0.0.1", port: int = 0,
                 token: str | None = None) -> None:
        self.site = ReviewSite(review)
        self.review = review
        super().__init__(ReviewHandler, host, port, token)


class SeasonHandler(ReviewHandler):
    """A season's index at /, and each run's review routes under /run/K/."""

    SEASON_GETS = ("/", "/index.html", "/season.html", "/season", "/favicon.ico",
                   *(f"/vendor/{name}" for name in VENDOR))
    run: int | None = None
    prefix = ""

    def _route(self) -> None:
        """/run/K/ROUTE: run K, and ROUTE as the review handler knows it."""
        match = re.match(r"/run/([0-9]{1,6})(/[^?#]*)(.*)", self.path)
        if match:
            self.run, self.prefix = int(match[1]), f"/run/{match[1]}"
            self.path = match[2] + match[3]

    def do_GET(self) -> None:
        self._route()
        if self.run is None:
            self._answer(self.SEASON_GETS, self.season_get,
                         "no such page {!r}; try /, /season or /run/K/")
        else:
            super().do_GET()

    do_HEAD = do_GET

    def do_POST(self) -> None:
        self._route()
        super().do_POST()

    def send_header(self, keyword: str, value: str) -> None:
        """A redirect stays within its run."""
        if keyword == "Location" and value.startswith("/"):
            value = self.prefix + value
        super().send_header(keyword, value)

    def site(self) -> ReviewSite:
        """Run K's review (opened on its first request)."""
        return self.server.owner.run_site(self.run)

    def season_get(self, path: str, query: dict[str, str], extra: dict[str, str]) -> None:
        """The season's index, its rows, uPlot."""
        if path.startswith("/vendor/"):
            self._send(200, web_file("vendor", path[8:]), VENDOR[path[8:]],
                       {"Cache-Control": "max-age=86400"})
        elif path == "/season":
            self._json(200, self.server.owner.rows())
        elif path == "/favicon.ico":
            self._send(204, b"", "image/x-icon")
        else:
            self._send(200, self.server.owner.page, "text/html; charset=utf-8")


class SeasonServer(_Listening):
    """A season's index and its runs' review pages on host:port."""

    def __init__(self, season: Any, host: str = "127.0.0.1", port: int = 0,
                 token: str | None = None) -> None:
        self.season = season
        self.page = web_file("season.html")
        self._sites: dict[int, ReviewSite] = {}
        self._rows: dict[str, Any] | None = None
        self._lock = threading.Lock()
        super().__init__(SeasonHandler, host, port, token)

    def rows(self) -> dict[str, Any]:
        """Every run's row (computed once)."""
        with self._lock:
            if self._rows is None:
                self._rows = self.season.rows()
            return self._rows

    def run_site(self, k: int) -> ReviewSite:
        """Run k's review as a site (its review kept open by the season while used)."""
        try:
            review = self.season.review(k)
        except CarvisError as exc:
            raise Refused(404, str(exc)) from None
        with self._lock:
            site = self._sites.get(k)
            if site is None or site.review is not review:
                site = self._sites[k] = ReviewSite(review)
            return site


def _bind(host: str, port: int, token: str | None, handler: type) -> http.Server:
    """The HTTP server on host:port, or one line saying why not."""
    try:
        return http.Server((host, port), handler, token)
    except OSError as exc:
        raise CarvisError(f"review page: cannot listen on {host}:{port} "
                          f"({exc.strerror or exc}); give another --serve [HOST:]PORT") from None
