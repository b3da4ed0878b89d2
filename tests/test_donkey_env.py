"""carvis in a DonkeyCar env made the way its users make it: numpy < 2 and opencv-contrib stay,
the part runs in a real vehicle loop on LiteRT, no TensorFlow, no second OpenCV."""

from __future__ import annotations

import json
import subprocess
import sys
import venv

import pytest
from conftest import REPO


def _pip(env, *args: str) -> None:
    r = subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", *args], capture_output=True, text=True,
                       timeout=900, check=False)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.slow
def test_the_part_in_a_donkeycar_env_keeps_its_numpy_and_its_opencv(tmp_path):
    if sys.version_info[:2] != (3, 11):
        pytest.skip("donkeycar 5.3 needs Python 3.11")
    env = tmp_path / "donkey"
    venv.create(env, with_pip=True)
    # What a DonkeyCar car has: donkeycar, its OpenCV (opencv-contrib-python 4.9) and LiteRT
    # (the successor of its tflite-runtime, the same Interpreter).
    _pip(env, "donkeycar==5.3.0", "opencv-contrib-python==4.9.0.80", "ai-edge-litert", "numpy<2")
    # carvis the README's way for this env.
    _pip(env, "--no-deps", "-e", str(REPO))
    _pip(env, "-c", str(REPO / "constraints" / "donkeycar.txt"), "pyyaml", "tqdm", "h5py", "av")
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
