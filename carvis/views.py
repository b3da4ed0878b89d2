"""Pictures other than the overlay: a layer's feature maps as a labelled grid, the first
layer's filters as images, a bar of bins, two images side by side.

Pure functions on numpy arrays, drawn with OpenCV; no matplotlib.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import cv2
import numpy as np

from carvis.errors import CarvisError
from carvis.overlay import colormap_id

FONT = cv2.FONT_HERSHEY_SIMPLEX
BACKGROUND = (32, 32, 32)      # grid background and label strips (BGR)
TEXT = (235, 235, 235)
HUD_PANEL = (24, 24, 24)
HUD_BIN = (200, 160, 60)       # a bin's fill
HUD_ARGMAX = (0, 220, 255)     # the predicted bin's fill and outline
HUD_OUTLINE = (160, 160, 160)


# --------------------------------------------------------------------------- grids


@dataclasses.dataclass(frozen=True)
class GridLayout:
    """Where each tile of a grid goes: tiles of tile_w × tile_h under a label strip."""

    n: int
    cols: int
    tile_w: int
    tile_h: int
    label_h: int = 16
    pad: int = 4
    title_h: int = 0

    @property
    def rows(self) -> int:
        return math.ceil(self.n / self.cols)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the whole grid image."""
        w = self.pad + self.cols * (self.tile_w + self.pad)
        h = self.title_h + self.pad + self.rows * (self.label_h + self.tile_h + self.pad)
        return w, h

    def tile_origin(self, k: int) -> tuple[int, int]:
        """(x, y) of the top-left pixel of tile k (its label strip is just above)."""
        row, col = divmod(k, self.cols)
        x = self.pad + col * (self.tile_w + self.pad)
        y = self.title_h + self.pad + row * (self.label_h + self.tile_h + self.pad) + self.label_h
        return x, y


def grid_columns(n: int, tile_w: int, tile_h: int, aspect: float = 16 / 9) -> int:
    """Columns that make a grid of n tiles closest to the aspect ratio (width / height)."""
    if n <= 0:
        raise CarvisError("a grid needs at least one tile")
    best, best_err = 1, math.inf
    for cols in range(1, n + 1):
        rows = math.ceil(n / cols)
        err = abs(math.log((cols * tile_w) / (rows * tile_h) / aspect))
        if err < best_err - 1e-9:
            best, best_err = cols, err
    return best


def tile_grid(tiles: Sequence[np.ndarray], labels: Sequence[str] | None = None,
              cols: int | None = None, title: str | None = None, label_h: int = 16,
              pad: int = 4) -> np.ndarray:
    """Tiles (all the same size, BGR uint8) laid out in a grid with a label above each."""
    if not tiles:
        raise CarvisError("a grid needs at least one tile")
    th, tw = tiles[0].shape[:2]
    cols = cols or grid_columns(len(tiles), tw, th)
    layout = GridLayout(len(tiles), cols, tw, th, label_h=label_h if labels else 0, pad=pad,
                        title_h=22 if title else 0)
    w, h = layout.size
    if title:
        w = max(w, 8 + _text_width(title, 0.5) + 8)
    grid = np.empty((h, w, 3), np.uint8)
    grid[:] = BACKGROUND
    if title:
        cv2.putText(grid, title, (6, 16), FONT, 0.5, TEXT, 1, cv2.LINE_AA)
    for k, tile in enumerate(tiles):
        x, y = layout.tile_origin(k)
        grid[y:y + th, x:x + tw] = tile
        if labels:
            cv2.putText(grid, str(labels[k]), (x + 1, y - 4), FONT, 0.4, TEXT, 1, cv2.LINE_AA)
    return grid


def _text_width(text: str, scale: float) -> int:
    (w, _), _ = cv2.getTextSize(text, FONT, scale, 1)
    return int(w)


def tile_scale(h: int, w: int, target_width: int = 240) -> int:
    """Whole-number upscale factor that brings a w-wide map near target_width (at least 1)."""
    return max(1, round(target_width / max(w, 1)))


