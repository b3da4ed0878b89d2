"""The MJPEG server with real HTTP clients on loopback: many viewers, a stalled viewer, one
encode per frame however many watch, /settings live changes and refusals, the token."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request

import cv2
import fakes
import numpy as np
import pytest

from carvis import live, pipeline
from carvis.errors import CarvisError
from carvis.sinks.mjpeg import BOUNDARY, Broadcast, parse_address


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(ModelSession, profile) shared by the tests of this module."""
    return fakes.session_and_profile(tmp_path_factory.mktemp("model"))


class Served:
    """A running live pipeline with its HTTP server on an ephemeral loopback port."""

    def __init__(self, model, source, **options) -> None:
        session, profile = model
        self.source = source
        self.outputs: list[bool] = []
        opts = live.LiveOptions(serve=("127.0.0.1", 0), **options)
        self.runner = live.build(source, pipeline.make_renderer(session, profile), opts,
                                      on_frame=self._on_frame)
        self.server = self.runner.server
        self.host, self.port = self.server.host, self.server.port
        self.url = self.server.url
        self.raw: np.ndarray | None = getattr(source, "image", None)
        self.runner.start()

    def _on_frame(self, frame) -> None:
        # For a still source: is this output frame the raw frame (no overlay pixel at all)?
        if self.raw is not None:
            self.outputs.append(bool(np.array_equal(frame.image, self.raw)))

    def get(self, path: str):
        return fakes.http("GET", self.url + path.lstrip("/"))

    def post(self, body=None, **kwargs):
        return fakes.http("POST", self.url + "settings", body, **kwargs)

    def close(self) -> None:
        self.runner.stop()
        self.source.close()
        self.runner.join(10)


@pytest.fixture
def served(model):
    made: list[Served] = []

    def make(source=None, **options) -> Served:
        s = Served(model, source or fakes.StillSource(fakes.test_image(), fps=30), **options)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


# -- the shared slot --------------------------------------------------------------------------

def test_broadcast_keeps_only_the_newest_part_and_never_waits_for_viewers():
    b = Broadcast()
    woken: list[int] = []
    b.listeners.append(lambda: woken.append(b.latest()[0]))
    assert b.latest() == (0, None) and b.jpeg() is None
    for i in range(5):
        b.publish(bytes([i]) * 10)
    seq, part = b.latest()
    assert seq == 5 and woken == [1, 2, 3, 4, 5] and b.jpeg() == bytes([4]) * 10
    assert part == (b"--" + BOUNDARY + b"\r\nContent-Type: image/jpeg\r\nContent-Length: 10"
                    b"\r\n\r\n" + bytes([4]) * 10 + b"\r\n")


@pytest.mark.parametrize(("text", "expect"), [
    ("8080", ("127.0.0.1", 8080)), (":8080", ("127.0.0.1", 8080)),
    ("0.0.0.0:80", ("0.0.0.0", 80)), ("[::1]:9000", ("::1", 9000)),
])
def test_serve_address_defaults_to_loopback(text, expect):
    assert parse_address(text) == expect


def test_bad_serve_address_is_refused():
    with pytest.raises(CarvisError, match="give PORT or HOST:PORT"):
        parse_address("car:http")


# -- viewers ----------------------------------------------------------------------------------

def test_each_frame_is_encoded_once_however_many_watch(model, served):
    source = fakes.FedSource()
    s = served(source)
    viewers = [fakes.Viewer(s.host, s.port) for _ in range(6)]
    try:
        fakes.wait_until(lambda: s.server.viewers.active == 6, what="6 viewers connected")
        image = fakes.test_image()
        frames = 12
        for i in range(frames):
            source.feed(image.copy())
            fakes.wait_until(lambda i=i: s.runner.sinks["mjpeg"].sink.encodes == i + 1, what="encode")
            fakes.wait_until(lambda i=i: all(v.frames == i + 1 for v in viewers),
                             what="every viewer got the frame")
        stats = s.get("stats")[1]
    finally:
        for v in viewers:
            v.close()
    assert s.runner.processed == frames
    assert stats["frames"] == {"captured": frames, "processed": frames, "encoded": frames}
    assert stats["viewer_frames_sent"] == frames * 6
    assert all(v.error is None and v.frames == frames for v in viewers)
    assert all(b"multipart/x-mixed-replace; boundary=carvisframe" in v.headers
               for v in viewers)
    jpeg = viewers[0].last
    assert all(v.last == jpeg for v in viewers)  # the very same bytes
    assert fakes.decode(jpeg).shape == image.shape


