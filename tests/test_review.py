"""Map tracks and the review page: the track's round trip and its refusals, re-render without the
model equal to the model's render, frames by index, the page in real headless Chromium (chart,
click to jump, threshold without a model call), two models, a DonkeyCar tub, the race clip's
scrub latency."""

from __future__ import annotations

import json
import os
import random
import shutil
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from carvis import jobs, maps, pipeline, sources
from carvis import profile as prof
from carvis.errors import CarvisError
from carvis.frame import Frame
from carvis.review import frames, replay, stats
from carvis.review import track as tr
from carvis.review.app import Review
from carvis.review.server import ReviewServer
from carvis.session import ModelSession
from carvis.sinks import Sink
from carvis.sinks.video import VideoSink

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "default.keras"
SPEC = "synthetic:frames=60,size=320x240"
N = 60


class ListSink(Sink):
    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []

    def write(self, image: np.ndarray) -> None:
        self.frames.append(image.copy())


class Calls:
    """Counts MapMaker calls: every model call the review makes goes through one."""

    def __init__(self, mp: pytest.MonkeyPatch) -> None:
        self.n = 0
        real = maps.MapMaker.__call__

        def counted(maker, image, record=None):
            self.n += 1
            return real(maker, image, record)
        mp.setattr(maps.MapMaker, "__call__", counted)


@pytest.fixture(scope="module")
def profile() -> prof.Profile:
    return prof.load(prof.DEFAULT_PROFILE)


@pytest.fixture(scope="module")
def session() -> ModelSession:
    return ModelSession(MODEL)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, session, profile):
    """A track of the synthetic clip, and the raw maps the map maker computed on the way."""
    path = tmp_path_factory.mktemp("track") / "clip.maps.h5"
    maker = maps.MapMaker(session, profile.replace(hud=True))
    raws = []
    real = maker.normalizer
    maker.normalizer = lambda amap: (raws.append(np.array(amap)), real(amap))[1]
    maker.normalizer.reset = real.reset
    with sources.open_source(SPEC) as source:
        track = tr.record(source, maker, path, source)
    return track, raws


def test_track_round_trip(recorded, session, profile, tmp_path):
    track, raws = recorded
    again = tr.Track(track.path)
    assert len(again) == N and again.maps.dtype == np.float16
    assert np.array_equal(again.maps, np.asarray(raws, np.float16))
    assert np.array_equal(again.index, np.arange(N))
    np.testing.assert_allclose(again.time, np.arange(N) / 30.0)
    meta = again.meta
    assert (meta["model"], meta["model_sha256"]) == ("default.keras", session.sha256)
    assert (meta["layer"], meta["mode"], meta["target"], meta["channel"]) == \
        ("conv2", "activation", "predicted", profile.channel)
    assert prof.parse(meta["profile"]).to_dict() == profile.replace(hud=True).to_dict()
    assert again.prediction.shape == (N, 5) and np.isfinite(again.angle).all()
    assert np.isnan(again.recorded_angle).all() and not again.has_recorded
    steering = again.steering(7)
    assert steering.angle == pytest.approx(float(again.angle[7]))
    assert steering.angle_bins is not None and len(steering.angle_bins) == 5
    # The same track written during a render (carvis render --save-maps).
    options = jobs.RenderOptions(profile.replace(hud=True), MODEL,
                                 save_maps=tmp_path / "render.h5")
    outcome = jobs.render_job(jobs.Job(SPEC, tmp_path / "out.avi"), options, session)
    assert (outcome.error, outcome.frames) == (None, N)
    during = tr.Track(tmp_path / "render.h5")
    assert np.array_equal(during.maps, again.maps)
    np.testing.assert_allclose(during.angle, again.angle)
    assert not (tmp_path / "render.h5.part").exists()


