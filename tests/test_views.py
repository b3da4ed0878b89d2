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


# --------------------------------------------------------------------------- bins


def expected_bins(canvas: np.ndarray, values: np.ndarray, box) -> np.ndarray:
    """The bar drawn with numpy slices only."""
    out = canvas.copy()
    best = int(np.argmax(values))
    for i, (bx0, by0, bx1, by1) in enumerate(views.bin_boxes(box, len(values))):
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


@pytest.mark.parametrize("shape, box", [((150, 1800, 3), (1200, 8, 1794, 142)),
                                        ((64, 160, 3), (100, 4, 154, 60))])
def test_bins_bar_pixels(shape, box):
    canvas = np.random.default_rng(2).integers(0, 255, shape, dtype=np.uint8)
    values = np.array([0.05, 0.1, 0.6, 0.15, 0.1])
    got = views.draw_bins(canvas.copy(), values, box)
    np.testing.assert_array_equal(got, expected_bins(canvas, values, box))


def test_bins_are_centred_left_to_right_in_their_box():
    boxes = views.bin_boxes((100, 0, 399, 50), 5)
    xs = [b[0] for b in boxes]
    assert xs == sorted(xs)
    assert abs((boxes[0][0] - 100) - (399 - boxes[-1][2])) <= 1


def test_logits_are_shown_as_probabilities():
    canvas = np.zeros((80, 300, 3), np.uint8)
    logits = np.array([2.0, 0.0, -1.0])
    p = np.exp(logits) / np.exp(logits).sum()
    box = (10, 10, 290, 70)
    np.testing.assert_array_equal(views.draw_bins(canvas.copy(), logits, box, softmax=False),
                                  expected_bins(canvas, p, box))


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
    again = sbs(left, right)
    assert again is not out and not np.shares_memory(again, out), "a new picture each call"


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


def test_the_dashboard_goes_below_the_picture_never_over_it():
    picture = np.random.default_rng(4).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    out = hud.SteeringHud()(picture, pilot.read(np.array([0.1, 0.2, 0.5, 0.2])),
                            Steering(0.1, 0.4), "record 7  0.35 s  mode user")
    layout = hud.panel_layout(picture.shape, bins=True)
    assert out.shape == (120 + layout.height, 160, 3)
    np.testing.assert_array_equal(out[:120], picture)
    assert not np.shares_memory(out, picture), "a new picture"
    assert hud.SteeringHud()(picture, None) is picture, "nothing to show: the picture as it is"


def test_lines_point_where_each_steers_and_throttle_sets_their_length():
    picture = np.zeros((240, 320, 3), np.uint8)
    layout = hud.panel_layout(picture.shape, bins=False)
    px, py = layout.pivot
    assert layout.top == 240 and layout.top < py < layout.top + layout.height
    assert hud.line_tip(layout, 0.0, None) == (px, py - layout.length)
    assert hud.line_tip(layout, 0.0, 0.0) == (px, py - round(layout.length * hud.MIN_LENGTH))
    x, y = hud.line_tip(layout, -1.0, 1.0)
    theta = math.radians(-hud.MAX_DEGREES)
    assert (x, y) == (round(px + layout.length * math.sin(theta)),
                      round(py - layout.length * math.cos(theta)))
    img = hud.SteeringHud()(picture, Steering(0.6, 0.5), Steering(-0.5, 0.8))
    for steering, colour in ((Steering(0.6, 0.5), hud.PREDICTED),
                             (Steering(-0.5, 0.8), hud.RECORDED)):
        tx, ty = hud.line_tip(layout, steering.angle, steering.throttle)
        mid = (round((px + tx) / 2), round((py + ty) / 2))
        lit = colour_mask(img, colour)
        assert lit[mid[1], mid[0]], f"{colour} line through its midpoint"
        xs = np.nonzero(lit[:py - 10, :layout.text_x])[1]
        assert np.sign(xs.mean() - px) == np.sign(steering.angle), "on its own side"


def test_legend_names_the_frame_then_both_lines_with_angle_and_throttle():
    assert hud.label("recorded", Steering(-0.4, 0.3)) == "recorded -0.40 thr 0.30"
    assert hud.label("predicted", Steering(0.125)) == "predicted +0.12"
    picture = np.zeros((240, 320, 3), np.uint8)
    caption = "record 12  0.60 s  mode user"
    img = hud.SteeringHud()(picture, Steering(0.2, 0.5), Steering(-0.4, 0.3), caption)
    layout = hud.panel_layout(picture.shape, bins=False)
    rows = [(caption, views.TEXT), ("recorded -0.40 thr 0.30", hud.RECORDED),
            ("predicted +0.20 thr 0.50", hud.PREDICTED)]
    expected = np.zeros_like(img)
    expected[:] = views.HUD_PANEL
    hud.legend(expected, rows, layout.text_x, layout.top, layout.height, layout.bins[0] - 8)
    text = (slice(layout.top, None), slice(layout.text_x, None))
    np.testing.assert_array_equal(img[text], expected[text])


