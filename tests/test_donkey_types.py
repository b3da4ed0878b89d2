"""Every pilot type DonkeyCar 5.3 trains, built by DonkeyCar's own code (tests/donkey_pilots.py):
carvis loads its Keras 2 .h5 and its .tflite, gives the outputs DonkeyCar's own interpreters gave
on the same inputs, reads the type from the model's inputs and outputs, feeds it as DonkeyCar's
vehicle template does, and reads its heads as DonkeyCar's pilot.run() does."""

from __future__ import annotations

import json
import os
import warnings

import donkey_pilots
import numpy as np
import pytest

from carvis import donkeytype, models
from carvis.backends.litert import LiteRTModel, load
from carvis.backends.tflite import read_tflite
from carvis.errors import CarvisError

pytest.importorskip("donkeycar.parts.tub_v2", reason="DonkeyCar is needed: pip install "
                    "--no-deps donkeycar pyfiglet prettytable")
pytest.importorskip("tf_keras", reason="DonkeyCar's pilots are built with tf-keras (Keras 2)")

KINDS = donkey_pilots.KINDS
FLEX = ("rnn", "3d")  # DonkeyCar's own conversion leaves TensorFlow ops in them


@pytest.fixture(scope="session")
def pilots(tmp_path_factory) -> donkey_pilots.DonkeyPilots:
    return donkey_pilots.build(tmp_path_factory.getbasetemp())


