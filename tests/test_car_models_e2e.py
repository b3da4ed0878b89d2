"""Other car models (DonkeyCar, DAVE-2/PilotNet, Keras 2 .h5) with only --model and --layer."""

from __future__ import annotations

import cv2
import model_factory
import numpy as np
import pytest

from carvis import cli
from carvis import overlay as ov


@pytest.fixture(scope="module")
def track_frames(tmp_path_factory):
    from carvis.synthetic import SyntheticTrack

    folder = tmp_path_factory.mktemp("track")
    track = SyntheticTrack(width=320, height=240, seed=5)
    for i in range(3):
        cv2.imwrite(str(folder / f"frame{i}.png"), track.frame(i * 10))
    return folder


@pytest.fixture(scope="module")
def car_models(tmp_path_factory):
    pytest.importorskip("tf_keras", reason="tf-keras (the real Keras 2) is in the test extra")
    tmp = tmp_path_factory.mktemp("cars")
    rng = np.random.default_rng(7)
    donkey, _ = model_factory.donkey(tmp, rng)
    return {"donkey": donkey, "pilotnet": model_factory.pilotnet_bn(tmp, rng),
            "pilotnet_lambda": model_factory.pilotnet_lambda(tmp, rng)}


def _reference(case_model, frame: np.ndarray, layer: str) -> np.ndarray:
    """The generic profile by hand: whole frame, INTER_AREA to the input, RGB/255, mean map."""
    import tf_keras

    h, w = case_model.input_shape[1:3]
    x = cv2.cvtColor(cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    sub = tf_keras.Model(case_model.inputs, case_model.get_layer(layer).output)
    act = sub(x[None].astype(np.float32) / 255.0, training=False).numpy()[0]
    return ov.overlay(frame.copy(), act.mean(axis=-1), 80, "inferno")


@pytest.mark.parametrize("kind, second_conv", [("donkey", "conv2d_2"), ("pilotnet", "conv2d_2")])
def test_render_with_only_model_and_layer(kind, second_conv, car_models, track_frames, tmp_path):
    import tf_keras

    case = car_models[kind]
    out = tmp_path / "out"
    code = cli.main(["render", str(track_frames), "-o", str(out), "--quiet",
                     "--model", str(case.path), "--layer", "conv:2", "--scale", "1"])
    assert code == 0
    frames = sorted(out.glob("*.png"))
    assert len(frames) == 3
    reference_model = tf_keras.models.load_model(case.path, compile=False)
    for i, png in enumerate(frames):
        ours = cv2.imread(str(png))
        src = cv2.imread(str(track_frames / f"frame{i}.png"))
        assert ours.shape == src.shape  # generic profile: the whole frame comes out
        ref = _reference(reference_model, src, second_conv)
        differ = (np.abs(ours.astype(int) - ref.astype(int)).max(-1) > 0).mean()
        assert differ < 2e-3, f"{differ:.3%} of pixels differ from the Keras 2 reference"
        assert (ours != src).any(axis=-1).mean() > 0.01  # something lit up


def test_lambda_model_says_what_to_do_then_renders_with_identity(car_models, track_frames,
                                                                 tmp_path, capsys):
    case = car_models["pilotnet_lambda"]
    args = ["render", str(track_frames), "-o", str(tmp_path / "o"), "--quiet",
            "--model", str(case.path), "--layer", "conv:2"]
    assert cli.main(args) != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "lambda_1" in err and "--lambda identity" in err
    assert cli.main([*args, "--lambda", "identity"]) == 0
    assert len(list((tmp_path / "o").glob("*.png"))) == 3
