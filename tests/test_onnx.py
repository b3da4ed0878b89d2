"""ONNX models (issue 22.1): PyTorch exports and converted pilots on onnxruntime, in carvis'
(h, w, c) maps, equal to the same model on TensorFlow and LiteRT.

tests/data/*.onnx are made by scripts/make_onnx_pilots.py (torch.onnx.export, tf2onnx); the
Keras pilots are rebuilt here from the same seed, so carvis on the .onnx is compared with
carvis on the .h5.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from carvis import profile as prof
from carvis.errors import CarvisError
from carvis.maps import MapMaker
from carvis.session import ModelSession

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
sys.path.insert(0, str(REPO / "scripts"))


def _carvis(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "carvis.cli", *args], check=False,
                          capture_output=True,
                          text=True, cwd=REPO, env=os.environ.copy(), timeout=300)


def _frames(n: int = 3, size: tuple[int, int] = (160, 120)) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    frames = []
    for _ in range(n):  # smooth shapes, not noise: maps with structure to compare
        small = rng.uniform(0, 255, (6, 8, 3)).astype(np.float32)
        frames.append(np.clip(np.asarray(__import__("cv2").resize(small, size)), 0, 255)
                      .astype(np.uint8))
    return frames


@pytest.fixture(scope="module")
def keras_twins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("tf_keras")
    import make_onnx_pilots

    folder = tmp_path_factory.mktemp("twins")
    return {name: make_onnx_pilots.keras_pilot(name, folder)
            for name in ("donkey_categorical", "gap_pilot")}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@pytest.mark.parametrize("name", ["donkey_categorical", "gap_pilot"])
@pytest.mark.parametrize("backend", ["tensorflow", "litert"])
@pytest.mark.parametrize("mode", ["activation", "vbp"])
def test_onnx_pilot_maps_and_hud_equal_the_keras_models(keras_twins, name, backend, mode):
    """22.1: the converted pilot's activation, vbp and HUD equal the .h5's on TensorFlow and
    LiteRT: threshold masks IoU >= 0.98, angle within 1e-3."""
    profile = prof.generic().replace(mode=mode, hud=True, layer="conv:2")
    onnx_maker = MapMaker(ModelSession(DATA / f"{name}.onnx"), profile)
    keras_maker = MapMaker(ModelSession(keras_twins[name], backend=backend), profile)
    for image in _frames():
        a, b = onnx_maker(image), keras_maker(image)
        assert a.raw.shape == b.raw.shape
        assert _iou(a.norm > profile.threshold, b.norm > profile.threshold) >= 0.98
        assert abs(a.steering.angle - b.steering.angle) <= 1e-3
        np.testing.assert_allclose(a.prediction, b.prediction, atol=1e-4)
        if name == "donkey_categorical":
            assert a.steering.throttle == pytest.approx(b.steering.throttle, abs=1e-3)


def test_onnx_layers_finds_the_steering_head_by_shape_when_names_are_lost():
    """22.1: tf2onnx named the DonkeyCar pilot's outputs StatefulPartitionedCall:1 (20 throttle
    bins) and :0 (15 angle bins), throttle first; carvis picks the 15 bins for the HUD."""
    result = _carvis("layers", str(DATA / "donkey_categorical.onnx"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("donkey_categorical.onnx: an ONNX model read from its graph "
                               "(NHWC input, shown as (h, w, c)); input (120, 160, 3); modes "
                               "beyond activation: HUD, vbp, occlusion, rise")
    convs = [line.split()[2] for line in lines if " conv:" in f" {line}"]
    assert convs == [f"conv2d_{i}" for i in range(1, 6)]
    head = [line for line in lines if "(HUD)" in line]
    assert len(head) == 1 and "StatefulPartitionedCall:0" in head[0]
    assert "steering, 15 unit(s), softmax of bins (HUD)" in head[0]


def _reference(path: Path, tensor: str, x_nhwc: np.ndarray) -> np.ndarray:
    """A tensor of the original file by onnxruntime alone (NCHW input), as (h, w, c)."""
    import onnxruntime as ort

    model = onnx.load(str(path))
    model.graph.output.extend([onnx.ValueInfoProto(name=tensor)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (value,) = session.run([tensor], {"image": x_nhwc.transpose(0, 3, 1, 2)})
    return value[0].transpose(1, 2, 0) if value.ndim == 4 else value[0]


def test_pytorch_pilotnet_maps_come_out_as_hwc():
    """22.1: a PyTorch (NCHW) export's conv outputs are carvis' (h, w, c), each equal to the
    channels-first tensor onnxruntime gives, transposed; vbp at the input size."""
    session = ModelSession(DATA / "pilotnet.onnx")
    assert session.input_shape() == (66, 200, 3)
    assert session.conv_layers() == [f"features.{i}" for i in (0, 2, 4, 6, 8)]
    x = np.random.default_rng(1).uniform(0, 1, (1, 66, 200, 3)).astype(np.float32)
    act = session.backend("conv:2")(x)
    assert act.shape == (14, 47, 36)
    np.testing.assert_allclose(act, _reference(DATA / "pilotnet.onnx",
                                               "/features/features.3/Elu_output_0", x),
                               rtol=1e-5, atol=1e-6)
    vbp = session.explainer("vbp", "predicted", None)(x)
    assert vbp.map.shape == (66, 200)
    assert vbp.prediction == pytest.approx(_reference(DATA / "pilotnet.onnx", "output", x))


def test_donkeycar_resnet18_reads_angle_and_throttle_and_refuses_vbp_in_one_line():
    """22.1: DonkeyCar's PyTorch ResNet18 gives (angle, throttle) in one (2,) output: the HUD
    reads each; vbp cannot follow the residual adds and says so."""
    session = ModelSession(DATA / "resnet18_donkey.onnx")
    maker = MapMaker(session, prof.generic().replace(hud=True, layer="conv:3"))
    image = _frames(1)[0]
    result = maker(image)
    x = maker.preprocess(maker.preprocess.roi(image))
    expected = _reference(DATA / "resnet18_donkey.onnx", "output", x)
    assert result.steering.angle == pytest.approx(float(expected[0]), abs=1e-5)
    assert result.steering.throttle == pytest.approx(float(expected[1]), abs=1e-5)
    with pytest.raises(CarvisError) as err:
        session.explainer("vbp", "predicted", None)
    assert str(err.value) == (
        "mode 'vbp' on ONNX model resnet18_donkey.onnx: resnet18_donkey.onnx: vbp follows one "
        "path from the output to the input, but node Add ('layer4.1') has 2 data inputs; use "
        "--mode occlusion or activation")


def test_onnx_gradient_modes_are_refused_in_one_line():
    result = _carvis("render", "synthetic:frames=2,size=160x120", "-o", "/dev/null/x.avi",
                     "--model", str(DATA / "pilotnet.onnx"), "--mode", "gradcam")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "carvis: error: mode 'gradcam' needs gradients, which carvis computes from a Keras "
        "model only; on an ONNX model use vbp, occlusion, rise or activation")


def test_onnx_render_with_vbp_and_hud(tmp_path):
    out = tmp_path / "frames"
    result = _carvis("render", "synthetic:frames=3,size=200x66", "-o", str(out), "--model",
                     str(DATA / "pilotnet.onnx"), "--mode", "vbp", "--hud", "--quiet")
    assert result.returncode == 0, result.stderr
    assert len(list(out.glob("*.png"))) == 3


def test_onnx_layers_are_cached_and_read_back_without_the_onnx_package(tmp_path):
    """22.1: the copy with the layers as outputs is made once; a second run needs onnxruntime
    only (the onnx package blocked)."""
    env = {**os.environ, "CARVIS_CACHE": str(tmp_path)}
    code = ("import sys; sys.modules['onnx'] = None\n"
            "from carvis.session import ModelSession\n"
            f"s = ModelSession({str(DATA / 'gap_pilot.onnx')!r})\n"
            "print(s.conv_layers(), s.kind.cached.name)")
    first = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                           env=env, cwd=REPO)
    assert first.returncode != 0 and "needs the onnx package the first time" in first.stderr
    prime = subprocess.run([sys.executable, "-c", code.split("\n", 1)[1]], check=False,
                           capture_output=True,
                           text=True, env=env, cwd=REPO)
    assert prime.returncode == 0, prime.stderr
    again = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                           env=env, cwd=REPO)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == prime.stdout.strip()
    assert again.stdout.startswith("['conv2d_1', 'conv2d_2']")
    assert len(list(tmp_path.glob("*.onnx"))) == 1


def test_onnx_refuses_another_backend_in_one_line():
    with pytest.raises(CarvisError) as err:
        ModelSession(DATA / "pilotnet.onnx", backend="litert")
    assert str(err.value) == ("pilotnet.onnx is an ONNX model: it runs on onnxruntime; use "
                              "--backend auto (not litert)")