def keras_outputs(model, fed: dict[str, np.ndarray], n: int) -> list[np.ndarray]:
    """The loaded model's outputs for record n, fed as DonkeyCar fed its own."""
    batch = [fed[t.name][n:n + 1] for t in model.inputs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a one-input model given a list
        out = model(batch if len(batch) > 1 else batch[0], training=False)
    return [np.asarray(o)[0] for o in (out if isinstance(out, (list, tuple)) else [out])]


@pytest.mark.parametrize("kind", KINDS)
def test_each_h5_loads_and_gives_donkeycars_own_outputs(pilots, kind):
    model = models.load_model(pilots.model(kind, "h5"))
    fed, got = pilots.fed(kind, "h5"), pilots.got(kind, "h5")
    assert [t.name for t in model.inputs] == list(fed)
    for n in range(pilots.reference["records"]):
        for mine, (name, theirs) in zip(keras_outputs(model, fed, n), got.items(), strict=True):
            np.testing.assert_allclose(mine, theirs[n], rtol=0, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("kind", [k for k in KINDS if k not in FLEX])
def test_each_tflite_gives_donkeycars_own_outputs_on_litert(pilots, kind):
    model = LiteRTModel(read_tflite(pilots.model(kind, "tflite")), f"{kind}.tflite")
    fed, got = pilots.fed(kind, "tflite"), pilots.got(kind, "tflite")
    assert set(model.input_names) == set(fed)
    for n in range(pilots.reference["records"]):
        out = model({name: values[n:n + 1] for name, values in fed.items()})
        for name, theirs in got.items():
            np.testing.assert_allclose(out[name][0], theirs[n], rtol=0, atol=1e-5,
                                       err_msg=name)


def test_one_input_files_still_take_one_array(pilots):
    model = load(pilots.model("linear", "tflite"))
    fed, got = pilots.fed("linear", "tflite"), pilots.got("linear", "tflite")
    out = model(fed["img_in"][:1])
    np.testing.assert_allclose(out["n_outputs0"][0], got["n_outputs0"][0], atol=1e-5)
    with pytest.raises(CarvisError, match=r"^imu.tflite: has 2 inputs \(img_in, imu_in\); "
                                          "give each by name$"):
        LiteRTModel(read_tflite(pilots.model("imu", "tflite")), "imu.tflite")(fed["img_in"][:1])


@pytest.mark.parametrize("kind", FLEX)
def test_rnn_and_3d_tflite_say_which_tensorflow_ops_the_runtime_lacks(pilots, kind):
    # DonkeyCar's own TfLite part fails on them here too (TensorFlow 2.21 links no Flex ops)
    assert "Select TensorFlow op" in pilots.run(kind, "tflite")["error"]
    op = {"rnn": "FlexTensorListReserve", "3d": "FlexMaxPool3D"}[kind]
    with pytest.raises(CarvisError) as caught:
        model = load(pilots.model(kind, "tflite"))
        model(np.zeros((1, *model.input_shape), np.float32))
    text = str(caught.value)
    assert "\n" not in text and text.startswith(f"{kind}.tflite: uses TensorFlow ops that ")
    assert op in text and "give the .h5 (--backend tensorflow)" in text


@pytest.mark.parametrize("kind", KINDS)
def test_conv_layers_are_listed_and_counted(pilots, kind):
    path = pilots.model(kind, "h5")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        table = models.layer_table(models.load_model(path))
    convs = [(row.name, row.type) for row in table if row.is_conv]
    expected = {"rnn": [(f"time_distributed{s}", "TimeDistributed(Conv2D)")
                        for s in ("", "_2", "_4", "_6")],
                "3d": [(f"conv3d{s}", "Conv3D") for s in ("", "_1", "_2", "_3")],
                "latent": [(f"conv2d_{k}", "Conv2D") for k in range(1, 8)] + [("latent", "Conv2D")]
                + [(f"deconv2d_{k}", "Conv2DTranspose") for k in range(1, 6)]
                + [("img_out", "Conv2DTranspose")]}
    assert convs == expected.get(kind, [(f"conv2d_{k}", "Conv2D") for k in range(1, 6)])
    # the table read from the file alone (no TensorFlow) is the same
    assert models.format_layer_table_from_file(path) == models.format_rows(table)


def test_carvis_layers_prints_the_rnn_pilots_conv_layers(pilots, capsys):
    from carvis import cli

    assert cli.main(["layers", str(pilots.model("rnn", "h5"))]) == 0
    out = capsys.readouterr().out
    assert "conv:4  time_distributed_6   TimeDistributed(Conv2D)        (3, 11, 16, 32)" in out
    assert "LSTM_fin             LSTM                           (128,)" in out


def test_carvis_layers_of_a_several_input_tflite_reads_its_image_path(pilots, capsys):
    from carvis import cli

    assert cli.main(["layers", str(pilots.model("imu", "tflite"))]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("imu.tflite: a car's own model, read from its ops; input "
                               "(120, 160, 3)")
    convs = [line.split()[2] for line in lines if " conv:" in line]
    assert convs == [f"conv2d_{k}" for k in range(1, 6)]
    assert any("out_0" in line and "in the file" in line for line in lines)


# ------------------------------------------------------------------------ the pilot type


def _tflite_signature(pilots, kind):
    return donkeytype.signature_of_litert(LiteRTModel(read_tflite(pilots.model(kind, "tflite"))))


EXPECTED = {  # DonkeyCar's builders: extra inputs, head meanings
    "linear": ((), ("angle", "throttle")),
    "categorical": ((), ("angle_bins", "throttle_bins")),
    "inferred": ((), ("angle",)),
    "memory": (("memory",), ("angle", "throttle")),
    "imu": (("record",), ("angle", "throttle")),
    "behavior": (("record",), ("angle_bins", "throttle_bins")),
    "localizer": ((), ("angle", "throttle", "location")),
    "rnn": ((), ("angle_throttle",)),
    "3d": ((), ("angle_throttle",)),
    "latent": ((), ("image", "angle", "throttle")),
}


@pytest.mark.parametrize("source", ["h5", "keras", "tflite", "litert"])
@pytest.mark.parametrize("kind", KINDS)
def test_the_type_is_read_from_the_models_inputs_and_outputs(pilots, kind, source):
    if source == "h5":
        inputs, outputs = donkeytype.signature_of_h5(pilots.model(kind, "h5"))
    elif source == "keras":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model = models.load_model(pilots.model(kind, "h5"))
        inputs, outputs = donkeytype.signature_of_keras(model)
    elif source == "tflite":  # the flatbuffer's own signature: no interpreter needed
        inputs, outputs = donkeytype.signature_of_tflite(
            read_tflite(pilots.model(kind, "tflite")))
    else:
        if kind in FLEX:
            pytest.skip("LiteRT does not load DonkeyCar's rnn/3d .tflite (TensorFlow ops)")
        inputs, outputs = _tflite_signature(pilots, kind)
    found = donkeytype.detect(inputs, outputs)
    sources, meanings = EXPECTED[kind]
    assert found.kind == kind
    assert found.pilot_class == {"3d": "Keras3D_CNN", "rnn": "KerasLSTM"}.get(
        kind, found.pilot_class)
    assert tuple(f.source for f in found.feeds) == sources
    assert tuple(h.meaning for h in found.heads) == meanings
    assert found.image.input == "img_in" and found.image.shape[-3:] == (120, 160, 3)
    assert found.sequence == (3 if kind in FLEX else 0)
    sizes = {h.meaning: h.size for h in found.heads}
    assert sizes.get("angle_bins", 15) == 15 and sizes.get("throttle_bins", 20) == 20
    assert sizes.get("location", 10) == 10 and sizes.get("angle_throttle", 2) == 2


def test_the_extra_inputs_are_wired_as_the_vehicle_template_wires_them(pilots):
    imu = donkeytype.detect(*donkeytype.signature_of_h5(pilots.model("imu", "h5")))
    assert imu.feeds[0].keys == ("imu/acl_x", "imu/acl_y", "imu/acl_z", "imu/gyr_x",
                                 "imu/gyr_y", "imu/gyr_z")
    assert imu.part_inputs == ("cam/image_array", "imu_array")
    behavior = donkeytype.detect(*donkeytype.signature_of_h5(pilots.model("behavior", "h5")))
    assert behavior.feeds[0].keys == ("behavior/one_hot_state_array",)
    assert behavior.part_inputs == ("cam/image_array", "behavior/one_hot_state_array")
    memory = donkeytype.detect(*donkeytype.signature_of_h5(pilots.model("memory", "h5")))
    assert (memory.feeds[0].input, memory.feeds[0].length) == ("mem_in", 3)
    assert memory.part_inputs == ("cam/image_array",)  # it keeps its own previous outputs
    localizer = donkeytype.detect(*donkeytype.signature_of_h5(pilots.model("localizer", "h5")))
    assert localizer.part_outputs == ("pilot/angle", "pilot/throttle", "pilot/loc")


def _tub_records(pilots) -> list[tuple[np.ndarray, dict]]:
    """The tub's records and their images, read as DonkeyCar reads them (PIL)."""
    from PIL import Image

    lines = (pilots.tub / "catalog_0.catalog").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return [(np.asarray(Image.open(pilots.tub / "images" / r["cam/image_array"])), r)
            for r in records]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fmt", donkey_pilots.FORMATS)
def test_the_feeder_builds_what_donkeycar_fed(pilots, kind, fmt):
    if kind in FLEX and fmt == "tflite":
        pytest.skip("DonkeyCar's own TfLite part cannot run these here (TensorFlow ops)")
    found = donkeytype.detect(*donkeytype.signature_of_h5(pilots.model(kind, "h5")))
    feeder = donkeytype.Feeder(found)
    fed = pilots.fed(kind, fmt)
    runs = pilots.run(kind, fmt)["runs"]
    got = pilots.got(kind, fmt)
    for n, (image, record) in enumerate(_tub_records(pilots)):
        mine = feeder.inputs(image.astype(np.float64) / 255.0, record)
        for name, values in fed.items():
            np.testing.assert_allclose(mine[name][0], values[n], rtol=0, atol=1e-7,
                                       err_msg=f"{name} at record {n}")
        said = runs[n] if runs else found.decode({k: v[n] for k, v in got.items()})
        feeder.ran(said)


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "latent"])
@pytest.mark.parametrize("fmt", donkey_pilots.FORMATS)
def test_decoded_heads_equal_donkeycars_pilot_run(pilots, kind, fmt):
    entry = pilots.run(kind, fmt)
    if entry["runs"] is None:
        pytest.skip(f"DonkeyCar's own part did not run it: {entry['error'][:80]}")
    found = donkeytype.detect(*donkeytype.signature_of_h5(pilots.model(kind, "h5")))
    got = pilots.got(kind, fmt)
    for n, theirs in enumerate(entry["runs"]):
        mine = found.decode({name: v[n] for name, v in got.items()},
                            throttle_range=pilots.reference["throttle_range"])
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-6, err_msg=f"record {n}")


