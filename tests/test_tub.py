"""DonkeyCar tubs as a source: tubs written by DonkeyCar's own writer (v2) and by hand (v1)."""

from __future__ import annotations

import json
import logging
import os
import re
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

from carvis.errors import CarvisError
from carvis.sources.tub import TubSource, fps_from_records, is_tub, tub_hint

os.environ.setdefault("LOGLEVEL", "WARNING")  # donkeycar configures the root logger on import
tub_v2 = pytest.importorskip(
    "donkeycar.parts.tub_v2",
    reason="DonkeyCar's tub writer is needed: pip install --no-deps donkeycar pyfiglet prettytable")

INPUTS = ["cam/image_array", "user/angle", "user/throttle", "user/mode"]
TYPES = ["image_array", "float", "float", "str"]
PILOT_INPUTS = INPUTS + ["pilot/angle", "pilot/throttle"]
PILOT_TYPES = TYPES + ["float", "float"]
SIZE = (160, 120)  # DonkeyCar's default camera size


def camera_image(n: int) -> np.ndarray:
    """An RGB camera frame (what DonkeyCar records) whose colour encodes its number."""
    image = np.zeros((SIZE[1], SIZE[0], 3), np.uint8)
    image[:] = (n * 20 % 256, 255 - n * 10 % 256, 128)
    return image


class Clock:
    """Stands in for tub_v2's time module: each call is `step_ms` later (jitter optional)."""

    def __init__(self, start: float = 1_700_000_000.0, step_ms: float = 50.0,
                 jitter_ms: tuple[float, ...] = (0.0,)) -> None:
        self.now, self.step, self.jitter, self.calls = start, step_ms / 1000, jitter_ms, 0

    def time(self) -> float:
        self.now += self.step + self.jitter[self.calls % len(self.jitter)] / 1000
        self.calls += 1
        return self.now

    def pause(self, seconds: float) -> None:
        self.now += seconds


def record(n: int, pilot: bool = False) -> dict:
    """The vehicle loop's values for frame n, as the TubWriter part receives them."""
    values = {"cam/image_array": camera_image(n), "user/angle": round(n / 20 - 0.5, 3),
              "user/throttle": 0.3 + n / 100, "user/mode": "local" if pilot else "user"}
    if pilot:
        values.update({"pilot/angle": -values["user/angle"], "pilot/throttle": 0.25})
    return values


def write_session(path: Path, clock: Clock, numbers: range, *, pilot: bool = False,
                  delete: tuple[int, ...] = (), max_catalog_len: int = 1000) -> None:
    """One recording session into the tub at path, by DonkeyCar's own Tub, then closed."""
    tub = tub_v2.Tub(str(path), inputs=PILOT_INPUTS if pilot else INPUTS,
                     types=PILOT_TYPES if pilot else TYPES, max_catalog_len=max_catalog_len)
    for n in numbers:
        tub.write_record(record(n, pilot))
    if delete:
        tub.delete_records(list(delete))
    tub.close()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(tub_v2, "time", types.SimpleNamespace(time=fake.time))
    return fake


def test_v2_every_record_in_order_with_its_values(tmp_path, clock):
    write_session(tmp_path / "tub", clock, range(12))
    src = TubSource(tmp_path / "tub")
    frames = list(src)
    assert src.frame_count == len(frames) == 12
    assert [f.index for f in frames] == list(range(12))
    for n, frame in enumerate(frames):
        assert frame.record["_index"] == n
        assert frame.record["user/angle"] == pytest.approx(round(n / 20 - 0.5, 3))
        assert frame.record["user/throttle"] == pytest.approx(0.3 + n / 100)
        assert frame.record["user/mode"] == "user"
        assert isinstance(frame.record["_timestamp_ms"], int)
        assert frame.record["_session_id"].endswith("_0")
        assert frame.name == f"{n}_cam_image_array_.jpg"
        # BGR pixels of the RGB frame the car saw (within JPEG's error on a flat colour)
        assert frame.image.shape == (SIZE[1], SIZE[0], 3)
        mean_rgb = frame.image.reshape(-1, 3).mean(axis=0)[::-1]
        np.testing.assert_allclose(mean_rgb, camera_image(n)[0, 0], atol=3)
    assert src.read() is None


