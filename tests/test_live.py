"""Live mode: sources (fake picamera2, fake VideoCapture, paced files), the capture slot,
settings and keys, threaded sinks, and `carvis run` stopped with Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import cv2
import fakes
import numpy as np
import pytest

from carvis import cli, live, pipeline, settings, sources
from carvis.errors import CarvisError
from carvis.frame import Frame
from carvis.sinks import Sink
from carvis.sinks.files import AviSink
from carvis.sinks.threaded import SinkWorker


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(ModelSession, profile) shared by the tests of this module."""
    return fakes.session_and_profile(tmp_path_factory.mktemp("model"))


@pytest.fixture
def picamera(monkeypatch):
    """The fake picamera2 + libcamera, injected as the real modules would be imported."""
    for name, module in fakes.fake_picamera_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(fakes.FakePicamera2, "instances", [])
    return fakes.FakePicamera2


def _runner(model, source, options=None, profile=None, **kwargs) -> live.LiveRunner:
    session, base = model
    renderer = pipeline.make_renderer(session, profile or base)
    return live.build(source, renderer, options or live.LiveOptions(), **kwargs)


# -- picamera2 --------------------------------------------------------------------------------

def test_picamera_source_uses_the_real_api_and_delivers_bgr(picamera):
    cam = {"size": [64, 48], "fps": 200, "hflip": False, "vflip": False, "rotate": 0}
    with sources.open_live_source("picamera", cam) as src:
        frames = [src.read() for _ in range(3)]
        fake = picamera.instances[0]
        assert fake.calls == ["create_video_configuration", "configure", "start"]
        assert fake.config["main"] == {"format": "RGB888", "size": (64, 48)}
        assert fake.config["controls"] == {"FrameRate": 200.0}
        assert src.live and src.fps == 200
    assert fake.calls[-2:] == ["stop", "close"]
    assert [f.index for f in frames] == [0, 1, 2]
    assert all(f.image.shape == (48, 64, 3) for f in frames)
    assert frames[0].image is not frames[1].image
    img = frames[0].image
    np.testing.assert_array_equal(img[40, 5], (255, 0, 0))    # blue left half, BGR order
    np.testing.assert_array_equal(img[40, 60], (0, 0, 255))   # red right half
    np.testing.assert_array_equal(img[0, 0], (255, 255, 255))  # white top-left corner


@pytest.mark.parametrize(("cam", "corner", "shape", "hw_flips"), [
    ({"hflip": True}, (0, -1), (48, 64), (True, False)),
    ({"vflip": True}, (-1, 0), (48, 64), (False, True)),
    ({"rotate": 180}, (-1, -1), (48, 64), (True, True)),
    ({"rotate": 180, "hflip": True}, (-1, 0), (48, 64), (False, True)),
    ({"rotate": 90}, (0, -1), (64, 48), (False, False)),
    ({"rotate": 270}, (-1, 0), (64, 48), (False, False)),
])
def test_picamera_flips_in_hardware_and_rotates_quarter_turns_in_software(
        picamera, cam, corner, shape, hw_flips):
    with sources.open_live_source("picamera", {"size": [64, 48], "fps": 200, **cam}) as src:
        img = src.read().image
        t = picamera.instances[0].config["transform"]
    assert (t.hflip, t.vflip) == hw_flips
    assert img.shape[:2] == shape
    white = np.argwhere((img == 255).all(axis=2))
    r, c = corner
    expect = (0 if r == 0 else shape[0] - 1, 0 if c == 0 else shape[1] - 1)
    assert tuple(white[np.abs(white - expect).sum(axis=1).argmin()]) == expect


def test_picamera_missing_library_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)
    with pytest.raises(CarvisError, match="sudo apt install -y python3-picamera2") as exc:
        sources.open_live_source("picamera")
    assert "\n" not in str(exc.value)


def test_picamera_without_camera_is_one_clear_line(picamera, monkeypatch):
    monkeypatch.setattr(picamera, "cameras", 0)
    with pytest.raises(CarvisError, match="no Raspberry Pi camera 0 found") as exc:
        sources.open_live_source("picamera")
    assert "\n" not in str(exc.value)


