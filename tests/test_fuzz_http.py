"""HTTP fuzz (#20): seeded, bounded mutations of requests against both servers (the live one of
`carvis run --serve` and review's), each answered with a status line — a 4xx with its reason in
one line for what is refused, never a 5xx, never a connection closed in silence — with a good
request still served after it and no traceback; Hypothesis on the JSON body parser."""

from __future__ import annotations

import json
import random
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import fakes
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_attack_http import ask, header

from carvis import live, pipeline
from carvis.review.app import Review
from carvis.review.server import ReviewServer
from carvis.sinks import http as carvis_http
from carvis.sinks.httpguard import MAX_BODY, Refused, parse_json

pytestmark = pytest.mark.fuzz
SEED = 20
GOOD = {"live": ("/stats", b'{"threshold": 100}'), "review": ("/info", b'{"threshold": 100}')}
TOKEN = {"live": "fuzz-7", "review": None}  # the live server as off loopback, review as on it

METHODS = ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE", "CONNECT", "PATCH",
           "get", "G ET", "GET\0", "\xff\xfe", "", "A" * 300]
TARGETS = ["/", "/stats", "/settings", "*", "http://evil.example/", "//evil.example/x", "/%00",
           "/%ff%fe?%ff=%fe", "/../../etc/passwd", "/" + "a" * 70000,
           "/?" + "&".join(f"k{i}=v" for i in range(2000)), "/stats?token=" + "x" * 5000,
           "stats", "", "/\x7f", "/ /", "/\t", "/frame.jpg?i=²", "/frame.jpg?i=99999999999999",
           "/frame.png?i=-1", "/frame.jpg?i=0&m=7", "/settings?token=&token="]
VERSIONS = ["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/0.9", "HTTP/1.1.1", "HTTP/9",
            "http/1.1", "HTTP/1.1 extra", "", "FOO/1.1", "HTTP/" + "1" * 50]
LENGTHS = ["-1", "+5", "5 ", "0x10", "1e3", "99999999999999999999999", "", "5, 5", "５",
           str(MAX_BODY + 1), "0", "3"]
BODIES = [b"[" * 30000, b"{" * 30000, b'{"a":' * 10000, b"1e400", b'{"threshold": 1e400}',
          b'{"threshold": -1e400}', b"NaN", b'{"threshold": Infinity}', '"²"'.encode(),
          b"1" * 5000, b'{"threshold": ' + b"9" * 400 + b"}", b"\xff\xfe{}",
          '{"threshold": 12}'.encode("utf-16"), b'\xef\xbb\xbf{"threshold": 12}',
          b'{"threshold": 12} garbage', b"{}", b"[]", b"null", b"true", b'{"layer": null}',
          b'{"threshold": [[[[]]]]}', b'{"colormap": "\\ud800"}', b'{"' + b"k" * 60000 + b'": 1}',
          b'{"threshold": 1, "threshold": 2}', b'{"threshold": 12}\x00', b"\x00" * 100]


