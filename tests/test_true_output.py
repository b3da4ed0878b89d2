"""What carvis says and writes is true (issue 19, "other untrue output found the same day"):
each case named after what was found."""

from __future__ import annotations

import os
import re
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO, require_axionaut

from carvis import cli
from carvis.pilot import SteeringLog

MODEL = ["--model", str(REPO / "models" / "default.keras"), "--profile",
         str(REPO / "models" / "default.yaml")]


def _run(capsys, *argv: str) -> tuple[int, list[str]]:
    code = cli.main(list(argv))
    return code, [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


def _pngs(folder: Path) -> list[np.ndarray]:
    return [cv2.imread(str(p)) for p in sorted(folder.glob("*.png"))]


def test_start_past_the_end_is_one_line_not_zero_frames_written(tmp_path, capsys):
    out = tmp_path / "o.mp4"
    code, err = _run(capsys, "render", "synthetic:frames=30", "-o", str(out), "--start", "9000",
                     "-q", *MODEL)
    assert code == 2 and len(err) == 1, err
    assert err[0] == ("carvis: error: nothing to render: synthetic:0 has 30 frames, none in "
                      "--start 9000 .. --end None; give a range inside it")
    assert not out.exists()


def test_maps_track_honours_start_end_and_plot(tmp_path, capsys):
    track = tmp_path / "clip.maps.h5"
    spec = "synthetic:frames=12,size=320x240"
    assert cli.main(["render", spec, "-o", str(tmp_path / "all"), "--hud", "--save-maps",
                     str(track), "-q", *MODEL]) == 0
    assert cli.main(["render", spec, "-o", str(tmp_path / "model"), "--start", "3", "--end",
                     "8", "--plot", "-q", *MODEL]) == 0
    capsys.readouterr()
    code, err = _run(capsys, "render", spec, "--maps", str(track), "-o",
                     str(tmp_path / "track"), "--start", "3", "--end", "8", "--plot", "-q")
    assert code == 0 and err == [(f"carvis: 5 frames re-drawn from {track} to "
                                 f"{tmp_path / 'track'} (no model)")]
    from_model, from_track = _pngs(tmp_path / "model"), _pngs(tmp_path / "track")
    assert len(from_track) == len(from_model) == 5
    for a, b in zip(from_model, from_track, strict=True):
        assert a.shape == b.shape  # the strip chart below both
        picture = a.shape[0] * 4 // 5
        np.testing.assert_array_equal(a[picture:], b[picture:])  # the same chart
        assert (a[:picture] != b[:picture]).any(axis=2).mean() < 0.01  # float16 maps


def test_maps_track_without_steering_refuses_plot_in_one_line(tmp_path, capsys):
    track = tmp_path / "plain.maps.h5"
    assert cli.main(["render", "synthetic:frames=4", "-o", str(tmp_path / "a"), "--save-maps",
                     str(track), "-q", *MODEL]) == 0
    capsys.readouterr()
    code, err = _run(capsys, "render", "synthetic:frames=4", "--maps", str(track), "-o",
                     str(tmp_path / "b"), "--plot", "-q")
    assert code == 2 and err == [(f"carvis: error: --plot charts the steering, and map track "
                                 f"{track.name} holds none (it was made without the HUD); drop "
                                 "--plot")]


def test_a_flat_map_on_a_render_shorter_than_the_watch_is_said(tmp_path, capsys):
    axionaut = require_axionaut()
    code, err = _run(capsys, "render", str(axionaut / "race.mp4"), "-o",
                     str(tmp_path / "o.avi"), "--model", str(axionaut / "autopilot.hdf5"),
                     "--max-frames", "3", "-q")
    flat = [line for line in err if "is flat on" in line]
    assert code == 0 and len(flat) == 1, err
    assert "is flat on all 3 frames (every value 0)" in flat[0]


def test_a_refused_mode_is_its_own_one_line_without_a_hud_note(tmp_path, capsys):
    tub_v2 = pytest.importorskip("donkeycar.parts.tub_v2", reason="DonkeyCar's tub writer")
    from test_tub import Clock, write_session

    tub = tmp_path / "tub"
    clock = Clock()
    old, tub_v2.time = tub_v2.time, types.SimpleNamespace(time=clock.time)
    try:
        write_session(tub, clock, range(3))
    finally:
        tub_v2.time = old
    code, err = _run(capsys, "render", str(tub), "-o", str(tmp_path / "o.avi"), "--model",
                     str(REPO / "models" / "default.tflite"), "--mode", "gradcam", "-q")
    assert code == 2 and [ln for ln in err if not ln.startswith("carvis: tub ")] == [
        ("carvis: error: mode 'gradcam' needs gradients, which a .tflite does not hold: give "
         "the .h5/.keras model (on the laptop, where TensorFlow is, carvis converts its gradient "
         "graph once; LiteRT runs it from then on)")]


def test_differ_most_is_left_out_when_every_difference_is_0():
    from carvis.pilot import Steering

    log = SteeringLog()
    for n in range(4):
        log.add(n, {"user/angle": 0.5, "_index": n}, Steering(0.5))
    assert log.summary() == ("recorded vs predicted angle over 4 records: mean |difference| "
                             "0.000; they agree on every one")


@pytest.mark.parametrize("name", ["o.avi", "o.mp4"])
def test_an_output_that_is_a_folder_is_told_so_not_the_disk_space(tmp_path, capsys, name):
    (tmp_path / name).mkdir()
    code, err = _run(capsys, "render", "synthetic:frames=2", "-o", str(tmp_path / name), "-q",
                     *MODEL)
    suffix = Path(name).suffix
    assert code == 2 and err == [(f"carvis: error: output '{tmp_path / name}' is a folder; give "
                                 f"a new file name ending in {suffix}, or a name without a "
                                 "suffix for numbered PNG frames")]


def test_output_equal_to_the_input_is_refused_before_anything_is_opened(tmp_path, capsys):
    clip = tmp_path / "a.avi"
    assert cli.main(["render", "synthetic:frames=5", "-o", str(clip), "-q", *MODEL]) == 0
    before = clip.read_bytes()
    link = tmp_path / "link.avi"
    link.symlink_to(clip)
    for out in (clip, link):
        capsys.readouterr()
        code, err = _run(capsys, "render", str(clip), "-o", str(out), "-q", *MODEL)
        assert code == 2 and err == [(f"carvis: error: output '{out}' is the input '{clip}': "
                                     "writing it would destroy the source; give another "
                                     "output name")]
    assert clip.read_bytes() == before


def _small_files(limit: int):
    def set_limit() -> None:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return set_limit


@pytest.mark.parametrize("name, limit", [("o.avi", 400_000), ("o.mp4", 60_000),
                                         ("o.mkv", 60_000), ("frames", 20_000)])
def test_20_6_a_full_disk_is_the_same_one_line_and_exit_for_every_container(tmp_path, name,
                                                                            limit):
    import subprocess
    import sys

    out = tmp_path / name
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}  # as a user has it
    r = subprocess.run([sys.executable, "-m", "carvis.cli", "render",
                        "synthetic:frames=200,size=640x480", "-o", str(out), "-q", *MODEL],
                       check=False, capture_output=True, text=True, cwd=tmp_path, env=env,
                       preexec_fn=_small_files(limit), timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    said = re.match(r"carvis: error: cannot write '(.+)' \(File too large\) "
                    r"(before any frame|after (\d+) frames?; what reached the disk before "
                    r"plays); free disk space or give an output on another disk$", lines[0])
    assert said, lines[0]
    assert said[1].startswith(str(out))
    given = int(said[3] or 0)
    if out.suffix in (".avi", ".mkv", ".mp4"):  # it plays, and holds no more than was given
        probe = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams",
                                "v:0", "-show_entries", "stream=nb_read_frames", "-of",
                                "csv=p=0", str(out)], check=False, capture_output=True,
                               text=True)
        assert 0 < int(probe.stdout.strip() or 0) <= given < 200, (given, probe)
