"""Every DonkeyCar pilot type rendered and run by carvis as DonkeyCar runs it (issue 21): the
angle and throttle carvis shows for each record of a tub equal what DonkeyCar's own
``pilot.run()`` gave, record by record, for the .h5 and DonkeyCar's .tflite; the parts take the
inputs DonkeyCar's vehicle template wires and drive the same in a real Vehicle loop; the car's
config sets the throttle range and the transformations its pilot sees."""

from __future__ import annotations

import re
import shutil
import textwrap

import cv2
import donkey_pilots
import numpy as np
import pytest

from carvis import cli, donkeyconfig, pilots, pipeline
from carvis import profile as prof
from carvis.errors import CarvisError
from carvis.session import ModelSession
from carvis.sources.tub import TubSource

pytest.importorskip("donkeycar.parts.tub_v2", reason="DonkeyCar is needed: pip install "
                    "--no-deps donkeycar pyfiglet prettytable")
pytest.importorskip("tf_keras", reason="DonkeyCar's pilots are built with tf-keras (Keras 2)")

RUN = [(k, f) for k in donkey_pilots.KINDS for f in ("h5", "tflite")
       if k != "latent" and not (k in ("rnn", "3d") and f == "tflite")]


@pytest.fixture(scope="session")
def pilots_built(tmp_path_factory) -> donkey_pilots.DonkeyPilots:
    return donkey_pilots.build(tmp_path_factory.getbasetemp())


def carvis_values(model, tub, config=None, type_name=None) -> list[list[float]]:
    """What carvis' HUD says for each record: angle, throttle (and a localizer's location)."""
    session = ModelSession(model)
    car = donkeyconfig.read(config) if config else None
    renderer = pipeline.make_renderer(session, prof.generic().replace(hud=True), fps=20.0,
                                      pilot=pilots.find(session, type_name, car))
    values = []
    for frame in TubSource(tub):
        renderer.render(frame)
        s = renderer.last_map.steering
        values.append([s.angle, s.throttle] + ([s.location] if s.location is not None else []))
    return values


@pytest.mark.parametrize("kind, fmt", RUN)
def test_each_pilot_type_says_what_donkeycars_own_pilot_run_says(pilots_built, kind, fmt):
    reference = pilots_built.run(kind, fmt)["runs"]
    got = carvis_values(pilots_built.model(kind, fmt), pilots_built.tub,
                        pilots_built.car / "config.py")
    np.testing.assert_allclose(got, reference, rtol=0, atol=1e-3, err_msg=f"{kind}.{fmt}")


def test_without_the_cars_config_a_categorical_throttle_uses_donkeycars_default_range(
        pilots_built):
    # cfg_complete's MODEL_CATEGORICAL_MAX_THROTTLE_RANGE is 0.8; without --config carvis
    # reads the bins over 0.5 (DonkeyCar's KerasCategorical default) and says so in numbers.
    reference = np.array(pilots_built.run("categorical", "tflite")["runs"])
    got = np.array(carvis_values(pilots_built.model("categorical", "tflite"), pilots_built.tub))
    np.testing.assert_allclose(got[:, 0], reference[:, 0], atol=1e-6)
    np.testing.assert_allclose(got[:, 1], reference[:, 1] * 0.5 / 0.8, atol=1e-6)


@pytest.mark.parametrize("kind", ["rnn", "3d"])
def test_a_flex_ops_tflite_is_one_line_and_its_h5_renders(pilots_built, kind, tmp_path, capsys):
    code = cli.main(["render", str(pilots_built.tub), "-o", str(tmp_path / "a"), "-q",
                     "--model", str(pilots_built.model(kind, "tflite"))])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("carvis: error")]
    assert code == 2 and len(err) == 1 and "give the .h5" in err[0]
    assert cli.main(["render", str(pilots_built.tub), "-o", str(tmp_path / "b"), "-q",
                     "--model", str(pilots_built.model(kind, "h5"))]) == 0
    assert len(list((tmp_path / "b").glob("*.png"))) == donkey_pilots.RECORDS


