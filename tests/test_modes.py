"""Modes in the pipeline: profile keys, the Renderer (activation unchanged, HUD, grid, compare,
VisualBackProp on LiteRT), the CLI flags, `carvis inspect`, and the live settings."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import cv2
import fakes
import numpy as np
import pytest
import seed_reference
from conftest import REPO, render_image

from carvis import cli, explain, live, pipeline, settings, views
from carvis import hud as hud_module
from carvis import profile as prof
from carvis.backends import litert_available
from carvis.backends.litert import LiteRTModel
from carvis.backends.tflite import FORMAT
from carvis.errors import CarvisError
from carvis.kinds import keras_litert as session_module
from carvis.session import ModelSession
from carvis.sinks import Sink

PROFILE = REPO / "models" / "axionaut.yaml"


# --------------------------------------------------------------------------- profile


def test_profile_mode_keys_default_and_round_trip():
    p = prof.generic()
    assert (p.mode, p.target, p.smoothgrad, p.view, p.hud, p.compare) == (
        "activation", "predicted", None, "overlay", False, False)
    q = p.replace(mode="vbp", target="left", smoothgrad="16,0.2", view="grid", hud=True,
                  compare=True)
    assert (q.mode, q.target, q.smoothgrad, q.view, q.hud, q.compare) == (
        "vbp", "left", (16, 0.2), "grid", True, True)
    again = prof.parse(q.to_dict(), source="x")
    assert again.to_dict() == q.to_dict()


@pytest.mark.parametrize("changes,message", [
    ({"mode": "lime"}, "mode = 'lime' is not valid; choose one of: activation, vbp"),
    ({"view": "tiles"}, "view = 'tiles' is not valid; choose one of: overlay, grid"),
    ({"hud": "yes"}, "hud = 'yes' is not valid; expected true or false"),
    ({"compare": 1}, "compare = 1 is not valid; expected true or false"),
    ({"target": "up"}, "target = 'up' is not valid; choose one of: predicted, left"),
    ({"smoothgrad": [4]}, "smoothgrad = [4] is not valid; expected [N, SIGMA]"),
    ({"smoothgrad": [4, 2.0]}, "smoothgrad = [4, 2.0] is not valid"),
    ({"smoothgrad": [2.5, 0.1]}, "smoothgrad = [2.5, 0.1] is not valid"),
])
def test_bad_mode_keys_are_one_line_with_the_key(changes, message):
    with pytest.raises(CarvisError, match=re.escape(message)) as info:
        prof.parse(changes, source="car.yaml")
    assert str(info.value).startswith("car.yaml: ") and "\n" not in str(info.value)


# --------------------------------------------------------------------------- renderer


@pytest.fixture(scope="module")
def tf_session(axionaut_model_path):
    return ModelSession(axionaut_model_path, backend="tensorflow")


@pytest.fixture(scope="module")
def axionaut_profile():
    return prof.load(PROFILE)


@pytest.fixture(scope="module")
def frame(axionaut_frames):
    return cv2.imread(str(axionaut_frames / "frame3556.jpg"))


def test_activation_mode_has_no_explainer_and_the_hud_changes_only_its_panel(
        tf_session, axionaut_profile, frame, axionaut_model_path):
    plain = pipeline.make_renderer(tf_session, axionaut_profile)
    assert plain.maps.state.explainer is None  # today's path: the layer's backend alone
    hud = pipeline.make_renderer(tf_session, axionaut_profile.replace(hud=True))
    a = render_image(plain, frame.copy()).copy()
    b = render_image(hud, frame.copy()).copy()
    weights = seed_reference.load_weights(axionaut_model_path)
    x = seed_reference.preprocess(frame).astype(np.float32)
    np.testing.assert_allclose(hud.last_map.prediction, seed_reference.predict(weights, x), atol=1e-5)
    # The HUD is a panel below the picture: the picture itself is the same pixels.
    panel = hud_module.panel_layout(a.shape, bins=True)
    assert b.shape == (a.shape[0] + panel.height, a.shape[1], 3)
    np.testing.assert_array_equal(b[:a.shape[0]], a)
    assert (b[a.shape[0]:] != views.HUD_PANEL).any()


def test_vbp_mode_overlays_the_vbp_map(tf_session, axionaut_profile, frame):
    from carvis import overlay as ov

    renderer = pipeline.make_renderer(tf_session, axionaut_profile.replace(mode="vbp"))
    out = render_image(renderer, frame.copy())
    roi = frame[600:1080, :1800]
    x = seed_reference.preprocess(frame).astype(np.float32)[None]
    amap = explain.make_explainer("vbp", tf_session.model)(x).map
    expected = ov.overlay(roi, amap, axionaut_profile.threshold, axionaut_profile.colormap)
    assert out.shape == expected.shape
    assert np.mean(np.any(out != expected, axis=-1)) < 1e-3


def test_grid_view_and_compare(tf_session, axionaut_profile, frame):
    grid = pipeline.make_renderer(tf_session, axionaut_profile.replace(view="grid"))
    out = render_image(grid, frame.copy())
    act = grid.maps.state.backend(grid.maps.preprocess(grid.maps.preprocess.roi(frame)))
    expected = views.feature_grid(act, "inferno", title="maxpooling2d_2 (17, 62, 2)")
    np.testing.assert_array_equal(out, expected)
    side = pipeline.make_renderer(tf_session, axionaut_profile.replace(compare=True))
    out = render_image(side, frame.copy())
    assert out.shape == (480, 1800 + 4 + 1800, 3)
    raw = frame[600:1080, :1800]
    assert (out[40:, :1800] == raw[40:]).all(), "left: the raw frame (label at the top)"
    assert (out[:, 1804:] != raw).any(axis=-1).mean() > 0.02, "right: the overlay"


@pytest.mark.parametrize("mode,extra", [
    ("saliency", {}), ("guided", {"target": "left"}), ("gradcam", {"target": "right"}),
    ("guided-gradcam", {"target": "right"}), ("saliency", {"smoothgrad": (3, 0.1)})])
def test_gradient_modes_on_litert_equal_tensorflow_from_one_cached_invoke(
        mode, extra, axionaut_model_path, axionaut_profile, frame, tmp_path, monkeypatch):
    """A gradient mode on LiteRT: its whole graph (outputs, prediction, gradients through
    built-in ops) converted once and cached; the map and prediction are TensorFlow's."""
    if not litert_available():
        pytest.skip("ai-edge-litert is not installed")
    monkeypatch.setenv("CARVIS_CACHE", str(tmp_path))
    profile = axionaut_profile.replace(mode=mode, **extra)
    lite = pipeline.make_renderer(ModelSession(axionaut_model_path, backend="litert"), profile)
    explainer = lite.maps.state.explainer
    assert (explainer.mode, explainer.backend) == (mode, "litert")
    assert isinstance(explainer._forward, LiteRTModel)
    assert len(list(tmp_path.glob(f"*-outputs-*-f{FORMAT}.tflite"))) == 1, "one graph, cached"
    tf = pipeline.make_renderer(ModelSession(axionaut_model_path, backend="tensorflow"),
                                profile)
    assert tf.maps.state.explainer.backend == "tensorflow"
    batch = lite.maps.preprocess(lite.maps.preprocess.roi(frame)).copy()
    a, b = explainer(batch), tf.maps.state.explainer(batch)  # SmoothGrad: the same noise
    assert b.map.max() > 0, "a map that is not all zeros"
    np.testing.assert_allclose(a.map, b.map, rtol=1e-4, atol=1e-4 * b.map.max())
    np.testing.assert_allclose(a.prediction, b.prediction, atol=1e-5)
    again = ModelSession(axionaut_model_path, backend="litert")
    pipeline.make_renderer(again, profile)
    assert again.conversions == 0, "a later run converts nothing"


