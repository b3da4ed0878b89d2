"""Pure functions that turn an activation map into a mask and lay it over a frame.

The seed's method, without matplotlib: min–max normalise to 0..255, bicubic upsample to the
ROI, threshold into a binary mask, colormap, ``bitwise_and`` with the mask, saturating ``add``
onto the ROI. :class:`Overlay` does the same with buffers reused from frame to frame.
"""

from __future__ import annotations

import cv2
import numpy as np

from carvis.errors import CarvisError
from carvis.settings import COLORMAPS


def colormap_id(name: str) -> int:
    """The OpenCV colormap constant for a name such as 'inferno'."""
    key = str(name).strip().lower()
    if key not in COLORMAPS:
        raise CarvisError(
            f"unknown colormap {name!r}; choose one of: {', '.join(sorted(COLORMAPS))}"
        )
    return COLORMAPS[key]


def colormap_lut(name: str) -> np.ndarray:
    """The 256-entry BGR lookup table of a colormap, shape (256, 1, 3) uint8."""
    ramp = np.arange(256, dtype=np.uint8).reshape(256, 1)
    return cv2.applyColorMap(ramp, colormap_id(name))


def select_channel(activation: np.ndarray, channel: int | str) -> np.ndarray:
    """One 2-D map from an (H, W, C) activation: channel index, or 'mean' / 'max' over C."""
    if activation.ndim == 2:
        return activation
    if channel in ("mean", "max"):
        # A matrix-vector product / cv2.reduce over the channels: 10-17x faster than
        # numpy's mean/max along the last axis of a small float32 map (89 vs 5 µs).
        flat = np.ascontiguousarray(activation, np.float32).reshape(-1, activation.shape[-1])
        if channel == "mean":
            out = flat @ np.full(flat.shape[1], 1.0 / flat.shape[1], np.float32)
        else:
            out = cv2.reduce(flat, 1, cv2.REDUCE_MAX).reshape(-1)
        return out.reshape(activation.shape[:-1])
    n = activation.shape[-1]
    if not isinstance(channel, (int, np.integer)) or not -n <= channel < n:
        raise CarvisError(
            f"channel {channel!r} is out of range: the layer has {n} channels "
            f"(use 0..{n - 1}, 'mean' or 'max')"
        )
    return activation[..., channel]