def test_latent_heads_are_read_though_donkeycars_own_run_fails(pilots):
    # KerasLatent.interpreter_to_output indexes steering[0][0] of a (1,) array: DonkeyCar 5.3
    # raises there, so carvis reads n_outputs0/1 as the other linear pilots.
    assert pilots.run("latent", "h5")["error"].startswith("IndexError")
    found = donkeytype.detect(*donkeytype.signature_of_h5(pilots.model("latent", "h5")))
    got = pilots.got("latent", "h5")
    assert found.decode({k: v[0] for k, v in got.items()}) == (
        float(got["n_outputs0"][0][0]), float(got["n_outputs1"][0][0]))


def test_inferred_throttle_is_donkeycars_formula():
    from donkeycar.utils import throttle

    for angle in (-1.5, -1.0, -0.3, 0.0, 0.42, 1.0, 2.0):
        assert donkeytype.inferred_throttle(angle) == pytest.approx(throttle(angle), abs=1e-12)


# ------------------------------------------------------------------------ --type


def test_type_names_are_donkeycars_with_its_prefixes():
    assert donkeytype.TYPE_NAMES == ("linear", "categorical", "inferred", "memory", "imu",
                                     "behavior", "localizer", "rnn", "3d", "latent")
    assert donkeytype.type_name("tflite_categorical") == "categorical"
    assert donkeytype.type_name(" TensorRT_3D ") == "3d"
    with pytest.raises(CarvisError, match=r"^--type 'lstm' is not a DonkeyCar pilot type; use "
                                          r"one of linear, categorical, .*, 3d, latent$"):
        donkeytype.type_name("lstm")


