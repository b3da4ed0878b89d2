"""Regenerate the golden overlay crops (only when the method changes on purpose).

    .venv/bin/python tests/make_golden.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).parent))
from conftest import AXIONAUT, REPO
from test_axionaut_e2e import GOLDEN, GOLDEN_CROPS

from carvis import cli

with tempfile.TemporaryDirectory() as tmp:
    assert cli.main(["render", str(AXIONAUT / "frames"), "-o", tmp, "--quiet", "--model",
                     str(AXIONAUT / "autopilot.hdf5"), "--profile",
                     str(REPO / "models" / "axionaut.yaml")]) == 0
    files = sorted((AXIONAUT / "frames").glob("*.jpg"), key=lambda p: int(p.stem[5:]))
    GOLDEN.mkdir(exist_ok=True)
    for name, (rows, cols) in GOLDEN_CROPS.items():
        index = [p.name for p in files].index(name)
        image = cv2.imread(str(Path(tmp) / f"{index:06d}.png"))
        target = GOLDEN / f"axionaut_{Path(name).stem}.png"
        cv2.imwrite(str(target), image[rows, cols])
        print("wrote", target)
