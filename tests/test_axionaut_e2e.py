"""The real Axionaut model on real onboard frames, end to end through the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import seed_reference
from conftest import REPO

from carvis import cli

PROFILE = REPO / "models" / "axionaut.yaml"
GOLDEN = Path(__file__).parent / "golden"
# Golden crops of the overlay: (frame, rows, cols) of the 1800x480 output, where lanes light up.
GOLDEN_CROPS = {"frame3556.jpg": (slice(40, 200), slice(1100, 1700)),   # white lane tape
                "frame3868.jpg": (slice(0, 480), slice(330, 690))}     # yellow centre dashes


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, axionaut_frames, axionaut_model_path):
    out = tmp_path_factory.mktemp("render")
    code = cli.main(["render", str(axionaut_frames), "-o", str(out), "--quiet",
                     "--model", str(axionaut_model_path), "--profile", str(PROFILE)])
    assert code == 0
    return out


def _compare(ours: np.ndarray, ref: np.ndarray) -> tuple[float, int]:
    diff = np.abs(ours.astype(int) - ref.astype(int))
    return float((diff.max(axis=-1) > 0).mean()), int(diff.max())


def test_render_matches_independent_seed_implementation(rendered, axionaut_frames,
                                                        axionaut_model_path):
    weights = seed_reference.load_weights(axionaut_model_path)
    files = sorted(axionaut_frames.glob("*.jpg"), key=lambda p: int(p.stem[5:]))
    outputs = sorted(rendered.glob("*.png"))
    assert len(outputs) == len(files) == 24  # every input frame becomes one output frame
    worst = 0.0
    for src, out in zip(files, outputs):
        ref = seed_reference.seed_overlay(cv2.imread(str(src)), weights)
        ours = cv2.imread(str(out))
        assert ours.shape == ref.shape == (480, 1800, 3)
        changed, _ = _compare(ours, ref)
        worst = max(worst, changed)
        lit = (np.abs(ours.astype(int) - cv2.imread(str(src))[600:1080, :1800]).max(-1) > 0)
        assert 0.02 < lit.mean() < 0.9, "the overlay lights up part of the picture, not none/all"
    # TensorFlow's float32 conv vs numpy float64 flips at most a handful of pixels that sit
    # exactly on the threshold or a rounding edge.
    assert worst < 1e-4, f"{worst:.3%} of pixels differ from the seed reference"


@pytest.mark.parametrize("name", sorted(GOLDEN_CROPS))
def test_render_matches_golden_crops(rendered, axionaut_frames, name):
    files = sorted(axionaut_frames.glob("*.jpg"), key=lambda p: int(p.stem[5:]))
    index = [p.name for p in files].index(name)
    ours = cv2.imread(str(rendered / f"{index:06d}.png"))
    rows, cols = GOLDEN_CROPS[name]
    golden = cv2.imread(str(GOLDEN / f"axionaut_{Path(name).stem}.png"))
    assert golden is not None, "golden file missing: run tests/make_golden.py"
    changed, _ = _compare(ours[rows, cols], golden)
    assert changed < 1e-3


def test_race_clip_to_avi_keeps_every_frame(tmp_path, race_clip, axionaut_model_path):
    out = tmp_path / "race.avi"
    code = cli.main(["render", str(race_clip), "-o", str(out), "--quiet", "--max-frames", "45",
                     "--model", str(axionaut_model_path), "--profile", str(PROFILE)])
    assert code == 0
    cap = cv2.VideoCapture(str(out))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(30, abs=0.01)
    n = 0
    while True:
        ok, img = cap.read()
        if not ok:
            break
        assert img.shape == (480, 1800, 3)
        n += 1
    assert n == 45


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    return env


def _carvis(*args, **kw):
    return subprocess.run([sys.executable, "-m", "carvis.cli", *map(str, args)],
                          capture_output=True, text=True, env=_env(), timeout=120, check=False, **kw)


def test_ctrl_c_leaves_a_playable_avi(tmp_path, race_clip, axionaut_model_path):
    out = tmp_path / "interrupted.avi"
    proc = subprocess.Popen(
        [sys.executable, "-m", "carvis.cli", "render", str(race_clip), "-o", str(out),
         "--quiet", "--model", str(axionaut_model_path), "--profile", str(PROFILE)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and (not out.exists() or out.stat().st_size < 2_000_000):
        time.sleep(0.05)
    assert proc.poll() is None, "render finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    written = int(err.split("interrupted: ")[1].split(" frames")[0])
    probe = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
                            "-show_entries", "stream=nb_read_frames,codec_name",
                            "-of", "csv=p=0", str(out)], capture_output=True, text=True, check=False)
    assert probe.returncode == 0, probe.stderr
    codec, frames = probe.stdout.strip().split(",")
    assert codec == "mjpeg" and int(frames) == written > 0


def test_layers_lists_the_real_model(axionaut_model_path, capsys):
    assert cli.main(["layers", str(axionaut_model_path)]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if "convolution2d_" in ln]
    assert len(lines) == 4
    assert "maxpooling2d_2" in out and "(17, 62, 2)" in out and "dense_2" in out


@pytest.mark.parametrize("extra, words", [
    (["--layer", "nope"], ["'nope'", "convolution2d_1"]),
    (["--layer", "dense_1"], ["dense_1", "conv"]),
    (["--layer", "conv:9"], ["conv:9", "4"]),
    (["--channel", "5"], ["channel 5", "2 channels"]),
    (["--colormap", "bogus"], ["bogus", "inferno"]),
    (["--threshold", "400"], ["threshold", "400", "0..255"]),
])
def test_bad_layer_channel_values_are_one_line(extra, words, tmp_path, axionaut_frames,
                                               axionaut_model_path, capsys):
    code = cli.main(["render", str(axionaut_frames), "-o", str(tmp_path / "o"), "--quiet",
                     "--model", str(axionaut_model_path), "--profile", str(PROFILE), *extra])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert err.count("\n") == 0 and err.startswith("carvis: error:"), err
    for w in words:
        assert w in err
    assert not any((tmp_path / "o").glob("*.png")), "nothing is written on bad input"


def test_bad_inputs_exit_non_zero_without_traceback(tmp_path, axionaut_frames,
                                                    axionaut_model_path):
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(os.urandom(4096))
    cases = [
        (["render", axionaut_frames, "-o", tmp_path / "a", "--model", tmp_path / "none.h5"],
         "none.h5"),
        (["render", axionaut_frames, "-o", tmp_path / "b", "--model", corrupt], "corrupt.h5"),
        (["render", tmp_path / "missing.mp4", "-o", tmp_path / "c", "--model",
          axionaut_model_path, "--profile", PROFILE], "missing.mp4"),
        (["render", axionaut_frames, "-o", tmp_path / "no" / "dir" / "x.avi", "--model",
          axionaut_model_path, "--profile", PROFILE], "does not exist"),
    ]
    for args, word in cases:
        r = _carvis(*args)
        assert r.returncode != 0
        assert "Traceback" not in r.stderr
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and word in lines[0], r.stderr