def _request(rng: random.Random, port: int, kind: str, token: str | None
             ) -> tuple[str, bytes]:
    """One mutated request: (what it is, its bytes); with the token, unless its headers are
    what is mutated (then the token may be missing, or junk)."""
    host = f"Host: 127.0.0.1:{port}" + (f"\r\nX-Carvis-Token: {token}" if token else "")
    if kind == "line":
        line = rng.choice(" \t  ").join(
            x for x in (rng.choice(METHODS), rng.choice(TARGETS), rng.choice(VERSIONS)) if x)
        return f"request line {line[:60]!r}", (f"{line}\r\n{host}\r\n\r\n").encode("latin-1")
    if kind == "headers":
        headers = [host if rng.random() < 0.5 else host.split("\r\n")[0]]
        for _ in range(rng.randint(1, 3)):
            headers += rng.choice([
                [f"X-Big: {'b' * 40000}"], [f"X-{i}: v" for i in range(150)], ["Garbage line"],
                ["X-Nul: a\0b"], ["X-Bytes: \xff\xfe\x80"], ["Bad Name: v"], [": empty name"],
                [f"Host: {rng.choice(['evil.example', '', '127.0.0.1:0', '[::1', 'a' * 300])}"],
                ["X-Fold: a", " folded"], ["Expect: 100-continue"], ["Connection: keep-alive"],
                [f"{'N' * 10000}: v"], ["Content-Type: \x00"], ["Cookie: carvis_token=\xff;;="], ["Cookie: =;;\"\\"],
                ["Authorization: Bearer \xff"], ["X-Carvis-Token: \x7f" + "t" * 5000],
                ["Origin: http://evil.example"], ["Referer: \r"]])
        method = rng.choice(["GET", "POST", "HEAD"])
        body = b'{"threshold": 50}' if method == "POST" else b""
        headers += ["Content-Type: application/json", f"Content-Length: {len(body)}"] \
            if body else []
        rng.shuffle(headers)
        text = f"{method} /settings HTTP/1.1\r\n" + "\r\n".join(headers) + "\r\n\r\n"
        return f"headers {method} {[h[:30] for h in headers]}", text.encode("latin-1") + body
    if kind == "length":
        body = rng.choice(BODIES[-8:])
        lengths = rng.sample(LENGTHS, rng.choice([1, 1, 2]))
        head = "".join(f"Content-Length: {n}\r\n" for n in lengths)
        return f"Content-Length {lengths} body {body[:20]!r}", (
            f"POST /settings HTTP/1.1\r\n{host}\r\nContent-Type: application/json\r\n{head}"
            "\r\n").encode() + body
    if kind == "chunked":
        te = rng.choice(["chunked", "gzip, chunked", "identity", "chunked\r\nContent-Length: 5"])
        return f"Transfer-Encoding {te!r}", (
            f"{rng.choice(['POST', 'GET'])} /settings HTTP/1.1\r\n{host}\r\nContent-Type: "
            f"application/json\r\nTransfer-Encoding: {te}\r\n\r\n"
            "11\r\n{\"threshold\": 12}\r\n0\r\n\r\n").encode()
    if kind == "json":
        body = rng.choice(BODIES)
        return f"JSON body {body[:30]!r}…", (
            f"POST /settings HTTP/1.1\r\n{host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    noise = rng.randbytes(rng.randint(1, 3000))
    return f"random bytes {noise[:16]!r}…", noise + (b"\r\n\r\n" if rng.random() < 0.8 else b"")


def _checked(port: int, what: str, raw: bytes, good: tuple[str, bytes], token: str | None
             ) -> tuple[int | None, str | None]:
    """(the status raw got, what is wrong with its answer or a good request's after it)."""
    answer = ask(port, raw=raw, timeout=15)
    if answer.status is None:
        return None, f"{what}: no answer at all"
    if answer.status >= 500:
        return answer.status, f"{what}: {answer.status} {answer.error}"
    head_only = raw.startswith(b"HEAD ") and header(answer, "Content-Length") != ["0"]
    if answer.status >= 400 and not (head_only or answer.error and "\n" not in answer.error):
        return answer.status, f"{what}: {answer.status} without a one-line reason"
    path, body = good
    auth = [("X-Carvis-Token", token)] if token else []
    after = ask(port, "GET", path, auth).status, ask(
        port, "POST", "/settings", [*auth, ("Content-Type", "application/json")], body).status
    return answer.status, None if after == (200, 200) else f"after {what}: good ones got {after}"


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Both servers, the real pipeline and review behind them; requests due within 1 s."""
    tmp = tmp_path_factory.mktemp("fuzz")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(carvis_http, "HEADER_TIMEOUT", 1.0)
        session, profile = fakes.session_and_profile(tmp)
        source = fakes.StillSource(fakes.test_image(), fps=15)
        runner = live.build(source, pipeline.make_renderer(session, profile),
                            live.LiveOptions(serve=("127.0.0.1", 0), token=TOKEN["live"]))
        runner.start()
        fakes.wait_until(lambda: runner.server.broadcast.latest()[0] > 0, what="a first frame")
        model, profile = fakes.model_and_profile(tmp)
        review = Review("synthetic:frames=4,size=160x120", [(model, profile)],
                        cache=tmp / "cache")
        shown = ReviewServer(review).start()
        yield {"live": runner.server, "review": shown}
        shown.close()
        review.close()
        runner.stop()
        source.close()
        runner.join(10)


@pytest.mark.parametrize("name", ["live", "review"])
def test_fuzzed_requests_are_answered_and_the_server_runs_on(servers, name, capfd):
    server = servers[name]
    rng = random.Random(f"{SEED}-{name}")
    kinds = ["line"] * 40 + ["headers"] * 40 + ["length"] * 24 + ["chunked"] * 8 + \
        ["json"] * 40 + ["noise"] * 30
    cases = [_request(rng, server.port, kind, TOKEN[name]) for kind in kinds]
    errors_before = server._server.counts["errors"]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda c: _checked(server.port, *c, GOOD[name], TOKEN[name]),
                                cases))
    wrong = [w for _, w in results if w]
    assert wrong == [], f"{len(wrong)} of {len(cases)}:\n" + "\n".join(wrong[:10])
    # The mutations reached every layer: the reader, http.server's parser, the guard, the body.
    seen = {status for status, _ in results}
    assert {200, 400, 403, 405, 408, 411, 413, 431} <= seen, sorted(seen)
    assert server._server.counts["errors"] == errors_before
    err = capfd.readouterr().err
    assert "Traceback" not in err, err


@pytest.mark.parametrize("name", ["live", "review"])
def test_a_request_sent_a_byte_at_a_time_is_read_whole(servers, name):
    port = servers[name].port
    body = b'{\n\n"threshold": 12\r\n\r\n}'  # blank lines in the body are not its head's end
    request = (f"POST /settings?token={TOKEN[name]} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               "Content-Type: "
               f"application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(request)):
            sock.send(request[i:i + 1])
            time.sleep(0.002)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.0 200 ") and b'"threshold": 12' in answer, answer


@pytest.mark.parametrize("body", [
    b'{"channel": "\xc2\xb2"}',
    b'{"layer": "conv:\xc2\xb2"}',
])
def test_values_only_the_validator_can_refuse_get_a_4xx(servers, body):
    answer = ask(servers["live"].port, "POST", "/settings", [
        ("X-Carvis-Token", TOKEN["live"]), ("Content-Type", "application/json")], body)
    assert answer.status == 400 and answer.error, answer


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(), inner, max_size=4), max_leaves=40)


@settings(max_examples=300, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(JSON.map(lambda v: json.dumps(v).encode()), st.binary(max_size=300),
                 st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n)))
def test_the_body_parser_returns_json_or_one_refusal_line(body):
    try:
        value = parse_json(body)
    except Refused as exc:
        assert exc.http_status == 400 and str(exc) and "\n" not in str(exc)
        return
    assert value == json.loads(body.decode("utf-8") or "null")
