"""carvis in a DonkeyCar env made the way its users make it: numpy < 2 and opencv-contrib stay,
the part runs in a real vehicle loop on LiteRT, no TensorFlow, no second OpenCV; and on the Pi's
own runtime, tflite-runtime, with no ai-edge-litert at all."""

from __future__ import annotations

import json
import subprocess
import sys
import venv

import donkey_pilots
import numpy as np
import pytest
from conftest import REPO


def _donkey_env(tmp_path, name: str, *runtime: str):
    """A venv as DonkeyCar's users make it, with this LiteRT runtime (and what goes with it),
    and carvis the README's way (--no-deps, constraints/donkeycar.txt)."""
    if sys.version_info[:2] != (3, 11):
        pytest.skip("donkeycar 5.3 needs Python 3.11")
    env = tmp_path / name
    venv.create(env, with_pip=True)
    _pip(env, "donkeycar==5.3.0", "opencv-contrib-python==4.9.0.80", *runtime, "numpy<2")
    _pip(env, "--no-deps", "-e", str(REPO))
    _pip(env, "-c", str(REPO / "constraints" / "donkeycar.txt"), "pyyaml", "tqdm", "h5py", "av",
         "flatbuffers")
    return env


def _pip(env, *args: str) -> None:
    r = subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", *args], capture_output=True, text=True,
                       timeout=900, check=False)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.slow
def test_the_part_in_a_donkeycar_env_keeps_its_numpy_and_its_opencv(tmp_path):
    # What a DonkeyCar car has: donkeycar, its OpenCV (opencv-contrib-python 4.9) and LiteRT
    # (the successor of its tflite-runtime, the same Interpreter).
    env = _donkey_env(tmp_path, "donkey", "ai-edge-litert")
    listed = subprocess.run([str(env / "bin" / "python"), "-m", "pip", "list", "--format",
                             "json"], capture_output=True, text=True, check=True).stdout
    names = {p["name"].lower(): p["version"] for p in json.loads(listed)}
    opencvs = sorted(n for n in names if n.startswith("opencv"))
    assert opencvs == ["opencv-contrib-python"], opencvs
    assert names["numpy"].startswith("1."), names["numpy"]
    assert "tensorflow" not in names
    r = subprocess.run([str(env / "bin" / "python"), str(REPO / "tests" / "donkey_env_loop.py"),
                        str(REPO)], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["frames"] == 8 and result["shape"] == [120, 160, 3]
    assert result["changed"] > 0, "the overlay drew on the frames"
    assert result["numpy"].startswith("1.") and result["cv2"].startswith("4.9")
    assert result["tf"] is False


@pytest.mark.slow
def test_on_the_pis_tflite_runtime_carvis_gives_donkeycars_own_pilot_values(tmp_path_factory):
    """donkeycar[pi]'s runtime is tflite-runtime (2.14 has a wheel for CPython 3.11 on x86_64
    and aarch64): there carvis' wrapper, fed and read by carvis.donkeytype, says what
    DonkeyCar's own TfLite pilots say, record by record, for every type DonkeyCar converts to
    builtin ops (rnn and 3d keep TensorFlow ops that no LiteRT runtime runs); and where
    DonkeyCar's own memory pilot cannot run without TensorFlow, carvis still runs it."""
    pytest.importorskip("tf_keras", reason="DonkeyCar's pilots are built with tf-keras (Keras 2)")
    pytest.importorskip("donkeycar", reason="DonkeyCar builds its pilots: pip install --no-deps "
                        "donkeycar pyfiglet prettytable")
    pilots = donkey_pilots.build(tmp_path_factory.getbasetemp())
    # donkeycar[pi]'s runtime and the flatbuffers it pins; typing_extensions, which DonkeyCar's
    # pilots import (donkeycar/pipeline/types.py) without declaring it, comes on a Pi with the
    # extra's albumentations (pydantic), whose other packages (picamera2, RPi.GPIO, kivy) do
    # not install off a Pi
    env = _donkey_env(tmp_path_factory.mktemp("pi"), "donkey", "tflite-runtime",
                      "flatbuffers==24.3.*", "typing_extensions")
    r = subprocess.run([str(env / "bin" / "python"), str(REPO / "tests" / "donkey_env_runtime.py"),
                        str(REPO), str(pilots.root)], capture_output=True, text=True, timeout=600,
                       check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert (result["runtime"], result["tensorflow"], result["ai_edge_litert"]) == (
        "tflite-runtime", False, False)
    assert result["numpy"].startswith("1.")
    assert set(result["pilots"]) == {"linear", "categorical", "inferred", "memory", "imu",
                                     "behavior", "localizer"}
    for kind, seen in result["pilots"].items():
        assert (seen["runtime"], seen["type"]) == ("tflite-runtime", kind)
        # what DonkeyCar's own part said in the main env (ai-edge-litert), record by record
        np.testing.assert_allclose(seen["carvis"], pilots.run(kind, "tflite")["runs"],
                                   rtol=0, atol=1e-5, err_msg=kind)
        if kind == "memory":  # KerasMemory.run builds tf.TensorShapes: no TensorFlow, no run
            assert seen["error"] == "AttributeError: 'NoneType' object has no attribute " \
                                    "'TensorShape'"
            continue
        assert seen["error"] is None, (kind, seen["error"])
        np.testing.assert_allclose(seen["carvis"], seen["donkeycar"], rtol=0, atol=1e-6,
                                   err_msg=kind)
    assert result["pilots"]["behavior"]["pilot"] == "KerasBehavioral"
    # carvis reads the layers there too (it ships the TFLite schema tflite-runtime lacks) and
    # renders a several-input pilot with the car's config
    code, convs, err = result["layers"]
    assert code == 0 and len(convs) == 5 and "conv:5" in convs[-1], err
    code, lines = result["render"]
    assert code == 0, lines
    assert any("recorded vs predicted angle over 8 records" in line for line in lines), lines