def channel_tile(channel: np.ndarray, scale: int, cmap: int) -> np.ndarray:
    """One channel: min–max to 0..255 (rounded), nearest upscale by scale, colormapped."""
    a = np.asarray(channel, np.float32)
    lo, hi = float(a.min()), float(a.max())
    norm = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    map8 = np.clip(np.rint(norm), 0, 255).astype(np.uint8)
    if scale > 1:
        map8 = cv2.resize(map8, (a.shape[1] * scale, a.shape[0] * scale),
                          interpolation=cv2.INTER_NEAREST)
    return cv2.applyColorMap(map8, cmap)


def feature_grid(activation: np.ndarray, colormap: str = "inferno", scale: int | None = None,
                 cols: int | None = None, title: str | None = None) -> np.ndarray:
    """All channels of an (h, w, c) activation, each min–max normalised, tiled with labels."""
    act = np.asarray(activation)
    if act.ndim == 4 and act.shape[0] == 1:
        act = act[0]
    if act.ndim != 3:
        raise CarvisError(f"a feature grid needs an (h, w, channels) activation, got shape "
                          f"{act.shape}; pick a conv layer")
    h, w, c = act.shape
    scale = scale or tile_scale(h, w)
    cmap = colormap_id(colormap)
    tiles = [channel_tile(act[:, :, k], scale, cmap) for k in range(c)]
    return tile_grid(tiles, [f"{k}" for k in range(c)], cols, title)


