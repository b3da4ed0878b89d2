"""Every message true (issue 14): the exact line, where the value came from, the exit code."""

from __future__ import annotations

import re

import pytest
from conftest import REPO

from carvis import cli


def _run(capsys, *argv: str) -> tuple[int, list[str]]:
    code = cli.main(list(argv))
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    return code, err


@pytest.mark.parametrize("flags, line", [
    (["--threshold", "300"], "carvis: error: --threshold 300 is not valid; allowed range 0..255"),
    (["--colormap", "nosuch"], ("carvis: error: --colormap 'nosuch' is not valid; choose one of: "
                               "autumn, bone")),
    (["--channel", "avg"], ("carvis: error: --channel 'avg' is not valid; give an index, 'mean' "
                           "or 'max'")),
])
def test_a_bad_flag_is_blamed_on_the_flag_not_the_profile(tmp_path, capsys, flags, line):
    code, err = _run(capsys, "render", "synthetic:frames=2", "-o", str(tmp_path / "o.avi"),
                     "--profile", str(REPO / "models" / "axionaut.yaml"), *flags)
    assert code == 2 and len(err) == 1 and err[0].startswith(line), err
    assert "axionaut.yaml" not in err[0]


def test_a_bad_profile_value_is_blamed_on_the_file(tmp_path, capsys):
    profile = tmp_path / "car.yaml"
    profile.write_text("threshold: 300\n")
    code, err = _run(capsys, "render", "synthetic:frames=2", "-o", str(tmp_path / "o.avi"),
                     "--profile", str(profile))
    assert code == 2 and err == [(f"carvis: error: {profile}: threshold = 300 is not valid; "
                                 "allowed range 0..255")]


@pytest.fixture(scope="module")
def keras3_lambda(tmp_path_factory):
    """A Keras 3 model with a Python Lambda, saved as .h5 and as .keras."""
    keras = pytest.importorskip("keras")
    inp = keras.Input((32, 48, 3))
    x = keras.layers.Lambda(lambda t: t / 127.5 - 1.0, name="norm")(inp)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="c1")(x)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu", name="c2")(x)
    out = keras.layers.Dense(1, name="angle")(keras.layers.Flatten()(x))
    model = keras.Model(inp, out)
    folder = tmp_path_factory.mktemp("lambda")
    model.save(folder / "pilot.h5")
    model.save(folder / "pilot.keras")
    return folder


@pytest.mark.parametrize("name", ["pilot.h5", "pilot.keras"])
def test_a_keras3_lambda_is_named_in_a_whole_sentence(keras3_lambda, tmp_path, capsys, name):
    model = keras3_lambda / name
    code, err = _run(capsys, "render", "synthetic:frames=2", "-o", str(tmp_path / "o.avi"),
                     "--model", str(model), "--backend", "tensorflow")
    assert code == 2 and len(err) == 1, err
    assert err[0] == (f"carvis: error: {model}: layer 'norm' is a Lambda (Python code stored in "
                      "the file) that carvis will not run; pass --lambda identity to treat it as "
                      "identity and do its scaling in the profile (preprocess.scale/offset), or "
                      "re-save the model without it")


@pytest.mark.parametrize("name", ["pilot.h5", "pilot.keras"])
def test_lambda_identity_runs_a_keras3_file(keras3_lambda, tmp_path, capsys, name):
    model = keras3_lambda / name
    out = tmp_path / "o.avi"
    code, err = _run(capsys, "render", "synthetic:frames=2,size=96x64", "-o", str(out),
                     "--model", str(model), "--lambda", "identity", "--backend", "tensorflow",
                     "--quiet")
    assert code == 0 and out.stat().st_size > 0, err
    assert err == [(f"carvis: warning: {model}: Lambda layer(s) 'norm' replaced by identity "
                   "(--lambda identity); do their scaling in the profile "
                   "(preprocess.scale/offset)")]


def test_readme_troubleshooting_quotes_the_real_message(tmp_path, capsys):
    code, err = _run(capsys, "render", "synthetic:frames=2", "-o", str(tmp_path / "o.avi"),
                     "--layer", "nosuchlayer")
    assert code == 2 and len(err) == 1
    quoted = re.search(r"\*\*`(no layer named 'x' in model)", (REPO / "README.md").read_text())
    assert quoted, "the README's troubleshooting quotes the message"
    assert err[0].startswith("carvis: error: " + quoted.group(1).replace("'x'", "'nosuchlayer'"))


