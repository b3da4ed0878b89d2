"""The car without TensorFlow: a .tflite from `carvis export` (several layers, the HUD, vbp, cam)
and a car's own converter-built .tflite (DonkeyCar linear and categorical, PilotNet) render,
with TensorFlow blocked, what the TensorFlow backend renders from the Keras model."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO, render_image

pytest.importorskip("ai_edge_litert", reason="the LiteRT backend needs ai-edge-litert")
pytest.importorskip("tf_keras", reason="the car models are built with Keras 2 (tf-keras)")

import model_factory

from carvis import cli, models, pipeline
from carvis import profile as prof
from carvis.backends import flatgraph
from carvis.backends.tflite import LayerMeta, read_meta, with_metadata
from carvis.errors import CarvisError
from carvis.session import ModelSession

PROFILE = REPO / "models" / "axionaut.yaml"
# What each file is rendered with: (name, profile changes); every one against TensorFlow.
EXPORT_JOBS = [("conv1", {"layer": "conv:1", "channel": "mean"}), ("pool2-hud", {"layer": "maxpooling2d_2",
                                                               "hud": True}),
               ("conv3", {"layer": "conv:3"}), ("vbp-hud", {"mode": "vbp", "hud": True})]
CAM_JOBS = [("cam-hud", {"mode": "cam", "hud": True, "layer": "conv:2"}),
            ("cam-left", {"mode": "cam", "target": "left", "layer": "conv:2"})]
CAR_JOBS = [("conv1", {"layer": "conv:1"}), ("conv3-hud", {"layer": "conv:3", "hud": True}),
            ("vbp", {"mode": "vbp", "hud": True})]
CARS = ("donkey", "donkey_categorical", "pilotnet_bn")

# Runs in a fresh interpreter where TensorFlow, Keras and tf-keras cannot be imported.
WORKER = """
import json, sys
for name in ("tensorflow", "keras", "tf_keras"):
    sys.modules[name] = None
import numpy as np
from carvis import pipeline, profile as prof
from carvis.backends import litert
from carvis.frame import Frame
from carvis.session import ModelSession
RAW_MAP
spec = json.loads(sys.argv[1])
frames = list(np.load(spec["frames"])["frames"])
out, report = {}, {}
for item in spec["jobs"]:
    profile = prof.load(item["profile"]) if item["profile"] else prof.generic()
    session = ModelSession(item["model"])
    report[item["key"] + ":layers"] = litert.describe(item["model"])
    report[item["key"] + ":conv"] = session.conv_layers()
    for name, changes in item["changes"]:
        renderer = pipeline.make_renderer(session, profile.replace(**changes))
        for i, frame in enumerate(frames):
            key = f"{item['key']}:{name}:{i}"
            out[key + ":map"] = raw_map(renderer, frame)
            out[key] = renderer.render(Frame(frame.copy(), i, 0.0))
            if renderer.last_map.prediction is not None:
                out[key + ":prediction"] = renderer.last_map.prediction
            report[key + ":backend"] = getattr(renderer.maps.state.explainer, "backend", "layer")
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras")
               and sys.modules[m] is not None)