def test_a_several_input_pilot_is_mapped_in_activation_and_refuses_other_modes(
        pilots_built, tmp_path, capsys):
    code = cli.main(["render", str(pilots_built.tub), "-o", str(tmp_path / "a"), "-q",
                     "--model", str(pilots_built.model("imu", "tflite")), "--mode", "vbp"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == (
        "carvis: error: mode 'vbp' explains a single-input pilot; this imu pilot's steering "
        "also takes imu_in, so carvis maps it in activation mode (the layer's own response); "
        "use --mode activation")


def test_the_localizer_shows_its_location_on_the_hud(pilots_built, tmp_path):
    from carvis import hud

    values = carvis_values(pilots_built.model("localizer", "h5"), pilots_built.tub)
    assert all(len(v) == 3 for v in values)
    assert hud.label("predicted", pipeline.pilot.Steering(0.1, 0.2, location=3)) == \
        "predicted +0.10 thr 0.20 loc 3"


def test_the_type_flag_says_it_where_the_names_do_not(pilots_built, tmp_path, capsys):
    with pytest.raises(CarvisError, match="--type imu does not fit the model"):
        carvis_values(pilots_built.model("categorical", "tflite"), pilots_built.tub,
                      type_name="imu")
    got = carvis_values(pilots_built.model("inferred", "h5"), pilots_built.tub,
                        type_name="tflite_inferred")
    np.testing.assert_allclose(got, pilots_built.run("inferred", "h5")["runs"], atol=1e-3)


# ------------------------------------------------------------------ the car's config


def _car(tmp_path, text: str):
    folder = tmp_path / "car"
    folder.mkdir()
    (folder / "config.py").write_text(textwrap.dedent(text))
    return folder / "config.py"


def test_the_cars_transformations_are_what_its_pilot_sees(pilots_built, tmp_path):
    cv = pytest.importorskip("donkeycar.parts.cv")
    config = _car(tmp_path, """
        IMAGE_W = 160
        IMAGE_H = 120
        TRANSFORMATIONS = ["CROP", "BLUR"]
        ROI_CROP_TOP = 40
        ROI_CROP_LEFT = 10
        BLUR_KERNEL = 3
    """)
    session = ModelSession(pilots_built.model("linear", "tflite"))
    found = pilots.find(session, None, donkeyconfig.read(config))
    renderer = pipeline.make_renderer(session, prof.generic(), pilot=found)
    frame = next(iter(TubSource(pilots_built.tub)))
    rgb = cv2.cvtColor(frame.image, cv2.COLOR_BGR2RGB)
    expected = cv.ImgGaussianBlur(3).run(cv.ImgCropMask(10, 40, 0, 0).run(rgb))
    maker = renderer.maps
    batch = maker.preprocess(maker.preprocess.roi(frame.image))
    np.testing.assert_allclose(batch[0], expected.astype(np.float32) / 255.0, atol=1e-7)


def test_a_model_for_other_images_than_the_car_makes_is_one_line(pilots_built, tmp_path,
                                                                  capsys):
    config = _car(tmp_path, "IMAGE_W = 320\nIMAGE_H = 240\n")
    code = cli.main(["render", str(pilots_built.tub), "-o", str(tmp_path / "o"), "-q",
                     "--model", str(pilots_built.model("linear", "tflite")), "--config",
                     str(config)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == (
        "carvis: error: linear.tflite takes images of 160x120x3, but the car's config makes "
        "320x240x3 (config.py); give the config this model was trained with")


def test_where_keeps_the_records_asked_for(pilots_built, tmp_path, capsys):
    code = cli.main(["render", str(pilots_built.tub), "-o", str(tmp_path / "o"), "--model",
                     str(pilots_built.model("linear", "tflite")), "--where",
                     "behavior/label=Left_Lane"])
    err = capsys.readouterr().err
    kept = [r for r in TubSource(pilots_built.tub).records
            if r.get("behavior/label") == "Left_Lane"]
    assert code == 0 and 0 < len(kept) < donkey_pilots.RECORDS
    assert re.search(rf"\b{len(kept)} frames? written", err), err


# ------------------------------------------------------------------ the parts


@pytest.mark.parametrize("kind", ["imu", "behavior", "memory", "localizer"])
def test_the_pilot_part_takes_the_vehicle_templates_inputs_and_drives_the_same(
        pilots_built, kind):
    from donkeycar import vehicle

    from carvis.donkey import PilotOverlayPart

    part = PilotOverlayPart(pilots_built.model(kind, "tflite"),
                            config=pilots_built.car / "config.py")
    wires = {"imu": ("cam/image_array", "imu_array"),
             "behavior": ("cam/image_array", "behavior/one_hot_state_array"),
             "memory": ("cam/image_array",), "localizer": ("cam/image_array",)}
    assert part.inputs == wires[kind]
    records = list(TubSource(pilots_built.tub))

    class Tub:  # what complete.py puts on the vehicle's memory for each record
        def __init__(self) -> None:
            self.n = 0

        def run(self):
            frame = records[self.n]
            self.n += 1
            rgb = cv2.cvtColor(frame.image, cv2.COLOR_BGR2RGB)
            imu = [frame.record[k] for k in donkey_pilots.IMU_KEYS]
            return rgb, imu, frame.record["behavior/one_hot_state_array"]

    seen = []

    class Keep:
        def run(self, *values):
            seen.append(values[1:])

    car = vehicle.Vehicle()
    car.add(Tub(), outputs=["cam/image_array", "imu_array", "behavior/one_hot_state_array"])
    car.add(part, inputs=list(part.inputs), outputs=list(part.outputs))
    car.add(Keep(), inputs=list(part.outputs))
    car.start(rate_hz=500, max_loop_count=len(records))
    np.testing.assert_allclose(seen, pilots_built.run(kind, "tflite")["runs"], atol=1e-3)


def test_where_refuses_a_malformed_test(tmp_path, capsys):
    assert shutil.which("true") is not None
    code = cli.main(["render", "synthetic:frames=2", "-o", str(tmp_path / "o"), "--where",
                     "user/mode"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [("carvis: error: --where 'user/mode' is not KEY=VALUE or "
                                 "KEY!=VALUE; e.g. --where user/mode=local (the records the "
                                 "pilot drove)")]