def test_a_flat_map_is_said_once_with_the_numbers(axionaut_model_path, race_clip, tmp_path,
                                                  capsys):
    # The Axionaut net was trained on raw 0..255 pixels; the generic profile feeds it 0..1.
    code, err = _run(capsys, "render", str(race_clip), "-o", str(tmp_path / "o.avi"),
                     "--model", str(axionaut_model_path), "--max-frames", "12", "--quiet")
    flat = [ln for ln in err if "is flat" in ln]
    assert code == 0 and len(flat) == 1, err
    assert flat[0].startswith("carvis: warning: the map of activation on layer "
                              "'convolution2d_2', channel mean is flat on the first 8 frames "
                              "(every value 0) with model input in 0.")
    assert "preprocess scale 0.00392157" in flat[0] and "scale: 1.0" in flat[0]
    code, err = _run(capsys, "render", str(race_clip), "-o", str(tmp_path / "p.avi"),
                     "--model", str(axionaut_model_path), "--profile",
                     str(REPO / "models" / "axionaut.yaml"), "--max-frames", "12", "--quiet")
    assert code == 0 and not [ln for ln in err if "is flat" in ln], err


def test_server_header_and_stats_latency_say_what_they_are():
    import json
    import urllib.request

    from carvis import __version__
    from carvis.sinks.mjpeg import MjpegServer

    class Controls:
        def settings(self):
            return {}

        def change(self, changes):
            return {}

    stats = {"latency_ms": {"from": "capture", "to": "JPEG-encoded for the stream"}}
    server = MjpegServer("127.0.0.1", 0, Controls(), stats=lambda: stats).start()
    try:
        with urllib.request.urlopen(server.url + "stats", timeout=5) as resp:
            assert resp.headers["Server"] == f"carvis/{__version__}"
            assert json.load(resp)["latency_ms"]["from"] == "capture"
    finally:
        server.close()


def test_live_stats_latency_runs_from_capture_to_the_sink():
    from carvis.live.stats import LATENCY_TO

    assert LATENCY_TO["mjpeg"] == "JPEG-encoded for the stream"
    readme = (REPO / "README.md").read_text()
    assert "latency p50/p99 capture→JPEG-encoded" in readme


def test_picamera2_abi_mismatch_is_one_line_with_the_fix():
    from carvis.sources.camera import picamera_import_error

    line = picamera_import_error(ValueError("numpy.dtype size changed, may indicate binary "
                                            "incompatibility. Expected 96 from C header, got 88"))
    assert "\n" not in line and line.startswith("picamera2 cannot be imported (numpy.dtype size")
    assert "uninstall -y numpy" in line and "constraints/pi-" in line
    missing = picamera_import_error(ImportError("No module named 'picamera2'"))
    assert "sudo apt install -y python3-picamera2" in missing


def test_inspect_refuses_a_bad_output_before_loading_the_model(tmp_path, capsys, monkeypatch):
    from carvis import session

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before -o was checked")

    monkeypatch.setattr(session.ModelSession, "__init__", no_model)
    code, err = _run(capsys, "inspect", str(REPO / "models" / "default.keras"),
                     str(REPO / "models" / "default.yaml"), "-o", str(tmp_path / "grid.gif"))
    assert code == 2 and err == [(f"carvis: error: output '{tmp_path / 'grid.gif'}' must end in "
                                 ".png or .jpg")]


def test_inspect_on_a_tflite_says_why_there_are_no_filters(axionaut_frames, tmp_path, capsys):
    frame = min(axionaut_frames.glob("*.jpg"))
    code, err = _run(capsys, "inspect", str(REPO / "models" / "default.tflite"), str(frame),
                     "-o", str(tmp_path / "g.png"))
    # the generic profile squeezes a 16:9 frame into the 250x70 input, and says so
    assert code == 0 and err[0] == ("carvis: note: frames are 1920x1080, the model takes "
                                    "250x70: each is squeezed to fit (a DonkeyCar car: give "
                                    "its --config; another: a profile's input_size and crop)")
    assert err[1].startswith("carvis: no filters below the grid: a .tflite")


