"""Issue 13 in the loop: a model slowed to 5 fps on a 30 fps camera, recordings on the wall
clock that survive SIGKILL and a full disk, a camera that vanishes and returns, a picamera2
error, truncated JPEGs; real files, real signals, ffprobe and OpenCV reading the results."""

from __future__ import annotations

import itertools
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import cv2
import fakes
import numpy as np
import pytest

from carvis import live, pipeline, sources
from carvis.frame import Frame
from carvis.live.recording import Timeline, open_recording

needs_ffprobe = pytest.mark.skipif(shutil.which("ffprobe") is None, reason="needs ffprobe")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(ModelSession, profile) shared by the tests of this module."""
    return fakes.session_and_profile(tmp_path_factory.mktemp("model"))


def _runner(model, source, options=None, **kwargs) -> live.LiveRunner:
    session, profile = model
    return live.build(source, pipeline.make_renderer(session, profile),
                           options or live.LiveOptions(), **kwargs)


def probe(path) -> tuple[int, float | None]:
    """(frames ffprobe decodes, the duration in seconds; None for a file cut off)."""
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
                          "-show_entries", "stream=nb_read_frames:format=duration", "-of",
                          "json", str(path)], capture_output=True, text=True, check=True)
    info = json.loads(out.stdout)
    duration = info["format"].get("duration")
    return int(info["streams"][0]["nb_read_frames"]), duration and float(duration)


def opencv_frames(path) -> int:
    """Frames OpenCV reads from a file."""
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


@needs_ffprobe
def test_a_5_fps_model_on_a_30_fps_camera_still_streams_and_records_30_fps(model, tmp_path):
    period = 0.2
    out = tmp_path / "slow.mkv"
    source = fakes.StillSource(fakes.test_image(), fps=30)
    # (frames, seconds) of the map's age on each output, and that map (the runner says which
    # it laid: the model may finish the next one while the frame is being sent)
    ages: list[tuple[int, float, Any]] = []
    runner = _runner(model, source, live.LiveOptions(serve=("127.0.0.1", 0), record=str(out)),
                     on_frame=lambda f: ages.append((*runner.map_age, runner.laid))
                     if runner.map_age else None)
    compute = runner.model.maker
    durations: list[float] = []  # each map's own time in the model thread (the machine's load)

    def slow(image: np.ndarray, record=None):
        t0 = time.perf_counter()
        time.sleep(period)  # SmoothGrad on a Pi
        result = compute(image, record)
        durations.append(time.perf_counter() - t0)
        return result

    runner.model.maker = slow
    runner.start()
    viewer = fakes.Viewer("127.0.0.1", runner.server.port)
    try:
        fakes.wait_until(lambda: runner.model.computed >= 2, what="two maps")
        frames0, maps0, t0 = viewer.frames, runner.model.computed, time.monotonic()
        time.sleep(4.0)
        seconds = time.monotonic() - t0
        stream_fps = (viewer.frames - frames0) / seconds
        maps = runner.model.computed - maps0
        busy = sum(durations[maps0:maps0 + maps])
        stats = fakes.http("GET", runner.server.url + "stats")[1]
    finally:
        viewer.close()
        runner.stop()
        source.close()
        runner.join(10)
    assert stream_fps >= 24, stream_fps  # the camera's rate, not the model's
    # The model thread never waits for a frame: it starts the next map as soon as one is done
    # (busy most of the window), and never runs two at once (no more maps than 1/period).
    assert busy >= 0.8 * seconds and maps <= seconds / period + 1, (busy, maps, seconds)
    assert stats["map"]["age_frames"] is not None and stats["map"]["age_ms"] > 0
    frame_s, slack = 1 / 30, 0.1
    # Every map computed after the first two, in order, with its own measured compute time
    # (the slow wrapper's: the sleep and the model).
    maps_seen = sorted({m.seq: m for _, _, m in ages}.values(), key=lambda m: m.seq)[2:]
    assert len(maps_seen) >= 10 and all(m.compute_s >= period for m in maps_seen)
    following = {m.seq: nxt for m, nxt in itertools.pairwise(maps_seen)}
    seen = [(f, s, m) for f, s, m in ages if m.seq in following]
    # Never an older map than the frame: ages are >= 0. A map is taken from the newest frame
    # (at most a frame old), computed in its compute_s and laid on the next frame drawn; it
    # stays until the next map is laid. Bounds from each map's own measured time, not the
    # clock's.
    assert all(f >= 0 and s >= 0 for f, s, _ in seen)
    first: dict[int, float] = {}
    for _, s, m in seen:
        first.setdefault(m.seq, s)
    late = {m.seq: first[m.seq] for m in maps_seen if m.seq in first
            and first[m.seq] > m.compute_s + 2 * frame_s + slack}
    assert first and not late, (late, durations)
    stale = [(m.seq, s) for _, s, m in seen
             if s > m.compute_s + following[m.seq].compute_s + 3 * frame_s + slack]
    assert not stale, (stale, durations)
    written, duration = probe(out)
    assert written >= 0.85 * 30 * duration and duration >= 4


@needs_ffprobe
def test_a_recording_with_dropped_frames_plays_at_wall_clock_speed(tmp_path):
    path = tmp_path / "gaps.mkv"
    sink = Timeline(open_recording(path, 30.0), path, 30.0)
    image = fakes.test_image()
    t = 1000.0
    for i in range(60):  # 4 s of a camera at 30 fps of which the loop kept every 4th frame
        sink.write_frame(Frame(image.copy(), i, t + i * 4 / 30))
    sink.close()
    written, duration = probe(path)
    assert written == 237 and sink.repeated == 177  # every slot of the clock has its frame
    assert abs(duration - 237 / 30) < 0.1
    assert opencv_frames(path) == 237


def _record_child(tmp_path, out, *extra, preexec=None) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "carvis.cli", "run", "--source", "synthetic:size=320x240",
           "--loop", "--model", str(fakes.model_path()), "--record", str(out),
           "--serve", "127.0.0.1:0", *extra]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=preexec)  # noqa: PLW1509 - rlimits of the child only
    return proc, fakes.page_url(proc)


@needs_ffprobe
@pytest.mark.parametrize("suffix", [".mkv", ".avi"])
def test_a_recording_killed_with_sigkill_plays_but_for_its_last_2_s(model, tmp_path,
                                                                   suffix):
    out = tmp_path / f"killed{suffix}"
    proc, url = _record_child(tmp_path, out)
    try:
        fakes.wait_until(lambda: (fakes.http("GET", url + "stats")[1]["sinks"].get("record")
                                  or {}).get("written", 0) >= 30, timeout=60, what="recording")
        t0 = time.monotonic()
        time.sleep(6)
        recorded = fakes.http("GET", url + "stats")[1]["sinks"]["record"]["file_frames"]
        proc.send_signal(signal.SIGKILL)  # the battery dies
        proc.wait(10)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    written, _ = probe(out)
    lost = (recorded - written) / 30
    print(f"{suffix}: {recorded} frames handed to the file, {written} play after SIGKILL "
          f"({lost:.2f} s lost) after {elapsed:.2f} s")
    assert written >= recorded - 2 * 30, (written, recorded)
    assert opencv_frames(out) >= recorded - 2 * 30


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a full disk: writes fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, 400_000))


@pytest.mark.parametrize("suffix", [".mkv", ".avi"])
def test_a_full_disk_stops_the_recording_in_one_line_and_the_stream_goes_on(model, tmp_path,
                                                                          suffix):
    out = tmp_path / f"full{suffix}"
    proc, url = _record_child(tmp_path, out, preexec=_limit_file_size)
    try:
        fakes.wait_until(lambda: fakes.http("GET", url + "stats")[1]["record_error"],
                         timeout=60, what="the recording to fail")
        stats = fakes.http("GET", url + "stats")[1]
        fakes.wait_until(lambda: fakes.http("GET", url + "settings")[1]["record_error"],
                         what="the page's settings to show it")
        settings = fakes.http("GET", url + "settings")[1]
        viewer = fakes.Viewer("127.0.0.1", int(url.rsplit(":", 1)[1].strip("/")))
        fakes.wait_until(lambda: viewer.frames >= 10, what="the stream after the failure")
        viewer.close()
        code = None
        proc.send_signal(signal.SIGINT)
        err = proc.stderr.read()
        code = proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not stats["recording"] and settings["record_error"] == stats["record_error"]
    assert code == 1, err
    lines = [line for line in err.splitlines() if "stopped:" in line and "recording" in line]
    assert len(lines) == 2, err  # said when it happened, and again at the end
    assert "Traceback" not in err and all(line.startswith("carvis: ") for line in
                                          err.splitlines()), err


def test_an_unwritable_record_path_is_refused_before_the_camera_opens(model, tmp_path, capfd):
    from carvis import cli

    for bad in ("/proc/x.mkv", str(tmp_path / "no" / "such" / "x.mkv"), "x.mov"):
        code = cli.main(["run", "--source", "61", "--record", bad, "--model",
                         str(fakes.model_path())])
        err = capfd.readouterr().err
        assert code == 2 and err.startswith(f"carvis: error: --record {bad!r}"), err
        assert err.count("\n") == 1 and "camera 61" not in err


def test_a_camera_that_vanishes_gives_placeholders_then_comes_back(model, monkeypatch, tmp_path):
    plugged = threading.Event()
    plugged.set()
    monkeypatch.setattr(cv2, "VideoCapture", fakes.capture_class(delay=1 / 30, plugged=plugged))
    names: list[str] = []
    out = tmp_path / "gap.mkv"
    with sources.open_live_source("0", {"size": [64, 48]}) as src:
        runner = _runner(model, src, live.LiveOptions(record=str(out)),
                         on_frame=lambda f: names.append(f.name)).start()
        fakes.wait_until(lambda: len(names) >= 20, what="frames")
        t0 = time.monotonic()
        plugged.clear()  # the USB cable shakes loose
        fakes.wait_until(lambda: names.count("no signal") >= 30, what="placeholders")
        lost_stats = runner.report.stats()["signal"]
        plugged.set()
        fakes.wait_until(lambda: runner.capture.reconnects == 1, what="reconnected")
        back = len(names)
        fakes.wait_until(lambda: len(names) >= back + 20, what="frames after")
        elapsed = time.monotonic() - t0
        runner.stop()
        runner.join(10)
    first_gap = names.index("no signal")
    gap = names[first_gap:]
    gap = gap[: gap.index("camera 0")]
    assert 25 <= len(gap) and all(n == "no signal" for n in gap)
    assert names[-1] == "camera 0"
    assert lost_stats["losses"] == 1 and lost_stats["lost_for_s"] > 0.5
    stats = runner.report.stats()["signal"]
    assert stats["losses"] == 1 and stats["reconnects"] == 1 and stats["lost_for_s"] is None
    if shutil.which("ffprobe"):
        _, duration = probe(out)  # the placeholders kept the recording's timeline
        assert duration >= elapsed * 0.8


def test_a_picamera2_error_mid_run_is_survived(model, monkeypatch):
    for name, module in fakes.fake_picamera_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    failing = {"n": 0}
    real = fakes.FakePicamera2.capture_array

    def capture(self, name="main", wait=None, signal_function=None):
        failing["n"] += 1
        if failing["n"] == 15:
            raise RuntimeError("Camera frontend has timed out!")  # what picamera2 raises
        return real(self, name, wait, signal_function)

    monkeypatch.setattr(fakes.FakePicamera2, "capture_array", capture)
    names: list[str] = []
    with sources.open_live_source("picamera", {"size": [64, 48], "fps": 60}) as src:
        runner = _runner(model, src, on_frame=lambda f: names.append(f.name)).start()
        fakes.wait_until(lambda: runner.capture.reconnects == 1 and len(names) > 40,
                         what="reopened and delivering")
        runner.stop()
        runner.join(10)
    assert "no signal" in names and names[-1] == "picamera 0"
    assert "frontend has timed out" in runner.capture.last_loss


def test_a_file_source_ends_instead_of_waiting_for_a_signal(model, tmp_path):
    path = tmp_path / "clip.avi"
    from carvis.sinks.files import AviSink

    with AviSink(path, fps=60) as sink:
        for i in range(8):
            sink.write(np.full((48, 64, 3), 30 * i, np.uint8))
    with sources.open_live_source(str(path)) as src:
        runner = _runner(model, src)
        runner.run()
    assert runner.placeholders == 0 and runner.capture.losses == 0


def _jpegs(folder, good: int, cut: tuple[int, ...]) -> list[str]:
    folder.mkdir()
    names = []
    for i in range(good):
        data = cv2.imencode(".jpg", fakes.test_image(seed=i))[1].tobytes()
        name = f"frame_{i:03d}.jpg"
        (folder / name).write_bytes(data[: len(data) // 2] if i in cut else data)
        names.append(name)
    return [names[i] for i in cut]


def test_truncated_jpegs_are_skipped_counted_and_named_and_libjpeg_stays_quiet(model, tmp_path):
    cut = _jpegs(tmp_path / "car", 12, (3, 7))
    out = tmp_path / "out.mkv"
    cmd = [sys.executable, "-m", "carvis.cli", "run", "--source", str(tmp_path / "car"),
           "--model", str(fakes.model_path()), "--record", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          check=False)
    err = done.stderr
    assert done.returncode == 0, err
    assert "Premature end" not in err and "Corrupt JPEG" not in err
    assert all(line.startswith("carvis: ") for line in err.splitlines()), err
    for name in cut:
        assert re.search(rf"skipping {name}: truncated JPEG", err), err
    folder = sources.FolderSource(tmp_path / "car")
    assert len(list(folder)) == 10 and [os.path.basename(p) for p in folder.skipped] == cut


def test_native_library_lines_become_counted_one_line_notes(capfd):
    from carvis.live.console import Notes, native_notes

    notes = Notes()
    data = cv2.imencode(".jpg", fakes.test_image())[1].tobytes()
    broken = data[:-2000] + b"\xff\xd9"  # ends like a JPEG, but its data is cut short
    with native_notes(notes):
        for _ in range(5):
            cv2.imdecode(np.frombuffer(broken, np.uint8), cv2.IMREAD_COLOR)
        print("carvis: python's own line", file=sys.stderr)
    err = capfd.readouterr().err
    assert notes.snapshot().get("libjpeg", 0) >= 5
    assert "carvis: python's own line" in err
    assert "Premature end" not in err and "Corrupt JPEG" not in err


def test_map_fps_caps_the_maps_not_the_frames(model):
    source = fakes.StillSource(fakes.test_image(), fps=30)
    runner = _runner(model, source, live.LiveOptions(serve=("127.0.0.1", 0), map_fps=5.0))
    runner.start()
    viewer = fakes.Viewer("127.0.0.1", runner.server.port)
    try:
        fakes.wait_until(lambda: runner.model.computed >= 2, what="two maps")
        frames0, maps0, t0 = viewer.frames, runner.model.computed, time.monotonic()
        time.sleep(3.0)
        seconds = time.monotonic() - t0
        frames, maps = viewer.frames - frames0, runner.model.computed - maps0
    finally:
        viewer.close()
        runner.stop()
        source.close()
        runner.join(10)
    # A fast model would give a map per frame; capped, 5 a second, every frame still sent.
    assert maps <= 5.0 * seconds + 2, (maps, seconds)
    assert frames >= 4 * maps, (frames, maps)
