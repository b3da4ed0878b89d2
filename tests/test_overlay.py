"""Overlay functions against the same image computed from OpenCV/numpy primitives."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from carvis import overlay as ov
from carvis.errors import CarvisError


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def test_normalize_minmax_maps_to_0_255(rng):
    act = rng.normal(3.0, 2.0, (17, 62)).astype(np.float32)
    norm = ov.normalize_minmax(act)
    expected = (act - act.min()) / (act.max() - act.min()) * 255
    np.testing.assert_allclose(norm, expected, rtol=1e-5, atol=1e-3)
    assert norm.min() == 0 and norm.max() == pytest.approx(255, abs=1e-3)


def test_normalize_flat_map_is_zero_not_nan():
    norm = ov.normalize_minmax(np.full((4, 5), 7.0, np.float32))
    assert np.all(norm == 0)


def test_upsample_is_bicubic_rounded_and_saturated(rng):
    norm = ov.normalize_minmax(rng.random((17, 62)).astype(np.float32))
    up = ov.upsample(norm, (1800, 480))
    ref = cv2.resize(norm, (1800, 480), interpolation=cv2.INTER_CUBIC)
    assert up.dtype == np.uint8 and up.shape == (480, 1800)
    np.testing.assert_array_equal(up, np.clip(np.rint(ref), 0, 255).astype(np.uint8))
    # bicubic overshoots: the clamps really are exercised
    assert ref.min() < 0 and ref.max() > 255


def test_threshold_is_strictly_above():
    m = np.array([[79, 80, 81, 255]], np.uint8)
    np.testing.assert_array_equal(ov.threshold_mask(m, 80), [[0, 0, 255, 255]])


def test_colorize_matches_opencv_and_lut():
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_array_equal(ov.colorize(ramp, "inferno"),
                                  cv2.applyColorMap(ramp, cv2.COLORMAP_INFERNO))
    lut = ov.colormap_lut("jet")
    assert lut.shape == (256, 1, 3)
    np.testing.assert_array_equal(lut[:, 0], cv2.applyColorMap(ramp, cv2.COLORMAP_JET).reshape(-1, 3))


def test_unknown_colormap_lists_the_names():
    with pytest.raises(CarvisError, match="unknown colormap 'nope'.*inferno"):
        ov.colormap_id("nope")


def test_compose_equals_seed_merge(rng):
    roi = rng.integers(0, 256, (48, 180, 3), dtype=np.uint8)
    colored = rng.integers(0, 256, (48, 180, 3), dtype=np.uint8)
    mask = (rng.random((48, 180)) > 0.5).astype(np.uint8) * 255
    expected = cv2.add(cv2.bitwise_and(colored, colored, mask=mask), roi)
    np.testing.assert_array_equal(ov.compose(roi, colored, mask), expected)
    # in place on a view of a larger frame gives the same pixels and leaves the rest alone
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[10:58, 5:185] = roi
    ov.compose(frame[10:58, 5:185], colored, mask, out=frame[10:58, 5:185])
    np.testing.assert_array_equal(frame[10:58, 5:185], expected)
    assert frame[:10].sum() == 0 and frame[58:].sum() == 0


def test_overlay_class_equals_one_shot_and_reuses_buffers(rng):
    roi = rng.integers(0, 256, (120, 300, 3), dtype=np.uint8)
    act = rng.random((17, 62)).astype(np.float32)
    expected = ov.overlay(roi, act, threshold=100, colormap="turbo")
    o = ov.Overlay(threshold=100, colormap="turbo")
    first = o.apply(roi, ov.normalize_minmax(act)).copy()
    np.testing.assert_array_equal(first, expected)
    a = o.apply(roi, ov.normalize_minmax(act))
    b = o.apply(roi, ov.normalize_minmax(act))
    assert a is b  # the same output buffer every frame


def test_overlay_primitive_chain_by_hand(rng):
    """The whole chain spelled out with primitives, as the seed wrote it."""
    roi = rng.integers(0, 256, (96, 240, 3), dtype=np.uint8)
    act = np.maximum(rng.normal(0, 1, (8, 20)), 0).astype(np.float32)
    norm = (act - act.min()) / (act.max() - act.min()) * 255
    up = cv2.resize(norm.astype(np.float32), (240, 96), interpolation=cv2.INTER_CUBIC)
    up8 = np.clip(np.rint(up), 0, 255).astype(np.uint8)
    _, mask = cv2.threshold(up8, 80, 255, cv2.THRESH_BINARY)
    colored = cv2.applyColorMap(up8, cv2.COLORMAP_INFERNO)
    expected = cv2.add(cv2.bitwise_and(colored, colored, mask=mask), roi)
    np.testing.assert_array_equal(ov.overlay(roi, act, 80, "inferno"), expected)
    assert 0 < (mask > 0).mean() < 1  # the threshold really splits the picture


def test_select_channel(rng):
    act = rng.random((4, 5, 3)).astype(np.float32)
    np.testing.assert_array_equal(ov.select_channel(act, 1), act[..., 1])
    np.testing.assert_allclose(ov.select_channel(act, "mean"), act.mean(-1))
    np.testing.assert_array_equal(ov.select_channel(act, "max"), act.max(-1))
    with pytest.raises(CarvisError, match="channel 3 is out of range.*3 channels"):
        ov.select_channel(act, 3)


def test_fixed_and_running_normalisation(rng):
    fixed = ov.MapNormalizer("fixed", (0.0, 2.0))
    np.testing.assert_allclose(fixed(np.array([[0.0, 1.0, 4.0]], np.float32)),
                               [[0, 127.5, 255]])
    running = ov.MapNormalizer("running", decay=0.5)
    running(np.array([[0.0, 10.0]], np.float32))
    # the range remembers the previous max (10 * 0.5 = 5 > 2)
    np.testing.assert_allclose(running(np.array([[0.0, 2.0]], np.float32)), [[0, 102]])


def test_ema_smooths_over_frames():
    n = ov.MapNormalizer("fixed", (0.0, 1.0), ema=0.5)
    np.testing.assert_allclose(n(np.array([[1.0]], np.float32)), [[255]])
    np.testing.assert_allclose(n(np.array([[0.0]], np.float32)), [[127.5]])
    np.testing.assert_allclose(n(np.array([[0.0]], np.float32)), [[63.75]])