np.savez(spec["out"], **out)
print(json.dumps({"report": report, "heavy": heavy}))
"""



def raw_map(renderer, frame):
    """The float map of a frame before normalising: the layer's channel, or the mode's map."""
    batch = renderer.maps.preprocess(renderer.maps.preprocess.roi(frame))
    if renderer.maps.state.mode == "activation":
        return renderer.maps.activation(frame)
    return renderer.maps.state.explainer(batch).map


WORKER = WORKER.replace("RAW_MAP", "\n".join(inspect.getsource(raw_map).splitlines()))


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch) -> None:
    monkeypatch.setenv("CARVIS_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def frames(axionaut_frames) -> list[np.ndarray]:
    files = sorted(axionaut_frames.glob("*.jpg"), key=lambda p: int(p.stem[5:]))
    return [cv2.imread(str(f)) for f in files[3:9:3]]


@pytest.fixture(scope="module")
def files(tmp_path_factory, axionaut_model_path) -> dict[str, Path]:
    """The Keras files, carvis' exports of them, and the cars' own converter-built files."""
    tmp = tmp_path_factory.mktemp("car")
    rng = np.random.default_rng(7)
    out = {"axionaut.h5": axionaut_model_path}
    out["donkey.h5"] = model_factory.donkey(tmp, rng)[0].path
    out["donkey_categorical.h5"] = model_factory.donkey_categorical(tmp, rng)
    out["pilotnet_bn.h5"] = model_factory.pilotnet_bn(tmp, rng).path
    out["gap.h5"] = model_factory.gap_pilot(tmp, rng)
    for car in CARS:
        out[f"{car}.tflite"] = model_factory.to_tflite(out[f"{car}.h5"])
    out["axionaut-car.tflite"] = tmp / "axionaut-car.tflite"
    assert cli.main(["export", str(axionaut_model_path), "--car", "--profile", str(PROFILE),
                     "--layers", "conv:1,conv:2", "-o", str(out["axionaut-car.tflite"])]) == 0
    out["gap-cam.tflite"] = tmp / "gap-cam.tflite"
    assert cli.main(["export", str(out["gap.h5"]), "--layer", "conv:2", "--with", "cam,hud",
                     "-o", str(out["gap-cam.tflite"])]) == 0
    return out


@pytest.fixture(scope="module")
def blocked(files, frames, tmp_path_factory) -> tuple[dict, dict]:
    """Every job rendered from the .tflite files with TensorFlow blocked: (arrays, report)."""
    tmp = tmp_path_factory.mktemp("blocked")
    np.savez(tmp / "frames.npz", frames=np.stack(frames))
    jobs = [{"key": "export", "model": str(files["axionaut-car.tflite"]),
             "profile": str(PROFILE), "changes": EXPORT_JOBS},
            {"key": "cam", "model": str(files["gap-cam.tflite"]), "profile": None,
             "changes": CAM_JOBS}]
    jobs += [{"key": car, "model": str(files[f"{car}.tflite"]), "profile": None,
              "changes": CAR_JOBS} for car in CARS]
    spec = {"frames": str(tmp / "frames.npz"), "out": str(tmp / "out.npz"), "jobs": jobs}
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CARVIS_CACHE=str(tmp / "cache"))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-c", WORKER, json.dumps(spec)], capture_output=True,
                       text=True, env=env, timeout=300, cwd=REPO, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["heavy"] == [], "TensorFlow was blocked: nothing of it may load"
    return dict(np.load(tmp / "out.npz")), result["report"]


def _tensorflow_renders(model: Path, profile: prof.Profile, jobs, frames, key: str) -> dict:
    session = ModelSession(model, backend="tensorflow")
    out = {}
    for name, changes in jobs:
        renderer = pipeline.make_renderer(session, profile.replace(**changes))
        for i, frame in enumerate(frames):
            out[f"{key}:{name}:{i}:map"] = raw_map(renderer, frame)
            out[f"{key}:{name}:{i}"] = render_image(renderer, frame.copy())
            out[f"{key}:{name}:{i}:prediction"] = renderer.last_map.prediction
    return out


def _assert_same_pictures(expected: dict, got: dict) -> None:
    """The same maps and steering up to float rounding; the same pixels but where a map value
    rounds the other way on the threshold (isolated pixels of a random model's flat maps)."""
    for key, want in expected.items():
        if key.endswith(":prediction") and want is None:
            assert key not in got, key
        elif key.endswith((":prediction", ":map")):
            scale = float(np.abs(want).max()) or 1.0
            np.testing.assert_allclose(got[key], want, rtol=1e-4, atol=2e-5 * scale,
                                       err_msg=key)
        else:
            assert got[key].shape == want.shape, key
            diff = np.abs(got[key].astype(int) - want.astype(int)).max(axis=-1)
            assert (diff > 0).mean() < 1e-3, f"{key}: {(diff > 0).sum()} pixels differ"


def test_an_exported_file_renders_layers_hud_and_vbp_like_tensorflow(files, frames, blocked):
    got, report = blocked
    expected = _tensorflow_renders(files["axionaut.h5"], prof.load(PROFILE), EXPORT_JOBS,
                                   frames, "export")
    _assert_same_pictures(expected, got)
    assert report["export:vbp-hud:0:backend"] == "litert"
    # the l key and the page's layer control cycle through the exported layers
    assert report["export:conv"] == ["maxpooling2d_2", "convolution2d_1", "convolution2d_2",
                                     "convolution2d_3", "convolution2d_4"]


def test_an_exported_file_does_cam_like_tensorflow(files, frames, blocked):
    got, _ = blocked
    expected = _tensorflow_renders(files["gap.h5"], prof.generic(), CAM_JOBS, frames, "cam")
    _assert_same_pictures(expected, got)


@pytest.mark.parametrize("car", CARS)
def test_a_cars_own_tflite_gives_layers_overlays_hud_and_vbp(car, files, frames, blocked):
    got, report = blocked
    h5 = files[f"{car}.h5"]
    table = models.layer_table(models.load_model(h5))
    convs = [info.name for info in table if info.is_conv]
    assert report[f"{car}:conv"] == convs, "conv:N counts the same layers as the Keras model"
    text = report[f"{car}:layers"]
    for n, name in enumerate(convs, 1):
        assert any(f"conv:{n}" in line and f" {name} " in line for line in text.splitlines())
    assert "HUD" in text and "vbp" in text
    expected = _tensorflow_renders(h5, prof.generic(), CAR_JOBS, frames, car)
    _assert_same_pictures(expected, got)
    prediction = got[f"{car}:vbp:0:prediction"]
    assert prediction.shape == ((15,) if car == "donkey_categorical" else (1,))


def test_a_cars_categorical_head_is_read_as_softmax_bins(files):
    meta, _ = flatgraph.describe(files["donkey_categorical.tflite"].read_bytes())
    assert meta.head == {"index": meta.head["index"], "layer": "angle_out", "units": 15,
                         "softmax": True, "outputs": ["angle_out", "throttle_out"]}
    linear, _ = flatgraph.describe(files["donkey.tflite"].read_bytes())
    assert (linear.head["layer"], linear.head["units"], linear.head["softmax"]) == (
        "angle_out", 1, False)
    assert linear.head["outputs"] == ["angle_out", "throttle_out"]
    # vbp from the ops' own windows: DonkeyCar's 5x5 stride-2 and 3x3 stride-1 'valid' convs
    windows = [(r["config"]["kernel_size"], r["config"]["strides"], r["config"]["padding"])
               for r in linear.vbp["chain"] if r["type"] == "Conv2D"]
    assert windows == [([5, 5], [2, 2], "valid")] * 3 + [([3, 3], [1, 1], "valid")] * 2


@pytest.mark.filterwarnings("ignore:Warning. Enabling .experimental_preserve_all_tensors")
def test_added_outputs_read_what_preserved_tensors_hold(files):
    from carvis.backends.litert import load

    added = load(files["pilotnet_bn.tflite"])
    kept = load(files["pilotnet_bn.tflite"], preserve_all_tensors=True)
    x = np.random.default_rng(0).uniform(0, 1, (1, 66, 200, 3)).astype(np.float32)
    a = added(x)
    kept.interpreter.set_tensor(kept._in[0], x)
    kept.interpreter.invoke()
    _, tensors = flatgraph.describe(files["pilotnet_bn.tflite"].read_bytes())
    for name, t in tensors.items():
        np.testing.assert_array_equal(a[name], kept.interpreter.get_tensor(t), err_msg=name)


def test_gradient_modes_on_a_tflite_say_they_need_the_keras_model(files):
    session = ModelSession(files["axionaut-car.tflite"])
    for mode in ("gradcam", "saliency", "guided", "guided-gradcam"):
        with pytest.raises(CarvisError, match=rf"mode '{mode}' needs gradients, which a "
                                              r"\.tflite does not hold: give the \.h5/\.keras"
                           ) as info:
            session.explainer(mode, "left", "convolution2d_2")
        assert "\n" not in str(info.value)


def test_a_one_layer_file_says_what_the_hud_needs(files, tmp_path):
    out = tmp_path / "one.tflite"
    assert cli.main(["export", str(files["axionaut.h5"]), "--layer", "conv:2",
                     "-o", str(out)]) == 0
    session = ModelSession(out)
    with pytest.raises(CarvisError, match=r"the HUD needs .*holds no steering output.*"
                                          r"carvis export MODEL --car") as info:
        pipeline.make_renderer(session, prof.load(PROFILE).replace(layer="conv:2", hud=True))
    assert "\n" not in str(info.value)
    with pytest.raises(CarvisError, match=r"holds one layer.*convolution2d_2.*--layer conv:3"):
        session.backend("conv:3")


def test_a_format_1_file_still_reads(files, tmp_path):
    data = files["axionaut-car.tflite"].read_bytes()
    old = {"layer": "convolution2d_2", "layer_index": 4, "layers": 18, "conv": 2,
           "input_shape": [70, 250, 3], "output_shape": [35, 125, 2], "model": "autopilot.hdf5",
           "conv_layers": ["convolution2d_1", "convolution2d_2"], "format": 1,
           "layer_names": list(read_meta(data).layer_names)}
    meta = LayerMeta.from_json(json.dumps(old).encode())
    assert (meta.outputs, meta.shown, meta.head) == (("convolution2d_2",),) * 2 + (None,)
    path = tmp_path / "old.tflite"
    path.write_bytes(with_metadata(data, meta))
    session = ModelSession(path)
    assert session.backend("conv:2").layer_name == "convolution2d_2"
    assert session.backend("4").layer_name == "convolution2d_2"
