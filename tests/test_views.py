"""Views: feature-map grid and filter images, steering HUD, side by side — expected pixels
computed from primitives (slices, kron, applyColorMap) where they can be."""

from __future__ import annotations

import dataclasses
import itertools
import math

import cv2
import numpy as np
import pytest

from carvis import hud, pilot, views
from carvis.errors import CarvisError
from carvis.pilot import Steering


def expected_tile(channel: np.ndarray, scale: int, cmap: int = cv2.COLORMAP_INFERNO
                  ) -> np.ndarray:
    a = channel.astype(np.float64)
    norm = (a - a.min()) / (a.max() - a.min()) * 255
    blocks = np.kron(np.rint(norm), np.ones((scale, scale))).astype(np.uint8)
    return cv2.applyColorMap(blocks, cmap)


@pytest.fixture
def activation() -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 3, (5, 7, 6)).astype(np.float32)


def test_grid_layout_positions():
    layout = views.GridLayout(n=5, cols=3, tile_w=20, tile_h=10, label_h=16, pad=4)
    assert layout.rows == 2
    assert layout.size == (4 + 3 * 24, 4 + 2 * (16 + 10 + 4))
    assert layout.tile_origin(0) == (4, 20)
    assert layout.tile_origin(2) == (4 + 2 * 24, 20)
    assert layout.tile_origin(4) == (4 + 24, 4 + 30 + 16)


def test_feature_grid_tiles_every_channel_with_a_label(activation):
    grid = views.feature_grid(activation, scale=3, cols=4)
    layout = views.GridLayout(6, 4, 21, 15)
    assert grid.shape == (layout.size[1], layout.size[0], 3)
    background = np.array(views.BACKGROUND, np.uint8)
    for k in range(6):
        x, y = layout.tile_origin(k)
        np.testing.assert_array_equal(grid[y:y + 15, x:x + 21],
                                      expected_tile(activation[:, :, k], 3))
        label = grid[y - layout.label_h:y, x:x + 21]
        assert (label != background).any(axis=-1).sum() > 5, f"tile {k} has a label"
        assert (grid[y:y + 15, x - 1] == background).all(), "tiles sit on the background"
    # The two empty cells of the second row are background only.
    x, y = layout.tile_origin(6)
    assert (grid[y - layout.label_h:y + 15, x:] == background).all()


def test_feature_grid_labels_are_the_channel_numbers(activation):
    grid = views.feature_grid(activation, scale=3, cols=4)
    layout = views.GridLayout(6, 4, 21, 15)
    x, y = layout.tile_origin(3)
    strip = np.full((layout.label_h, 21, 3), views.BACKGROUND, np.uint8)
    cv2.putText(strip, "3", (1, layout.label_h - 4), views.FONT, 0.4, views.TEXT, 1,
                cv2.LINE_AA)
    np.testing.assert_array_equal(grid[y - layout.label_h:y, x:x + 21], strip)


def test_feature_grid_title_and_bad_input(activation):
    titled = views.feature_grid(activation, scale=2, title="conv_2 (5, 7, 6)")
    plain = views.feature_grid(activation, scale=2)
    assert titled.shape[0] == plain.shape[0] + 22
    with pytest.raises(CarvisError, match="pick a conv layer"):
        views.feature_grid(np.zeros(10))


def test_grid_columns_follow_the_aspect():
    assert views.grid_columns(1, 10, 10) == 1
    assert views.grid_columns(4, 248, 68) == 1  # 1x4 is closest to 16:9
    assert views.grid_columns(16, 10, 10, aspect=1.0) == 4
    assert views.grid_columns(64, 32, 18, aspect=16 / 9) == 8


def test_filters_as_colour_images():
    rng = np.random.default_rng(1)
    kernel = rng.normal(0, 1, (3, 3, 3, 2)).astype(np.float32)
    img = views.filter_images(kernel, cell=48, rgb=True)
    layout = views.GridLayout(2, views.grid_columns(2, 48, 48), 48, 48)
    for o in range(2):
        f = kernel[:, :, :, o].astype(np.float64)
        rgb8 = np.rint((f - f.min()) / (f.max() - f.min()) * 255).astype(np.uint8)
        expected = np.kron(rgb8[:, :, ::-1], np.ones((16, 16, 1), np.uint8))
        x, y = layout.tile_origin(o)
        np.testing.assert_array_equal(img[y:y + 48, x:x + 48], expected)