def filter_images(kernel: np.ndarray, cell: int = 48, rgb: bool = False,
                  title: str | None = None) -> np.ndarray:
    """A conv kernel (kh, kw, in, out) as images: colour per filter if in == 3, else one gray
    tile per (filter, input channel); each tile min–max normalised, nearest upscaled."""
    k = np.asarray(kernel, np.float32)
    if k.ndim != 4:
        raise CarvisError(f"filters need a conv kernel (kh, kw, in, out), got shape {k.shape}")
    kh, kw, cin, cout = k.shape
    scale = max(1, cell // max(kh, kw))
    size = (kw * scale, kh * scale)
    tiles, labels = [], []
    for o in range(cout):
        f = k[:, :, :, o]
        if cin == 3:
            lo, hi = float(f.min()), float(f.max())
            img = np.clip(np.rint((f - lo) * (255.0 / (hi - lo)) if hi > lo else f * 0), 0, 255
                          ).astype(np.uint8)
            if rgb:  # the model sees RGB: show the filter in the display's BGR order
                img = img[:, :, ::-1].copy()
            tiles.append(cv2.resize(img, size, interpolation=cv2.INTER_NEAREST))
            labels.append(f"f{o}")
        else:
            for i in range(cin):
                gray = channel_tile(f[:, :, i], 1, cv2.COLORMAP_BONE)
                tiles.append(cv2.resize(gray, size, interpolation=cv2.INTER_NEAREST))
                labels.append(f"f{o}/c{i}" if cin > 1 else f"f{o}")
    return tile_grid(tiles, labels, None, title)


# --------------------------------------------------------------------------- bins


@functools.lru_cache(maxsize=32)
def bin_boxes(box: tuple[int, int, int, int], n: int, gap: int = 2
              ) -> tuple[tuple[int, int, int, int], ...]:
    """n boxes of equal width side by side, centred in box (x0, y0, x1, y1, inclusive)."""
    x0, y0, x1, y1 = box
    room = x1 - x0 + 1
    if n * 3 + (n - 1) * gap > room:  # many bins in a narrow panel: thinner gaps, then boxes
        gap = max(0, min(gap, (room - 2 * n) // max(n - 1, 1)))
    box_w = max(1, min(48, (room - (n - 1) * gap) // max(n, 1)))
    total = n * box_w + (n - 1) * gap
    left = x0 + (x1 - x0 + 1 - total) // 2
    return tuple((left + i * (box_w + gap), y0, left + i * (box_w + gap) + box_w - 1, y1)
                 for i in range(n))


def bin_fill_rows(value: float, box_h: int) -> int:
    """How many rows of a box a bin's value (0..1) fills, from the bottom."""
    return round(min(max(float(value), 0.0), 1.0) * box_h)


@functools.lru_cache(maxsize=32)
def _bar(box: tuple[int, int, int, int], n: int
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """The bar's columns: each column's bin (-1 in a gap), each box's outline as a mask over
    the bar, every outline, and the bar's left and right columns."""
    boxes = bin_boxes(box, n)
    left, right = boxes[0][0], boxes[-1][2]
    y0, y1 = box[1], box[3]
    column = np.full(right - left + 1, -1, np.int64)
    outline = np.zeros((n, y1 - y0 + 1, right - left + 1), bool)
    for i, (bx0, _, bx1, _) in enumerate(boxes):
        column[bx0 - left:bx1 - left + 1] = i
        edge = outline[i]
        edge[0, bx0 - left:bx1 - left + 1] = edge[-1, bx0 - left:bx1 - left + 1] = True
        edge[:, bx0 - left] = edge[:, bx1 - left] = True
    return column, outline, outline.any(axis=0), left, right


def draw_bins(canvas: np.ndarray, values: np.ndarray, box: tuple[int, int, int, int],
              softmax: bool = True) -> np.ndarray:
    """Bins as a bar in box (in place): fill ∝ probability, the argmax highlighted. Drawn
    with numpy over the whole bar at once (35 bins of a DonkeyCar categorical pilot cost
    70 rectangle calls a frame otherwise)."""
    v = np.asarray(values, np.float64).reshape(-1)
    if not softmax:  # logits: show them as probabilities
        e = np.exp(v - v.max())
        v = e / e.sum()
    best = int(np.argmax(v))
    column, outline, outlines, left, right = _bar(box, len(v))
    y0, y1 = box[1], box[3]
    h = y1 - y0 + 1
    rows = np.rint(np.clip(v, 0.0, 1.0) * h).astype(np.int64)
    height = np.where(column >= 0, rows[column], 0)
    # One colour index per pixel of the bar (0 leaves the canvas), one masked copy.
    index = (np.arange(h)[:, None] >= h - height[None, :]).astype(np.uint8)
    index[:, column == best] *= 2
    index[outlines] = 3
    index[outline[best]] = 2
    region = canvas[y0:y1 + 1, left:right + 1]
    np.copyto(region, _PALETTE[index], where=(index > 0)[:, :, None])
    return canvas


_PALETTE = np.array([(0, 0, 0), HUD_BIN, HUD_ARGMAX, HUD_OUTLINE], np.uint8)


# --------------------------------------------------------------------------- side by side


class SideBySide:
    """Two images in one frame, left and right (the right scaled to the left's height); each
    call a new picture (one a writer thread may still be reading is never drawn on)."""

    def __init__(self, gap: int = 4, labels: Sequence[str] | None = None) -> None:
        self.gap = gap
        self.labels = tuple(labels) if labels else None

    def __call__(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        h, wl = left.shape[:2]
        hr, wr = right.shape[:2]
        if hr != h:
            wr = max(1, round(wr * h / hr))
            right = cv2.resize(right, (wr, h), interpolation=cv2.INTER_AREA)
        out = np.empty((h, wl + self.gap + wr, 3), np.uint8)
        out[:, :wl] = _bgr(left)
        out[:, wl:wl + self.gap] = 0
        out[:, wl + self.gap:] = _bgr(right)
        if self.labels:
            for text, x in zip(self.labels, (0, wl + self.gap), strict=False):
                _label(out, text, x)
        return out


def side_by_side(left: np.ndarray, right: np.ndarray, labels: Sequence[str] | None = None,
                 gap: int = 4) -> np.ndarray:
    """Two images next to each other in one new image (see SideBySide)."""
    return SideBySide(gap, labels)(left, right)


def _bgr(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image


def _label(image: np.ndarray, text: str, x: int) -> None:
    scale = max(0.5, image.shape[0] / 600)
    (tw, th), base = cv2.getTextSize(text, FONT, scale, 1)
    cv2.rectangle(image, (x, 0), (x + tw + 10, th + base + 10), HUD_PANEL, cv2.FILLED)
    cv2.putText(image, text, (x + 5, th + 5), FONT, scale, TEXT, 1, cv2.LINE_AA)