def test_gradient_modes_on_litert_need_no_tensorflow_once_cached(axionaut_model_path,
                                                                  axionaut_profile, tmp_path):
    """The car's case: a cached gradient graph runs in a process that cannot import
    TensorFlow or Keras (saliency's start was TensorFlow's ~4 s import)."""
    if not litert_available():
        pytest.skip("ai-edge-litert is not installed")
    cache = tmp_path / "cache"
    code = f"""
import json, sys
from carvis import pipeline, profile
from carvis.session import ModelSession
p = profile.load({str(REPO / "models" / "axionaut.yaml")!r}).replace(mode="saliency",
                                                                   target="left")
r = pipeline.make_renderer(ModelSession({str(axionaut_model_path)!r}, backend="litert"), p)
import numpy as np
m = r.maps.state.explainer(np.full((1, 70, 250, 3), 100, np.float32)).map
print(json.dumps({{"tf": "tensorflow" in sys.modules or "keras" in sys.modules,
                  "backend": r.maps.state.explainer.backend, "max": float(m.max())}}))
"""
    env = {**os.environ, "CARVIS_CACHE": str(cache)}
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=env, timeout=300, check=True)
    assert json.loads(first.stdout.splitlines()[-1])["tf"], "the first run converts with TF"
    blocked = str(tmp_path / "blocked")
    os.makedirs(blocked)
    for name in ("tensorflow", "keras"):  # an import of either fails
        with open(os.path.join(blocked, f"{name}.py"), "w") as fh:
            fh.write("raise ImportError('blocked by the test')\n")
    env["PYTHONPATH"] = os.pathsep.join([blocked, str(REPO)])
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=300, check=False)
    assert second.returncode == 0, second.stderr[-2000:]
    result = json.loads(second.stdout.splitlines()[-1])
    assert result["backend"] == "litert" and result["max"] > 0
    assert result["max"] == json.loads(first.stdout.splitlines()[-1])["max"]