def test_l_and_r_marks_sit_at_the_ends_of_the_arc():
    picture = np.zeros((240, 320, 3), np.uint8)
    img = hud.SteeringHud()(picture, Steering(0.0, 0.5), Steering(0.0, 0.5))
    layout = hud.panel_layout(picture.shape, bins=False)
    grey = (img.max(axis=-1) > 60) & (img.std(axis=-1) < 5)
    for side in (-1.0, 1.0):
        x, y = hud.line_tip(dataclasses.replace(layout, length=layout.length + 3), side, None)
        xs = slice(max(0, x - 14), x) if side < 0 else slice(x, x + 14)
        assert grey[y - 12:y + 2, xs].sum() > 4, f"a mark at the {'left' if side < 0 else 'right'}"


def test_bins_sit_in_the_panel_right_of_the_legend():
    picture = np.random.default_rng(5).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    bins = np.array([0.1, 0.2, 0.5, 0.2])
    throttle = np.array([0.6, 0.3, 0.1])
    img = hud.SteeringHud()(picture, Steering(0.0, 0.1, bins, throttle), Steering(0.1, 0.4))
    layout = hud.panel_layout(picture.shape, bins=True)
    x0, y0, x1, y1 = layout.bins
    assert x0 > layout.text_x and y0 >= layout.top
    band = (y1 - y0 + 1) // 2
    expected = views.draw_bins(img.copy(), bins, (x0, y0, x1, y0 + band - 4))
    expected = views.draw_bins(expected, throttle, (x0, y0 + band, x1, y0 + 2 * band - 4))
    np.testing.assert_array_equal(img[y0:y1 + 1, x0:x1 + 1], expected[y0:y1 + 1, x0:x1 + 1])


def test_strip_chart_plots_the_last_seconds_below_the_frame():
    chart = hud.StripChart(seconds=2.0, fps=10.0, height=60)
    frame = np.full((120, 160, 3), 40, np.uint8)
    predicted = [math.sin(k / 4) for k in range(30)]
    recorded = [None if 22 <= k < 26 else 0.5 for k in range(30)]
    pictures = [chart(frame, None if r is None else Steering(r, 0.4), Steering(p, -0.2))
                for r, p in zip(recorded, predicted, strict=True)]
    out = pictures[-1]
    assert out.shape == (180, 160, 3)
    np.testing.assert_array_equal(out[:120], frame)
    layout = chart.layout(frame.shape)
    assert layout.y(1.0) < layout.y(0.0) < layout.y(-1.0), "right (+1) at the top"
    # Counted at 10 fps the newest sample (29) is 2.9 s: the last 2 s are samples 9..29.
    assert [round(sample[0] * 10) for sample in chart.samples] == list(range(9, 30))
    blue = colour_mask(out, hud.PREDICTED)
    for k in range(9, 30):
        assert blue[layout.y(predicted[k]), layout.x((29 - k) / 10, 2.0)], f"sample {k}"
        assert blue[layout.y(-0.2, 1), layout.x((29 - k) / 10, 2.0)], f"throttle {k}"
    assert layout.y(-1.0, 0) < layout.y(1.0, 1), "the throttle band is below the angle band"
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
        out = chart(frame, Steering(0.5, 0.3), Steering(-0.5, 0.3), t)
    assert [sample[0] for sample in chart.samples] == times[30:]
    chart = hud.StripChart(seconds=5.0, fps=20.0, height=60)
    for t in times:
        out = chart(frame, Steering(0.5, 0.3), Steering(-0.5, 0.3), t)
    layout = chart.layout(frame.shape)
    green = colour_mask(out, hud.RECORDED)
    y = layout.y(0.5)
    before, after = layout.x(4.95 - 1.45, 5.0), layout.x(4.95 - 4.5, 5.0)
    assert green[y, before] and green[y, after]
    assert not green[y, before + 2:after - 1].any(), "a pause in the recording breaks the line"


def test_strip_chart_needs_a_span():
    with pytest.raises(CarvisError, match="seconds > 0"):
        hud.StripChart(seconds=0)