def test_v2_deleted_records_are_skipped_and_counted(tmp_path, clock, caplog):
    write_session(tmp_path / "tub", clock, range(10), delete=(0, 4, 5, 9))
    with caplog.at_level(logging.INFO, logger="carvis"):
        src = TubSource(tmp_path / "tub")
    indexes = [f.record["_index"] for f in src]
    assert indexes == [1, 2, 3, 6, 7, 8]
    assert src.frame_count == 6 and src.deleted == 4
    assert "tub tub (v2): 6 records (4 deleted, skipped), 1 session(s), 20 fps" in caplog.text


def test_fps_is_the_median_interval_of_the_timestamps(tmp_path, monkeypatch):
    # 20 Hz drive loop with a late frame now and then: the median ignores the outliers
    fake = Clock(step_ms=50.0, jitter_ms=(0, -3, 4, 0, 120, -2, 1))
    monkeypatch.setattr(tub_v2, "time", types.SimpleNamespace(time=fake.time))
    write_session(tmp_path / "tub", fake, range(30))
    src = TubSource(tmp_path / "tub")
    stamps = [r["_timestamp_ms"] for r in src.records]
    expected = 1000 / float(np.median(np.diff(stamps)))
    assert src.fps == pytest.approx(expected)
    assert 19 <= src.fps <= 21


def test_several_sessions_and_catalogs_are_one_source(tmp_path, clock):
    path = tmp_path / "tub"
    write_session(path, clock, range(7), max_catalog_len=3)
    clock.pause(600)  # the car parked ten minutes between the two recordings
    write_session(path, clock, range(7, 12), max_catalog_len=3, delete=(8,))
    assert len(list(path.glob("catalog_*.catalog"))) == 4
    src = TubSource(path)
    frames = list(src)
    assert [f.record["_index"] for f in frames] == [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11]
    sessions = [f.record["_session_id"] for f in frames]
    assert len(src.sessions) == 2 and sessions[6] != sessions[7]
    assert sessions.count(src.sessions[0]) == 7
    assert src.fps == pytest.approx(20.0, rel=0.05)  # the pause is not a frame interval


def test_pilot_values_are_carried_when_the_car_drove_itself(tmp_path, clock):
    write_session(tmp_path / "tub", clock, range(5), pilot=True)
    frames = list(TubSource(tmp_path / "tub"))
    assert all(f.record["user/mode"] == "local" for f in frames)
    assert [f.record["pilot/angle"] for f in frames] == pytest.approx(
        [-round(n / 20 - 0.5, 3) for n in range(5)])
    assert all(f.record["pilot/throttle"] == pytest.approx(0.25) for f in frames)


def test_a_record_line_cut_short_and_a_missing_image_are_skipped(tmp_path, clock, caplog):
    path = tmp_path / "tub"
    write_session(path, clock, range(6))
    (path / "images" / "2_cam_image_array_.jpg").unlink()
    with (path / "catalog_0.catalog").open("a") as catalog:
        catalog.write('{"_index": 6, "_session_id": "x", "cam/ima')  # power cut mid-write
    with caplog.at_level(logging.WARNING, logger="carvis"):
        src = TubSource(path)
        frames = list(src)
    assert [f.record["_index"] for f in frames] == [0, 1, 3, 4, 5]
    assert src.skipped == [str(path / "images" / "2_cam_image_array_.jpg")]
    assert "unreadable record line" in caplog.text and "2_cam_image_array_.jpg" in caplog.text


def test_images_folder_and_parent_folder_name_the_tub(tmp_path, clock):
    data = tmp_path / "data"
    write_session(data / "tub_1", clock, range(3))
    assert is_tub(data / "tub_1") and not is_tub(data)
    hint = tub_hint(data / "tub_1" / "images")
    assert "images/ folder of the DonkeyCar tub" in hint and hint.endswith(str(data / "tub_1"))
    assert tub_hint(data).endswith(f"give it: {data / 'tub_1'}")
    write_session(data / "tub_2", clock, range(3))
    (data / "notes").mkdir()
    hint = tub_hint(data)
    assert "2 DonkeyCar tubs (tub_1, tub_2)" in hint and "\n" not in hint
    with pytest.raises(CarvisError, match="2 DonkeyCar tubs"):
        TubSource(data)
    assert tub_hint(data / "notes") is None and tub_hint(data / "tub_1") is None
    with pytest.raises(CarvisError, match="is not a DonkeyCar tub"):
        TubSource(data / "notes")