def test_gradient_modes_on_auto_run_on_litert(axionaut_model_path, axionaut_profile, frame):
    session = ModelSession(axionaut_model_path, backend="auto")
    renderer = pipeline.make_renderer(session, axionaut_profile.replace(mode="guided",
                                                                   target="left"))
    out = render_image(renderer, frame.copy())
    assert out.shape == (480, 1800, 3) and renderer.last_map.prediction.shape == (5,)
    assert renderer.maps.state.explainer.mode == "guided"
    assert renderer.maps.state.explainer.backend == (
        "litert" if litert_available() else "tensorflow"), "auto: LiteRT where it is installed"


def test_vbp_on_litert_matches_tensorflow(axionaut_model_path, axionaut_profile, frame,
                                          tmp_path, monkeypatch):
    if not litert_available():
        pytest.skip("ai-edge-litert is not installed")
    monkeypatch.setenv("CARVIS_CACHE", str(tmp_path))
    lite = pipeline.make_renderer(ModelSession(axionaut_model_path, backend="litert"),
                             axionaut_profile.replace(mode="vbp"))
    assert isinstance(lite.maps.state.explainer._forward, LiteRTModel)
    assert lite.maps.state.explainer.backend == "litert"
    assert lite.maps.session.conversions == 2, "the profile's layer and vbp's outputs, once each"
    assert len(list(tmp_path.glob("*-outputs-*.tflite"))) == 1, "cached"
    tf = pipeline.make_renderer(ModelSession(axionaut_model_path, backend="tensorflow"),
                           axionaut_profile.replace(mode="vbp"))
    batch = lite.maps.preprocess(lite.maps.preprocess.roi(frame)).copy()
    a, b = lite.maps.state.explainer(batch), tf.maps.state.explainer(batch)
    np.testing.assert_allclose(a.map, b.map, rtol=1e-4, atol=1e-5 * b.map.max())
    np.testing.assert_allclose(a.prediction, b.prediction, atol=1e-5)
    from carvis.backends import convert

    def no_conversion(*args, **kwargs):
        raise AssertionError("the cached several-output .tflite is used, not converted again")

    monkeypatch.setattr(convert, "convert", no_conversion)
    monkeypatch.setattr(session_module, "convert", no_conversion)
    again = pipeline.make_renderer(ModelSession(axionaut_model_path, backend="litert"),
                              axionaut_profile.replace(mode="vbp"))
    np.testing.assert_allclose(again.maps.state.explainer(batch).map, a.map)