def test_default_source_is_picamera_on_a_pi_else_camera_0(picamera, monkeypatch):
    assert sources.running_on_pi()  # picamera2 importable
    assert sources.default_live_spec() == "picamera"
    monkeypatch.setattr(sources, "running_on_pi", lambda: False)
    assert sources.default_live_spec() == "0"


# -- OpenCV cameras ---------------------------------------------------------------------------

def test_camera_that_does_not_open_is_one_line(monkeypatch, capfd):
    monkeypatch.setattr(cv2, "VideoCapture", fakes.capture_class(opens=False))
    with pytest.raises(CarvisError, match=r"camera 3 cannot be opened .*--source") as exc:
        sources.open_live_source("3")
    assert "\n" not in str(exc.value)
    monkeypatch.undo()
    # The real one, on a device that does not exist: OpenCV's own warnings are silenced.
    with pytest.raises(CarvisError, match="camera 63 cannot be opened"):
        sources.open_live_source("63")
    assert capfd.readouterr().err == ""


def test_urls_go_to_ffmpeg_with_timeouts(monkeypatch):
    cap = fakes.capture_class(frames_limit=2)
    monkeypatch.setattr(cv2, "VideoCapture", cap)
    with sources.open_live_source("rtsp://car.local:8554/cam") as src:
        assert src.live and src.name == "rtsp://car.local:8554/cam"
        assert src.read().index == 0
    _url, backend, params = cap.created[0].args
    assert backend == cv2.CAP_FFMPEG and cv2.CAP_PROP_OPEN_TIMEOUT_MSEC in params
    with pytest.raises(CarvisError, match="unsupported URL scheme 'ftp'"):
        sources.open_live_source("ftp://x/y")


def test_fast_camera_frames_are_dropped_and_counted_never_queued(model, monkeypatch):
    cap = fakes.capture_class(delay=0.001)  # ~1000 fps camera
    monkeypatch.setattr(cv2, "VideoCapture", cap)
    seen: list[Frame] = []

    def slow_pipeline(frame: Frame) -> None:
        seen.append(frame)
        time.sleep(0.02)

    profile = model[1].replace(crop={"top": 0.5})  # keep the index pixels out of the ROI
    with sources.open_live_source("0", {"size": [64, 48]}) as src:
        runner = _runner(model, src, profile=profile, on_frame=slow_pipeline).start()
        fakes.wait_until(lambda: len(seen) >= 15, what="15 processed frames")
        runner.stop()
        runner.join(5)
    cap_thread = runner.capture
    indices = [f.index for f in seen]
    assert indices == sorted(set(indices))  # strictly increasing: no duplicates, no reorder
    assert [fakes.index_in(f.image) for f in seen] == [i % 65536 for i in indices]
    assert cap_thread.dropped > 0
    assert indices[-1] - indices[0] + 1 > len(indices)  # frames were skipped, not queued
    assert cap_thread.captured - cap_thread.dropped - runner.processed in (0, 1)
    assert runner.report.stats()["drops"]["capture"] == cap_thread.dropped


def test_slow_camera_frames_are_each_processed_once(model, monkeypatch):
    gate = threading.Semaphore(1)  # for the first read, when the source opens
    cap = fakes.capture_class(gate=gate)
    monkeypatch.setattr(cv2, "VideoCapture", cap)
    seen: list[Frame] = []

    def on_frame(frame: Frame) -> None:
        seen.append(frame)
        # The next frame comes well after this one is done: the loop waits on an empty slot.
        threading.Timer(0.03, gate.release).start()

    with sources.open_live_source("0") as src:
        runner = _runner(model, src, on_frame=on_frame).start()
        fakes.wait_until(lambda: len(seen) >= 12, what="12 processed frames")
        runner.stop()
        runner.join(5)
    assert [f.index for f in seen] == list(range(len(seen)))
    assert runner.capture.dropped == 0


def test_file_source_in_live_mode_is_paced_and_loops(model, tmp_path):
    path = tmp_path / "clip.avi"
    with AviSink(path, fps=120) as sink:
        for i in range(6):
            sink.write(np.full((48, 64, 3), 40 * i, np.uint8))
    seen: list[Frame] = []
    with sources.open_live_source(str(path), loop=True) as src:
        assert not src.live and src.fps == 120
        runner = _runner(model, src, on_frame=seen.append).start()
        assert runner.capture.pace
        fakes.wait_until(lambda: len(seen) >= 14, what="looped frames")
        runner.stop()
        runner.join(5)
    indices = [f.index for f in seen]
    assert indices == sorted(set(indices)) and indices[-1] >= 13
    # Without --loop the run ends by itself at the end of the file, cleanly.
    seen.clear()
    with sources.open_live_source(str(path)) as src:
        runner = _runner(model, src, on_frame=seen.append)
        runner.run()
    assert 1 <= len(seen) <= 6 and runner.error is None


