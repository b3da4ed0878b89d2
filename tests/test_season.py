"""A season's index (`carvis review SEASON_DIR`): a folder of tubs and a video, their tracks
prepared by `carvis review --prepare` with two pilots; each row's numbers from its tracks; the
page in headless Chromium: rows sorted worst first, a heading re-sorts, a click opens the run."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from test_cluster import PROFILE, two_models
from test_review import _tub, browser  # noqa: F401 - the browser is a fixture

from carvis import cli
from carvis.review import season as seasons
from carvis.review.prepare import review_cache
from carvis.review.server import SeasonServer
from carvis.review.track import Track
from carvis.sinks.video import VideoSink
from carvis.synthetic import SyntheticTrack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def season(tmp_path_factory):
    """Two tubs and a video, prepared with two pilots, and the season's page serving them."""
    root = tmp_path_factory.mktemp("season")
    folder = root / "season"
    _tub(folder / "tub_short", 24)
    _tub(folder / "tub_long", 44)
    track = SyntheticTrack(width=320, height=240, seed=5)
    with VideoSink(str(folder / "race.mp4"), 30) as sink:
        for i in range(32):
            sink.write(track.frame(i))
    (folder / "notes.txt").write_text("not a run")
    v1, v2 = two_models(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CARVIS_CACHE", str(root / "cache"))
        assert cli.main(["review", "--prepare", str(folder / "tub_short"),
                         str(folder / "tub_long"), str(folder / "race.mp4"), "--model", str(v1),
                         "--model", str(v2), "--profile", str(PROFILE), "--jobs", "1",
                         "-q"]) == 0
        _tub(folder / "tub_new", 10)  # recorded after: no tracks yet
        s = seasons.Season(folder, review_cache())
    server = SeasonServer(s).start()
    yield s, server
    server.close()
    s.close()


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.loads(r.read())


def test_each_row_is_its_runs_numbers(season):
    s, server = season
    rows = {r["name"]: r for r in _get(server.url + "season")["runs"]}
    assert sorted(rows) == ["race.mp4", "tub_long", "tub_new", "tub_short"]
    assert rows["tub_new"]["prepared"] is False
    for name in ("tub_short", "tub_long", "race.mp4"):
        row = rows[name]
        tracks = [Track(p) for p in seasons.kept_tracks(s.review_folder(row["run"]))]
        assert [m["model"] for m in row["models"]] == ["v1.tflite", "v2.tflite"]
        assert row["frames"] == len(tracks[0]) == {"tub_short": 24, "tub_long": 44,
                                                   "race.mp4": 32}[name]
        gap = np.abs(tracks[0].angle - tracks[1].angle)
        assert row["disagree"]["frame"] == int(np.argmax(gap))
        assert row["disagree"]["value"] == pytest.approx(gap.max(), abs=1e-4)
        assert len(row["spark"]) == row["frames"]  # fewer frames than sparkline points
        if name == "race.mp4":
            assert row["error"] is None and row["spark_of"] == "|model 1 - model 2|"
            continue
        errors = [float(np.mean(np.abs(t.recorded_angle - t.angle))) for t in tracks]
        assert [m["error"] for m in row["models"]] == pytest.approx(errors, abs=1e-4)
        assert row["error"] == pytest.approx(max(errors), abs=1e-4)
        assert 0 <= row["models"][0]["area_mean"] <= row["models"][0]["area_p90"] <= 1
    # Kept beside the tracks: a second look reads the row, the tracks unopened.
    assert (s.review_folder(rows["tub_long"]["run"]) / seasons.SUMMARY).is_file()


def test_runs_open_under_their_own_address_and_a_bad_one_is_refused(season):
    s, server = season
    k = s.runs.index(next(r for r in s.runs if r.name == "tub_long"))
    info = _get(f"{server.url}run/{k}/info")
    assert info["source"] == "tub_long" and info["frames"] == 44 and info["recorded"]
    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(f"{server.url}run/{len(s.runs) + 3}/info", timeout=30)
    assert bad.value.code == 404 and "out of range" in json.loads(bad.value.read())["error"]
    new = s.runs.index(next(r for r in s.runs if r.name == "tub_new"))
    with pytest.raises(urllib.error.HTTPError) as unprepared:
        urllib.request.urlopen(f"{server.url}run/{new}/info", timeout=30)
    assert unprepared.value.code == 404
    assert "carvis review --prepare" in json.loads(unprepared.value.read())["error"]


def test_a_folder_that_is_no_season_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["review", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a season folder" in err[0]


@pytest.mark.browser
def test_season_page_sorted_worst_first_a_heading_resorts_a_click_opens_the_run(
        browser, season):  # noqa: F811 - the fixture
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _, server = season
    rows = {r["run"]: r for r in _get(server.url + "season")["runs"]}
    wait = WebDriverWait(browser, 30, poll_frequency=0.05)
    browser.get(server.url)
    wait.until(lambda d: d.execute_script("return document.body.dataset.ready") == "true")
    assert browser.find_element(By.ID, "error").text == ""

    def shown() -> list[int]:
        return [int(tr.get_attribute("data-run"))
                for tr in browser.find_elements(By.CSS_SELECTOR, "#runs tbody tr")]

    prepared = [k for k, r in rows.items() if r["prepared"]]
    with_error = sorted((k for k in prepared if rows[k]["error"] is not None),
                        key=lambda k: -rows[k]["error"])
    order = shown()
    assert order[:len(with_error)] == with_error  # worst mean |recorded - predicted| first
    assert rows[order[-1]]["prepared"] is False  # a run without tracks last
    # A heading sorts by it, longest first; again, shortest first.
    heading = browser.find_element(By.CSS_SELECTOR, "#runs th[data-key=seconds]")
    heading.click()
    by_length = sorted(prepared, key=lambda k: -rows[k]["seconds"])
    wait.until(lambda d: shown()[:len(prepared)] == by_length)
    assert heading.get_attribute("aria-sort") == "descending"
    heading.click()
    wait.until(lambda d: shown()[:len(prepared)] == by_length[::-1])
    assert heading.get_attribute("aria-sort") == "ascending"
    # A click on a row opens that run's review page.
    first = shown()[0]
    browser.find_element(By.CSS_SELECTOR, f"#runs tbody tr[data-run='{first}'] td").click()
    wait.until(lambda d: d.current_url.endswith(f"/run/{first}/"))
    wait.until(lambda d: d.execute_script("return document.body.dataset.ready") == "true")
    assert browser.execute_script("return review.info.source") == rows[first]["name"]
    assert browser.find_element(By.ID, "error").text == ""
    assert browser.execute_script("return review.frame") == 0


@pytest.mark.parametrize("flags", [["--threshold", "300"], ["--mode", "vpb"],
                                   ["--layer", "conv9"]])
def test_review_takes_the_map_flags_render_takes_checked_alike(flags, tmp_path, capsys):
    """#21.6: review --layer/--mode/--threshold, refused in render's words."""
    model = ["--model", str(Path(PROFILE).parent / "default.tflite")]
    lines = []
    for command in (["render", "synthetic:frames=4", "-o", str(tmp_path / "x.mp4")],
                    ["review", "synthetic:frames=4", "--serve", "0"]):
        try:
            code = cli.main([*command, *model, *flags])
        except SystemExit as exc:  # argparse's own refusal (a --mode not in the list)
            code = exc.code
        lines.append(capsys.readouterr().err.strip().splitlines()[-1].split("error: ", 1)[1])
        assert code == 2
    assert lines[0] == lines[1] and flags[1] in lines[0]
