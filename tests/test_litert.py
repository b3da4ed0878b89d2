"""LiteRT backend, .tflite export and the conversion cache, on the real Axionaut model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO, render_image

from carvis import cli, pipeline
from carvis import profile as prof
from carvis.backends.cache import file_sha256
from carvis.backends.tflite import read_meta
from carvis.errors import CarvisError
from carvis.session import ModelSession

pytest.importorskip("ai_edge_litert", reason="the LiteRT backend needs ai-edge-litert")

PROFILE = REPO / "models" / "axionaut.yaml"


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch) -> Path:
    """A private conversion cache, so no test reads or writes ~/.cache/carvis."""
    path = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("CARVIS_CACHE", str(path))
    return path


@pytest.fixture(scope="module")
def tflite(tmp_path_factory, axionaut_model_path) -> Path:
    """The Axionaut model cut at the profile's layer, exported by `carvis export`."""
    out = tmp_path_factory.mktemp("export") / "axionaut.tflite"
    assert cli.main(["export", str(axionaut_model_path), "--profile", str(PROFILE),
                     "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def frames(axionaut_frames) -> list[np.ndarray]:
    files = sorted(axionaut_frames.glob("*.jpg"), key=lambda p: int(p.stem[5:]))
    return [cv2.imread(str(f)) for f in files]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _python(code: str, **env: str) -> dict:
    """Run code in a fresh interpreter; it prints one JSON line, returned parsed."""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                       env=_env(**env), timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_litert_activations_equal_tensorflow_on_real_frames(axionaut_model_path, tflite, frames):
    profile = prof.load(PROFILE)
    tf_renderer = pipeline.make_renderer(ModelSession(axionaut_model_path, backend="tensorflow"),
                                    profile)
    lite_renderer = pipeline.make_renderer(ModelSession(tflite), profile)
    assert (tf_renderer.maps.state.backend.name, lite_renderer.maps.state.backend.name) == ("tensorflow", "litert")
    worst = 0.0
    for frame in frames:
        batch = tf_renderer.maps.preprocess(tf_renderer.maps.preprocess.roi(frame))
        expected = tf_renderer.maps.state.backend(batch)
        got = lite_renderer.maps.state.backend(batch)
        assert got.shape == expected.shape == (17, 62, 2)
        worst = max(worst, float(np.abs(got - expected).max() / np.abs(expected).max()))
    # float32 convolutions summed in another order: differences at rounding level
    assert worst < 1e-5, f"largest relative difference {worst:.2e}"


def test_tflite_render_equals_tensorflow_render_frame_for_frame(axionaut_model_path, tflite,
                                                                frames):
    profile = prof.load(PROFILE)
    tf_renderer = pipeline.make_renderer(ModelSession(axionaut_model_path, backend="tensorflow"),
                                    profile)
    lite_renderer = pipeline.make_renderer(ModelSession(tflite), profile)
    changed = 0
    total = 0
    for frame in frames[::2]:
        a = render_image(tf_renderer, frame.copy())
        b = render_image(lite_renderer, frame.copy())
        diff = np.abs(a.astype(int) - b.astype(int)).max(axis=-1)
        changed += int((diff > 0).sum())
        total += diff.size
        # the maps themselves agree to one grey level (rounding of a value on a .5 edge)
        na = tf_renderer.composer.overlay.map8(tf_renderer.maps.normalizer(
            tf_renderer.maps.activation(frame)), (1800, 480)).astype(int)
        nb = lite_renderer.composer.overlay.map8(lite_renderer.maps.normalizer(
            lite_renderer.maps.activation(frame)), (1800, 480)).astype(int)
        assert np.abs(na - nb).max() <= 1
    # a pixel differs only where a map value sits on a rounding edge or on the threshold
    assert changed / total < 1e-4, f"{changed} of {total} pixels differ"


def test_tflite_run_imports_neither_tensorflow_nor_keras(tflite, axionaut_frames, tmp_path):
    out = tmp_path / "o.avi"
    code = f"""
import json, sys
from carvis import cli
rc = cli.main(["render", {str(axionaut_frames)!r}, "-o", {str(out)!r}, "-q", "--max-frames",
               "3", "--model", {str(tflite)!r}, "--profile", {str(PROFILE)!r}])
rc2 = cli.main(["layers", {str(tflite)!r}])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
print(json.dumps({{"rc": rc, "rc2": rc2, "heavy": heavy}}))
"""
    result = _python(code)
    assert result == {"rc": 0, "rc2": 0, "heavy": []}


def test_peak_rss_of_a_tflite_render_is_small(tflite, race_clip, tmp_path):
    out = tmp_path / "race.avi"
    code = f"""
import json, sys
from carvis import cli
rc = cli.main(["render", {str(race_clip)!r}, "-o", {str(out)!r}, "-q", "--max-frames", "45",
               "--model", {str(tflite)!r}, "--profile", {str(PROFILE)!r}])
# VmHWM, not ru_maxrss: Linux carries the forking parent's peak (pytest's) over into that
status = open("/proc/self/status").read()
peak_kb = int(status.split("VmHWM:")[1].split()[0])
print(json.dumps({{"rc": rc, "peak_mb": peak_kb / 1024, "tf": "tensorflow" in sys.modules,
                  "schema": "carvis_vendor.tflite_schema" in sys.modules}}))
"""
    result = _python(code)
    assert result["rc"] == 0 and not result["tf"]
    # Reading a .tflite takes the schema's read side only (the whole generated schema costs
    # ~28 MB more at the peak where no bytecode is cached, as in CI).
    assert not result["schema"]
    # Measured 262 MB here, 274 MB at most over 2,000 frames (scripts/memcheck.py): the
    # libraries ~125 MB (OpenCV ~50, PyAV ~22 for the .avi muxer, NumPy, LiteRT, h5py), LiteRT's
    # model and XNNPACK, and at most 3 frames in each queue between the reader, the render and
    # the writer (1920x1080: ~6 MB each). With TensorFlow: ~750 MB.
    assert result["peak_mb"] < 300, f"peak RSS {result['peak_mb']:.0f} MB"


def test_auto_converts_once_then_reuses_the_cache(axionaut_model_path, cache):
    first = ModelSession(axionaut_model_path)  # auto: LiteRT when it is installed
    backend = first.backend("maxpooling2d_2")
    assert (first.backend_name, backend.name, first.conversions) == ("litert", "litert", 1)
    assert first.backend("maxpooling2d_2") is backend  # built once per session
    files = list(cache.glob("*.tflite"))
    assert len(files) == 1 and files[0].name.startswith(file_sha256(
        axionaut_model_path)[:24])
    again = ModelSession(axionaut_model_path)
    again.backend("maxpooling2d_2")
    assert again.conversions == 0
    # a fresh process finds it too, and then needs neither TensorFlow nor Keras
    code = f"""
import json, sys
from carvis.session import ModelSession
s = ModelSession({str(axionaut_model_path)!r})
b = s.backend("maxpooling2d_2")
print(json.dumps({{"conversions": s.conversions, "layer": b.layer_name,
                  "tf": "tensorflow" in sys.modules or "keras" in sys.modules}}))
"""
    result = _python(code, CARVIS_CACHE=str(cache))
    assert result == {"conversions": 0, "layer": "maxpooling2d_2", "tf": False}
    assert list(cache.glob("*.tflite")) == files


def test_cache_is_keyed_by_model_content(axionaut_model_path, cache, tmp_path):
    copy = tmp_path / "copy.hdf5"
    copy.write_bytes(axionaut_model_path.read_bytes())
    ModelSession(axionaut_model_path).backend("conv:1")
    same = ModelSession(copy)
    same.backend("conv:1")
    assert same.conversions == 0  # same content under another name: reused


def test_tflite_metadata_names_the_layer(tflite, capsys):
    meta = read_meta(tflite.read_bytes())
    assert meta is not None
    assert (meta.layer, meta.layer_index, meta.conv, meta.output_shape, meta.input_shape) == (
        "maxpooling2d_2", 5, None, (17, 62, 2), (70, 250, 3))
    assert meta.conv_layers[:2] == ("convolution2d_1", "convolution2d_2")
    assert cli.main(["layers", str(tflite)]) == 0
    out = capsys.readouterr().out
    assert "maxpooling2d_2" in out and "(17, 62, 2)" in out and "autopilot.hdf5" in out


@pytest.mark.parametrize("spec, ok", [("maxpooling2d_2", True), ("5", True), ("-13", True),
                                      ("conv:2", False), ("convolution2d_1", False)])
def test_a_tflite_shows_only_its_own_layer(tflite, spec, ok):
    session = ModelSession(tflite)
    if ok:
        assert session.backend(spec).layer_name == "maxpooling2d_2"
    else:
        with pytest.raises(CarvisError, match=r"holds one layer.*'maxpooling2d_2'.*carvis "
                                              r"export MODEL --layer"):
            session.backend(spec)


def test_channel_picks_among_the_tflite_outputs(tflite, frames):
    renderer = pipeline.make_renderer(ModelSession(tflite), prof.load(PROFILE))
    assert renderer.maps.channels == 2
    renderer.apply({"channel": "max"})
    assert renderer.maps.activation(frames[0]).shape == (17, 62)
    with pytest.raises(CarvisError, match="channel 2 is out of range"):
        renderer.apply({"channel": 2})


def test_bad_backend_choices_are_one_line(tflite, tmp_path, axionaut_model_path):
    with pytest.raises(CarvisError, match="runs on LiteRT only"):
        ModelSession(tflite, backend="tensorflow")
    with pytest.raises(CarvisError, match="not one of auto, tensorflow, litert"):
        ModelSession(axionaut_model_path, backend="onnx")
    bogus = tmp_path / "bogus.tflite"
    bogus.write_bytes(os.urandom(256))
    with pytest.raises(CarvisError, match="not a TFLite model"):
        ModelSession(bogus)


def test_export_needs_a_layer_and_a_tflite_name(axionaut_model_path, tmp_path, capsys):
    assert cli.main(["export", str(axionaut_model_path), "-o", str(tmp_path / "a.tflite")]) == 2
    assert "--layer" in capsys.readouterr().err
    assert cli.main(["export", str(axionaut_model_path), "--layer", "conv:1",
                     "-o", str(tmp_path / "a.onnx")]) == 2
    assert "must end in .tflite" in capsys.readouterr().err
    assert cli.main(["export", str(axionaut_model_path), "--layer", "dense_1",
                     "-o", str(tmp_path / "a.tflite")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dense_1" in err and "conv:1" in err
    assert not (tmp_path / "a.tflite").exists()


def test_without_tensorflow_a_keras_model_fails_in_one_line(axionaut_model_path,
                                                           axionaut_frames, tmp_path):
    code = f"""
import json, sys
sys.modules["tensorflow"] = None  # as on a Pi with only ai-edge-litert
sys.modules["keras"] = None
from carvis import cli
rc = cli.main(["export", {str(axionaut_model_path)!r}, "--layer", "conv:1", "-o",
               {str(tmp_path / "x.tflite")!r}])
rc2 = cli.main(["render", {str(axionaut_frames)!r}, "-o", {str(tmp_path / "o.avi")!r},
                "--model", {str(axionaut_model_path)!r}, "-q"])
print(json.dumps({{"rc": rc, "rc2": rc2}}))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                       env=_env(CARVIS_CACHE=str(tmp_path / "cache")), timeout=120, cwd=REPO)
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"rc": 2, "rc2": 2}, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 2, r.stderr
    assert all(ln.startswith("carvis: error:") and ".tflite" in ln for ln in lines), r.stderr


def test_the_shipped_schema_reader_is_the_installed_schemas_read_side():
    """carvis_vendor/tflite_reader.py is what scripts/vendor_tflite_schema.py derives from the
    installed ai-edge-litert's generated schema: reader classes only, the same text."""
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "vendor_tflite_schema.py"),
                           "--check"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    from carvis_vendor import tflite_reader
    assert hasattr(tflite_reader, "Model") and not hasattr(tflite_reader, "ModelT")