# -- settings and keys ------------------------------------------------------------------------

@pytest.mark.parametrize(("changes", "message"), [
    ([1, 2], "must be a JSON object"),
    ({"thresh": 3}, "unknown setting 'thresh'; settings: threshold, channel"),
    ({"threshold": 256}, "allowed range 0..255"),
    ({"threshold": -1}, "allowed range 0..255"),
    ({"threshold": "80"}, "threshold '80' is not valid"),
    ({"threshold": True}, "threshold True is not valid"),
    ({"overlay": "yes"}, "expected true or false"),
    ({"colormap": "rainbows"}, "choose one of: autumn"),
    ({"channel": 1.5}, "give an index, 'mean' or 'max'"),
    ({"channel": "avg"}, "give an index, 'mean' or 'max'"),
    ({"layer": ""}, "layer is empty"),
    ({"layer": None}, "give a name, an index or conv:N"),
])
def test_bad_settings_are_refused_with_the_reason(changes, message):
    with pytest.raises(CarvisError, match=re.escape(message)):
        settings.validate(changes)


def test_settings_change_all_or_nothing_and_the_loop_runs_on(model):
    source = fakes.StillSource(fakes.test_image(), fps=60)
    runner = _runner(model, source).start()
    try:
        fakes.wait_until(lambda: runner.processed >= 3, what="first frames")
        before = runner.controls.settings()
        other = next(n for n in before["choices"]["layers"] if n != before["layer"])
        with pytest.raises(CarvisError, match="out of range"):
            runner.controls.change({"layer": other, "channel": 999, "threshold": 10})
        assert runner.controls.settings() == before
        with pytest.raises(CarvisError, match="pick a conv layer"):
            runner.controls.change({"layer": -1})  # the softmax head
        done = runner.processed
        fakes.wait_until(lambda: runner.processed > done + 2, what="frames after refusals")
        after = runner.controls.change({"layer": other, "channel": "max", "colormap": "jet"})
        assert (after["layer"], after["channel"], after["colormap"]) == (other, "max", "jet")
    finally:
        runner.stop()
        source.close()
    runner.join(5)


def test_keys_change_settings_snapshot_record_and_quit(model, tmp_path):
    source = fakes.StillSource(fakes.test_image(), fps=60)
    runner = _runner(model, source, live.LiveOptions(snapshot_dir=str(tmp_path))).start()
    settings = runner.controls.settings
    try:
        fakes.wait_until(lambda: runner.processed >= 2 and settings(), what="first frames")
        first = settings()
        layers = first["choices"]["layers"]

        def press(key: str, check) -> None:
            runner.panel.handle_key(ord(key))
            fakes.wait_until(lambda: check(settings()), what=f"key {key!r}")

        press("+", lambda s: s["threshold"] == first["threshold"] + 5)
        press("-", lambda s: s["threshold"] == first["threshold"])
        press("c", lambda s: s["channel"] != first["channel"])
        press("l", lambda s: s["layer"] == layers[(layers.index(first["layer"]) + 1)
                                                  % len(layers)])
        press("o", lambda s: s["overlay"] is False)
        press("r", lambda s: s["recording"] is True)
        fakes.wait_until(lambda: (runner.panel.recorder.stats() or {}).get("written", 0) >= 3,
                         what="frames recorded")
        press("r", lambda s: s["recording"] is False)
        runner.panel.handle_key(ord("s"))
        fakes.wait_until(lambda: list(tmp_path.glob("carvis-snapshot-*.png")), what="snapshot")
        runner.panel.handle_key(ord("q"))
        runner.join(5)
    finally:
        runner.stop()
        source.close()
    assert not runner.running
    png = next(tmp_path.glob("carvis-snapshot-*.png"))
    assert cv2.imread(str(png)).shape == fakes.test_image().shape
    mkv = next(tmp_path.glob("carvis-*.mkv"))  # live recordings default to Matroska
    cap = cv2.VideoCapture(str(mkv))
    assert cap.isOpened() and cap.read()[0]


