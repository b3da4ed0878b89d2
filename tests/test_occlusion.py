"""occlusion and rise (issue 22.2): forward-only causal maps, against hand-written numpy oracles
on a tiny linear pilot, on every backend (TensorFlow, LiteRT, onnxruntime)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from carvis import profile as prof
from carvis.errors import CarvisError
from carvis.session import ModelSession

H, W, C = 8, 12, 3


def _weights() -> tuple[np.ndarray, float]:
    rng = np.random.default_rng(3)
    return rng.normal(0, 1, (H, W, C)).astype(np.float32), 0.25


@pytest.fixture(scope="module")
def linear_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """y = sum(w * x) + b: Flatten → Dense(1), Keras 2 .h5."""
    K = pytest.importorskip("tf_keras")
    w, b = _weights()
    model = K.Sequential([K.layers.InputLayer(input_shape=(H, W, C)), K.layers.Flatten(),
                          K.layers.Dense(1, name="steering")])
    model.set_weights([w.reshape(-1, 1), np.array([b], np.float32)])
    path = tmp_path_factory.mktemp("lin") / "linear.h5"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def linear_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same linear pilot as an ONNX graph (NHWC, Flatten → MatMul → Add)."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    w, b = _weights()
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]),
         helper.make_node("MatMul", ["f", "w"], ["m"]),
         helper.make_node("Add", ["m", "b"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", H, W, C])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])],
        [numpy_helper.from_array(w.reshape(-1, 1), "w"),
         numpy_helper.from_array(np.array([b], np.float32), "b")])
    path = tmp_path_factory.mktemp("lin") / "linear.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _oracle_occlusion(x: np.ndarray, patch: int, stride: int, sign: float) -> np.ndarray:
    """By hand: each patch's score drop is sign * sum over the patch of w * (x - mean colour);
    a pixel's map is the mean over the patches covering it."""
    w, _ = _weights()
    fill = x.reshape(-1, C).mean(axis=0)
    total, count = np.zeros((H, W)), np.zeros((H, W))
    ys = sorted({*range(0, H - patch + 1, stride), H - patch})
    xs = sorted({*range(0, W - patch + 1, stride), W - patch})
    for y in ys:
        for x0 in xs:
            drop = sign * float((w[y:y + patch, x0:x0 + patch]
                                 * (x[y:y + patch, x0:x0 + patch] - fill)).sum())
            total[y:y + patch, x0:x0 + patch] += drop
            count[y:y + patch, x0:x0 + patch] += 1
    return total / count


def _sessions(linear_h5: Path, linear_onnx: Path) -> dict[str, ModelSession]:
    return {"tensorflow": ModelSession(linear_h5, backend="tensorflow"),
            "litert": ModelSession(linear_h5, backend="litert"),
            "onnxruntime": ModelSession(linear_onnx)}


@pytest.mark.parametrize("target", ["predicted", "left", "right"])
def test_occlusion_equals_a_hand_written_oracle_on_every_backend(linear_h5, linear_onnx,
                                                                 target):
    """22.2: occlusion's map (patch 3, stride 2) is the oracle's on TensorFlow, LiteRT and
    onnxruntime; TensorFlow takes the copies in one batch, LiteRT and onnxruntime one by one."""
    x = np.random.default_rng(4).uniform(0, 1, (1, H, W, C)).astype(np.float32)
    w, b = _weights()
    y = float((w * x[0]).sum() + b)
    sign = {"predicted": np.sign(y), "left": -1.0, "right": 1.0}[target]
    expected = _oracle_occlusion(x[0], 3, 2, sign)
    spots = len({*range(0, H - 2, 2), H - 3}) * len({*range(0, W - 2, 2), W - 3})
    for backend, session in _sessions(linear_h5, linear_onnx).items():
        explainer = session.explainer("occlusion", target, None, (3, 2))
        result = explainer(x)
        np.testing.assert_allclose(result.map, expected, rtol=1e-4, atol=1e-4,
                                   err_msg=backend)
        assert result.prediction[0] == pytest.approx(y, abs=1e-4)
        calls = {"tensorflow": 1, "onnxruntime": spots, "litert": spots}[backend]
        assert explainer.invokes == calls, backend