def test_a_tub_with_every_record_deleted_says_so(tmp_path, clock):
    write_session(tmp_path / "tub", clock, range(3), delete=(0, 1, 2))
    with pytest.raises(CarvisError, match="no records with images"):
        TubSource(tmp_path / "tub")


# -- tub v1, written by hand from donkeycar/parts/datastore.py's layout ------------------------

def write_v1_tub(path: Path, count: int, start: float = 1_600_000_000.0, step_ms: int = 50,
                 exclude: tuple[int, ...] = ()) -> None:
    """meta.json, record_N.json (N from 1) beside N_cam-image_array_.jpg, exclude.json."""
    path.mkdir(parents=True)
    (path / "meta.json").write_text(json.dumps(
        {"inputs": INPUTS, "types": TYPES, "start": start}))
    for n in range(1, count + 1):
        name = f"{n}_cam-image_array_.jpg"
        cv2.imwrite(str(path / name), cv2.cvtColor(camera_image(n), cv2.COLOR_RGB2BGR))
        (path / f"record_{n}.json").write_text(json.dumps(
            {"cam/image_array": name, "user/angle": n / 100, "user/throttle": 0.5,
             "user/mode": "user", "milliseconds": n * step_ms}))
    if exclude:
        (path / "exclude.json").write_text(json.dumps(list(exclude)))


def test_v1_records_in_number_order_with_v2_names(tmp_path):
    write_v1_tub(tmp_path / "tub_1_20-01-01", 12, exclude=(3,))
    src = TubSource(tmp_path / "tub_1_20-01-01")
    assert src.version == 1
    frames = list(src)
    numbers = [n for n in range(1, 13) if n != 3]  # record_10 after record_9, not record_1
    assert [f.record["_index"] for f in frames] == numbers
    assert [f.record["user/angle"] for f in frames] == pytest.approx([n / 100 for n in numbers])
    assert [f.record["_timestamp_ms"] for f in frames] == [
        1_600_000_000_000 + n * 50 for n in numbers]
    assert {f.record["_session_id"] for f in frames} == {"tub_1_20-01-01"}
    assert src.fps == pytest.approx(20.0)
    np.testing.assert_allclose(frames[0].image.reshape(-1, 3).mean(axis=0)[::-1],
                               camera_image(1)[0, 0], atol=3)
    assert tub_hint(tmp_path).endswith(str(tmp_path / "tub_1_20-01-01"))


def test_fps_falls_back_to_the_drive_loop_rate_without_timestamps():
    assert fps_from_records([{"_index": 0}, {"_index": 1}]) == 20.0
    assert fps_from_records([{"_timestamp_ms": 0}, {"_timestamp_ms": 0}], default=15) == 15


def test_loop_replays_the_tub_for_live_mode(tmp_path, clock):
    write_session(tmp_path / "tub", clock, range(4))
    src = TubSource(tmp_path / "tub", loop=True)
    frames = [src.read() for _ in range(10)]
    assert [f.index for f in frames] == list(range(10))
    assert [f.record["_index"] for f in frames] == [0, 1, 2, 3] * 2 + [0, 1]


# -- rendering a tub: recorded vs predicted, --start/--end, inspect --frame ---------------------

def write_track_session(path: Path, count: int, size: tuple[int, int] = SIZE,
                        delete: tuple[int, ...] = ()) -> None:
    """A tub of the synthetic track (RGB, as the car records), its steering as user/angle."""
    from carvis.synthetic import SyntheticTrack

    track = SyntheticTrack(width=size[0], height=size[1], fps=20, seed=8)
    tub = tub_v2.Tub(str(path), inputs=INPUTS, types=TYPES)
    for n in range(count):
        tub.write_record({"cam/image_array": cv2.cvtColor(track.frame(n * 6), cv2.COLOR_BGR2RGB),
                          "user/angle": round(track.steering(n * 6), 3),
                          "user/throttle": round(0.3 + n / 50, 3), "user/mode": "user"})
    if delete:
        tub.delete_records(list(delete))
    tub.close()