def test_a_tflite_model_refuses_modes_that_need_other_layers(tmp_path, axionaut_model_path,
                                                             axionaut_profile):
    if not litert_available():
        pytest.skip("ai-edge-litert is not installed")
    from carvis.backends.convert import export

    out = tmp_path / "pool2.tflite"
    export(axionaut_model_path, "maxpooling2d_2", out)
    session = ModelSession(out)
    with pytest.raises(CarvisError, match="mode 'vbp' needs the Keras model"):
        pipeline.make_renderer(session, axionaut_profile.replace(mode="vbp"))
    pipeline.make_renderer(session, axionaut_profile)  # activation works as before


# --------------------------------------------------------------------------- CLI


def test_cli_render_modes_with_hud_and_compare(tmp_path, race_clip, axionaut_model_path):
    out = tmp_path / "vbp"
    code = cli.main(["render", str(race_clip), "-o", str(out), "--quiet", "--max-frames", "3",
                     "--model", str(axionaut_model_path), "--profile", str(PROFILE),
                     "--mode", "vbp", "--hud", "--compare", "--backend", "tensorflow"])
    assert code == 0
    files = sorted(out.glob("*.png"))
    assert len(files) == 3
    panel = hud_module.panel_layout((480, 3604, 3), bins=True)
    assert cv2.imread(str(files[0])).shape == (480 + panel.height, 3604, 3)
    out = tmp_path / "sal"
    code = cli.main(["render", str(race_clip), "-o", str(out), "--quiet", "--max-frames", "2",
                     "--model", str(axionaut_model_path), "--profile", str(PROFILE),
                     "--mode", "saliency", "--target", "right", "--smoothgrad", "4,0.1"])
    assert code == 0 and len(list(out.glob("*.png"))) == 2


@pytest.mark.parametrize("flags,message", [
    (["--smoothgrad", "many"], "smoothgrad 'many' is not valid"),
    (["--target", "upwards"], "target 'upwards' is not valid"),
    (["--mode", "cam"], "cam needs a head GlobalAveragePooling2D"),
    (["--mode", "gradcam", "--target", "straight", "--model", "{regression}"],
     "target 'straight' needs steering bins"),
])
def test_cli_bad_mode_flags_are_one_line(tmp_path, capfd, axionaut_model_path, axionaut_frames,
                                        flags, message):
    if "{regression}" in flags:
        flags[flags.index("{regression}")] = str(_regression_model(tmp_path))
        profile = []
    else:
        flags = flags + ["--model", str(axionaut_model_path)]
        profile = ["--profile", str(PROFILE)]
    code = cli.main(["render", str(axionaut_frames), "-o", str(tmp_path / "o"), "--quiet",
                     *profile, "--backend", "tensorflow", *flags])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("carvis: error: ") and message in err[-1]


def _regression_model(tmp_path):
    import keras

    x_in = keras.Input((24, 32, 3))
    x = keras.layers.Conv2D(2, 3, activation="relu")(x_in)
    x = keras.layers.Conv2D(2, 3, activation="relu")(x)
    out = keras.layers.Dense(1, name="angle")(keras.layers.Flatten()(x))
    path = tmp_path / "reg.keras"
    keras.Model(x_in, out).save(path)
    return path


