"""The car's config.py with myconfig.py on top, read without running them, against DonkeyCar's
own ``dk.load_config`` (which exec's them) on DonkeyCar's own cfg_complete.py."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from carvis import donkeyconfig
from carvis.errors import CarvisError

dk = pytest.importorskip("donkeycar", reason="DonkeyCar is needed: pip install --no-deps "
                         "donkeycar pyfiglet prettytable")
CFG_COMPLETE = Path(dk.__file__).parent / "templates" / "cfg_complete.py"
# cfg_complete.py's keys that need code carvis does not run (os.path, os.getenv)
OS_KEYS = {"CAR_PATH", "PACKAGE_PATH", "DATA_PATH", "MODELS_PATH", "WEB_CONTROL_PORT"}

MYCONFIG = """\
# a car's overrides, as `donkey createcar` users write them
MODEL_CATEGORICAL_MAX_THROTTLE_RANGE = 0.5
ROI_CROP_TOP = 40
TRANSFORMATIONS = ['CROP']
POST_TRANSFORMATIONS = ["RESIZE"]
_half = 224 // 2
IMAGE_W = _half * 2
IMAGE_H = int(168.0)
RESIZE_WIDTH, RESIZE_HEIGHT = 200, 66
SEQUENCE_LENGTH = 5 if IMAGE_W > 200 else 3
BEHAVIOR_LIST = ['Left_Lane', 'Right_Lane', "Center"]
BEHAVIOR_LIST += ["Stop"]
GYM = {"a": 1}
GYM["b"] = -(2 ** 3)
ROI_TRAPEZE_UL = max(10, 20) - abs(-5)
"""


def load_config_in_donkeycar(config: Path) -> dict:
    """Every UPPERCASE key dk.load_config gives, from a child process (it exec's the files)."""
    out = config.parent / "donkeycar-config.pickle"
    code = textwrap.dedent(f"""
        import pickle, sys, io
        sys.stdout = io.StringIO()  # its banner
        import donkeycar as dk
        cfg = dk.load_config({str(config)!r})
        keys = {{k: getattr(cfg, k) for k in dir(cfg) if k.isupper()}}
        with open({str(out)!r}, "wb") as fh:
            pickle.dump(keys, fh)
        """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "LOGLEVEL": "ERROR"}, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    with open(out, "rb") as fh:
        return pickle.load(fh)


@pytest.fixture
def car(tmp_path) -> Path:
    """A car folder: DonkeyCar's cfg_complete.py as config.py (what `donkey createcar` does)."""
    folder = tmp_path / "mycar"
    folder.mkdir()
    shutil.copyfile(CFG_COMPLETE, folder / "config.py")
    return folder


def test_cfg_complete_reads_as_donkeycar_reads_it(car):
    theirs = load_config_in_donkeycar(car / "config.py")
    mine = donkeyconfig.read(car)
    assert set(mine.unread) == OS_KEYS
    assert all(why.startswith("config.py line ") for why in mine.unread.values())
    assert set(mine.values) | OS_KEYS == set(theirs)
    assert {k: theirs[k] for k in mine.values} == mine.values
    assert mine.myconfig is None


def test_defaults_are_cfg_complete_values():
    values, _ = donkeyconfig.read_file(CFG_COMPLETE)
    assert {k: values.get(k, 0 if k == "MEM_DEPTH" else None)
            for k in donkeyconfig.DEFAULTS} == donkeyconfig.DEFAULTS


def test_myconfig_goes_on_top_as_in_donkeycar(car):
    (car / "myconfig.py").write_text(MYCONFIG)
    theirs = load_config_in_donkeycar(car / "config.py")
    mine = donkeyconfig.read(car / "config.py")
    assert mine.myconfig == car / "myconfig.py"
    assert {k: theirs[k] for k in mine.values} == mine.values
    assert set(mine.unread) == OS_KEYS
    assert mine.throttle_range == 0.5 and mine.where("MODEL_CATEGORICAL_MAX_THROTTLE_RANGE") == \
        "myconfig.py"
    assert mine.image_shape == (168, 224, 3)
    assert mine.get("SEQUENCE_LENGTH") == 5
    assert mine.get("BEHAVIOR_LIST") == ["Left_Lane", "Right_Lane", "Center", "Stop"]
    assert mine.get("GYM") == {"a": 1, "b": -8}
    assert mine.get("ROI_TRAPEZE_UL") == 15
    assert mine.transformations() == [
        ("CROP", {"ROI_CROP_LEFT": 0, "ROI_CROP_TOP": 40, "ROI_CROP_RIGHT": 0,
                  "ROI_CROP_BOTTOM": 0}),
        ("RESIZE", {"RESIZE_WIDTH": 200, "RESIZE_HEIGHT": 66})]
    assert mine.where("ROI_CROP_BOTTOM") == "config.py"


def test_keys_neither_file_sets_have_donkeycars_defaults(tmp_path):
    (tmp_path / "config.py").write_text("IMAGE_W = 320\n")
    mine = donkeyconfig.read(tmp_path / "config.py")
    assert mine.image_shape == (120, 320, 3)
    assert mine.where("IMAGE_H") == "DonkeyCar 5.3's cfg_complete.py"
    assert mine.throttle_range == 0.8
    with pytest.raises(CarvisError, match=r"^NOT_A_KEY is set in neither .*config.py nor its "
                                          r"myconfig.py, and DonkeyCar 5.3's cfg_complete.py "
                                          "has no default for it$"):
        mine.get("NOT_A_KEY")


def test_no_code_from_the_files_runs(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "config.py").write_text(textwrap.dedent(f"""\
        import os
        IMAGE_W = 200
        THROTTLE = open({str(marker)!r}, "w").write("x")
        HOST = os.system("touch {marker}")
        print("hello")
        if True:
            IMAGE_H = 99
        def f():
            return 1
        SPEED = f()
        LOOP_HZ = [x for x in range(3)]
        """))
    mine = donkeyconfig.read(tmp_path)
    assert not marker.exists()
    assert mine.get("IMAGE_W") == 200
    assert mine.unread == {
        "THROTTLE": "config.py line 3: calls open, which carvis does not run",
        "HOST": "config.py line 4: calls os.system, which carvis does not run",
        "IMAGE_H": "config.py line 6: inside a if statement carvis does not run (it evaluates "
                   "assignments only)",
        "SPEED": "config.py line 10: calls f, which carvis does not run",
        "LOOP_HZ": "config.py line 11: [x for x in range(3)] is not a value carvis evaluates"}
    with pytest.raises(CarvisError) as caught:
        mine.get("IMAGE_H")
    assert str(caught.value) == (
        "IMAGE_H in the car's config is not read: config.py line 6: inside a if statement "
        "carvis does not run (it evaluates assignments only); write the value there as a literal")


def test_an_unread_myconfig_key_never_falls_back_to_config_py(car):
    (car / "myconfig.py").write_text(
        "import os\nMODEL_CATEGORICAL_MAX_THROTTLE_RANGE = float(os.environ['T'])\n"
        "ROI_CROP_TOP = IMAGE_H // 2\n")
    mine = donkeyconfig.read(car)
    with pytest.raises(CarvisError, match=r"^MODEL_CATEGORICAL_MAX_THROTTLE_RANGE in the car's "
                                          r"config is not read: myconfig.py line 2: uses os, "
                                          "which carvis did not read; write the value"):
        _ = mine.throttle_range
    # DonkeyCar runs myconfig.py on its own: IMAGE_H is not defined there (it fails too)
    assert mine.unread["ROI_CROP_TOP"] == ("myconfig.py line 3: uses IMAGE_H, which this file "
                                           "does not set before it (DonkeyCar runs each file on "
                                           "its own)")


def test_sizes_are_checked_before_memory_is_taken(tmp_path):
    (tmp_path / "config.py").write_text("A = 'x' * 10 ** 9\nB = 2 ** 10 ** 8\nC = [0] * 50\n")
    mine = donkeyconfig.read(tmp_path)
    assert mine.unread["A"] == ("config.py line 1: a sequence of 1000000000 items is more than "
                                "a config needs")
    assert mine.unread["B"] == "config.py line 2: a power of 100000000 is more than a config needs"
    assert mine.get("C") == [0] * 50


def test_custom_and_unknown_transformations_are_one_line(tmp_path):
    (tmp_path / "config.py").write_text("TRANSFORMATIONS = ['CUSTOM_CROP']\n")
    with pytest.raises(CarvisError, match=r"^TRANSFORMATIONS has 'CUSTOM_CROP', a transformation "
                                          r"the car runs from its own code \(CUSTOM_CROP_MODULE\)"
                                          "; carvis does not run it$"):
        donkeyconfig.read(tmp_path).transformations()
    (tmp_path / "config.py").write_text("POST_TRANSFORMATIONS = ['SHARPEN']\n")
    with pytest.raises(CarvisError, match=r"^POST_TRANSFORMATIONS has 'SHARPEN', which is not one "
                                          r"of DonkeyCar's transformations \(CROP, TRAPEZE, "):
        donkeyconfig.read(tmp_path).transformations()


def test_a_missing_or_broken_file_is_one_line(tmp_path):
    with pytest.raises(CarvisError, match=r"^.*nowhere: no such config file; give the car's "
                                          r"config.py or its folder \(--config "):
        donkeyconfig.read(tmp_path / "nowhere")
    (tmp_path / "config.py").write_text("IMAGE_W = = 3\n")
    with pytest.raises(CarvisError, match=r"config.py line 1: not valid Python \(invalid syntax\)"
                                          "; DonkeyCar cannot read it either$"):
        donkeyconfig.read(tmp_path)