def test_a_stalled_viewer_never_stalls_the_others_and_is_dropped(model, served):
    # Big noisy frames fill the stalled viewer's socket buffers within a few frames.
    noise = np.random.default_rng(0).integers(0, 256, (480, 640, 3), np.uint8)
    s = served(fakes.StillSource(noise, fps=30), send_timeout=0.5, jpeg_quality=95)
    stalled = fakes.Viewer(s.host, s.port, stall=True)
    viewers = [fakes.Viewer(s.host, s.port) for _ in range(4)]
    try:
        fakes.wait_until(lambda: s.server.viewers.total == 5, what="5 viewers connected")
        fakes.wait_until(lambda: s.server.viewers.dropped == 1, timeout=30,
                         what="the stalled viewer dropped")
        # The others kept going and keep going.
        counts = [v.frames for v in viewers]
        fakes.wait_until(lambda: all(v.frames >= c + 10 for v, c in zip(viewers, counts)),
                         what="10 more frames for every reading viewer")
        stats = s.get("stats")[1]
    finally:
        stalled.close()
        for v in viewers:
            v.close()
    assert stats["viewers"] == 4 and stats["viewers_dropped"] == 1
    assert all(v.error is None for v in viewers)
    # One encode per processed frame, not per viewer; the encoder only skips, never repeats.
    frames = stats["frames"]
    assert frames["encoded"] + stats["drops"]["mjpeg"] in (frames["processed"],
                                                           frames["processed"] - 1)


def test_snapshot_page_and_unknown_routes(served):
    s = served()
    fakes.wait_until(lambda: s.server.broadcast.latest()[0] > 0, what="a first frame")
    status, jpeg = s.get("snapshot.jpg")
    assert status == 200 and fakes.decode(jpeg).shape == fakes.test_image().shape
    status, page = s.get("/")
    assert status == 200 and b'<img id="stream"' in page
    status, body = s.get("nope")
    assert status == 404 and "/stream.mjpg" in body["error"]
    status, body = fakes.http("POST", s.url + "stats", {})
    assert status == 404


def test_stats_report_rates_stages_latency_drops_and_viewers(served):
    s = served()
    viewer = fakes.Viewer(s.host, s.port)
    try:
        fakes.wait_until(lambda: viewer.frames >= 10, what="10 frames")
        fakes.wait_until(lambda: "model" in s.get("stats")[1]["stages_ms"], what="model times")
        status, stats = s.get("stats")
    finally:
        viewer.close()
    assert status == 200
    assert stats["fps_in"] > 0 and stats["fps_out"] > 0
    assert set(stats["stages_ms"]) >= {"capture", "preprocess", "model", "overlay", "encode"}
    assert stats["latency_ms"]["from"] == "capture"  # capture → the stream's JPEG encode
    assert stats["latency_ms"]["to"] == "JPEG-encoded for the stream"
    assert 0 < stats["latency_ms"]["p50"] <= stats["latency_ms"]["p99"]
    assert set(stats["drops"]) == {"capture", "mjpeg"}
    assert stats["viewers"] == 1
    json.dumps(stats)


# -- settings ---------------------------------------------------------------------------------