def test_mismatched_or_unfinished_track_is_refused_in_one_line(recorded, tmp_path):
    track, _ = recorded
    with sources.open_source("synthetic:frames=50,size=320x240") as shorter, \
            pytest.raises(CarvisError, match=r"source of 60 frames but synthetic:0 has 50") as e:
        replay.open_track(track.path, shorter)
    assert "\n" not in str(e.value)
    with pytest.raises(CarvisError, match=r"made by default\.keras .* not by default\.tflite"):
        replay.open_track(track.path, None, REPO / "models" / "default.tflite")
    replay.open_track(track.path, None, MODEL)  # the model that made it: accepted
    part = tmp_path / "cut.h5.part"
    shutil.copy(track.path, part)
    with pytest.raises(CarvisError, match="unfinished"):
        tr.Track(tmp_path / "cut.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(CarvisError, match="is not a carvis map track"):
        tr.Track(tmp_path / "junk.h5")


@pytest.mark.parametrize("changes", [{}, {"normalize": "running", "threshold": 40,
                                          "colormap": "jet", "compare": True}])
def test_rerender_equals_the_model_render(recorded, session, profile, changes):
    track, _ = recorded
    wanted = profile.replace(**changes)
    # The model's render with its raw maps rounded as the track keeps them: the same pixels.
    renderer = pipeline.make_renderer(session, wanted)
    real = renderer.maps.normalizer
    renderer.maps.normalizer = lambda amap: real(np.asarray(amap, np.float16).astype(np.float32))
    renderer.maps.normalizer.reset = real.reset
    plain = pipeline.make_renderer(session, wanted)
    with sources.open_source(SPEC) as source:
        model_frames = [renderer.render(f) for f in source]
    with sources.open_source(SPEC) as source:
        plain_frames = [plain.render(f) for f in source]
    drawn = pipeline.Renderer(replay.TrackMaps(track, replay.drawing_profile(track, wanted)),
                              pipeline.Composer(replay.drawing_profile(track, wanted)))
    sink = ListSink()
    with sources.open_source(SPEC) as source:
        assert pipeline.render(source, drawn, sink) == N
    for ours, theirs, unrounded in zip(sink.frames, model_frames, plain_frames, strict=True):
        assert np.array_equal(ours, theirs)
        assert (ours != unrounded).any(axis=2).mean() < 0.01  # float16 moves a few edges
    # The page's random access gives the sequential normaliser's maps.
    track_maps = replay.TrackMaps(track, replay.drawing_profile(track, wanted))
    for row in range(N):
        assert np.array_equal(track_maps.at(row).norm, track_maps.normalizer(track.raw(row)))


def test_grid_view_is_refused_from_a_track(recorded):
    track, _ = recorded
    with pytest.raises(CarvisError, match="view grid needs every channel"):
        replay.drawing_profile(track, None, {"view": "grid"})


def test_frames_by_index_cache_and_keyframe_seek(tmp_path):
    clip = tmp_path / "clip.mp4"
    with sources.open_source("synthetic:frames=75,size=320x240") as source, \
            VideoSink(clip, source.fps) as sink:
        for f in source:
            sink.write(f.image)
    with sources.open_source(str(clip)) as source:
        decoded = [f.image for f in source]
    writer = frames.CacheWriter(tmp_path / "cache" / "frames.jpg")
    for n, image in enumerate(decoded):
        writer(Frame(image, n, 0.0))
    cache = writer.close()
    seeker = frames.SeekingDecoder(clip)
    assert len(cache) == len(seeker) == 75 and len(seeker.keyframes) >= 3
    for n in (74, 3, 40, 41, 0, 31):
        assert np.array_equal(seeker.get(n), decoded[n])
        assert np.abs(cache.get(n).astype(int) - decoded[n]).mean() < 2.0
    seeker.close()
    cache.close()


def _tub(path: Path, n: int) -> Path:
    """A DonkeyCar tub of synthetic frames written by DonkeyCar's own Tub, user/angle recorded."""
    os.environ.setdefault("LOGLEVEL", "WARNING")
    tub_v2 = pytest.importorskip("donkeycar.parts.tub_v2")
    from carvis.synthetic import SyntheticTrack

    track = SyntheticTrack(width=320, height=240, seed=3)
    tub = tub_v2.Tub(str(path), inputs=["cam/image_array", "user/angle", "user/throttle"],
                     types=["image_array", "float", "float"])
    for i in range(n):
        tub.write_record({"cam/image_array": cv2.cvtColor(track.frame(i), cv2.COLOR_BGR2RGB),
                          "user/angle": float(track.steering(i)), "user/throttle": 0.3})
    tub.close()
    return path


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, profile):
    """A tub reviewed with two models: the default at conv2 and a copy of it at conv3."""
    root = tmp_path_factory.mktemp("two")
    tub = _tub(root / "tub", 40)
    other = root / "v2.keras"
    shutil.copy(MODEL, other)
    with pytest.MonkeyPatch.context() as mp:
        calls = Calls(mp)
        review = Review(str(tub), [(MODEL, profile), (other, profile.replace(layer="conv3"))],
                        cache=root / "cache")
        assert calls.n == 2 * 40 and review.model_calls == 80
    server = ReviewServer(review).start()
    yield review, server, calls
    server.close()
    review.close()


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.read()


