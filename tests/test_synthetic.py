"""The synthetic track generator, and the project's default model trained on it."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from carvis.synthetic import SyntheticTrack

MODELS = Path(__file__).resolve().parents[1] / "models"
HELD_OUT_SEED = 1234  # never used by scripts/train_default_model.py
MIN_LANE_RATIO = 5.0  # measured 15.2 on this seed (5.6 on the worst of 4 other new seeds)


def mad(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two images."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_frame_shape_and_dtype() -> None:
    for w, h in ((640, 480), (320, 240), (400, 300)):
        frame = SyntheticTrack(width=w, height=h, seed=3).frame(5)
        assert frame.shape == (h, w, 3)
        assert frame.dtype == np.uint8
        mask = SyntheticTrack(width=w, height=h, seed=3).lane_mask(5)
        assert mask.shape == (h, w) and mask.dtype == np.uint8


def test_deterministic_in_seed_and_index() -> None:
    a, b = SyntheticTrack(seed=5), SyntheticTrack(seed=5)
    b.frame(700)  # another call order must not change anything
    for i in (0, 1, 57, 300):
        np.testing.assert_array_equal(a.frame(i), b.frame(i))
        np.testing.assert_array_equal(a.lane_mask(i), b.lane_mask(i))
        assert a.steering(i) == b.steering(i)
    assert mad(a.frame(10), SyntheticTrack(seed=6).frame(10)) > 10


def test_consecutive_frames_look_like_video() -> None:
    track = SyntheticTrack(seed=2)
    for i in (0, 120, 450):
        step, far = (
            mad(track.frame(i), track.frame(i + 1)),
            mad(track.frame(i), track.frame(i + 90)),
        )
        assert 0 < step < 0.5 * far
        assert not np.array_equal(track.frame(i), track.frame(i + 1))
    steer = np.array([track.steering(i) for i in range(300)])
    assert np.abs(np.diff(steer)).max() < 0.1  # the label changes smoothly too


def test_steering_follows_the_curve() -> None:
    """Left curves (lanes bending left far ahead) steer negative, right curves positive."""
    steer, centroid = [], []
    for seed in (0, 4):
        track = SyntheticTrack(seed=seed)
        far = slice(int(track.horizon) + 4, int(track.horizon) + 40)
        for i in range(0, 900, 15):
            cols = np.nonzero(track.lane_mask(i)[far])[1]
            if len(cols) > 20:
                steer.append(track.steering(i))
                centroid.append(cols.mean() - track.width / 2)
            if abs(track.curvature(i)) > 0.4:
                assert np.sign(track.steering(i)) == -np.sign(track.curvature(i))
    assert np.corrcoef(steer, centroid)[0, 1] > 0.5
    assert min(steer) < -0.5 and max(steer) > 0.5


def test_lane_mask_covers_the_bright_tapes() -> None:
    for seed in (0, 1, 2, 3):
        track = SyntheticTrack(seed=seed)
        for i in (0, 200):
            mask = track.lane_mask(i)
            assert set(np.unique(mask)) <= {0, 255}
            on = mask > 0
            assert 0.01 < on.mean() < 0.25
            assert not on[: int(track.horizon)].any()  # nothing above the horizon
            grey = cv2.cvtColor(track.frame(i), cv2.COLOR_BGR2GRAY)
            floor = np.zeros_like(on)
            floor[int(track.horizon) + 2 :] = True
            assert grey[on].mean() > grey[floor & ~on].mean() + 40


def test_num_frames_bounds_the_track() -> None:
    track = SyntheticTrack(width=64, height=48, num_frames=3)
    assert len(list(track)) == 3
    with pytest.raises(IndexError):
        track.frame(3)
    with pytest.raises(IndexError):
        track.frame(-1)
    with pytest.raises(ValueError):
        SyntheticTrack(width=0)


def _crop(value: float, size: int) -> int:
    """A profile crop bound: ints are pixels, floats in [0, 1] fractions of the frame."""
    return round(value * size) if isinstance(value, float) else int(value)


def test_default_model_looks_at_the_lanes() -> None:
    """The committed default model's profile layer lights up the lane tapes on a new track."""
    keras = pytest.importorskip("keras")
    profile = yaml.safe_load((MODELS / "default.yaml").read_text())
    model = keras.models.load_model(MODELS / profile["model"], compile=False)
    assert model.count_params() < 100_000
    pre = profile["preprocess"]
    probe = keras.Model(model.input, model.get_layer(profile["layer"]).output)

    track = SyntheticTrack(seed=HELD_OUT_SEED)
    c = pre["crop"]
    top, bottom = _crop(c["top"], track.height), _crop(c["bottom"], track.height)
    left, right = _crop(c["left"], track.width), _crop(c["right"], track.width)
    assert pre["interpolation"] == "area" and pre["color"] == "rgb" and pre["smooth"] == 0
    frames = range(0, 900, 90)
    batch = []
    for i in frames:
        roi = track.frame(i)[top:bottom, left:right]
        small = cv2.resize(roi, tuple(pre["input_size"]), interpolation=cv2.INTER_AREA)
        rgb = cv2.cvtColor(small, cv2.COLOR_BGR2RGB).astype(np.float32)
        batch.append(rgb * np.float32(pre["scale"]) + np.float32(pre["offset"]))
    activation = np.asarray(probe(np.stack(batch)))
    channel = profile["channel"]
    if channel in ("mean", "max"):
        maps = getattr(activation, channel)(-1)
    else:
        maps = activation[..., int(channel)]
    on, off = [], []
    for i, a in zip(frames, maps):
        a = (a - a.min()) / max(float(a.max() - a.min()), 1e-12)
        up = cv2.resize(a, (right - left, bottom - top), interpolation=cv2.INTER_CUBIC)
        lane = track.lane_mask(i)[top:bottom, left:right] > 0
        on.append(up[lane].mean())
        off.append(up[~lane].mean())
    assert np.mean(on) / np.mean(off) > MIN_LANE_RATIO
