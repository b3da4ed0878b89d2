"""The control page in real headless Chromium: the live overlay shows in the <img>, and the
controls change the pipeline (checked in /settings and in the pixels on screen)."""

from __future__ import annotations

from pathlib import Path

import cv2
import fakes
import numpy as np
import pytest

from carvis import live, pipeline

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip(f"needs {CHROMIUM} (apt install chromium chromium-driver; "
                    "scripts/test.sh installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1100,800",
                "--force-device-scale-factor=1",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    options.page_load_strategy = "eager"  # the stream never finishes loading
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    session, profile = fakes.session_and_profile(tmp_path_factory.mktemp("model"))
    source = fakes.StillSource(fakes.test_image(320, 240), fps=20)
    runner = live.build(source, pipeline.make_renderer(session, profile),
                             live.LiveOptions(serve=("127.0.0.1", 0), jpeg_quality=90))
    runner.start()
    yield runner, source.image
    runner.stop()
    source.close()
    runner.join(10)


def _shown(driver, raw: np.ndarray, path: Path | None = None) -> float:
    """Fraction of the <img>'s pixels on screen that differ strongly from the raw frame."""
    from selenium.webdriver.common.by import By

    png = driver.get_screenshot_as_png()
    if path is not None:
        path.write_bytes(png)
    shot = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    rect = driver.find_element(By.ID, "stream").rect
    x, y = round(rect["x"]), round(rect["y"])
    h, w = raw.shape[:2]
    assert (round(rect["width"]), round(rect["height"])) == (w, h)
    crop = shot[y:y + h, x:x + w].astype(np.int16)
    return float((np.abs(crop - raw).max(axis=2) > 40).mean())


def test_page_shows_the_live_overlay_and_its_controls_work(browser, served, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    runner, frame = served
    # What the browser shows for the raw frame: the frame through the stream's JPEG quality.
    raw = fakes.decode(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])[1])
    url = runner.server.url
    settings = lambda: fakes.http("GET", url + "settings")[1]
    wait = WebDriverWait(browser, 20, poll_frequency=0.1)
    browser.get(url)
    wait.until(lambda d: d.execute_script(
        "const i = document.getElementById('stream'); return i.complete && i.naturalWidth;"))
    wait.until(lambda d: "viewers 1" in d.find_element(By.ID, "readout").text)
    assert "fps" in browser.find_element(By.ID, "readout").text

    # The overlay lights pixels up on screen.
    wait.until(lambda d: _shown(d, raw) > 0.03)
    overlay_share = _shown(browser, raw, tmp_path / "page-overlay.png")
    print(f"screenshot: {tmp_path / 'page-overlay.png'} ({overlay_share:.1%} overlay pixels)")

    # Threshold slider to the end: /settings says 255 and the image is the raw frame.
    slider = browser.find_element(By.ID, "threshold")
    slider.click()
    slider.send_keys(Keys.END)
    fakes.wait_until(lambda: settings()["threshold"] == 255, what="threshold 255")
    wait.until(lambda d: _shown(d, raw) < 0.002)
    _shown(browser, raw, tmp_path / "page-threshold-255.png")
    assert browser.find_element(By.ID, "threshold-value").text == "255"

    # Back to 0, then the overlay checkbox off: raw again; on: lit again.
    slider.send_keys(Keys.HOME)
    fakes.wait_until(lambda: settings()["threshold"] == 0, what="threshold 0")
    wait.until(lambda d: _shown(d, raw) > 0.03)
    browser.find_element(By.ID, "overlay").click()
    fakes.wait_until(lambda: settings()["overlay"] is False, what="overlay off")
    wait.until(lambda d: _shown(d, raw) < 0.002)
    browser.find_element(By.ID, "overlay").click()
    fakes.wait_until(lambda: settings()["overlay"] is True, what="overlay on")
    wait.until(lambda d: _shown(d, raw) > 0.03)

    # Layer and colormap selects.
    layers = settings()["choices"]["layers"]
    other = next(n for n in layers if n != settings()["layer"])
    Select(browser.find_element(By.ID, "layer")).select_by_value(other)
    fakes.wait_until(lambda: settings()["layer"] == other, what=f"layer {other}")
    Select(browser.find_element(By.ID, "colormap")).select_by_value("jet")
    fakes.wait_until(lambda: settings()["colormap"] == "jet", what="colormap jet")
    # Side by side: the frame and the overlay in one, twice as wide.
    width = browser.execute_script("return document.getElementById('stream').naturalWidth")
    browser.find_element(By.ID, "compare").click()
    fakes.wait_until(lambda: settings()["compare"] is True, what="compare on")
    wait.until(lambda d: d.execute_script(
        "return document.getElementById('stream').naturalWidth") > 2 * width)
    browser.find_element(By.ID, "compare").click()
    fakes.wait_until(lambda: settings()["compare"] is False, what="compare off")
    assert browser.find_element(By.ID, "error").text == ""