def test_two_models_on_a_tub(two_models, profile):
    review, server, _ = two_models
    info = json.loads(_get(server.url + "info")[1])
    assert [m["layer"] for m in info["models"]] == ["conv2", "conv3"] and info["recorded"]
    t = json.loads(_get(server.url + "timeline")[1])
    assert len(t["models"]) == 2 and len(t["recorded"]) == 40
    assert all(0.0 <= v <= 1.0 for v in t["disagreement"]) and max(t["disagreement"]) > 0
    assert t["marked_by"] == "recorded vs predicted" and t["marks"]
    error = np.abs(review.tracks[0].recorded_angle - review.tracks[0].angle)
    assert error[t["marks"]].max() == error.max()
    # Both overlays side by side in the exported PNG, the models' pictures in it.
    png = cv2.imdecode(np.frombuffer(_get(server.url + "frame.png?i=5")[1], np.uint8), 1)
    one = review.picture(5, 0)
    assert png.shape[1] > 2 * one.shape[1] and png.shape[0] == one.shape[0]
    request = urllib.request.Request(server.url + "export.mp4", method="POST",
                                     data=json.dumps({"start": 4, "end": 13}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "video/mp4"
        assert b"ftyp" in r.read()[:64]


def test_exported_range_is_an_mp4_of_its_frames(two_models, tmp_path):
    review, _, _ = two_models
    assert review.export(4, 13, tmp_path / "range.mp4") == 10
    with sources.open_source(str(tmp_path / "range.mp4")) as clip:
        shots = [f.image for f in clip]
    assert len(shots) == 10 and shots[0].shape[:2] == review.picture(4).shape[:2]


def test_second_review_reuses_the_tracks(two_models, profile):
    review, _, _ = two_models
    other = review.folder.parent.parent / "v2.keras"
    with pytest.MonkeyPatch.context() as mp:
        calls = Calls(mp)
        again = Review(review.spec, [(MODEL, profile), (other, profile.replace(layer="conv3"))],
                       cache=review.folder.parent)
        assert calls.n == 0 and again.model_calls == 0
        assert np.array_equal(again.picture(9), review.picture(9))
        again.close()


def test_stats_are_the_masks_area_and_balance(recorded):
    track, _ = recorded
    track_maps = replay.TrackMaps(track)
    threshold = track_maps.profile.threshold
    s = stats.map_stats(track_maps, threshold)
    row = 12
    norm = track_maps.at(row).norm
    assert s["area"][row] == pytest.approx((norm > threshold).mean())
    lit = np.where(norm > threshold, norm, 0)
    w = lit.shape[1]
    left, right = lit[:, : w // 2].sum(), lit[:, (w + 1) // 2:].sum()
    assert s["balance"][row] == pytest.approx((right - left) / (right + left), rel=1e-4)
    a = np.zeros((1, 4, 4), bool)
    b = a.copy()
    a[0, :2], b[0, 1:3] = True, True
    assert stats.disagreement(a, b)[0] == pytest.approx(1 - 4 / 12)


def test_race_clip_scrubs_from_kept_maps_and_frames(race_clip, axionaut_model_path, tmp_path):
    # How fast: scripts/review_bench.py (p95 of a frame request, side by side with seeking).
    review = Review(str(race_clip), [(axionaut_model_path, prof.load(REPO / "models" /
                                                                     "axionaut.yaml"))],
                    cache=tmp_path)
    server = ReviewServer(review).start()
    try:
        rng = random.Random(0)
        calls = review.model_calls
        for n in [rng.randrange(len(review)) for _ in range(40)]:
            status, body = _get(f"{server.url}frame.jpg?i={n}")
            assert status == 200 and body[:2] == b"\xff\xd8"
        assert len(review) == 622 and calls == 622
        assert review.model_calls == calls, "scrubbing never asks the model again"
    finally:
        server.close()
        review.close()


CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip(f"needs {CHROMIUM} (apt install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-background-networking", "--disable-sync",
                "--window-size=1200,900", "--force-device-scale-factor=1",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-review')}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _picture(driver, k: int = 0) -> np.ndarray:
    """What the browser shows of model k's picture (a screenshot, cropped to the <img>)."""
    from selenium.webdriver.common.by import By

    shot = cv2.imdecode(np.frombuffer(driver.get_screenshot_as_png(), np.uint8), 1)
    r = driver.find_element(By.ID, f"frame{k}").rect
    x, y, w, h = (round(r[key]) for key in ("x", "y", "width", "height"))
    return shot[y:y + h, x:x + w].astype(np.int16)


@pytest.mark.browser
def test_page_chart_click_and_threshold_without_a_model_call(browser, two_models):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    review, server, _ = two_models
    wait = WebDriverWait(browser, 20, poll_frequency=0.05)
    shown = lambda k: browser.execute_script(
        f"return document.getElementById('frame{k}').dataset.frame")
    with pytest.MonkeyPatch.context() as mp:
        calls = Calls(mp)
        browser.get(server.url)
        wait.until(lambda d: d.execute_script("return document.body.dataset.ready") == "true")
        wait.until(lambda d: shown(0) == "0" and shown(1) == "0")
        assert browser.find_element(By.ID, "error").text == ""
        # The chart is drawn: uPlot's canvas, its lines in the models' colours.
        canvas = browser.find_element(By.CSS_SELECTOR, "#chart canvas")
        assert canvas.size["width"] > 300
        labels = browser.execute_script("return review.chart.series.map(s => s.label)")
        assert {"predicted 1", "predicted 2", "recorded", "disagreement"} <= set(labels)
        chart = _chart_pixels(browser, canvas)
        assert (np.abs(chart - chart[0, 0]).max(axis=2) > 60).mean() > 0.005
        # A click at 3/4 of the plot moves the frame there, and both pictures follow.
        over = browser.find_element(By.CSS_SELECTOR, "#chart .u-over")
        width = over.size["width"]
        ActionChains(browser).move_to_element_with_offset(
            over, round(width * 0.25), 0).click().perform()
        target = round(0.75 * 39)
        wait.until(lambda d: abs(d.execute_script("return review.frame") - target) <= 1)
        frame = browser.execute_script("return review.frame")
        wait.until(lambda d: shown(0) == str(frame) and shown(1) == str(frame))
        assert browser.find_element(By.ID, "frame").get_attribute("value") == str(frame)
        before = _picture(browser)
        # Threshold to 255 from the slider: the overlay goes, no model is asked.
        slider = browser.find_element(By.ID, "threshold")
        slider.click()
        slider.send_keys(Keys.END)
        wait.until(lambda d: d.execute_script(
            "const img = document.getElementById('frame0');"
            "return review.settings.threshold === 255 && img.dataset.busy === 'false'"
            " && img.dataset.version === String(review.version)"))
        assert review.settings()["threshold"] == 255
        after = _picture(browser)
        assert (np.abs(after - before).max(axis=2) > 40).mean() > 0.02
        # Step keys move one frame.
        browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
        wait.until(lambda d: d.execute_script("return review.frame") == frame + 1)
        assert calls.n == 0
        assert json.loads(_get(server.url + "stats")[1])["model_calls"] == 80
        if os.environ.get("CARVIS_REVIEW_SHOT"):
            browser.save_screenshot(os.environ["CARVIS_REVIEW_SHOT"])


def _chart_pixels(driver, canvas) -> np.ndarray:
    shot = cv2.imdecode(np.frombuffer(driver.get_screenshot_as_png(), np.uint8), 1)
    r = canvas.rect
    x, y, w, h = (round(r[key]) for key in ("x", "y", "width", "height"))
    return shot[y:y + h, x:x + w].astype(np.int16)


def test_cli_save_maps_then_redraw_without_the_model(tmp_path, capsys):
    from carvis import cli

    track, first, again = tmp_path / "t.maps.h5", tmp_path / "a", tmp_path / "b"
    assert cli.main(["render", "synthetic:frames=12,size=320x240", "-o", str(first),
                     "--save-maps", str(track), "--quiet"]) == 0
    capsys.readouterr()
    assert cli.main(["render", "synthetic:frames=12,size=320x240", "--maps", str(track),
                     "-o", str(again), "--quiet"]) == 0
    assert "12 frames re-drawn" in capsys.readouterr().err
    a = sorted(first.glob("*.png"))
    b = sorted(again.glob("*.png"))
    assert len(a) == len(b) == 12
    # float16 maps: the same picture but for the rare pixel sitting on the threshold
    diff = [np.mean(cv2.imread(str(x)) != cv2.imread(str(y))) for x, y in zip(a, b)]
    assert max(diff) < 0.01, diff
    code = cli.main(["render", "synthetic:frames=8,size=320x240", "--maps", str(track),
                     "-o", str(tmp_path / "c"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "made from a source of 12 frames" in err[0]


def test_a_kept_track_is_drawn_with_the_drawing_flags_given_now(two_models, profile):
    """#21.6: review --threshold/--colormap over tracks kept earlier: no model call, the
    page's settings the ones given."""
    review, _, _ = two_models
    other = review.folder.parent.parent / "v2.keras"
    with pytest.MonkeyPatch.context() as mp:
        calls = Calls(mp)
        again = Review(review.spec, [(MODEL, profile.replace(threshold=200, colormap="jet")),
                                     (other, profile.replace(layer="conv3", threshold=200,
                                                             colormap="jet"))],
                       cache=review.folder.parent)
        try:
            assert calls.n == 0 and again.model_calls == 0
            assert again.settings()["threshold"] == 200 and again.settings()["colormap"] == "jet"
            assert not np.array_equal(again.picture(9), review.picture(9))
        finally:
            again.close()