def test_type_overrides_the_names_and_is_checked(pilots):
    inputs, outputs = donkeytype.signature_of_h5(pilots.model("linear", "h5"))
    assert donkeytype.detect(inputs, outputs, "tflite_linear").kind == "linear"
    with pytest.raises(CarvisError) as caught:
        donkeytype.detect(inputs, outputs, "imu", source="linear.h5")
    assert str(caught.value) == (
        "linear.h5: --type imu does not fit the model: it has one input besides the image "
        "(inputs img_in (120, 160, 3); outputs n_outputs0 (1,), n_outputs1 (1,))")
    rnn = donkeytype.signature_of_h5(pilots.model("rnn", "h5"))
    assert donkeytype.detect(*rnn, "3d").kind == "3d"  # the same inputs and outputs' shapes
    with pytest.raises(CarvisError, match="--type linear does not fit the model: it takes one "
                                          r"frame \(H, W, C\)"):
        donkeytype.detect(*rnn, "linear")


def test_without_donkeycars_names_the_shapes_decide_or_ask_for_type(pilots):
    inputs, outputs = _tflite_signature(pilots, "categorical")
    unnamed = [(f"StatefulPartitionedCall:{k}", s) for k, (_, s) in enumerate(outputs)][::-1]
    found = donkeytype.detect([("serving_default_input:0", inputs[0][1])], unnamed)
    assert found.kind == "categorical"
    assert [(h.output, h.meaning) for h in found.heads] == [
        ("StatefulPartitionedCall:0", "angle_bins"),
        ("StatefulPartitionedCall:1", "throttle_bins")]
    mem_inputs, _ = _tflite_signature(pilots, "memory")
    renamed = [("input_1", s) if len(s) == 3 else ("input_2", s) for _, s in mem_inputs]
    with pytest.raises(CarvisError) as caught:
        donkeytype.detect(renamed, [("a", (1,)), ("b", (1,))], source="pilot.tflite")
    assert str(caught.value) == (
        "pilot.tflite: its inputs (input_1 (120, 160, 3), input_2 (6,)) and outputs (a (1,), "
        "b (1,)) fit memory or imu; say which with --type (linear, categorical, inferred, "
        "memory, imu, behavior, localizer, rnn, 3d, latent)")
    assert donkeytype.detect(renamed, [("a", (1,)), ("b", (1,))], "memory").feeds[0].length == 3


