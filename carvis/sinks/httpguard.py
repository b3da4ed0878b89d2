"""Who may ask what of a carvis server, checked before any route sees a request (both servers).

- **Host** names this server: a loopback name, the address it is bound to, the addresses it
  says it is reachable at, or this machine's name — with this server's port when a port is
  given. A page whose name was rebound to this machine (DNS rebinding) is refused, on loopback
  too.
- **A POST comes from the server's own page**: its Origin (or, without one, its Referer) is this
  server, and its body is JSON (``Content-Type: application/json``), which no cross-origin form
  and no fetch without a CORS preflight can send.
- **The token**, when there is one (off loopback): on every route but the icon, from the
  ``X-Carvis-Token`` header, ``Authorization: Bearer``, ``?token=`` (then kept in a cookie for
  the page's own requests) or that cookie.
- **Bodies** carry a Content-Length (no chunked bodies) of at most MAX_BODY bytes, and are UTF-8
  JSON nested at most MAX_DEPTH deep, with finite numbers of a sane size.
"""

from __future__ import annotations

import contextlib
import fcntl
import hmac
import io
import ipaddress
import json
import math
import re
import secrets
import socket
import struct
from email.message import Message
from http import cookies
from http.server import BaseHTTPRequestHandler
from itertools import accumulate
from typing import Any
from urllib.parse import urlsplit

from carvis import __version__
from carvis.errors import CarvisError

MAX_BODY = 64 * 1024
MAX_DEPTH = 20  # settings are flat; a deep body is an attack on the parser
MAX_DIGITS = 18  # an integer setting never needs more
COOKIE = "carvis_token"
TOKEN_CHARS = re.compile(r"[A-Za-z0-9._~-]+")
SEND_TIMEOUT = 10.0  # seconds an answer may wait for the client to take more of it
#: What a client that hangs up or times out raises: counted, not reported.
HANGUPS = (ConnectionError, TimeoutError, socket.timeout, BrokenPipeError)
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(r"[\[\]{}]")


class Refused(CarvisError):
    """A request refused before its route: the HTTP status, and the one line that says why."""

    def __init__(self, status: int, reason: str, counter: str = "refused") -> None:
        super().__init__(reason)
        self.http_status = status
        self.counter = counter  # which of the server's counts it adds to


class Guard:
    """The rules of one server: its own names and port, and its token (None: none needed)."""

    def __init__(self, host: str, port: int, token: str | None) -> None:
        self.host, self.port, self.token = host, int(port), token or None
        # Cookies ignore ports: each server's own name, so `run` on :8080 and `review` on
        # :8081 of one car keep both tokens in one browser.
        self.cookie = f"{COOKIE}_{self.port}"
        self.wildcard = host in ("0.0.0.0", "::", "")
        name = socket.gethostname().lower().rstrip(".")
        self._names = {"localhost", name, f"{name}.local", host.lower()}
        if self.wildcard:
            self._names.update(reachable_addresses())

    def admit(self, method: str, path: str, headers: Message, query: dict[str, str]
              ) -> dict[str, str]:
        """Headers to add to the answer (the token's cookie) if the request may go on to its
        route; else raises Refused with the status and the reason."""
        self.check_host(headers)
        extra = self._token(path, headers, query)
        if method == "POST":
            self._origin(headers)
            kind = headers.get("Content-Type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                raise Refused(415, f"a POST needs Content-Type: application/json, not "
                                   f"{kind or 'none'!r}; send JSON, e.g. {{\"threshold\": 120}}")
        return extra

    def check_host(self, headers: Message) -> None:
        """Refuse a Host that is not this server (several Host headers too)."""
        hosts = headers.get_all("Host") or []
        if len(hosts) > 1:
            raise Refused(400, "the request has several Host headers; send one")
        if hosts and not self.is_own(hosts[0], port_given=False):
            raise Refused(403, f"Host {hosts[0][:80]!r} is not this carvis (a page of another "
                               f"site may be trying to reach it); open {self.home()}",
                          "forged")

    def is_own(self, netloc: str, port_given: bool) -> bool:
        """True when host[:port] names this server; port_given: a missing port means 80."""
        if not netloc or any(c in netloc for c in "@/\\?# \t\r\n"):
            return False
        try:
            url = urlsplit(f"//{netloc}")
            name, port = (url.hostname or "").rstrip("."), url.port
        except ValueError:
            return False
        if (port is None and port_given and self.port != 80) or \
                (port is not None and port != self.port):
            return False
        if not name:
            return False
        if is_loopback(name) or name in self._names:
            return True
        if self.wildcard and _is_address(name):  # an address this machine got since it started
            self._names.update(reachable_addresses())
            return name in self._names
        return False

    def home(self) -> str:
        """The address to tell a refused client to open."""
        host = "127.0.0.1" if self.wildcard else self.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/"

    def _origin(self, headers: Message) -> None:
        """A state-changing request comes from this server's own page (browsers say so)."""
        origin = headers.get("Origin")
        what, value = ("Origin", origin) if origin is not None else \
            ("Referer", headers.get("Referer"))
        if value is None:
            return  # not a browser (curl, a script): nothing to forge
        url = urlsplit(value.strip()) if "\n" not in value else None
        if url is None or url.scheme != "http" or not self.is_own(url.netloc, port_given=True):
            raise Refused(403, f"{what} {value[:80]!r} is not this carvis: only its own page "
                               f"may change it (open {self.home()})", "forged")

    def _token(self, path: str, headers: Message, query: dict[str, str]) -> dict[str, str]:
        if self.token is None or path == "/favicon.ico":
            return {}
        jar = cookies.SimpleCookie()
        with contextlib.suppress(cookies.CookieError):
            jar.load(headers.get("Cookie", ""))
        in_query = query.get("token", "")
        given = (headers.get("X-Carvis-Token")
                 or headers.get("Authorization", "").removeprefix("Bearer ").strip()
                 or in_query or (jar[self.cookie].value if self.cookie in jar else ""))
        if hmac.compare_digest(given.encode(), self.token.encode()):
            cookie = f"{self.cookie}={self.token}; Path=/; HttpOnly; SameSite=Strict"
            return {"Set-Cookie": cookie} if in_query else {}
        if not given:
            raise Refused(401, "this carvis needs its token: open the address printed when it "
                               "started (it ends in ?token=...)", "denied")
        raise Refused(403, "wrong token", "denied")


