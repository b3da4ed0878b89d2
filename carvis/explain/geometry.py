"""How a layer reads its input, per axis, and the all-ones transposed convolution that
VisualBackProp passes back through it: conv and pooling windows, padding, cropping, nearest
upsampling; pixel-wise layers have no geometry."""

from __future__ import annotations

import dataclasses
from typing import Any

import cv2
import numpy as np

from carvis.errors import CarvisError
from carvis.explain.graph import activation_name, spatial
from carvis.layerspec import CONV_TYPES

# A transposed convolution reads its input the other way round: its geometry is not an AxisOp,
# so VisualBackProp refuses to pass back through one (layer_geometry's error) rather than guess.
VBP_CONV_TYPES = CONV_TYPES - {"Conv2DTranspose"}
_POOL_TYPES = {"MaxPooling2D", "AveragePooling2D", "MaxPool2D", "AvgPool2D"}
# Layers whose output at each pixel depends on that pixel alone: no geometry for VBP.
ELEMENTWISE = {
    "Activation", "ReLU", "LeakyReLU", "ELU", "PReLU", "Softmax", "ThresholdedReLU",
    "BatchNormalization", "LayerNormalization", "GroupNormalization", "UnitNormalization",
    "Dropout", "SpatialDropout2D", "GaussianDropout", "GaussianNoise", "AlphaDropout",
    "Identity", "Rescaling", "Normalization", "ActivityRegularization", "Masking",
}
ACTIVATION_LAYERS = {"Activation", "ReLU", "LeakyReLU", "ELU", "PReLU", "ThresholdedReLU"}
_MAX_SIDE = 1 << 16  # rows or columns of any map carvis draws


