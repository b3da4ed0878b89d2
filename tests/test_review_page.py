"""The review page over a long tub (#21.6), in headless Chromium: ?frame=N opens frame N (a bad
N stays at 0 and says why), the address follows the frame, the recorded steering is a fill the
predicted line is drawn over, a drag zooms the chart, and an overview strip of the whole run
(each pixel column the least and most of its frames) — on a DonkeyCar tub of 5,854 records."""

from __future__ import annotations

import base64
import itertools
import json
import math
import os
import urllib.request

import cv2
import numpy as np
import pytest
from test_cluster import PROFILE, two_models
from test_review import browser  # noqa: F401 - the browser is a fixture

from carvis import profile as prof
from carvis.review.app import Review
from carvis.review.server import ReviewServer

pytestmark = [pytest.mark.slow, pytest.mark.browser]

RECORDS = 5854  # the real tub's length in #21


def _long_tub(path, n: int):
    """A tub of n small records written by DonkeyCar's own Tub: a scene that pans, and a
    recorded angle that swings (a sine and noise), as a long run does."""
    os.environ.setdefault("LOGLEVEL", "WARNING")
    tub_v2 = pytest.importorskip("donkeycar.parts.tub_v2")
    rng = np.random.default_rng(0)
    scene = rng.integers(0, 255, (120, 160 * 4, 3), dtype=np.uint8)
    tub = tub_v2.Tub(str(path), inputs=["cam/image_array", "user/angle", "user/throttle"],
                     types=["image_array", "float", "float"])
    for i in range(n):
        x = (i * 3) % (scene.shape[1] - 160)
        angle = float(np.clip(math.sin(i / 60.0) * 0.8 + rng.normal(0, 0.1), -1, 1))
        tub.write_record({"cam/image_array": scene[:, x:x + 160].copy(), "user/angle": angle,
                          "user/throttle": 0.3})
    tub.close()
    return path


@pytest.fixture(scope="module")
def long_review(tmp_path_factory):
    root = tmp_path_factory.mktemp("long")
    v1, _ = two_models(root)
    tub = _long_tub(root / "tub", RECORDS)
    review = Review(str(tub), [(v1, prof.load(PROFILE))], cache=root / "cache")
    server = ReviewServer(review).start()
    yield review, server
    server.close()
    review.close()


def _open(driver, url: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 60, poll_frequency=0.05).until(
        lambda d: d.execute_script("return document.body.dataset.ready") == "true")


def _shown(driver) -> str | None:
    return driver.execute_script("return document.getElementById('frame0').dataset.frame")


def test_address_opens_that_frame_a_bad_one_stays_at_0_and_says_why(
        browser, long_review):  # noqa: F811 - the fixture
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    _, server = long_review
    wait = WebDriverWait(browser, 30, poll_frequency=0.05)
    _open(browser, server.url + "?frame=4321")
    wait.until(lambda d: _shown(d) == "4321")
    assert browser.execute_script("return review.frame") == 4321
    assert browser.find_element(By.ID, "frame").get_attribute("value") == "4321"
    assert browser.find_element(By.ID, "error").text == ""
    # The address follows the frame shown: copied, it opens there.
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
    wait.until(lambda d: d.execute_script("return location.search") == "?frame=4322")
    for bad in ("abc", "99999", "-3", "1e3"):
        _open(browser, f"{server.url}?frame={bad}")
        wait.until(lambda d: _shown(d) == "0")
        assert browser.execute_script("return review.frame") == 0
        error = browser.find_element(By.ID, "error").text
        assert error == (f"?frame={bad} is not a frame of this run; give 0..{RECORDS - 1} "
                         "(showing frame 0)")
        assert browser.execute_script("return review.jsErrors") == []


def test_predicted_line_drawn_over_the_recorded_fill(
        browser, long_review):  # noqa: F811 - the fixture
    _, server = long_review
    _open(browser, server.url)
    series = browser.execute_script(
        "return review.chart.series.map(s => ({label: s.label, fill: !!s.fill}))")
    drawn = browser.execute_script("return review.drawn")
    assert {"label": "recorded", "fill": True} in series
    assert drawn.index("recorded") < drawn.index("predicted")


def test_a_drag_zooms_the_chart_and_a_double_click_shows_it_all(
        browser, long_review):  # noqa: F811 - the fixture
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _, server = long_review
    _open(browser, server.url)
    scale = "return [review.chart.scales.x.min, review.chart.scales.x.max]"
    assert browser.execute_script(scale) == [0, RECORDS - 1]
    over = browser.find_element(By.CSS_SELECTOR, "#chart .u-over")
    width = over.size["width"]
    frame = browser.execute_script("return review.frame")
    ActionChains(browser).move_to_element_with_offset(over, round(-width * 0.3), 0) \
        .click_and_hold().move_by_offset(round(width * 0.2), 0) \
        .move_by_offset(round(width * 0.2), 0).release().perform()
    wait = WebDriverWait(browser, 10, poll_frequency=0.05)
    wait.until(lambda d: d.execute_script(scale) != [0, RECORDS - 1])
    lo, hi = browser.execute_script(scale)
    # From 20% to 60% of the run: the x scale is that range, the frame left where it was.
    assert lo == pytest.approx(0.2 * (RECORDS - 1), abs=RECORDS * 0.02)
    assert hi == pytest.approx(0.6 * (RECORDS - 1), abs=RECORDS * 0.02)
    assert browser.execute_script("return review.frame") == frame
    ActionChains(browser).double_click(over).perform()
    wait.until(lambda d: d.execute_script(scale) == [0, RECORDS - 1])
    assert browser.execute_script("return review.jsErrors") == []


def test_the_overview_is_each_pixel_columns_least_and_most(
        browser, long_review):  # noqa: F811 - the fixture
    from selenium.webdriver.common.by import By

    _, server = long_review
    _open(browser, server.url)
    with urllib.request.urlopen(server.url + "timeline", timeout=60) as r:
        t = json.loads(r.read())
    o = browser.execute_script("return review.overview")
    canvas = browser.find_element(By.ID, "overview")
    assert o["frames"] == RECORDS and o["columns"] == o["width"] == canvas.size["width"]
    assert o["columns"] < RECORDS  # decimated: several frames a column
    recorded = np.array(t["recorded"], dtype=np.float64)
    edges = [(c * RECORDS) // o["columns"] for c in range(o["columns"] + 1)]
    expected = [[recorded[a:b].min(), recorded[a:b].max()]
                for a, b in itertools.pairwise(edges)]
    assert np.allclose(np.array(o["recorded"]), expected)
    predicted = np.array(t["models"][0]["angle"], dtype=np.float64)
    assert np.allclose(np.array(o["predicted"][0]),
                       [[predicted[a:b].min(), predicted[a:b].max()]
                        for a, b in itertools.pairwise(edges)])
    # Readable, not a wall: a column spans a small part of what the run spans.
    spans = np.diff(np.array(o["recorded"]), axis=1).ravel()
    assert np.median(spans) < 0.25 * (recorded.max() - recorded.min())
    # Drawn: the predicted colour lights most columns of the strip (its own pixels).
    data = browser.execute_script("return arguments[0].toDataURL('image/png')", canvas)
    strip = cv2.imdecode(np.frombuffer(base64.b64decode(data.split(",", 1)[1]), np.uint8), 1)
    assert strip.shape[1] == o["width"]
    blue = (np.abs(strip.astype(int) - (255, 163, 77)).sum(axis=2) < 60)  # #4da3ff as BGR
    assert blue.any(axis=0).mean() > 0.9
