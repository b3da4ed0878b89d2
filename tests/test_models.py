"""carvis.models: loading Keras 1/2/3 car models, the layer table, layer specs, truncation."""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path

import cv2
import h5py
import keras
import model_factory  # tests/ is on sys.path (pytest's default prepend import mode)
import numpy as np
import pytest
from model_factory import GRID_LAYERS

from carvis import models
from carvis.errors import CarvisError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
AXIONAUT_H5 = SHARED_DATA / "axionaut" / "autopilot.hdf5"
AXIONAUT_FRAME = SHARED_DATA / "axionaut" / "frames" / "frame3556.jpg"


def _close(got: np.ndarray, want: np.ndarray, rel: float = 1e-4) -> None:
    """Equal up to rel × the largest reference magnitude."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    scale = max(float(np.max(np.abs(want))), 1e-6)
    err = float(np.max(np.abs(got - want)))
    assert err <= rel * scale, f"max abs error {err:.3g} > {rel} × {scale:.3g}"


def _one_line_error(call, *named: str) -> str:
    with pytest.raises(CarvisError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    assert "Traceback" not in message
    for value in named:
        assert value in message, f"{value!r} not in: {message}"
    return message


# --------------------------------------------------------------------------- the real Axionaut


@pytest.fixture(scope="session")
def axionaut():
    if not AXIONAUT_H5.is_file():
        pytest.skip(f"real Axionaut model not found at {AXIONAUT_H5} (../shared/data beside the "
                    "checkout); CI always has it")
    return models.load_model(AXIONAUT_H5)


def _axionaut_weights() -> dict[str, list[np.ndarray]]:
    """Layer name → [W, b] straight from the Keras 1 file, float64."""
    out = {}
    with h5py.File(AXIONAUT_H5, "r") as f:
        group = f["model_weights"]
        for name in group:
            names = [n.decode() if isinstance(n, bytes) else n
                     for n in group[name].attrs["weight_names"]]
            out[name] = [np.asarray(group[name][n], np.float64) for n in names]
    return out


def _conv_same_relu(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """'same' cross-correlation (TF convention, odd kernel) + bias + ReLU; x is (H, W, Cin)."""
    kh, kw = kernel.shape[:2]
    h, w = x.shape[:2]
    xp = np.pad(x, ((kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    out = sum(xp[i:i + h, j:j + w] @ kernel[i, j] for i in range(kh) for j in range(kw))
    return np.maximum(out + bias, 0.0)


def _maxpool2(x: np.ndarray) -> np.ndarray:
    """2×2 max pooling, stride 2, 'valid'."""
    h, w, c = x.shape
    x = x[: h // 2 * 2, : w // 2 * 2]
    return x.reshape(h // 2, 2, w // 2, 2, c).max(axis=(1, 3))


def _axionaut_by_hand(frame_input: np.ndarray) -> dict[str, np.ndarray]:
    """The whole Axionaut net in numpy: 4 × (conv same + relu, maxpool), dense, relu, softmax."""
    w = _axionaut_weights()
    x = frame_input.astype(np.float64)
    acts = {}
    for i in range(1, 5):
        x = _maxpool2(_conv_same_relu(x, *w[f"convolution2d_{i}"]))
        acts[f"maxpooling2d_{i}"] = x
    hidden = np.maximum(x.reshape(-1) @ w["dense_1"][0] + w["dense_1"][1], 0.0)
    logits = hidden @ w["dense_2"][0] + w["dense_2"][1]
    e = np.exp(logits - logits.max())
    acts["activation_2"] = e / e.sum()
    return acts


def _axionaut_frame() -> np.ndarray:
    frame = cv2.imread(str(AXIONAUT_FRAME))
    if frame is None:
        pytest.skip(f"Axionaut frame not found at {AXIONAUT_FRAME}")
    roi = frame[600:1080, 0:1800]
    small = cv2.resize(roi, (250, 70), interpolation=cv2.INTER_LANCZOS4)
    return cv2.filter2D(small, -1, np.ones((2, 2), np.float32) / 4).astype(np.float32)


def test_axionaut_loads_with_its_names_and_params(axionaut):
    assert axionaut.count_params() == 5197
    names = [layer.name for layer in axionaut.layers]
    for name in ("img_in", "convolution2d_1", "maxpooling2d_2", "dropout_4", "flatten_1",
                 "dense_1", "activation_2"):
        assert name in names
    assert tuple(axionaut.inputs[0].shape[1:]) == (70, 250, 3)
    assert tuple(axionaut.outputs[0].shape[1:]) == (5,)


def test_axionaut_layer_specs(axionaut):
    conv2 = axionaut.get_layer("convolution2d_2")
    assert models.resolve_layer(axionaut, "conv:2") is conv2
    assert models.resolve_layer(axionaut, "convolution2d_2") is conv2
    index = [layer.name for layer in axionaut.layers].index("convolution2d_2")
    assert models.resolve_layer(axionaut, index) is conv2
    assert models.resolve_layer(axionaut, str(index)) is conv2
    assert models.resolve_layer(axionaut, " conv:4 ").name == "convolution2d_4"
    last = models.resolve_layer(axionaut, -1, require_spatial=False)
    assert last.name == "activation_2"
    assert models.resolve_layer(axionaut, "-1", require_spatial=False) is last


def test_axionaut_layer_table(axionaut):
    table = models.layer_table(axionaut)
    assert [info.index for info in table] == list(range(len(axionaut.layers)))
    row = {info.name: info for info in table}
    assert row["convolution2d_1"].is_conv and row["convolution2d_1"].is_spatial
    assert row["convolution2d_1"].type == "Conv2D"
    assert row["convolution2d_1"].output_shape == (70, 250, 1)
    assert row["maxpooling2d_2"].output_shape == (17, 62, 2)
    assert not row["maxpooling2d_2"].is_conv and row["maxpooling2d_2"].is_spatial
    assert row["dense_1"].output_shape == (20,) and not row["dense_1"].is_spatial
    assert sum(info.is_conv for info in table) == 4

    text = models.format_layer_table(axionaut)
    lines = text.splitlines()
    assert len(lines) == len(table) + 1  # header + one line per layer
    conv_line = next(line for line in lines if "convolution2d_3" in line)
    assert "conv:3" in conv_line and "Conv2D" in conv_line and "(17, 62, 4)" in conv_line
    dense_line = next(line for line in lines if " dense_1 " in line)
    assert "conv:" not in dense_line and "(20,)" in dense_line


def test_axionaut_activations_equal_numpy_by_hand(axionaut):
    frame_input = _axionaut_frame()
    want = _axionaut_by_hand(frame_input)
    batch = frame_input[None]
    for name in ("maxpooling2d_2", "maxpooling2d_4", "activation_2"):
        layer = models.resolve_layer(axionaut, name, require_spatial=False)
        got = models.truncated_model(axionaut, layer)(batch, training=False)
        _close(np.asarray(got)[0], want[name])
    assert want["maxpooling2d_2"].max() > 0  # a real, non-dead activation map


def test_truncation_leaves_the_model_untouched(axionaut):
    before = ([layer.name for layer in axionaut.layers], list(axionaut.outputs),
              [np.array(w) for w in axionaut.get_weights()])
    truncated = models.truncated_model(axionaut, models.resolve_layer(axionaut, "conv:2"))
    assert truncated is not axionaut
    assert tuple(truncated.outputs[0].shape[1:]) == (35, 125, 2)
    assert [layer.name for layer in axionaut.layers] == before[0]
    assert list(axionaut.outputs) == before[1]
    for a, b in zip(axionaut.get_weights(), before[2], strict=True):
        np.testing.assert_array_equal(a, b)
    assert models.truncated_model(axionaut, "maxpooling2d_2").name.endswith("maxpooling2d_2")


def test_resolve_layer_errors_name_the_value(axionaut):
    msg = _one_line_error(lambda: models.resolve_layer(axionaut, "maxpool2d_2"), "'maxpool2d_2'",
                          "maxpooling2d_2", "convolution2d_1")
    assert "dropout_1" not in msg  # long list: only conv/pool layers are offered
    _one_line_error(lambda: models.resolve_layer(axionaut, 18), "18", "18 layers")
    _one_line_error(lambda: models.resolve_layer(axionaut, "-19"), "-19")
    _one_line_error(lambda: models.resolve_layer(axionaut, "conv:5"), "conv:5", "4 conv layers",
                    "convolution2d_4")
    _one_line_error(lambda: models.resolve_layer(axionaut, "conv:0"), "conv:0")
    _one_line_error(lambda: models.resolve_layer(axionaut, "conv:two"), "conv:two")
    _one_line_error(lambda: models.resolve_layer(axionaut, "dense_1"), "dense_1", "(20,)",
                    "spatial", "conv:1 = convolution2d_1")
    _one_line_error(lambda: models.resolve_layer(axionaut, 2.5), "2.5")


def test_keras1_th_ordering_is_refused(axionaut, tmp_path):
    path = tmp_path / "th.hdf5"
    shutil.copy(AXIONAUT_H5, path)
    with h5py.File(path, "r+") as f:
        f.attrs["model_config"] = f.attrs["model_config"].replace('"tf"', '"th"')
    _one_line_error(lambda: models.load_model(path), "th.hdf5", "'convolution2d_1'", "'th'")


def test_keras1_unknown_layer_type_is_named(axionaut, tmp_path):
    path = tmp_path / "highway.hdf5"
    shutil.copy(AXIONAUT_H5, path)
    with h5py.File(path, "r+") as f:
        text = f.attrs["model_config"]
        f.attrs["model_config"] = text.replace('"class_name": "Flatten"',
                                               '"class_name": "Highway"')
    _one_line_error(lambda: models.load_model(path), "'flatten_1'", "Highway", ".keras")


def test_truncated_file_is_a_clear_error(tmp_path):
    if not AXIONAUT_H5.is_file():
        pytest.skip(f"real Axionaut model not found at {AXIONAUT_H5}")
    path = tmp_path / "cut.hdf5"
    path.write_bytes(AXIONAUT_H5.read_bytes()[:30_000])
    _one_line_error(lambda: models.load_model(path), "cut.hdf5", "corrupt")


# --------------------------------------------------------------------------- Keras 1/2/3 grid


@pytest.fixture(scope="session")
def cases(tmp_path_factory):
    pytest.importorskip("tf_keras", reason="tf-keras (the real Keras 2) is in the test extra")
    return model_factory.build_all(tmp_path_factory.mktemp("car_models"))


@pytest.fixture(scope="session")
def loaded(cases):
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for kind, case in cases.items():
            out[kind] = models.load_model(case.path, lambda_policy=case.lambda_policy)
    return out


def _grid() -> list[tuple[str, str]]:
    return [(kind, layer) for kind, layers in GRID_LAYERS.items() for layer in layers]


@pytest.mark.parametrize(("kind", "layer_name"), _grid(), ids=lambda v: v)
def test_activations_equal_the_saving_framework(cases, loaded, kind, layer_name):
    case, model = cases[kind], loaded[kind]
    layer = models.resolve_layer(model, layer_name, require_spatial=False)
    got = models.truncated_model(model, layer)(case.carvis_x, training=False)
    _close(np.asarray(got), case.expected[layer_name])


@pytest.mark.parametrize("kind", sorted(GRID_LAYERS))
def test_each_model_loads_whole(cases, loaded, kind):
    case, model = cases[kind], loaded[kind]
    assert isinstance(model, keras.Model) and not isinstance(model, keras.Sequential)
    assert model.count_params() == case.params
    names = {layer.name for layer in model.layers}
    assert set(case.layer_names) <= names, set(case.layer_names) - names
    assert models.layer_table(model)[0].type == "InputLayer"
    assert models.format_layer_table(model).count("\n") == len(model.layers)


@pytest.mark.parametrize("kind", sorted(GRID_LAYERS))
def test_fixture_exercises_the_intended_loader(cases, kind):
    """Files meant for carvis' own rebuild really are ones Keras 3 refuses, and vice versa."""
    case = cases[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            keras.models.load_model(case.path, compile=False)
            loads = True
        except Exception:  # noqa: BLE001 - any refusal counts
            loads = False
    assert loads == case.keras3_loads


def test_conv_specs_count_only_conv_layers(loaded):
    donkey = loaded["donkey"]
    assert [models.resolve_layer(donkey, f"conv:{k}").name for k in range(1, 6)] == [
        f"conv2d_{k}" for k in range(1, 6)]
    _one_line_error(lambda: models.resolve_layer(donkey, "conv:6"), "conv:6", "5 conv layers")
    legacy = loaded["legacy_sequential"]
    convs = [info.name for info in models.layer_table(legacy) if info.is_conv]
    assert convs == ["conv2d_a", "sep_a", "dw_a", "conv2d_dil"]


def test_lambda_is_an_error_by_default(cases):
    path = cases["pilotnet_lambda"].path
    msg = _one_line_error(lambda: models.load_model(path), "pilotnet_lambda.h5", "'lambda_1'",
                          "Lambda", "--lambda identity", "preprocess.scale/offset")
    assert msg.startswith(str(path))


def test_lambda_identity_warns_once(cases, caplog):
    with caplog.at_level(logging.WARNING, logger="carvis"):
        model = models.load_model(cases["pilotnet_lambda"].path, lambda_policy="identity")
    lambda_warnings = [r for r in caplog.records
                       if r.levelno == logging.WARNING and "lambda_1" in r.getMessage()]
    assert len(lambda_warnings) == 1
    assert model.get_layer("lambda_1").__class__.__name__ == "Identity"


def test_shape_changing_lambda_is_refused_even_as_identity(tmp_path):
    pytest.importorskip("tf_keras")
    path = model_factory.lambda_reshaper(tmp_path)
    _one_line_error(lambda: models.load_model(path, lambda_policy="identity"), "'crop_lambda'",
                    "shape")


def test_bad_lambda_policy():
    _one_line_error(lambda: models.load_model("x.h5", lambda_policy="skip"), "'skip'", "identity")


def test_custom_layer_is_named(tmp_path):
    pytest.importorskip("tf_keras")
    path = model_factory.custom_layer(tmp_path)
    _one_line_error(lambda: models.load_model(path), "'scale_1'", "Scale", ".tflite")


def test_weights_only_file(tmp_path):
    pytest.importorskip("tf_keras")
    path = model_factory.weights_only(tmp_path)
    _one_line_error(lambda: models.load_model(path), "weights_only.h5", "only weights",
                    "model.save")


def test_keras3_lambda_archive(tmp_path):
    path = model_factory.keras3_lambda(tmp_path)
    _one_line_error(lambda: models.load_model(path), "'scale_lambda'", "Lambda")


# --------------------------------------------------------------------------- file-level errors


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "model.h5"
    _one_line_error(lambda: models.load_model(path), str(path), "not found")


def test_directory_is_not_a_model(tmp_path):
    _one_line_error(lambda: models.load_model(tmp_path), str(tmp_path), "directory")


@pytest.mark.parametrize("name", ["random.h5", "random.keras", "random.bin"])
def test_random_bytes(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    _one_line_error(lambda: models.load_model(path), name, "not a Keras model file")


def test_broken_keras_archive(tmp_path):
    import zipfile

    path = tmp_path / "broken.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "{not json")
    _one_line_error(lambda: models.load_model(path), "broken.keras", "cannot load")


def test_hdf5_without_a_model(tmp_path):
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    _one_line_error(lambda: models.load_model(path), "data.h5", "model_config")


def test_tflite_goes_to_the_litert_backend(tmp_path):
    by_name = tmp_path / "model.tflite"
    by_name.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(64))
    by_magic = tmp_path / "model.bin"
    by_magic.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(64))
    assert models.is_tflite(by_name) and models.is_tflite(by_magic)
    assert not models.is_tflite(tmp_path / "missing.h5")
    for path in (by_name, by_magic):
        _one_line_error(lambda p=path: models.load_model(p), path.name, "--backend litert")


def test_h5_with_another_extension_loads(cases, tmp_path):
    path = tmp_path / "donkey.model"
    shutil.copy(cases["donkey"].path, path)
    model = models.load_model(path)
    assert model.count_params() == cases["donkey"].params


def test_truncated_model_rejects_a_foreign_layer(loaded):
    foreign = loaded["donkey"].get_layer("conv2d_1")
    _one_line_error(lambda: models.truncated_model(loaded["pilotnet_bn"], foreign), "conv2d_1")