def hand_predictions(frames: list) -> list[float]:
    """The default model's angle per frame, computed apart from carvis' pipeline: the
    profile's preprocessing, Keras, and the argmax bin over evenly spread angles."""
    import keras

    from carvis import profile as prof
    from carvis.preprocess import Preprocessor

    p = prof.load(prof.DEFAULT_PROFILE)
    model = keras.models.load_model(p.model, compile=False)
    h, w, c = model.inputs[0].shape[1:]
    pre = Preprocessor(p, (w, h), c)
    angles = []
    for frame in frames:
        bins = np.asarray(model(pre(pre.roi(frame.image)), training=False))[0]
        angles.append(-1 + 2 * int(np.argmax(bins)) / (bins.size - 1))
    return angles


def render_cli(capsys, *argv: str) -> str:
    from carvis import cli

    assert cli.main(["render", *argv]) == 0
    return capsys.readouterr().err


def test_render_summary_is_the_hand_computed_difference(tmp_path, clock, capsys):
    tub = tmp_path / "tub"
    write_track_session(tub, 14, delete=(4,))
    frames = list(TubSource(tub))
    predicted = hand_predictions(frames)
    recorded = [f.record["user/angle"] for f in frames]
    errors = [abs(r - p) for r, p in zip(recorded, predicted, strict=True)]
    worst = sorted(range(len(errors)), key=lambda k: (-errors[k], k))[:5]
    err = render_cli(capsys, str(tub), "-o", str(tmp_path / "out"))
    line = next(x for x in err.splitlines() if "recorded vs predicted" in x)
    assert f"over {len(frames)} records" in line
    assert f"mean |difference| {np.mean(errors):.3f};" in line
    # Records by their own index (what --start and --frame take): 4 was deleted.
    shown = [int(x) for x in re.findall(r"(\d+) \([+-]", line)]
    assert shown == [frames[k].record["_index"] for k in worst]
    k = worst[0]
    assert f"record {frames[k].number} ({recorded[k]:+.2f} vs {predicted[k]:+.2f})" in line
    assert len(list((tmp_path / "out").glob("*.png"))) == len(frames) == 13


def test_start_and_end_by_frame_and_by_time(tmp_path, clock, capsys):
    tub = tmp_path / "tub"
    write_track_session(tub, 12)
    err = render_cli(capsys, str(tub), "-o", str(tmp_path / "a"), "--start", "2", "--end", "7")
    assert "5 frames written" in err and "over 5 records" in err
    # 20 fps from the timestamps: 0.15 s is frame 3, 0:00.5 is frame 10
    err = render_cli(capsys, str(tub), "-o", str(tmp_path / "b"), "--start", "0.15s",
                     "--end", "0:00.5")
    assert "7 frames written" in err
    first = cv2.imread(str(tmp_path / "b" / "000000.png"))
    same = cv2.imread(str(tmp_path / "a" / "000001.png"))
    np.testing.assert_array_equal(first, same)  # frame 3 both times


def test_frame_positions_are_one_parser_for_every_source():
    from carvis.frame import Frame
    from carvis.sources import Position, frame_position, select_frames

    assert frame_position("120") == Position(120)
    assert frame_position("12.5s") == Position(12.5, seconds=True)
    assert frame_position("1:05") == Position(65.0, seconds=True)
    assert frame_position(None) is None
    for bad in ("12.5", "-3", "ten", "1:xx", "²"):
        with pytest.raises(CarvisError, match=r"--end .* is not a frame number or a time"):
            frame_position(bad, "--end")
    with pytest.raises(CarvisError, match="must come after --start"):
        list(select_frames([], 20.0, Position(5), Position(5)))
    video = [Frame(np.zeros((1, 1, 3), np.uint8), i, 0.0) for i in range(10)]
    assert [f.index for f in select_frames(video, 20.0, Position(3), Position(6))] == [3, 4, 5]
    # a time: the frame nearest it first (0.15 s at 20 fps is frame 3)
    assert [f.index for f in select_frames(video, 20.0, Position(0.15, True),
                                           Position(0.3, True))] == [3, 4, 5]
    # a tub: numbers are record indexes (2 deleted), times its own timestamps
    tub = [Frame(np.zeros((1, 1, 3), np.uint8), k, 0.0, record={"_index": n}, time=t)
           for k, (n, t) in enumerate([(0, 0.0), (1, 0.05), (3, 0.2), (4, 0.25)])]
    assert [f.number for f in select_frames(tub, 20.0, Position(2))] == [3, 4]
    assert [f.number for f in select_frames(tub, 20.0, Position(0.1, True))] == [3, 4]