def content_length(values: list[str], chunked: bool) -> int:
    """The body's length from its Content-Length header(s); Refused when it cannot be trusted."""
    if chunked:
        raise Refused(411, "send the body with a Content-Length (Transfer-Encoding is not "
                           "taken)")
    if not values:
        return 0
    if len(set(values)) > 1:
        raise Refused(400, f"Content-Length given {len(values)} times with different values")
    text = values[0].strip()
    if not text.isascii() or not text.isdigit():
        raise Refused(400, f"Content-Length {text[:40]!r} is not a number of bytes")
    if int(text) > MAX_BODY:
        raise Refused(413, f"a body of {text[:40]} bytes is too large (max {MAX_BODY})")
    return int(text)


def request_size(buf: bytes | bytearray, start: int = 0) -> int | None:
    """Bytes of the whole request whose head is at the start of buf (the head, then its body's
    Content-Length), None while the head's end is not in buf (looked for from start). A body
    whose framing is refused counts as none: the handler says why."""
    end = _HEAD_END.search(buf, start)
    if end is None:
        return None
    lengths, chunked = [], False
    for line in bytes(buf[:end.start()]).split(b"\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            lengths.append(value.strip().decode("latin-1"))
        chunked = chunked or name == b"transfer-encoding"
    try:
        return end.end() + content_length(lengths, chunked)
    except Refused:
        return end.end()


def parse_json(body: bytes) -> Any:
    """A request body as JSON, or Refused (400) with the reason in one line."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Refused(400, f"body is not valid JSON (not UTF-8 at byte {exc.start}); send "
                           "UTF-8 JSON, e.g. {\"threshold\": 120}") from None
    shape = _BRACKETS.findall(_STRINGS.sub("", text))
    if max(accumulate(1 if c in "[{" else -1 for c in shape), default=0) > MAX_DEPTH:
        raise Refused(400, f"body is nested more than {MAX_DEPTH} deep; send a flat JSON "
                           "object, e.g. {\"threshold\": 120}")
    try:
        return json.loads(text or "null", parse_constant=_constant, parse_float=_float,
                          parse_int=_int)
    except json.JSONDecodeError as exc:
        raise Refused(400, f"body is not valid JSON ({exc}); send e.g. "
                           "{\"threshold\": 120}") from None
    except (ValueError, RecursionError) as exc:
        raise Refused(400, f"body refused: {exc}") from None


class Exchange(BaseHTTPRequestHandler):
    """One whole request the Server read, answered once: errors as one line of JSON, a 4xx
    (never a 5xx) for a bad request, and never a connection closed without an answer."""

    server: Any  # a carvis.sinks.http.Server: its guard, owner and count()
    server_version = "carvis"
    sys_version = ""

    def version_string(self) -> str:
        """The Server header: carvis/VERSION (http.server would add a space and Python's)."""
        return f"carvis/{__version__}"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the live stats say what matters."""

    def setup(self) -> None:
        """The request's bytes (read by the Server) in, the socket out."""
        self.connection, data = self.request
        self.connection.settimeout(SEND_TIMEOUT)
        self.rfile = io.BytesIO(data)
        self.wfile = self.connection.makefile("wb")
        self.answered = False

    def handle(self) -> None:
        """One request per connection (HTTP/1.0); an unforeseen failure is still answered."""
        self.close_connection = True
        try:
            self.handle_one_request()
        except HANGUPS:
            raise
        except Exception as exc:
            if not self.answered:
                self._headers_buffer = []  # what a failed header left unsent
                self._error(500, f"carvis could not answer {getattr(self, 'path', '')[:80]!r} "
                                 f"({type(exc).__name__}: {exc}); it runs on")
            raise
        if not self.answered:
            self._error(400, "no request line; send e.g. GET / HTTP/1.1")

    def parse_request(self) -> bool:
        """http.server's parse, without HTTP/0.9 (an answer with no status line, no headers)."""
        if not super().parse_request():
            return False
        if self.request_version == "HTTP/0.9":
            self.send_error(400, "HTTP/0.9 requests are not served; send HTTP/1.1")
            return False
        return True

    def end_headers(self) -> None:
        """Send the head (noted: this request has its answer)."""
        self.answered = True
        super().end_headers()

    def send_header(self, keyword: str, value: str) -> None:
        """A header line; a value with a line break would be a header injected: refused."""
        if any(c in str(value) for c in "\r\n\0"):
            raise ValueError(f"header {keyword} holds a line break; not sent")
        super().send_header(keyword, value)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None
                   ) -> None:
        """http.server's own refusals (bad request line, headers), as 4xx JSON."""
        self.server.count("refused")
        if code == 501:  # a method carvis has no use for is the client's mistake
            self._error(405, f"method {self.command!r} is not served here; use GET or POST",
                        {"Allow": "GET, HEAD, POST"})
            return
        code = 400 if code >= 500 else code
        self._error(code, (message or self.responses.get(code, ("bad request",))[0])[:200])

    def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        if getattr(self, "request_version", "") == "HTTP/0.9":  # a bad line is taken as 0.9
            self.request_version = "HTTP/1.0"  # and would be answered with no status line
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

    def _error(self, status: int, reason: str, extra: dict | None = None) -> None:
        self._send(status, json.dumps({"error": reason}).encode(), "application/json", extra)

    def _body(self) -> Any:
        """The POST's JSON body (its length and form checked), or Refused."""
        length = content_length(self.headers.get_all("Content-Length") or [],
                                "Transfer-Encoding" in self.headers)
        body = self.rfile.read(length)
        if len(body) < length:
            raise Refused(400, f"the body is {len(body)} bytes, not its Content-Length {length}")
        return parse_json(body)


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number; send a finite number")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range; send a finite number")
    return value


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise ValueError(f"number {text[:20]}... has more than {MAX_DIGITS} digits")
    return int(text)


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """True for an address only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def reachable_addresses() -> list[str]:
    """This machine's IPv4 addresses other machines may reach (no loopback), from its
    interfaces; nothing is sent anywhere."""
    found: list[str] = []
    for _, name in socket.if_nameindex():
        with contextlib.suppress(OSError), \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            packed = fcntl.ioctl(sock.fileno(), 0x8915,  # SIOCGIFADDR
                                 struct.pack("256s", name.encode()[:15]))
            address = socket.inet_ntoa(packed[20:24])
            if not ipaddress.ip_address(address).is_loopback and address not in found:
                found.append(address)
    return found


def choose_token(address: tuple[str, int] | None, token: str | None, refuse: bool
                 ) -> tuple[str | None, str | None]:
    """(the token to serve with, a warning to show): given, or made up off loopback unless
    refused; the warning names the addresses this machine is reachable at."""
    if token and not TOKEN_CHARS.fullmatch(token):
        raise CarvisError("--token may hold only letters, digits and . _ ~ - (it travels in "
                          "addresses and cookies); choose another")
    if address is None or token or is_loopback(address[0]):
        return token, None
    host = address[0]
    seen = ", ".join(reachable_addresses()) if host in ("0.0.0.0", "::", "") else host
    if refuse:
        return None, (f"serving on {seen or host} without a token (--no-token): anyone on "
                      "this network may watch and change settings")
    return secrets.token_urlsafe(12), (
        f"--serve {host} is reachable from the network ({seen or 'no address found'}); made "
        "up a token for the page (give --token T to choose one, --no-token for none)")
