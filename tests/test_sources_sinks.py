"""File sources and sinks: order, completeness, corrupt input, playable output."""

from __future__ import annotations

import logging
import os

import cv2
import numpy as np
import pytest

from carvis import sources
from carvis.errors import CarvisError
from carvis.sinks.files import AviSink, PngDirSink
from carvis.sinks.table import SinkOptions, open_sink


def _numbered_image(n: int, size=(32, 24)) -> np.ndarray:
    img = np.zeros((size[1], size[0], 3), np.uint8)
    img[:] = (n * 7 % 256, n * 13 % 256, n % 256)
    return img


def test_folder_is_sorted_by_the_number_in_the_name(tmp_path):
    for n in (100, 9, 10, 3556, 1):
        cv2.imwrite(str(tmp_path / f"frame{n}.png"), _numbered_image(n))
    (tmp_path / "notes.txt").write_text("not an image")
    src = sources.open_source(str(tmp_path))
    names = [f.name for f in src]
    assert names == ["frame1.png", "frame9.png", "frame10.png", "frame100.png", "frame3556.png"]
    assert src.frame_count == 5


def test_corrupt_image_is_skipped_counted_and_warned(tmp_path, caplog):
    for n in (1, 2, 3):
        cv2.imwrite(str(tmp_path / f"frame{n}.png"), _numbered_image(n))
    (tmp_path / "frame2.png").write_bytes(b"\x89PNG garbage")
    src = sources.open_source(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="carvis"):
        frames = list(src)
    assert [f.name for f in frames] == ["frame1.png", "frame3.png"]
    assert [f.index for f in frames] == [0, 1]
    assert len(src.skipped) == 1 and src.skipped[0].endswith("frame2.png")
    # one warning, through the "carvis" logger (the CLI prints it as "carvis: warning: ...")
    warned = [r for r in caplog.records if r.name == "carvis"]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    assert "skipping frame2.png" in warned[0].getMessage()


def test_empty_folder_and_missing_source_are_one_line(tmp_path):
    with pytest.raises(CarvisError, match="holds no images"):
        sources.open_source(str(tmp_path))
    with pytest.raises(CarvisError, match="not found"):
        sources.open_source(str(tmp_path / "race.mp4"))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(os.urandom(2048))
    with pytest.raises(CarvisError, match="cannot be read as a video"):
        sources.open_source(str(bad))


def _write_avi(path, n, size=(64, 48), fps=25.0):
    with AviSink(path, fps) as sink:
        for i in range(n):
            sink.write(_numbered_image(i * 10, size))
    return path


def test_avi_roundtrip_keeps_every_frame_in_order_and_fps(tmp_path):
    path = _write_avi(tmp_path / "out.avi", 12)
    src = sources.open_source(str(path))
    frames = list(src)
    assert len(frames) == 12 and src.fps == pytest.approx(25.0)
    for i, f in enumerate(frames):
        # MJPG is lossy: colours within a few levels
        assert np.abs(f.image.astype(int) - _numbered_image(i * 10, (64, 48))).mean() < 4


def test_video_loop_restarts(tmp_path):
    path = _write_avi(tmp_path / "clip.avi", 3)
    src = sources.open_source(str(path), loop=True)
    frames = [next(iter(src)) for _ in range(7)]
    assert [f.index for f in frames] == list(range(7))
    # frame 3 is frame 0 again: the clip restarted rather than repeating its last frame
    for i in range(3, 7):
        np.testing.assert_array_equal(frames[i].image, frames[i - 3].image)
    assert not np.array_equal(frames[3].image, frames[2].image)


def test_png_dir_sink_numbers_frames(tmp_path):
    out = tmp_path / "frames"
    with PngDirSink(out) as sink:
        for i in range(3):
            sink.write(_numbered_image(i))
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png", "000002.png"]
    np.testing.assert_array_equal(cv2.imread(str(out / "000002.png")), _numbered_image(2))


def test_unwritable_outputs_fail_before_any_frame(tmp_path):
    with pytest.raises(CarvisError, match="folder does not exist"):
        open_sink(tmp_path / "missing" / "out.avi", SinkOptions(30))
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(CarvisError, match="not a folder"):
        open_sink(f, SinkOptions(30))
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(CarvisError, match="no permission"):
            open_sink(ro / "out.avi", SinkOptions(30))


def test_avi_size_change_mid_recording_is_fitted_not_lost(tmp_path, caplog):
    path = tmp_path / "x.avi"
    with AviSink(path, 30) as sink, caplog.at_level(logging.WARNING, logger="carvis"):
        sink.write(_numbered_image(1, (64, 48)))
        sink.write(_numbered_image(2, (128, 40)))
        warned = [r.getMessage() for r in caplog.records if r.name == "carvis"]
        assert len(warned) == 1 and "resized to fit" in warned[0]
        sink.write(_numbered_image(3, (128, 40)))
    frames = list(sources.open_source(str(path)))
    assert len(frames) == 3 and all(f.image.shape == (48, 64, 3) for f in frames)


@pytest.mark.parametrize("name, words", [
    ("race.mov", [".mov is a video format carvis does not write", ".mp4, .mkv"]),
    ("race.xyz", [".xyz is not an output carvis writes", "folder name"]),
])
def test_unknown_output_suffix_is_one_line_not_a_png_folder(tmp_path, name, words):
    with pytest.raises(CarvisError) as info:
        open_sink(tmp_path / name, SinkOptions(30))
    assert "\n" not in str(info.value) and all(w in str(info.value) for w in words)
    assert not (tmp_path / name).exists()


def test_png_folder_of_an_earlier_render_is_refused_not_mixed(tmp_path):
    out = tmp_path / "frames"
    with open_sink(out, SinkOptions(30)) as sink:
        for i in range(3):
            sink.write(_numbered_image(i))
    with pytest.raises(CarvisError, match="already holds 3 frames of an earlier render"):
        open_sink(out, SinkOptions(30))
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png", "000002.png"]
