"""Issue 13 on the HTTP side, with real sockets on 127.0.0.1 only: clients that hang up on every
route, a slow-loris, capped connections and bodies, fixed routes, the token and its cookie,
/metrics in Prometheus' format, X-Timestamp on every part, and a token-less off-loopback start
(bound to 0.0.0.0, reached through 127.0.0.1 only)."""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time

import fakes
import pytest

from carvis import live, pipeline
from carvis.sinks import http as carvis_http

ROUTES = ("/", "/stream.mjpg", "/snapshot.jpg", "/stats", "/settings", "/favicon.ico",
          "/metrics")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(ModelSession, profile) shared by the tests of this module."""
    return fakes.session_and_profile(tmp_path_factory.mktemp("model"))


@pytest.fixture
def served(model):
    made: list[live.LiveRunner] = []

    def make(**options) -> live.LiveRunner:
        session, profile = model
        source = fakes.StillSource(fakes.test_image(), fps=30)
        runner = live.build(source, pipeline.make_renderer(session, profile),
                                 live.LiveOptions(serve=("127.0.0.1", 0), **options))
        runner.source_for_test = source
        made.append(runner.start())
        fakes.wait_until(lambda: runner.server.broadcast.latest()[0] > 0, what="a first frame")
        return runner

    yield make
    for runner in made:
        runner.stop()
        runner.source_for_test.close()
        runner.join(10)


def _connect(runner: live.LiveRunner) -> socket.socket:
    return socket.create_connection(("127.0.0.1", runner.server.port), timeout=10)


def _reset(sock: socket.socket) -> None:
    """Hang up with a TCP reset (SO_LINGER 0), as a phone leaving the Wi-Fi does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_clients_that_hang_up_on_any_route_leave_no_traceback(served, capfd):
    runner = served()
    for path in ROUTES:
        for how in range(4):
            sock = _connect(runner)
            request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{runner.server.port}\r\n"
                       "\r\n").encode()
            if how == 0:
                sock.sendall(request[: len(request) // 2])  # gone mid-request
                _reset(sock)
            elif how == 1:
                sock.sendall(request)  # gone before the answer
                _reset(sock)
            elif how == 2:
                sock.sendall(request)  # gone mid-answer
                sock.recv(10)
                _reset(sock)
            else:
                sock.sendall(request)
                sock.close()
    fakes.wait_until(lambda: runner.server.viewers.active == 0, what="streams gone")
    status, _ = fakes.http("GET", runner.server.url + "stats")
    assert status == 200 and runner.running
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Error" not in err, err


def test_a_slow_loris_holds_a_thread_at_most_10_s(served):
    runner = served()
    sock = _connect(runner)
    sock.sendall(b"GET /stats HTTP/1.1\r\nHost: car\r\n")
    t0 = time.monotonic()
    closed = False
    while time.monotonic() - t0 < 15:
        try:
            sock.sendall(b"X")  # one byte a second: never a whole header
            sock.settimeout(1.0)
            if sock.recv(4096) == b"":
                closed = True
                break
        except TimeoutError:
            continue
        except OSError:
            closed = True
            break
    elapsed = time.monotonic() - t0
    sock.close()
    assert closed and elapsed <= 10.0, f"held {elapsed:.1f} s"
    assert runner.server.stats()["http"]["slow_cut"] >= 1


def test_connections_are_capped_and_the_page_stays_reachable_after(served):
    runner = served()
    idle = [_connect(runner) for _ in range(carvis_http.MAX_READING)]
    try:
        fakes.wait_until(lambda: len(runner.server._server._reading)
                         >= carvis_http.MAX_READING, what="the cap reached")
        # At the cap the connection sending longest gives way: the page is still served.
        assert fakes.http("GET", runner.server.url + "stats")[0] == 200
        answer = idle[0].recv(4096)
        assert answer.startswith(b"HTTP/1.0 408"), answer
        assert len(runner.server._server._reading) <= carvis_http.MAX_READING
    finally:
        for sock in idle:
            sock.close()
    fakes.wait_until(lambda: fakes.http("GET", runner.server.url + "stats")[0] == 200,
                     what="served again")


def test_bodies_are_capped_and_only_fixed_routes_exist(served):
    runner = served()
    url = runner.server.url
    big = b'{"threshold": 1' + b" " * (carvis_http.MAX_BODY + 10) + b"}"
    assert fakes.http("POST", url + "settings", raw=big)[0] == 413
    for path in ("../etc/passwd", "web/index.html", "carvis/web/index.html", "stats/x",
                 "%2e%2e/%2e%2e/etc/passwd", "models/default.keras", "index.htm"):
        assert fakes.http("GET", url + path)[0] == 404, path
    with _connect(runner) as sock:  # a path outside the fixed routes, however spelled
        sock.sendall(b"GET /../../etc/passwd HTTP/1.0\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.0 404")
    assert fakes.http("DELETE", url + "settings")[0] == 405


def test_the_token_guards_every_route_and_a_visit_with_it_sets_a_cookie(served):
    runner = served(token="team-7")
    url = runner.server.url
    for path in ("", "stream.mjpg", "snapshot.jpg", "stats", "settings", "metrics"):
        assert fakes.http("GET", url + path)[0] == 401, path
    assert fakes.http("POST", url + "settings", {"threshold": 3})[0] == 401
    assert fakes.http("GET", url + "favicon.ico")[0] == 204
    with _connect(runner) as sock:
        sock.sendall(b"GET /?token=team-7 HTTP/1.0\r\n\r\n")
        answer = sock.recv(4096).decode()
    assert answer.startswith("HTTP/1.0 303") and "Location: /\r\n" in answer
    cookie = re.search(rf"Set-Cookie: (carvis_token_{runner.server.port}=team-7);[^\r]*HttpOnly",
                       answer)
    assert cookie and "SameSite=Strict" in answer
    jar = {"Cookie": cookie[1]}
    status, page = fakes.http("GET", url, headers=jar)
    assert status == 200 and b'<img id="stream"' in page
    assert fakes.http("POST", url + "settings", {"threshold": 33}, headers=jar)[0] == 200
    assert fakes.http("GET", url + "settings", headers=jar)[1]["threshold"] == 33
    assert fakes.http("GET", url + "stats", headers={"Cookie": f"carvis_token_{runner.server.port}=nope"}
                      )[0] == 403
    viewer = fakes.Viewer("127.0.0.1", runner.server.port, path="/stream.mjpg?token=team-7")
    try:
        fakes.wait_until(lambda: viewer.frames >= 2, what="the stream with the token")
    finally:
        viewer.close()


def test_metrics_are_prometheus_text_and_parts_carry_their_capture_time(served):
    runner = served()
    viewer = fakes.Viewer("127.0.0.1", runner.server.port)
    try:
        fakes.wait_until(lambda: viewer.frames >= 10, what="10 frames")
        fakes.wait_until(lambda: runner.model.computed >= 3, what="maps")
        status, text = fakes.http("GET", runner.server.url + "metrics")
    finally:
        viewer.close()
    assert status == 200
    text = text.decode()
    sample = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? -?[\d.e+-]+$|'
                        r"^[a-z_]+(\{.*\})? \+Inf$")
    for line in text.splitlines():
        assert line.startswith(("# HELP ", "# TYPE ")) or sample.match(line), line
    for name in ("carvis_frames_in_total", "carvis_frames_out_total", "carvis_drops_total",
                 "carvis_map_age_frames", "carvis_map_age_seconds", "carvis_viewers",
                 "carvis_source_reconnects_total", "carvis_stage_seconds_bucket"):
        assert re.search(rf"^{name}(\{{|\s)", text, re.MULTILINE), name
    buckets = [int(n) for n in re.findall(r'carvis_stage_seconds_bucket\{stage="compose",'
                                          r'le="[^"]+"\} (\d+)', text)]
    assert buckets == sorted(buckets) and buckets[-1] > 0
    parser = pytest.importorskip("prometheus_client.parser")
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    assert families["carvis_stage_seconds"].type == "histogram"
    assert families["carvis_frames_out"].type == "counter"
    # Every part of the stream: X-Timestamp, its capture time in seconds since the epoch.
    assert len(viewer.stamps) == viewer.frames
    assert viewer.stamps == sorted(viewer.stamps)
    assert all(0 <= time.time() - t < 30 for t in viewer.stamps)


def _start(args: list[str], tmp_path) -> tuple[subprocess.Popen, list[str]]:
    cmd = [sys.executable, "-m", "carvis.cli", "run", "--source", "synthetic:size=160x120",
           "--loop", "--model", str(fakes.model_path()), *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
    lines: list[str] = []
    for line in proc.stderr:
        lines.append(line)
        if "carvis: running" in line or "carvis: error" in line:
            break
    return proc, lines


def _stop(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    try:
        err = proc.stderr.read()
        return proc.wait(timeout=20), err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serving_off_loopback_without_a_token_makes_one_and_says_where(model, tmp_path):
    proc, lines = _start(["--serve", "0.0.0.0:0"], tmp_path)
    try:
        out = "".join(lines)
        warning = next(line for line in lines if "warning" in line)
        assert "reachable from the network" in warning and "0.0.0.0" not in \
            warning.split("(", 1)[1], warning
        start = next(line for line in lines if "carvis: running" in line)
        urls = re.findall(r"http://([\d.]+):(\d+)/\?token=([\w-]+)", start)
        assert urls, out
        assert all(host != "0.0.0.0" for host, _, _ in urls), start
        port, token = urls[0][1], urls[0][2]
        base = f"http://127.0.0.1:{port}/"  # only ever loopback from the tests
        assert fakes.http("GET", base + "stats")[0] == 401
        assert fakes.http("GET", base + f"stats?token={token}")[0] == 200
    finally:
        code, err = _stop(proc)
    assert code == 0 and "Traceback" not in err
    proc, lines = _start(["--serve", "0.0.0.0:0", "--no-token"], tmp_path)
    try:
        assert any("without a token" in line for line in lines), lines
        port = re.search(r"http://[\d.]+:(\d+)/ ", "".join(lines))[1]
        assert fakes.http("GET", f"http://127.0.0.1:{port}/stats")[0] == 200
    finally:
        code, _ = _stop(proc)
    assert code == 0