def test_display_window_shows_frames_and_its_keys_reach_the_pipeline(model, monkeypatch):
    from carvis.sinks import display

    monkeypatch.setenv("DISPLAY", ":fake")
    keys = [ord("+"), ord("o")]
    shown: list[np.ndarray] = []
    calls: list[str] = []
    fake = {
        "namedWindow": lambda *a: calls.append("namedWindow"),
        "resizeWindow": lambda *a: None,
        "imshow": lambda title, image: shown.append(image),
        "waitKey": lambda delay: keys.pop(0) if keys and len(shown) > 3 else -1,
        "getWindowProperty": lambda *a: 1.0,
        "destroyWindow": lambda *a: calls.append("destroyWindow"),
    }
    for name, fn in fake.items():
        monkeypatch.setattr(display.cv2, name, fn)
    source = fakes.StillSource(fakes.test_image(), fps=60)
    outputs: list[Frame] = []
    runner = _runner(model, source, live.LiveOptions(display=True), on_frame=outputs.append)
    threshold = runner.renderer.composer.overlay.threshold
    runner.start()
    try:
        fakes.wait_until(lambda: not runner.controls.settings().get("overlay", True),
                         what="keys + and o")
        assert runner.controls.settings()["threshold"] == threshold + 5
        keys.append(ord("q"))
        runner.join(5)
    finally:
        runner.stop()
        source.close()
    assert calls == ["namedWindow", "destroyWindow"]
    assert len(shown) > 3
    # The HUD is drawn on a copy: the frame other sinks get is not scribbled on.
    assert not any(s is o.image for s in shown for o in outputs)


def test_display_without_a_screen_is_one_line(monkeypatch):
    from carvis.sinks import display

    for var in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(display.sys, "platform", "linux")
    with pytest.raises(CarvisError, match="--display needs a screen"):
        display.check_screen()


# -- threaded sinks ---------------------------------------------------------------------------

class _ListSink(Sink):
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.images: list[np.ndarray] = []
        self.closed = False

    def write(self, image: np.ndarray) -> None:
        time.sleep(self.delay)
        self.images.append(image)

    def close(self) -> None:
        self.closed = True


def _frames(n: int) -> list[Frame]:
    return [Frame(np.full((4, 4, 3), i, np.uint8), i, time.monotonic()) for i in range(n)]


def test_a_slow_sink_drops_its_own_frames_and_never_holds_up_the_others():
    slow, fast = _ListSink(delay=0.05), _ListSink()
    slow_w = SinkWorker(slow, "slow", policy="latest")
    fast_w = SinkWorker(fast, "fast", policy="drop-new", maxsize=1000, drain_on_close=True)
    frames = _frames(60)
    for frame in frames:
        slow_w.put(frame)  # never blocks: a queue of one, newest wins
        fast_w.put(frame)
    slow_w.close(5)
    fast_w.close(5)
    assert len(fast.images) == 60 and fast_w.dropped == 0
    assert slow_w.written + slow_w.dropped == 60 and slow_w.dropped > 0
    assert slow.closed and fast.closed
    assert [int(i[0, 0, 0]) for i in slow.images] == sorted(int(i[0, 0, 0])
                                                           for i in slow.images)


def test_recording_queue_is_bounded_drops_new_frames_and_drains_on_close():
    gate = threading.Event()

    class Blocked(_ListSink):
        def write(self, image: np.ndarray) -> None:
            gate.wait(5)
            super().write(image)

    sink = Blocked()
    worker = SinkWorker(sink, "record", policy="drop-new", maxsize=4, drain_on_close=True)
    frames = _frames(10)
    accepted = [worker.put(f) for f in frames]
    fakes.wait_until(lambda: worker.dropped >= 5, what="drops")
    gate.set()
    worker.close(5)
    kept = [int(i[0, 0, 0]) for i in sink.images]
    assert kept == sorted(kept) and len(kept) == sum(accepted) == 10 - worker.dropped
    assert kept[0] == 0 and worker.maxsize == 4 and sink.closed