@dataclasses.dataclass(frozen=True)
class AxisOp:
    """One layer's geometry along one axis: output i reads the inputs
    ``(i // repeat) * stride - pad + j * dilation`` for j < size (outside: zero padding)."""

    n_in: int
    n_out: int
    size: int = 1
    stride: int = 1
    dilation: int = 1
    pad: int = 0
    repeat: int = 1

    def __post_init__(self) -> None:
        """A window no layer has (a damaged file's metadata) is a ValueError here, not a
        buffer of 10**30 rows later."""
        fields = (self.n_in, self.n_out, self.size, self.stride, self.dilation, self.repeat)
        if not all(isinstance(v, (int, np.integer)) and 1 <= v <= _MAX_SIDE for v in fields) \
                or not isinstance(self.pad, (int, np.integer)) or abs(self.pad) > self.n_in + self.n_out:
            raise ValueError(f"no layer reads its input this way: {self}")
        n = -(-self.n_out // self.repeat)
        if (n - 1) * self.stride + (self.size - 1) * self.dilation + 1 \
                > 2 * (self.n_in + self.n_out) + 64:
            raise ValueError(f"a window wider than its input and output: {self}")

    def adjoint(self, y: np.ndarray) -> np.ndarray:
        """The all-ones transposed convolution along axis 0: n_out rows → n_in rows.

        Strided slice additions, no BLAS (a BLAS thread pool on a busy 2-core car costs
        more than the whole map)."""
        if self.repeat > 1:  # nearest upsampling's adjoint: sum each block of rows
            n = -(-y.shape[0] // self.repeat)
            if n * self.repeat != y.shape[0]:
                y = np.concatenate([y, np.zeros((n * self.repeat - y.shape[0],) + y.shape[1:],
                                                y.dtype)])
            y = y.reshape((n, self.repeat) + y.shape[1:]).sum(axis=1)
        n = y.shape[0]
        length = (n - 1) * self.stride + (self.size - 1) * self.dilation + 1
        buf = np.zeros((length,) + y.shape[1:], np.float32)
        for j in range(self.size):
            start = j * self.dilation
            buf[start:start + (n - 1) * self.stride + 1:self.stride] += y
        out = np.zeros((self.n_in,) + y.shape[1:], np.float32)
        lo, hi = max(0, -self.pad), min(self.n_in, length - self.pad)
        if hi > lo:
            out[lo:hi] = buf[lo + self.pad:hi + self.pad]
        return out

    def matrix(self) -> np.ndarray:
        """The forward 0/1 reading pattern, shape (n_out, n_in), as float64 counts."""
        m = np.zeros((self.n_out, self.n_in), np.float64)
        for i in range(self.n_out):
            base = (i // self.repeat) * self.stride - self.pad
            for j in range(self.size):
                u = base + j * self.dilation
                if 0 <= u < self.n_in:
                    m[i, u] += 1.0
        return m


def _same_pad(n_in: int, n_out: int, size: int, stride: int, dilation: int) -> int:
    """TensorFlow's 'same' padding before the first row (the extra row goes after)."""
    total = max((n_out - 1) * stride + (size - 1) * dilation + 1 - n_in, 0)
    return total // 2


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[-1])
    return int(value), int(value)


def _padding_pairs(value: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    if isinstance(value, int):
        return (value, value), (value, value)
    a, b = value
    pa = (a, a) if isinstance(a, int) else tuple(a)
    pb = (b, b) if isinstance(b, int) else tuple(b)
    return (int(pa[0]), int(pa[1])), (int(pb[0]), int(pb[1]))


def _window(cls: str, cfg: dict) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(size, stride, dilation) of a conv or pooling layer's window."""
    if cls in _POOL_TYPES:
        size = _pair(cfg.get("pool_size", 2))
        return size, _pair(cfg.get("strides") or size), (1, 1)
    return (_pair(cfg["kernel_size"]), _pair(cfg.get("strides", 1)),
            _pair(cfg.get("dilation_rate", 1)))


_CONFIG_KEYS = ("kernel_size", "strides", "dilation_rate", "padding", "pool_size", "cropping",
                "size", "interpolation", "data_format")


def layer_record(layer: Any) -> dict:
    """A Keras layer as VisualBackProp's path keeps it (and a .tflite's metadata stores it):
    name, class, output (H, W), the window's config, the built-in activation."""
    cfg = layer.get_config()
    config = {k: cfg[k] for k in _CONFIG_KEYS if k in cfg and cfg[k] is not None}
    return {"name": layer.name, "type": type(layer).__name__,
            "out_hw": list(spatial(layer.output.shape) or ()), "config": config,
            "activation": activation_name(layer)}


def layer_geometry(layer: Any, in_hw: tuple[int, int], out_hw: tuple[int, int]
                   ) -> tuple[AxisOp, AxisOp] | None:
    """How a Keras layer reads its input, per axis; None for a pixel-wise layer."""
    return record_geometry(layer_record(layer), in_hw, out_hw)


def record_geometry(record: dict, in_hw: tuple[int, int], out_hw: tuple[int, int]
                    ) -> tuple[AxisOp, AxisOp] | None:
    """How a layer (a :func:`layer_record`) reads its input, per axis; None if pixel-wise."""
    cls, cfg, name = record["type"], record["config"], record["name"]
    (hi, wi), (ho, wo) = in_hw, out_hw
    if cls in VBP_CONV_TYPES or cls in _POOL_TYPES:
        size, stride, dil = _window(cls, cfg)
        padding = str(cfg.get("padding", "valid")).lower()
        if cfg.get("data_format") == "channels_first":
            raise CarvisError(f"layer {name!r} is channels_first; vbp needs channels_last")
        ops = []
        for n_in, n_out, k, s, d in ((hi, ho, size[0], stride[0], dil[0]),
                                     (wi, wo, size[1], stride[1], dil[1])):
            pad = _same_pad(n_in, n_out, k, s, d) if padding == "same" else 0
            ops.append(AxisOp(n_in, n_out, k, s, d, pad))
        return ops[0], ops[1]
    if cls == "ZeroPadding2D":
        (top, _), (left, _) = _padding_pairs(cfg.get("padding", 1))
        return AxisOp(hi, ho, pad=top), AxisOp(wi, wo, pad=left)
    if cls == "Cropping2D":
        (top, _), (left, _) = _padding_pairs(cfg.get("cropping", 0))
        return AxisOp(hi, ho, pad=-top), AxisOp(wi, wo, pad=-left)
    if cls == "UpSampling2D":
        if str(cfg.get("interpolation", "nearest")) != "nearest":
            raise CarvisError(f"layer {name!r} upsamples with "
                              f"{cfg.get('interpolation')!r}; vbp handles nearest only")
        fh, fw = _pair(cfg.get("size", 2))
        return AxisOp(hi, ho, repeat=fh), AxisOp(wi, wo, repeat=fw)
    if cls in ELEMENTWISE and in_hw == out_hw:
        return None
    raise CarvisError(f"vbp cannot pass back through layer {name!r} ({cls}); it handles "
                      "conv, pooling, padding, cropping, upsampling and pixel-wise layers; "
                      "use --mode gradcam or saliency")


def step_adjoint(rows: AxisOp, cols: AxisOp, x: np.ndarray) -> np.ndarray:
    """One layer's all-ones transposed convolution in 2-D; OpenCV for the common cases (a
    'same' stride-1 kernel: an unnormalised box filter; a pool whose windows tile: nearest
    upscaling), strided slices otherwise."""
    plain = rows.repeat == cols.repeat == 1 and rows.dilation == cols.dilation == 1
    if plain and rows.stride == cols.stride == 1 and rows.n_in == rows.n_out \
            and cols.n_in == cols.n_out and 0 <= rows.pad < rows.size and 0 <= cols.pad < cols.size:
        return cv2.boxFilter(x, -1, (cols.size, rows.size), normalize=False,
                             anchor=(cols.size - 1 - cols.pad, rows.size - 1 - rows.pad),
                             borderType=cv2.BORDER_CONSTANT)
    if plain and rows.size == rows.stride and cols.size == cols.stride \
            and rows.pad == cols.pad == 0 and rows.n_out * rows.stride <= rows.n_in \
            and cols.n_out * cols.stride <= cols.n_in:
        up = cv2.resize(x, (cols.n_out * cols.stride, rows.n_out * rows.stride),
                        interpolation=cv2.INTER_NEAREST)
        if up.shape == (rows.n_in, cols.n_in):
            return up
        out = np.zeros((rows.n_in, cols.n_in), np.float32)  # 'valid' lost rows stay zero
        out[:up.shape[0], :up.shape[1]] = up
        return out
    return cols.adjoint(rows.adjoint(x).T).T
