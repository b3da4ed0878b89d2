"""carvis score (issue 22.3): deletion / insertion put a map of what the model sees first and a
random map last; the command writes the table, the JSON and the plot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from carvis import profile as prof
from carvis import score
from carvis.session import ModelSession

pytest.importorskip("onnxruntime")
REPO = Path(__file__).resolve().parents[1]
H, W = 16, 32


@pytest.fixture(scope="module")
def left_eye(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A toy pilot that sees only the left half of its input: the mean squared Laplacian (the
    edges) of columns 0..15. Blurring its left half lowers its output; its right half never
    matters."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    lap = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float32)
    kernel = np.repeat(lap[None, None], 3, axis=1)  # (1 out, 3 in, 3, 3)
    consts = {"starts": [0], "ends": [W // 2], "axes": [2]}
    graph = helper.make_graph(
        [helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["left"]),
         helper.make_node("Transpose", ["left"], ["nchw"], perm=[0, 3, 1, 2]),
         helper.make_node("Conv", ["nchw", "k"], ["edges"], kernel_shape=[3, 3],
                          pads=[1, 1, 1, 1], name="/edges/Conv"),
         helper.make_node("Mul", ["edges", "edges"], ["energy"]),
         helper.make_node("ReduceMean", ["energy"], ["mean"], axes=[1, 2, 3], keepdims=1),
         helper.make_node("Flatten", ["mean"], ["y"])], "left_eye",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", H, W, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])],
        [numpy_helper.from_array(kernel, "k"),
         *(numpy_helper.from_array(np.array(v, np.int64), k) for k, v in consts.items())])
    path = tmp_path_factory.mktemp("toy") / "left_eye.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _frames(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(9)
    return [cv2.resize(rng.uniform(0, 1, (8, 16, 3)).astype(np.float32), (W, H),
                       interpolation=cv2.INTER_NEAREST) for _ in range(n)]


def test_score_ranks_a_left_half_map_first_and_random_last(left_eye):
    """22.3: on a pilot that sees the left half only, the left-half map beats a map that is
    half right, and the random map comes last (ranked by deletion; the left-half map is
    first on insertion too)."""
    profile = prof.generic().replace(layer="conv:1")
    scorer = score.Scorer(ModelSession(left_eye), profile, [])
    left = np.zeros((H, W), np.float32)
    left[:, : W // 2] = 1.0
    mixed = np.zeros((H, W), np.float32)
    mixed[: H // 2, :] = 1.0  # the top half: half of it is seen, half is not
    for frame in _frames(4):
        scorer.add_maps(frame, {"left-half": left, "top-half": mixed}, np.ones(1))
    report = scorer.report()
    order = [mode for mode, _ in score.ranked(report)]
    assert order == ["left-half", "top-half", "random"]
    modes = report["modes"]
    assert modes["left-half"]["deletion"] > modes["top-half"]["deletion"] > \
        modes["random"]["deletion"]
    assert modes["left-half"]["insertion"] > max(modes["top-half"]["insertion"],
                                                 modes["random"]["insertion"])
    assert modes["left-half"]["frames"] == modes["random"]["frames"] == 4
    assert len(modes["random"]["deletion_curve"]) == len(score.FRACTIONS) == 10


def test_deletion_curve_by_hand(left_eye):
    """22.3: one curve point by hand: the top 50% of a left-half ranking deletes exactly the
    left half, so the deletion at k = 50 is s(frame) - s(frame with its left half blurred)."""
    session = ModelSession(left_eye)
    runner = session.explainer("occlusion", "predicted", None, None)
    frame = _frames(1)[0]
    left = np.zeros((H, W), np.float32)
    left[:, : W // 2] = 1.0
    order = score.ranking(left, (H, W), np.random.default_rng(0))
    deletion, insertion = score.curves(frame, order, runner.predict, np.ones(1))
    blurred = score.blur(frame)
    half = frame.copy()
    half[:, : W // 2] = blurred[:, : W // 2]
    s = runner.predict(np.stack([frame, half, blurred]))[:, 0]
    assert deletion[-1] == pytest.approx(s[0] - s[1], rel=1e-5)
    assert insertion[-1] == pytest.approx(s[0] - s[2], rel=1e-5)  # left half back: all of it
    assert deletion[-1] > 0


def test_carvis_score_writes_table_json_and_plot(left_eye, tmp_path):
    """22.3: `carvis score MODEL SOURCE --modes ... --frames N -o X.json`: the method named,
    occlusion above random, the JSON's shape, a plot PNG beside it."""
    out = tmp_path / "score.json"
    result = subprocess.run(
        [sys.executable, "-m", "carvis.cli", "score", str(left_eye), "synthetic:frames=12",
         "--modes", "occlusion,activation", "--frames", "3", "--layer", "conv:1", "-o",
         str(out), "--quiet"], check=False, capture_output=True, text=True, cwd=REPO,
        env=os.environ.copy(), timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("deletion / insertion (Petsiuk et al., RISE, BMVC 2018)")
    report = json.loads(out.read_text())
    assert set(report["modes"]) == {"occlusion", "activation", "random"}
    assert report["parameters"]["fractions"][0] == 0.05
    assert report["parameters"]["occlusion"] == [3, 1]
    assert report["modes"]["occlusion"]["frames"] == 3
    assert report["modes"]["occlusion"]["deletion"] > report["modes"]["random"]["deletion"]
    picture = cv2.imread(str(out.with_suffix(".png")))
    assert picture is not None and picture.shape == (420, 960, 3)
    assert f"written {out} and {out.with_suffix('.png')}" in result.stdout


def test_carvis_score_refuses_an_unknown_mode_in_one_line(left_eye, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "carvis.cli", "score", str(left_eye), "synthetic:frames=3",
         "--modes", "occlusion,magic", "-o", str(tmp_path / "s.json")], check=False,
        capture_output=True, text=True, cwd=REPO, env=os.environ.copy(), timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        "carvis: error: --modes 'occlusion,magic': magic is not a mode; choose from activation")