def test_a_failing_sink_is_reported_not_swallowed(model):
    class Broken(_ListSink):
        def write(self, image: np.ndarray) -> None:
            raise OSError("disk on fire")

    source = fakes.StillSource(fakes.test_image(), fps=60)
    runner = _runner(model, source, sinks={"broken": SinkWorker(Broken(), "broken")})
    runner.start()
    with pytest.raises(CarvisError, match="broken failed: disk on fire"):
        runner.join(10)
    source.close()


# -- the command ------------------------------------------------------------------------------

def test_run_without_a_camera_or_a_sink_is_one_line(model, tmp_path, capfd):
    path = fakes.model_path()
    code = cli.main(["run", "--source", "61", "--record", str(tmp_path / "x.avi"),
                     "--model", str(path)])
    err = capfd.readouterr().err
    assert code != 0
    assert err.startswith("carvis: error: camera 61 cannot be opened") and err.count("\n") == 1
    code = cli.main(["run", "--source", "synthetic", "--model", str(path)])
    err = capfd.readouterr().err
    assert code == 2 and "nowhere to send frames" in err and err.count("\n") == 1
    code = cli.main(["run", "--source", "synthetic", "--model", str(path), "--serve", "x:y"])
    assert code == 2 and "--serve 'x:y' is not valid" in capfd.readouterr().err


def test_ctrl_c_stops_run_cleanly_and_the_recording_is_complete(model, tmp_path):
    out = tmp_path / "x.avi"
    cmd = [sys.executable, "-m", "carvis.cli", "run", "--source", "synthetic:size=320x240",
           "--loop", "--model", str(fakes.model_path()), "--record", str(out),
           "--serve", "127.0.0.1:0"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
    try:
        url = fakes.page_url(proc)
        fakes.wait_until(lambda: fakes.http("GET", url + "stats")[1]["map"]["computed"]
                         >= 15, timeout=60, what="15 maps laid on recorded frames")
        proc.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        code = proc.wait(timeout=10)
        elapsed = time.monotonic() - t0
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, err
    assert "Traceback" not in err
    recorded = re.search(r"recorded (\d+) frames to .*x\.avi \((\d+) camera frames and "
                         r"(\d+) repeats that keep it on the wall clock; (\d+) frames not "
                         r"recorded to stay live\)", err)
    processed = re.search(r"stopped: (\d+) frames processed", err)
    assert recorded and processed, err
    in_file, camera, held, left = (int(recorded[k]) for k in range(1, 5))
    assert camera >= 15 and in_file == camera + held
    assert camera + left == int(processed[1]), "every processed frame recorded or counted"
    # What the line says is what the file holds.
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=codec_name,width,height,nb_read_frames", "-of", "csv=p=0", str(out)],
        capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == f"mjpeg,320,240,{in_file}"
    # How fast Ctrl-C stops is measured, not asserted: scripts/stop_time.py.
    print(f"Ctrl-C to exit: {elapsed:.2f} s")


def test_a_slow_layer_build_happens_beside_the_loop_which_keeps_running(model, monkeypatch):
    source = fakes.StillSource(fakes.test_image(), fps=60)
    runner = _runner(model, source).start()
    session = runner.renderer.maps.session
    release = threading.Event()
    building = threading.Event()
    real_backend = session.backend

    def slow_backend(spec):
        if threading.current_thread().name != "carvis-live":
            building.set()
            release.wait(10)  # a first TensorFlow import or LiteRT conversion
        return real_backend(spec)

    monkeypatch.setattr(session, "backend", slow_backend)
    try:
        fakes.wait_until(lambda: runner.controls.settings(), what="first frames")
        other = next(n for n in runner.panel.layers if n != runner.renderer.maps.state.backend.layer_name)
        result: list[dict] = []
        asker = threading.Thread(target=lambda: result.append(
            runner.controls.change({"layer": other})))
        asker.start()
        fakes.wait_until(building.is_set, what="the build to start")
        done = runner.processed
        fakes.wait_until(lambda: runner.processed >= done + 5, what="frames during the build")
        assert runner.renderer.maps.state.backend.layer_name != other
        release.set()
        asker.join(10)
        assert result and result[0]["layer"] == other
    finally:
        release.set()
        runner.stop()
        source.close()
    runner.join(5)