def test_a_record_without_the_imu_values_is_one_line(pilots):
    found = donkeytype.detect(*donkeytype.signature_of_h5(pilots.model("imu", "h5")))
    with pytest.raises(CarvisError, match=r"^the pilot's input 'imu_in' is fed from the "
                                          r"record's imu/acl_x, .*, but the record has no "
                                          r"'imu/acl_x'; record it \(complete.py: HAVE_IMU"):
        donkeytype.Feeder(found).inputs(np.zeros((120, 160, 3)), {"user/angle": 0.1})


def test_detection_imports_no_tensorflow(pilots):
    import subprocess
    import sys

    from conftest import REPO

    path = str(pilots.model("behavior", "h5"))
    code = ("import sys\nfor name in ('tensorflow', 'keras', 'tf_keras'):\n"
            "    sys.modules[name] = None\n"
            "from carvis import donkeytype\n"
            f"print(donkeytype.detect(*donkeytype.signature_of_h5({path!r})).kind)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert (r.returncode, r.stdout.strip()) == (0, "behavior"), r.stderr[-2000:]


@pytest.mark.parametrize("kind", ["linear", "categorical"])
@pytest.mark.parametrize("mode,target", [("saliency", "predicted"), ("saliency", "left"),
                                         ("guided", "right"), ("gradcam", "predicted")])
def test_gradient_modes_on_litert_equal_tensorflow_on_donkeycars_pilots(
        pilots, kind, mode, target, tmp_path, monkeypatch):
    """makemovie's --salient pilots (linear, categorical), as DonkeyCar saves them: their
    gradient graph through built-in ops (strided 5x5 convs, ReLU Dense layers) on LiteRT gives
    TensorFlow's map on every record of the tub."""
    from carvis import explain
    from carvis.session import ModelSession

    monkeypatch.setenv("CARVIS_CACHE", str(tmp_path))
    path = pilots.model(kind, "h5")
    lite = ModelSession(path, backend="litert").explainer(mode, target, None, None)
    tf = ModelSession(path, backend="tensorflow").explainer(mode, target, None, None)
    assert (lite.backend, tf.backend) == ("litert", "tensorflow")
    assert isinstance(lite._forward, LiteRTModel)
    (images,) = pilots.fed(kind, "h5").values()  # the one input: the image
    for n in range(pilots.reference["records"]):
        batch = images[n:n + 1].astype(np.float32)
        a, b = lite(batch), tf(batch)
        assert b.map.max() > 0
        np.testing.assert_allclose(a.map, b.map, rtol=1e-4, atol=1e-4 * b.map.max(),
                                   err_msg=f"record {n}")
        np.testing.assert_allclose(a.prediction, b.prediction, atol=1e-5)
    assert explain.PREDICTION in lite._forward.output_names