def normalize_minmax(act: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Min–max normalise a map to float32 0..255 (a flat map becomes all zeros)."""
    act = np.asarray(act, dtype=np.float32)
    lo = float(act.min())
    span = float(act.max()) - lo
    scale = 255.0 / span if span > 0 else 0.0
    if out is None:
        out = np.empty(act.shape, np.float32)
    np.subtract(act, lo, out=out)
    np.multiply(out, scale, out=out)
    return out


def normalize_range(act: np.ndarray, lo: float, hi: float,
                    out: np.ndarray | None = None) -> np.ndarray:
    """Map [lo, hi] linearly to float32 0..255, clipping outside the range."""
    act = np.asarray(act, dtype=np.float32)
    if out is None:
        out = np.empty(act.shape, np.float32)
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    np.subtract(act, lo, out=out)
    np.multiply(out, scale, out=out)
    np.clip(out, 0.0, 255.0, out=out)
    return out


def upsample(norm: np.ndarray, size: tuple[int, int], out32: np.ndarray | None = None,
             out8: np.ndarray | None = None) -> np.ndarray:
    """Bicubic upsample a float 0..255 map to size (width, height); rounded, saturated uint8."""
    w, h = size
    if out32 is None:
        out32 = np.empty((h, w), np.float32)
    if out8 is None:
        out8 = np.empty((h, w), np.uint8)
    cv2.resize(np.asarray(norm, np.float32), (w, h), dst=out32, interpolation=cv2.INTER_CUBIC)
    # Bicubic overshoots below 0 and above 255: clamp negatives, then round and saturate.
    cv2.threshold(out32, 0.0, 0.0, cv2.THRESH_TOZERO, dst=out32)
    cv2.convertScaleAbs(out32, dst=out8)
    return out8


def threshold_mask(map8: np.ndarray, threshold: float,
                   out: np.ndarray | None = None) -> np.ndarray:
    """Binary mask, 255 where the map is strictly above the threshold, else 0."""
    if out is None:
        out = np.empty(map8.shape, np.uint8)
    cv2.threshold(map8, threshold, 255, cv2.THRESH_BINARY, dst=out)
    return out


def colorize(map8: np.ndarray, colormap: str | int = "inferno",
             out: np.ndarray | None = None) -> np.ndarray:
    """Apply an OpenCV colormap to a uint8 map; BGR uint8 result."""
    cmap = colormap if isinstance(colormap, int) else colormap_id(colormap)
    if out is None:
        out = np.empty(map8.shape + (3,), np.uint8)
    cv2.applyColorMap(map8, cmap, dst=out)
    return out


def compose(roi: np.ndarray, colored: np.ndarray, mask: np.ndarray,
            out: np.ndarray | None = None) -> np.ndarray:
    """The seed's merge: bitwise_and(colored, colored, mask) then saturating add onto roi."""
    if out is None:
        out = np.empty_like(roi)
    # Same pixels as add(bitwise_and(colored, colored, mask=mask), roi), in two passes fewer:
    # outside the mask the AND gives 0 and the add leaves roi as it is.
    if out is not roi:
        np.copyto(out, roi)
    cv2.add(out, colored, dst=out, mask=mask)
    return out


def overlay(roi: np.ndarray, activation2d: np.ndarray, threshold: float = 80,
            colormap: str = "inferno") -> np.ndarray:
    """Reference one-shot overlay of a 2-D activation map onto an ROI (allocates)."""
    h, w = roi.shape[:2]
    map8 = upsample(normalize_minmax(activation2d), (w, h))
    mask = threshold_mask(map8, threshold)
    return compose(roi, colorize(map8, colormap), mask)


class Overlay:
    """The overlay with its buffers kept between frames of one ROI size."""

    def __init__(self, threshold: float = 80, colormap: str = "inferno") -> None:
        self.threshold = float(threshold)
        self.colormap = colormap
        self._size: tuple[int, int] | None = None
        self._drawn: tuple | None = None

    @property
    def colormap(self) -> str:
        return self._colormap_name

    @colormap.setter
    def colormap(self, name: str) -> None:
        self._cmap = colormap_id(name)
        self._colormap_name = str(name).lower()

    def _buffers(self, h: int, w: int) -> None:
        if self._size == (w, h):
            return
        self._size = (w, h)
        self._up32 = np.empty((h, w), np.float32)
        self._up8 = np.empty((h, w), np.uint8)
        self._mask = np.empty((h, w), np.uint8)
        self._colored = np.empty((h, w, 3), np.uint8)
        self._merged = np.empty((h, w, 3), np.uint8)
        self._lut_key: tuple[float, str] | None = None
        self._drawn: tuple | None = None  # (threshold, colormap, size) _colored was made for

    def map8(self, norm: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Upsampled uint8 map of a normalised float map (reused buffer)."""
        w, h = size
        self._buffers(h, w)
        return upsample(norm, (w, h), self._up32, self._up8)

    def apply(self, roi: np.ndarray, norm: np.ndarray, out: np.ndarray | None = None
              ) -> np.ndarray:
        """Overlay a normalised (0..255 float) map onto roi; writes into out if given."""
        h, w = roi.shape[:2]
        map8 = self.map8(norm, (w, h))
        threshold_mask(map8, self.threshold, self._mask)
        cv2.applyColorMap(map8, self._cmap, dst=self._colored)
        if out is None:
            out = self._merged
        return compose(roi, self._colored, self._mask, out)

    def draw(self, roi: np.ndarray, norm: np.ndarray, same_map: bool = False) -> None:
        """apply(roi, norm, out=roi) without IPP: the same pixels, two full passes fewer;
        same_map: norm is the map of the last call, unchanged (its colour layer is reused)."""
        # Threshold and colormap fold into one 256-entry LUT that is black at and below the
        # threshold: AND-ing the colour with the mask and adding it is then a plain add.
        h, w = roi.shape[:2]
        key = (self.threshold, self.colormap, (w, h))
        if not same_map or key != self._drawn:
            # OpenCV's own bicubic upsample is 8x faster than Intel IPP's here (0.4 vs 3.2 ms
            # at 1800x480) and is what ARM builds (the Pi) always run; the two differ by float
            # rounding (one grey level on 1e-5 of the pixels). The IPP switch is per thread.
            ipp = cv2.ipp.useIPP()
            cv2.ipp.setUseIPP(False)
            try:
                map8 = self.map8(norm, (w, h))
            finally:
                cv2.ipp.setUseIPP(ipp)
            cv2.applyColorMap(map8, self._masked_lut(), dst=self._colored)
            self._drawn = key
        # Live, one map is laid on the frames that come while the next is computed: with
        # same_map its colour layer is kept and each of those frames costs only the add.
        cv2.add(roi, self._colored, dst=roi)

    def _masked_lut(self) -> np.ndarray:
        """The colormap LUT with the entries the threshold masks out set to black (cached)."""
        key = (self.threshold, self.colormap)
        if key != self._lut_key:
            ramp = np.arange(256, dtype=np.uint8).reshape(256, 1)
            keep = threshold_mask(ramp, self.threshold)
            lut = colormap_lut(self.colormap)
            self._lut = cv2.bitwise_and(lut, lut, mask=keep)
            self._lut_key = key
        return self._lut


def running_step(lo: float | None, hi: float | None, new_lo: float, new_hi: float,
                 decay: float) -> tuple[float, float]:
    """The running range after one more map: its extremes, or the last range decayed."""
    if hi is None:
        return new_lo, new_hi
    return min(new_lo, lo * decay), max(new_hi, hi * decay)


def running_range(lo: np.ndarray, hi: np.ndarray, decay: float) -> tuple[np.ndarray, np.ndarray]:
    """The running range at every frame of a sequence of per-frame extremes (as MapNormalizer
    has it frame by frame)."""
    lo, hi = np.array(lo, np.float64), np.array(hi, np.float64)
    for n in range(1, len(lo)):
        lo[n], hi[n] = running_step(lo[n - 1], hi[n - 1], lo[n], hi[n], decay)
    return lo, hi


class MapNormalizer:
    """Activation map → float32 0..255: per-frame min–max (the seed's), a fixed range, or a
    running range (max with decay), then an optional EMA over frames against flicker."""

    def __init__(self, mode: str = "minmax", value_range: tuple[float, float] | None = None,
                 decay: float = 0.98, ema: float = 0.0) -> None:
        self.mode = mode
        self.value_range = value_range
        self.decay = float(decay)
        self.ema = float(ema)
        self.reset()

    def reset(self) -> None:
        """Forget the running range and the EMA state (e.g. after a layer change)."""
        self._lo: float | None = None
        self._hi: float | None = None
        self._out: np.ndarray | None = None
        self._prev: np.ndarray | None = None

    def __call__(self, amap: np.ndarray) -> np.ndarray:
        if self._out is None or self._out.shape != amap.shape:
            self._out = np.empty(amap.shape, np.float32)
            self._prev = None
        if self.mode == "minmax":
            out = normalize_minmax(amap, self._out)
        elif self.mode == "fixed":
            out = normalize_range(amap, *self.value_range, out=self._out)
        else:
            lo, hi = running_step(self._lo, self._hi, float(amap.min()), float(amap.max()),
                                  self.decay)
            self._lo, self._hi = lo, hi
            out = normalize_range(amap, lo, hi, out=self._out)
        if self.ema > 0:
            if self._prev is None:
                self._prev = out.copy()
            else:
                # prev = ema * prev + (1 - ema) * out, in place
                self._prev *= self.ema
                self._prev += (1.0 - self.ema) * out
            return self._prev
        return out