def test_hud_shows_the_records_steering_beside_the_models(tmp_path, clock):
    from fakes import session_and_profile

    from carvis import hud, pipeline
    from carvis.pilot import Steering
    from carvis.views import HUD_PANEL, TEXT

    write_track_session(tmp_path / "tub", 3)
    session, profile = session_and_profile(tmp_path)
    renderer = pipeline.make_renderer(session, profile.replace(hud=True), fps=20.0)
    frame = list(TubSource(tmp_path / "tub"))[2]
    out = renderer.render(frame)
    rec = Steering(frame.record["user/angle"], frame.record["user/throttle"])
    predicted = renderer.last_map.steering
    rows = [("record 2  0.10 s  mode user", TEXT), (hud.label("recorded", rec), hud.RECORDED),
            (hud.label("predicted", predicted), hud.PREDICTED)]
    assert rows[1][0] == f"recorded {rec.angle:+.2f} thr {rec.throttle:.2f}"
    layout = hud.panel_layout((SIZE[1], SIZE[0], 3), bins=predicted.angle_bins is not None)
    assert out.shape == (SIZE[1] + layout.height, SIZE[0], 3)
    expected = np.empty_like(out)
    expected[:] = HUD_PANEL
    hud.legend(expected, rows, layout.text_x, layout.top, layout.height, layout.bins[0] - 8)
    text = (slice(layout.top, None), slice(layout.text_x, layout.bins[0] - 8))
    np.testing.assert_array_equal(out[text], expected[text])
    assert [(r.frame, r.recorded) for r in renderer.log.rows] == [(2, rec.angle)]


def test_plot_adds_the_strip_chart_below_the_frame_scaled_up(tmp_path, clock, capsys):
    from carvis import hud
    from carvis.hud import StripChart

    write_track_session(tmp_path / "tub", 4)
    render_cli(capsys, str(tmp_path / "tub"), "-o", str(tmp_path / "out"), "--plot")
    image = cv2.imread(str(tmp_path / "out" / "000003.png"))
    # 160x120 comes out x4: the HUD and chart drawn at 640 wide, below the picture
    picture = (SIZE[1] * 4, SIZE[0] * 4, 3)
    panel = hud.panel_layout(picture, bins=True)
    chart = StripChart().layout((picture[0] + panel.height, picture[1], 3))
    assert image.shape == (picture[0] + panel.height + chart.height, picture[1], 3)
    capsys.readouterr()
    render_cli(capsys, str(tmp_path / "tub"), "-o", str(tmp_path / "one"), "--plot",
               "--scale", "1")
    image = cv2.imread(str(tmp_path / "one" / "000003.png"))
    assert image.shape[1] == SIZE[0]


def test_inspect_takes_a_tub_and_a_frame_number(tmp_path, clock, capsys):
    from carvis import cli

    tub = tmp_path / "tub"
    write_track_session(tub, 6)
    image = tub / "images" / "3_cam_image_array_.jpg"
    outs = [tmp_path / f"{name}.png" for name in ("index", "time", "image")]
    assert cli.main(["inspect", "models/default.keras", str(tub), "--frame", "3", "-o",
                     str(outs[0])]) == 0
    assert cli.main(["inspect", "models/default.keras", str(tub), "--frame", "0.15s", "-o",
                     str(outs[1])]) == 0
    assert cli.main(["inspect", "models/default.keras", str(image), "-o", str(outs[2])]) == 0
    pictures = [cv2.imread(str(p)) for p in outs]
    np.testing.assert_array_equal(pictures[0], pictures[2])
    np.testing.assert_array_equal(pictures[1], pictures[2])
    capsys.readouterr()
    assert cli.main(["inspect", "models/default.keras", str(tub), "-o", str(outs[0])]) != 0
    assert "say which with --frame N" in capsys.readouterr().err
    assert cli.main(["inspect", "models/default.keras", str(tub), "--frame", "6", "-o",
                     str(outs[0])]) != 0
    assert "tub has no such frame; give one of its records 0..5" in capsys.readouterr().err