def test_settings_changes_show_in_the_next_frames(served):
    s = served()
    raw_jpeg = cv2.imencode(".jpg", s.raw, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()
    fakes.wait_until(lambda: s.runner.model.computed >= 1, what="a first map")
    n = len(s.outputs)
    fakes.wait_until(lambda: len(s.outputs) >= n + 3, what="frames with a map")
    assert not any(s.outputs[n:])  # the overlay lights some pixels up
    status, settings = s.get("settings")
    assert status == 200 and settings["threshold"] == s.runner.renderer.composer.profile.threshold
    status, after = s.post({"threshold": 255})
    assert status == 200 and after["threshold"] == 255
    n = len(s.outputs)
    fakes.wait_until(lambda: len(s.outputs) >= n + 3, what="frames after the change")
    assert all(s.outputs[n:])  # nothing is strictly above 255: raw frames, exactly
    fakes.wait_until(lambda: s.get("snapshot.jpg")[1] == raw_jpeg, what="raw frame encoded")
    # Overlay off, threshold back to 0: still raw; overlay on again: pixels light up.
    s.post({"threshold": 0, "overlay": False})
    n = len(s.outputs)
    fakes.wait_until(lambda: len(s.outputs) >= n + 3, what="frames")
    assert all(s.outputs[n:])
    status, after = s.post({"overlay": True, "colormap": "JET"})
    assert status == 200 and after["colormap"] == "jet" and after["overlay"] is True
    n = len(s.outputs)
    fakes.wait_until(lambda: len(s.outputs) >= n + 3, what="frames")
    assert not any(s.outputs[n:])


@pytest.mark.parametrize(("raw", "message"), [
    (b"{threshold: 3", "body is not valid JSON"),
    (b"\xff\xfe", "body is not valid JSON"),
    (b"[1]", "must be a JSON object"),
    (b'{"threshold": 999}', "allowed range 0..255"),
    (b'{"overlay": 1}', "expected true or false"),
    (b'{"layer": "no_such_layer"}', "no_such_layer"),
    (b'{"channel": 4096}', "out of range"),
    (b'{"fps": 60}', "unknown setting 'fps'"),
])
def test_bad_settings_get_400_with_the_reason_and_the_pipeline_runs_on(served, raw, message):
    s = served()
    fakes.wait_until(lambda: s.runner.processed >= 2, what="first frames")
    before = s.get("settings")[1]
    status, body = s.post(raw=raw)
    assert status == 400 and message in body["error"], body
    assert s.get("settings")[1] == before
    done = s.runner.processed
    fakes.wait_until(lambda: s.runner.processed >= done + 3, what="frames after the refusal")
    assert s.runner.running


def test_token_protects_settings_changes(served):
    s = served(token="s3cret")
    fakes.wait_until(lambda: s.runner.processed >= 1, what="first frame")
    assert s.post({"threshold": 10})[0] == 401
    assert s.post({"threshold": 10}, headers={"X-Carvis-Token": "wrong"})[0] == 403
    assert s.post({"threshold": 11}, headers={"X-Carvis-Token": "s3cret"})[0] == 200
    assert fakes.http("POST", s.url + "settings?token=s3cret", {"threshold": 12})[0] == 200
    assert s.post({"threshold": 13}, headers={"Authorization": "Bearer s3cret"})[0] == 200
    assert s.get("settings")[0] == 401  # reading needs it too: only the team gets in
    status, settings = fakes.http("GET", s.url + "settings", headers={"X-Carvis-Token": "s3cret"})
    assert status == 200 and settings["threshold"] == 13


@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffprobe not installed")
def test_ffprobe_reads_the_stream(served):
    s = served()
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-rw_timeout", "10000000", "-f", "mpjpeg", "-i",
         s.url + "stream.mjpg", "-show_entries", "stream=codec_name,width,height",
         "-of", "csv=p=0"], capture_output=True, text=True, timeout=30, check=False)
    h, w = s.raw.shape[:2]
    assert probe.stdout.strip() == f"mjpeg,{w},{h}", probe.stderr


def test_stream_over_urllib_is_multipart_jpeg(served):
    s = served()
    with urllib.request.urlopen(s.url + "stream.mjpg", timeout=10) as resp:
        assert resp.headers["Content-Type"] == "multipart/x-mixed-replace; boundary=carvisframe"
        assert resp.readline() == b"--carvisframe\r\n"
        assert resp.readline() == b"Content-Type: image/jpeg\r\n"
        length = int(resp.readline().split(b":")[1])
        stamp = resp.readline()
        assert stamp.startswith(b"X-Timestamp: ")
        assert abs(float(stamp.split(b":")[1]) - time.time()) < 10  # capture, epoch seconds
        assert resp.readline() == b"\r\n"
        assert fakes.decode(resp.read(length)) is not None


def test_viewers_that_come_and_go_leave_nothing_behind(served):
    import socket
    import threading

    s = served()
    fakes.wait_until(lambda: s.runner.processed >= 2, what="first frames")
    threads = threading.active_count()
    keep = fakes.Viewer(s.host, s.port)
    for i in range(40):
        v = fakes.Viewer(s.host, s.port, stall=i % 3 == 0)
        if i % 3 and i % 2:
            fakes.wait_until(lambda v=v: v.frames >= 1, what="a frame")
        v.close()
    # A client that hangs up mid-request, before the stream starts.
    with socket.create_connection((s.host, s.port)) as raw:
        raw.sendall(b"GET /stream.mjpg HTTP/1.1\r\n")
    fakes.wait_until(lambda: s.server.viewers.active == 1, what="only one viewer left")
    pump = s.server.pump
    assert len(pump._clients) == 1 and len(pump._owned) == 1
    fakes.wait_until(lambda: threading.active_count() <= threads + 1, what="threads to end")
    got = keep.frames
    fakes.wait_until(lambda: keep.frames >= got + 5, what="the remaining viewer goes on")
    keep.close()
    fakes.wait_until(lambda: s.server.viewers.active == 0, what="no viewer left")
    assert s.server.viewers.total >= 41