def test_filters_of_a_one_channel_input_are_gray_tiles():
    kernel = np.arange(3 * 3 * 1 * 4, dtype=np.float32).reshape(3, 3, 1, 4)
    img = views.filter_images(kernel, cell=30)
    layout = views.GridLayout(4, views.grid_columns(4, 30, 30), 30, 30)
    x, y = layout.tile_origin(2)
    tile = img[y:y + 30, x:x + 30]
    np.testing.assert_array_equal(tile, expected_tile(kernel[:, :, 0, 2], 10,
                                                      cv2.COLORMAP_BONE))


# --------------------------------------------------------------------------- HUD


def expected_bins(frame: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The bar drawn with numpy slices only."""
    out = frame.copy()
    layout = views.bar_layout(frame.shape, len(values))
    x0, y0, x1, y1 = layout.panel
    out[y0:y1 + 1, x0:x1 + 1] = views.HUD_PANEL
    best = int(np.argmax(values))
    for i, (bx0, by0, bx1, by1) in enumerate(layout.boxes):
        rows = round(values[i] * (by1 - by0 + 1))
        if rows:
            out[by1 - rows + 1:by1 + 1, bx0:bx1 + 1] = (views.HUD_ARGMAX if i == best
                                                        else views.HUD_BIN)
        edge = views.HUD_ARGMAX if i == best else views.HUD_OUTLINE
        out[by0, bx0:bx1 + 1] = edge
        out[by1, bx0:bx1 + 1] = edge
        out[by0:by1 + 1, bx0] = edge
        out[by0:by1 + 1, bx1] = edge
    return out


@pytest.mark.parametrize("shape", [(480, 1800, 3), (120, 160, 3)])
def test_hud_bins_bar_pixels(shape):
    frame = np.random.default_rng(2).integers(0, 255, shape, dtype=np.uint8)
    values = np.array([0.05, 0.1, 0.6, 0.15, 0.1])
    expected = expected_bins(frame, values)
    got = views.draw_hud(frame.copy(), values, softmax=True)
    np.testing.assert_array_equal(got, expected)


def test_hud_bins_layout_is_centred_left_to_right():
    layout = views.bar_layout((480, 1800, 3), 5)
    xs = [box[0] for box in layout.boxes]
    assert xs == sorted(xs)
    left, right = layout.boxes[0][0], 1799 - layout.boxes[-1][2]
    assert abs(left - right) <= 1
    assert all(box[3] < 480 for box in layout.boxes)


def test_hud_logits_are_shown_as_probabilities():
    frame = np.zeros((200, 300, 3), np.uint8)
    logits = np.array([2.0, 0.0, -1.0])
    p = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_array_equal(views.draw_hud(frame.copy(), logits, softmax=False),
                                  expected_bins(frame, p))


def needle_pixels(img: np.ndarray) -> np.ndarray:
    return np.all(img == np.array(views.HUD_ARGMAX, np.uint8), axis=-1)


@pytest.mark.parametrize("value", [-1.0, -0.4, 0.0, 0.5, 2.0])
def test_hud_needle_points_where_the_model_steers(value):
    frame = np.zeros((240, 320, 3), np.uint8)
    img = views.draw_hud(frame.copy(), np.array([value]))
    pivot, tip, length = views.needle_geometry(frame.shape, value)
    theta = math.radians(max(-1, min(1, value)) * views.NEEDLE_MAX_DEGREES)
    assert tip == (round(pivot[0] + length * math.sin(theta)),
                   round(pivot[1] - length * math.cos(theta)))
    lit = needle_pixels(img)
    assert lit[tip[1], tip[0]], "the needle reaches its tip"
    mid = (round((pivot[0] + tip[0]) / 2), round((pivot[1] + tip[1]) / 2))
    assert lit[mid[1], mid[0]]
    mirror = (2 * pivot[0] - tip[0], tip[1])
    if abs(value) > 0.1:
        assert not lit[mirror[1], mirror[0]], "nothing on the other side"
        xs = np.nonzero(lit[: pivot[1] - 10])[1]
        assert np.sign(xs.mean() - pivot[0]) == np.sign(value)


def test_hud_without_prediction_leaves_the_frame():
    frame = np.full((50, 60, 3), 7, np.uint8)
    np.testing.assert_array_equal(views.draw_hud(frame.copy(), None), frame)


# --------------------------------------------------------------------------- side by side


def test_side_by_side_scales_the_right_to_the_left_height():
    rng = np.random.default_rng(3)
    left = rng.integers(0, 255, (120, 200, 3), dtype=np.uint8)
    right = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    sbs = views.SideBySide(gap=4)
    out = sbs(left, right)
    assert out.shape == (120, 200 + 4 + 160, 3)
    np.testing.assert_array_equal(out[:, :200], left)
    assert (out[:, 200:204] == 0).all()
    np.testing.assert_array_equal(out[:, 204:], cv2.resize(right, (160, 120),
                                                           interpolation=cv2.INTER_AREA))
    assert sbs(left, right) is out, "the buffer is reused for frames of the same size"


def test_side_by_side_labels_and_gray():
    left = np.zeros((100, 100, 3), np.uint8)
    right = np.full((100, 100), 200, np.uint8)
    out = views.side_by_side(left, right, labels=("frame", "vbp"))
    assert out.shape == (100, 204, 3)
    assert (out[60:, 104:] == 200).all(), "gray right image made BGR"
    assert (out[:20, :60] != 0).any() and (out[:20, 104:150] != 200).any(), "labels drawn"


# --------------------------------------------------------------------------- recorded vs predicted

def colour_mask(img: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return np.all(img == np.array(colour, np.uint8), axis=-1)


def test_lines_point_where_each_steers_and_throttle_sets_their_length():
    layout = hud.line_layout((240, 320, 3))
    px, py = layout.pivot
    assert hud.line_tip(layout, 0.0, None) == (px, py - layout.length)
    assert hud.line_tip(layout, 0.0, 0.0) == (px, py - round(layout.length * hud.MIN_LENGTH))
    x, y = hud.line_tip(layout, -1.0, 1.0)
    theta = math.radians(-views.NEEDLE_MAX_DEGREES)
    assert (x, y) == (round(px + layout.length * math.sin(theta)),
                      round(py - layout.length * math.cos(theta)))
    frame = np.zeros((240, 320, 3), np.uint8)
    img = hud.SteeringHud()(frame.copy(), Steering(0.6, 0.5), Steering(-0.5, 0.8))
    for steering, colour in ((Steering(0.6, 0.5), hud.PREDICTED),
                             (Steering(-0.5, 0.8), hud.RECORDED)):
        tx, ty = hud.line_tip(layout, steering.angle, steering.throttle)
        mid = (round((px + tx) / 2), round((py + ty) / 2))
        lit = colour_mask(img, colour)
        assert lit[mid[1], mid[0]], f"{colour} line through its midpoint"
        xs = np.nonzero(lit[:py - 10, :])[1]
        assert np.sign(xs.mean() - px) == np.sign(steering.angle), "on its own side"


def test_legend_labels_both_lines_with_angle_and_throttle():
    assert hud.label("recorded", Steering(-0.4, 0.3)) == "recorded -0.40 thr 0.30"
    assert hud.label("predicted", Steering(0.125)) == "predicted +0.12"
    frame = np.zeros((240, 320, 3), np.uint8)
    img = hud.SteeringHud()(frame.copy(), Steering(0.2, 0.5), Steering(-0.4, 0.3))
    rows = [("recorded -0.40 thr 0.30", hud.RECORDED), ("predicted +0.20 thr 0.50", hud.PREDICTED)]
    expected = np.zeros_like(frame)
    hud.legend(expected, rows, hud.line_layout(frame.shape).scale)
    panel = np.any(expected != 0, axis=-1)
    ys, xs = np.nonzero(panel)
    box = (slice(0, ys.max() + 1), slice(0, xs.max() + 1))
    np.testing.assert_array_equal(img[box], expected[box])


def test_l_and_r_marks_sit_at_the_ends_of_the_arc():
    frame = np.zeros((240, 320, 3), np.uint8)
    img = hud.SteeringHud()(frame.copy(), Steering(0.0, 0.5), Steering(0.0, 0.5))
    layout = hud.line_layout(frame.shape)
    grey = colour_mask(img, views.HUD_OUTLINE) | (img.max(axis=-1) > 60) & (
        img.std(axis=-1) < 5)
    for side in (-1.0, 1.0):
        x, y = hud.line_tip(dataclasses.replace(layout, length=layout.length + 4), side, None)
        xs = slice(x - 14, x) if side < 0 else slice(x, x + 14)
        assert grey[y - 12:y + 2, xs].sum() > 4, f"a mark at the {'left' if side < 0 else 'right'}"


def test_a_lone_steering_value_keeps_the_needle_and_bins_keep_the_bar():
    frame = np.random.default_rng(5).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    np.testing.assert_array_equal(hud.SteeringHud()(frame.copy(), Steering(0.3)),
                                  views.draw_needle(frame.copy(), 0.3))
    bins = np.array([0.1, 0.2, 0.5, 0.2])
    np.testing.assert_array_equal(hud.SteeringHud()(frame.copy(), pilot.read(bins)),
                                  views.draw_bins(frame.copy(), bins))
    with_record = hud.SteeringHud()(frame.copy(), pilot.read(bins), Steering(0.1, 0.4))
    bar = views.bar_layout(frame.shape, 4).panel
    np.testing.assert_array_equal(with_record[bar[1]:bar[3] + 1, bar[0]:bar[2] + 1],
                                  views.draw_bins(frame.copy(), bins)[bar[1]:bar[3] + 1,
                                                                      bar[0]:bar[2] + 1])
    assert hud.line_layout(frame.shape, 4).pivot[1] < bar[1], "the lines start above the bar"


def test_strip_chart_plots_the_last_seconds_below_the_frame():
    chart = hud.StripChart(seconds=2.0, fps=10.0, height=60)
    frame = np.full((120, 160, 3), 40, np.uint8)
    predicted = [math.sin(k / 4) for k in range(30)]
    recorded = [None if 22 <= k < 26 else 0.5 for k in range(30)]
    pictures = [chart(frame, r, p) for r, p in zip(recorded, predicted, strict=True)]
    out = pictures[-1]
    assert out.shape == (180, 160, 3)
    np.testing.assert_array_equal(out[:120], frame)
    layout = chart.layout(frame.shape)
    assert layout.y(1.0) < layout.y(0.0) < layout.y(-1.0), "right (+1) at the top"
    # Counted at 10 fps the newest sample (29) is 2.9 s: the last 2 s are samples 9..29.
    assert [round(t * 10) for t, _, _ in chart.samples] == list(range(9, 30))
    blue = colour_mask(out, hud.PREDICTED)
    for k in range(9, 30):
        assert blue[layout.y(predicted[k]), layout.x((29 - k) / 10, 2.0)], f"sample {k}"
    assert layout.x(0.0, 2.0) == layout.x1 and layout.x(2.0, 2.0) == layout.x0
    green = colour_mask(out, hud.RECORDED)
    y = layout.y(0.5)
    # samples 22..25 are missing: nothing green between 21 and 26
    gap = range(layout.x(0.8, 2.0) + 1, layout.x(0.3, 2.0))
    assert not green[:, list(gap)].any(), "a missing recorded value breaks the line"
    assert green[y, layout.x(2.0, 2.0)] or green[y, layout.x(1.9, 2.0)]
    # Every call is a new picture: a writer thread may still be reading the last one.
    assert not any(np.shares_memory(a, b) for a, b in itertools.pairwise(pictures))


def test_strip_chart_keeps_seconds_of_the_sources_own_clock():
    chart = hud.StripChart(seconds=1.0, fps=20.0, height=60)
    frame = np.full((120, 160, 3), 40, np.uint8)
    # A tub at 20 fps whose recording paused 3 s after its 30th record: the window is one
    # second of timestamps, not 20 samples, and the pause breaks the lines.
    times = [k / 20 for k in range(30)] + [4.5 + k / 20 for k in range(10)]
    for t in times:
        out = chart(frame, 0.5, -0.5, t)
    assert [t for t, _, _ in chart.samples] == times[30:]
    chart = hud.StripChart(seconds=5.0, fps=20.0, height=60)
    for t in times:
        out = chart(frame, 0.5, -0.5, t)
    layout = chart.layout(frame.shape)
    green = colour_mask(out, hud.RECORDED)
    y = layout.y(0.5)
    before, after = layout.x(4.95 - 1.45, 5.0), layout.x(4.95 - 4.5, 5.0)
    assert green[y, before] and green[y, after]
    assert not green[y, before + 2:after - 1].any(), "a pause in the recording breaks the line"


def test_strip_chart_needs_a_span():
    with pytest.raises(CarvisError, match="seconds > 0"):
        hud.StripChart(seconds=0)