def test_cli_inspect_writes_the_grid_and_the_filters(tmp_path, axionaut_model_path,
                                                     axionaut_frames, tf_session,
                                                     axionaut_profile):
    from carvis import inspection

    out = tmp_path / "grid.png"
    frame_path = axionaut_frames / "frame3556.jpg"
    code = cli.main(["inspect", str(axionaut_model_path), str(frame_path), "-o", str(out),
                     "--profile", str(PROFILE), "--layer", "conv:3"])
    assert code == 0
    img = cv2.imread(str(out))
    profile = axionaut_profile.replace(layer="conv:3")
    expected = inspection.inspect_frame(tf_session, cv2.imread(str(frame_path)), profile)
    np.testing.assert_array_equal(img, expected)
    act = tf_session.backend("conv:3")
    grid = views.feature_grid(act(tf_session_batch(tf_session, profile, frame_path)),
                              title="convolution2d_3 (17, 62, 4)")
    np.testing.assert_array_equal(img[:grid.shape[0], :grid.shape[1]], grid)
    assert img.shape[0] > grid.shape[0] + 40, "the filters are below the grid"


def tf_session_batch(session, profile, frame_path):
    from carvis.preprocess import Preprocessor

    pre = Preprocessor(profile, (250, 70), 3)
    frame = cv2.imread(str(frame_path))
    return pre(pre.roi(frame))


def test_cli_inspect_bad_frame_is_one_line(tmp_path, capfd, axionaut_model_path):
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"not a jpeg")
    code = cli.main(["inspect", str(axionaut_model_path), str(bad), "-o",
                     str(tmp_path / "g.png")])
    assert code == 2
    assert "x.jpg: cannot read this image: not a JPEG (no start marker)" in capfd.readouterr().err


# --------------------------------------------------------------------------- live settings


class _ListSink(Sink):
    def __init__(self) -> None:
        self.images: list[np.ndarray] = []

    def write(self, image: np.ndarray) -> None:
        self.images.append(image)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("changes,message", [
    ({"mode": "lime"}, "mode 'lime' is not valid; choose one of"),
    ({"view": "tiles"}, "view 'tiles' is not valid"),
    ({"hud": "on"}, "hud 'on' is not valid; expected true or false"),
    ({"target": 3}, "target 3 is not valid"),
])
def test_bad_mode_settings_are_refused(changes, message):
    with pytest.raises(CarvisError, match=re.escape(message)):
        settings.validate(changes)


@pytest.mark.slow
def test_live_settings_switch_mode_view_hud_and_compare(tf_session, axionaut_profile, frame):
    from carvis.sinks.threaded import SinkWorker

    source = fakes.StillSource(frame, fps=30)
    renderer = pipeline.make_renderer(tf_session, axionaut_profile)
    sink = _ListSink()
    runner = live.build(source, renderer, live.LiveOptions(),
                        sinks={"list": SinkWorker(sink, "list")})
    runner.start()
    try:
        fakes.wait_until(lambda: runner.processed >= 2, what="first frames")
        now = runner.controls.change({"mode": "vbp", "hud": True})
        assert (now["mode"], now["hud"]) == ("vbp", True)
        assert "vbp" in now["choices"]["modes"] and now["choices"]["views"] == ["overlay", "grid"]
        with pytest.raises(CarvisError, match="cam needs a head"):
            runner.controls.change({"mode": "cam"})
        assert runner.controls.settings()["mode"] == "vbp"
        now = runner.controls.change({"mode": "gradcam", "target": "left", "compare": True})
        assert (now["mode"], now["target"], now["compare"]) == ("gradcam", "left", True)
        done = runner.processed
        fakes.wait_until(lambda: runner.processed > done + 2, what="frames after the change")
        fakes.wait_until(lambda: sink.images and sink.images[-1].shape[1] == 3604,
                         what="side-by-side frames")
        runner.controls.change({"view": "grid", "compare": False})
        fakes.wait_until(lambda: sink.images[-1].shape[1] < 1000, what="grid frames")
    finally:
        runner.stop()
        source.close()
    runner.join(5)