def test_rise_equals_a_hand_written_oracle(linear_h5, linear_onnx):
    """22.2: rise's map is sum_i (s_i - mean s) M_i / (N p) over its masks, s_i the linear
    pilot's score of x * M_i + mean colour * (1 - M_i), by hand."""
    x = np.random.default_rng(6).uniform(0, 1, (1, H, W, C)).astype(np.float32)
    w, b = _weights()
    for backend, session in _sessions(linear_h5, linear_onnx).items():
        explainer = session.explainer("rise", "right", None, (64, 3))
        result = explainer(x)
        masks = explainer._masks(H, W)
        assert masks.shape == (64, H, W) and 0.0 <= masks.min() and masks.max() <= 1.0
        fill = x[0].reshape(-1, C).mean(axis=0)
        copies = x[0] * masks[..., None] + fill * (1 - masks[..., None])
        scores = (copies * w).sum(axis=(1, 2, 3)) + b
        expected = np.tensordot(scores - scores.mean(), masks, axes=1) / (64 * 0.5)
        np.testing.assert_allclose(result.map, expected, rtol=1e-3, atol=1e-4,
                                   err_msg=backend)


def test_occlusion_settings_from_the_profile_are_checked():
    """22.2: occlusion: {patch, stride} and rise: {masks, cells} are profile keys, each checked
    in one line; a patch that does not fit the model's input is refused when built."""
    p = prof.parse({"occlusion": {"patch": 16, "stride": 8}, "rise": {"masks": 300}})
    assert p.occlusion == {"patch": 16, "stride": 8}
    assert p.rise == {"masks": 300, "cells": None}
    with pytest.raises(CarvisError) as err:
        prof.parse({"occlusion": {"patch": 0}}, source="car.yaml")
    assert str(err.value) == ("car.yaml: occlusion.patch = 0 is not valid; allowed range "
                              "1..4096")
    with pytest.raises(CarvisError) as err:
        prof.parse({"occlusion": {"size": 3}}, source="car.yaml")
    assert str(err.value) == ("car.yaml: unknown key occlusion.'size'; allowed keys: patch, "
                              "stride")


def test_occlusion_patch_larger_than_the_input_is_refused(linear_onnx):
    session = ModelSession(linear_onnx)
    with pytest.raises(CarvisError) as err:
        session.explainer("occlusion", "predicted", None, (9, 4))
    assert str(err.value) == (
        "mode 'occlusion' on ONNX model linear.onnx: occlusion patch 9, stride 4 does not fit "
        "the model's 12x8 input; give a patch up to 8 and a stride up to the patch (profile "
        "occlusion: {patch, stride})")



def test_render_builds_occlusion_from_the_profiles_keys():
    """22.2: render and run build occlusion with the profile's {patch, stride}: a patch that
    does not fit the input is refused there, and one that fits gives the explainer's map for
    those keys (not the default's)."""
    from carvis import pipeline
    from carvis.frame import Frame

    model = Path(__file__).parent / "data" / "gap_pilot.onnx"
    too_big = prof.parse({"mode": "occlusion", "occlusion": {"patch": 999, "stride": 4}})
    with pytest.raises(CarvisError, match="occlusion patch 999, stride 4 does not fit"):
        pipeline.make_renderer(ModelSession(model), too_big)
    session = ModelSession(model)
    p = prof.parse({"mode": "occlusion", "occlusion": {"patch": 6, "stride": 3}})
    maps = pipeline.make_renderer(session, p).maps
    frame = np.random.default_rng(5).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    got = maps.map_of(Frame(frame, 0, 0.0)).raw
    batch = maps.preprocess(maps.preprocess.roi(frame))
    want = session.explainer("occlusion", "predicted", None, (6, 3))(batch).map
    default = session.explainer("occlusion", "predicted", None, None)(batch).map
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert not np.allclose(got, default, rtol=1e-3)