def test_run_fps_on_a_file_source_is_said_not_ignored(tmp_path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "carvis.cli", "run", "--source", "synthetic:frames=15",
           "--fps", "10", "--size", "320x240", "--record", str(tmp_path / "r.mkv"),
           "--model", str(REPO / "models" / "default.tflite"), "--profile",
           str(REPO / "models" / "default.yaml")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert ("carvis: warning: --size/--fps set a camera; synthetic:0 plays at its own size and "
            "30 fps") in r.stderr.splitlines()


def test_one_frame_is_one_frame(tmp_path, capsys):
    code, err = _run(capsys, "render", "synthetic:frames=1,size=320x240", "-o",
                     str(tmp_path / "one.avi"))
    assert code == 0 and f"carvis: 1 frame written to {tmp_path / 'one.avi'}" in err


def test_skipped_images_are_named_and_the_numbering_said(tmp_path, capsys):
    import cv2
    import numpy as np

    folder = tmp_path / "frames"
    folder.mkdir()
    for n in range(3):
        cv2.imwrite(str(folder / f"f{n}.png"), np.full((48, 64, 3), 60 * n, np.uint8))
    (folder / "f1.png").write_bytes(b"not an image")
    code, err = _run(capsys, "render", str(folder), "-o", str(tmp_path / "out"), "--quiet")
    assert code == 0
    assert ("carvis: warning: skipped 1 unreadable image (f1.png); the output has one frame per "
            "image read, numbered in order without them") in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["000000.png", "000001.png"]


def test_start_up_line_says_which_backend_ran_and_the_conversion(axionaut_model_path, tmp_path,
                                                                 capsys, monkeypatch):
    monkeypatch.setenv("CARVIS_CACHE", str(tmp_path / "cache"))
    base = ["render", "synthetic:frames=1", "-o", str(tmp_path / "o.avi"), "--model",
            str(axionaut_model_path), "--layer", "conv:1"]
    lines = []
    for extra in (["--backend", "litert"], ["--backend", "litert"], ["--backend", "tensorflow"]):
        code, err = _run(capsys, *base, *extra)
        assert code == 0, err
        lines.append(next(ln for ln in err if ln.startswith("carvis: model ")))
    made, reused, tf = lines
    assert made.startswith("carvis: model autopilot.hdf5 on LiteRT, layer 'convolution2d_1'; "
                           f"converted to .tflite once, kept in {tmp_path / 'cache'}")
    assert reused.startswith("carvis: model autopilot.hdf5 on LiteRT, layer 'convolution2d_1'; "
                             f"using the conversion cached in {tmp_path / 'cache'}")
    assert tf == "carvis: model autopilot.hdf5 on TensorFlow, layer 'convolution2d_1'"
    code, err = _run(capsys, "render", "synthetic:frames=1", "-o", str(tmp_path / "t.avi"),
                     "--model", str(REPO / "models" / "default.tflite"), "--profile",
                     str(REPO / "models" / "default.yaml"))
    assert "carvis: model default.tflite on LiteRT, layer 'conv2'" in err
    code, err = _run(capsys, *base, "--quiet")
    assert not [ln for ln in err if ln.startswith("carvis: model ")]


def test_a_mode_on_a_one_layer_tflite_does_not_talk_of_the_hud(axionaut_model_path, tmp_path,
                                                                capsys):
    one = tmp_path / "pool2.tflite"
    assert _run(capsys, "export", str(axionaut_model_path), "--layer", "maxpooling2d_2", "-o",
                str(one))[0] == 0
    for mode in ("vbp", "gradcam"):
        code, err = _run(capsys, "render", "synthetic:frames=1", "-o", str(tmp_path / "o.avi"),
                         "--model", str(one), "--layer", "maxpooling2d_2", "--mode", mode)
        assert code == 2 and len(err) == 1 and f"mode '{mode}' needs" in err[0], err
        assert "HUD" not in err[0]


def test_a_corrupt_video_is_one_line_without_ffmpegs_own(tmp_path):
    import subprocess
    import sys

    junk = tmp_path / "race.mp4"
    junk.write_bytes(b"not a video at all")
    r = subprocess.run([sys.executable, "-m", "carvis.cli", "render", str(junk), "-o",
                        str(tmp_path / "o.mp4"), "--quiet"], capture_output=True, text=True,
                       timeout=120, check=False)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"carvis: error: source '{junk}' cannot be read as a video")
