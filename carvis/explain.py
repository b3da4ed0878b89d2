"""Explainers: which pixels of a frame a steering ConvNet responds to, as a raw float map.

One base class, :class:`Explainer`, does what every mode shares (pytorch-grad-cam's BaseCAM
shape): it builds ONE multi-output Keras model (the layers the mode needs, plus the steering
output) and, for the gradient modes, the gradient of a target score, all inside one
``tf.function`` with a fixed input signature, built once. A mode is a small subclass that
says which layers and gradients it needs and overrides one method, :meth:`Explainer.reduce`,
which turns those arrays into a 2-D float map in numpy.

Modes:

``activation``  one layer's activation, a channel or the mean/max over channels (the seed's).
``vbp``         VisualBackProp (Bojarski et al., arXiv 1611.05418): the channel mean of every
                conv layer's post-ReLU output; from the deepest, scaled up by a transposed
                convolution with an all-ones kernel of that layer's kernel size and stride
                (pooling layers: the pool's size and stride; 'valid' padding's lost rows stay
                zero), multiplied pointwise with the next shallower mean, down to the input.
                Forward-only: :class:`VBPPlan` holds the precomputed transposed convolutions
                and back-projects layer outputs from any backend (LiteRT too).
``gradcam``     Grad-CAM: ReLU(sum_c mean_ij(d score / d A_c) * A_c) on a spatial layer A.
``saliency``    max over colour channels of |d score / d input|, at the model's input size;
                SmoothGrad averages |gradient| over N noisy copies run as one batch.
``guided``      guided backpropagation: the same map, with every ReLU's gradient replaced (in
                a clone of the graph, built once) so only positive gradients flow back through
                positive activations.
``guided-gradcam``  guided x Grad-CAM (the Grad-CAM map bilinearly resized to the input).
``cam``         class activation mapping, for heads GlobalAveragePooling2D -> Dense: the last
                spatial map weighted by the Dense kernel's columns for the target.

Targets (what "score" is) are small callables on the steering output; see :func:`make_target`.
Bin order assumption for a softmax of steering bins: bin 0 is hard left, the last bin hard
right (Axionaut, DonkeyCar categorical).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol

import cv2
import numpy as np

from carvis.errors import CarvisError

MODES = ("activation", "vbp", "gradcam", "saliency", "guided", "guided-gradcam", "cam")
#: Modes that need TensorFlow's gradients (never LiteRT).
GRADIENT_MODES = ("gradcam", "saliency", "guided", "guided-gradcam")
#: Modes computed from layer outputs alone: they run from a multi-output LiteRT model too.
FORWARD_MODES = ("activation", "vbp", "cam")
#: Names of the steering targets (plus "bin:K" and "layer" / "layer:SPEC").
TARGETS = ("predicted", "left", "right", "straight", "course")

PREDICTION = "@prediction"
INPUT = "@input"

# keras-vis' small_values gradient modifier: |1 / (g + K.epsilon())|, epsilon = 1e-7.
SMALL_VALUES_EPS = 1e-7

# Layers whose output at each pixel depends on that pixel alone: no geometry for VBP.
_ELEMENTWISE = {
    "Activation", "ReLU", "LeakyReLU", "ELU", "PReLU", "Softmax", "ThresholdedReLU",
    "BatchNormalization", "LayerNormalization", "GroupNormalization", "UnitNormalization",
    "Dropout", "SpatialDropout2D", "GaussianDropout", "GaussianNoise", "AlphaDropout",
    "Identity", "Rescaling", "Normalization", "ActivityRegularization", "Masking",
}
_ACTIVATION_LAYERS = {"Activation", "ReLU", "LeakyReLU", "ELU", "PReLU", "ThresholdedReLU"}
_CONV_TYPES = {"Conv2D", "SeparableConv2D", "DepthwiseConv2D", "Convolution2D"}
_POOL_TYPES = {"MaxPooling2D", "AveragePooling2D", "MaxPool2D", "AvgPool2D"}
_PASS_THROUGH_HEAD = {"Dropout", "Flatten", "GaussianDropout", "GaussianNoise", "AlphaDropout",
                      "Identity", "ActivityRegularization"}


# --------------------------------------------------------------------------- the graph


@dataclasses.dataclass(frozen=True)
class SteeringHead:
    """The steering output of a model: which output, how many units, softmax or not."""

    index: int
    layer: str
    units: int
    softmax: bool

    @property
    def kind(self) -> str:
        """'bins' for a (softmax of) steering bins, 'regression' for one steering value."""
        return "bins" if self.units > 1 else "regression"

    def describe(self) -> str:
        """'a softmax of 5 steering bins ('activation_2')' in a few words."""
        if self.kind == "bins":
            what = "a softmax of" if self.softmax else "logits of"
            return f"{what} {self.units} steering bins ({self.layer!r})"
        return f"a regression output ({self.layer!r})"


def _layer_configs(model: Any) -> dict[str, dict]:
    """Layer name → its entry in the functional model's config (class, config, inbound)."""
    config = model.get_config()
    layers = config.get("layers") if isinstance(config, dict) else None
    if not layers:
        raise CarvisError(f"model {model.name!r} has no functional layer graph; carvis needs a "
                          "functional or Sequential model")
    return {entry["config"]["name"] if "name" not in entry else entry["name"]: entry
            for entry in layers}


def _inbound(entry: dict) -> list[str]:
    """Names of the layers feeding a layer (from its config's keras_history entries)."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            history = node.get("config", {}).get("keras_history") if isinstance(
                node.get("config"), dict) else None
            if node.get("class_name") == "__keras_tensor__" and history:
                found.append(str(history[0]))
                return
            for value in node.values():
                walk(value)
        elif isinstance(node, (list, tuple)):
            if len(node) >= 3 and isinstance(node[0], str) and isinstance(node[1], int) \
                    and isinstance(node[2], int):  # Keras 2 style [name, node, tensor]
                found.append(node[0])
                return
            for value in node:
                walk(value)

    walk(entry.get("inbound_nodes", []))
    return found


def _output_layer_names(model: Any) -> list[str]:
    config = model.get_config()
    outs = config.get("output_layers", [])
    if outs and isinstance(outs[0], str):  # a single output as [name, node, tensor]
        outs = [outs]
    return [str(o[0]) for o in outs]


def _activation_name(layer: Any) -> str:
    try:
        value = layer.get_config().get("activation")
    except (AttributeError, NotImplementedError, TypeError):
        return ""
    if isinstance(value, dict):
        value = value.get("config") if isinstance(value.get("config"), str) else ""
    return str(value or "")


def steering_head(model: Any) -> SteeringHead:
    """The steering output: the only output, else the first whose name says angle/steer."""
    names = _output_layer_names(model)
    if not names:
        raise CarvisError(f"model {model.name!r} has no outputs; carvis needs a steering output")
    index = 0
    if len(names) > 1:
        for i, name in enumerate(names):
            if "angle" in name.lower() or "steer" in name.lower():
                index = i
                break
    name = names[index]
    layer = model.get_layer(name)
    shape = tuple(model.outputs[index].shape[1:])
    if len(shape) != 1 or shape[0] is None:
        raise CarvisError(f"output {name!r} of model {model.name!r} has shape {shape}, not "
                          "(units,); carvis explains a steering value or a vector of bins")
    softmax = type(layer).__name__ == "Softmax" or _activation_name(layer) == "softmax"
    return SteeringHead(index=index, layer=name, units=int(shape[0]), softmax=softmax)


# --------------------------------------------------------------------------- targets


class Target:
    """A score per batch item computed from the steering output (tf-keras-vis `Score` style)."""

    name = "target"
    layer: str | None = None  # set for targets on a layer's activation instead of the output

    def __call__(self, prediction: Any) -> Any:
        """(B, units) steering output tensor → (B,) scores, in TensorFlow ops."""
        raise NotImplementedError

    def coefficients(self, prediction: np.ndarray) -> np.ndarray:
        """The score as a linear combination of the outputs (for CAM's Dense columns)."""
        raise CarvisError(f"target {self.name!r} is not a combination of the steering outputs; "
                          "use it with saliency or guided")

    def modify(self, grads: np.ndarray) -> np.ndarray:
        """Gradient modifier applied before the map is formed (identity here)."""
        return grads


class BinsTarget(Target):
    """The sum of some steering bins of the output (probabilities for a softmax head)."""

    def __init__(self, name: str, bins: Sequence[int]) -> None:
        self.name = name
        self.bins = tuple(int(b) for b in bins)

    def __call__(self, prediction: Any) -> Any:
        import tensorflow as tf

        return tf.reduce_sum(tf.gather(prediction, list(self.bins), axis=1), axis=1)

    def coefficients(self, prediction: np.ndarray) -> np.ndarray:
        out = np.zeros(np.asarray(prediction).shape[-1], np.float32)
        out[list(self.bins)] = 1.0
        return out


class PredictedBin(Target):
    """The bin the model predicts (argmax): pytorch-grad-cam's default category."""

    name = "predicted"

    def __call__(self, prediction: Any) -> Any:
        import tensorflow as tf

        return tf.reduce_max(prediction, axis=1)

    def coefficients(self, prediction: np.ndarray) -> np.ndarray:
        p = np.asarray(prediction, np.float32).reshape(-1)
        out = np.zeros_like(p)
        out[int(np.argmax(p))] = 1.0
        return out


class SteerTarget(Target):
    """A regression output times a sign: left = -y, right = +y; predicted = |y|."""

    def __init__(self, name: str, sign: float | None) -> None:
        self.name = name
        self.sign = sign  # None: the sign of the current prediction (|y|)

    def __call__(self, prediction: Any) -> Any:
        import tensorflow as tf

        y = prediction[:, 0]
        return tf.abs(y) if self.sign is None else self.sign * y

    def coefficients(self, prediction: np.ndarray) -> np.ndarray:
        y = float(np.asarray(prediction).reshape(-1)[0])
        sign = self.sign if self.sign is not None else (1.0 if y >= 0 else -1.0)
        return np.array([sign], np.float32)


class CourseTarget(SteerTarget):
    """Regression 'holds course': score y, gradients through keras-vis' small_values
    modifier |1 / (g + 1e-7)|, which lights up what the prediction is least sensitive to."""

    def __init__(self) -> None:
        super().__init__("course", None)

    def __call__(self, prediction: Any) -> Any:
        return prediction[:, 0]

    def modify(self, grads: np.ndarray) -> np.ndarray:
        return np.abs(1.0 / (grads + np.float32(SMALL_VALUES_EPS)))


class LayerTarget(Target):
    """The mean activation of a layer (keras-vis' saliency per layer)."""

    def __init__(self, layer: str) -> None:
        self.name = f"layer:{layer}"
        self.layer = layer

    def __call__(self, activation: Any) -> Any:
        import tensorflow as tf

        return tf.reduce_mean(tf.reshape(activation, (tf.shape(activation)[0], -1)), axis=1)


def side_bins(units: int) -> dict[str, tuple[int, ...]]:
    """Bins of each side for n steering bins, bin 0 = hard left: left, straight, right."""
    half = units // 2
    left = tuple(range(half))
    right = tuple(range(units - half, units))
    straight = (half,) if units % 2 else (half - 1, half)
    return {"left": left, "straight": straight, "right": right}


def parse_target(spec: Any) -> str:
    """A target spec, checked for shape only: a name of TARGETS, 'bin:K', 'layer', 'layer:L'."""
    text = str(spec).strip().lower() if spec is not None else "predicted"
    if text in TARGETS or text == "layer":
        return text
    if re.fullmatch(r"bin:\d+", text):
        return text
    if text.startswith("layer:") and len(str(spec).strip()) > 6:
        return "layer:" + str(spec).strip()[6:].strip()
    raise CarvisError(f"target {spec!r} is not valid; choose one of: {', '.join(TARGETS)}, "
                      "bin:K (a steering bin), layer or layer:L (mean activation of a layer)")


def make_target(spec: str | Target | None, head: SteeringHead, model: Any = None,
                layer: str | None = None) -> Target:
    """A target callable for a spec and a steering head (callables pass through)."""
    if isinstance(spec, Target):
        return spec
    text = parse_target(spec)
    if text == "layer" or text.startswith("layer:"):
        chosen = text[6:] if text.startswith("layer:") else layer
        if chosen is None:
            raise CarvisError("target 'layer' needs a layer; pass --layer L or target layer:L")
        if model is not None:
            from carvis import models

            chosen = models.resolve_layer(model, chosen).name
        return LayerTarget(chosen)
    if head.kind == "bins":
        if text == "course" or text == "predicted":
            return PredictedBin()
        if text.startswith("bin:"):
            k = int(text[4:])
            if k >= head.units:
                raise CarvisError(f"target {text!r} is out of range: {head.describe()} has bins "
                                  f"0..{head.units - 1} (bin 0 = hard left)")
            return BinsTarget(text, (k,))
        return BinsTarget(text, side_bins(head.units)[text])
    if text in ("straight",) or text.startswith("bin:"):
        raise CarvisError(f"target {text!r} needs steering bins, but the model has "
                          f"{head.describe()}; use left, right, course or predicted")
    if text == "course":
        return CourseTarget()
    return SteerTarget(text, {"left": -1.0, "right": 1.0, "predicted": None}[text])


# --------------------------------------------------------------------------- VisualBackProp


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


def _spatial(shape: Sequence[Any]) -> tuple[int, int] | None:
    dims = tuple(shape)
    if len(dims) != 4 or dims[1] is None or dims[2] is None:
        return None
    return int(dims[1]), int(dims[2])


def layer_geometry(layer: Any, in_hw: tuple[int, int], out_hw: tuple[int, int]
                   ) -> tuple[AxisOp, AxisOp] | None:
    """How a layer reads its input, per axis; None for a pixel-wise layer (no geometry)."""
    cls = type(layer).__name__
    cfg = layer.get_config()
    (hi, wi), (ho, wo) = in_hw, out_hw
    if cls in _CONV_TYPES or cls in _POOL_TYPES:
        if cls in _POOL_TYPES:
            size = _pair(cfg.get("pool_size", 2))
            stride = _pair(cfg.get("strides") or size)
            dil = (1, 1)
        else:
            size = _pair(cfg["kernel_size"])
            stride = _pair(cfg.get("strides", 1))
            dil = _pair(cfg.get("dilation_rate", 1))
        padding = str(cfg.get("padding", "valid")).lower()
        if cfg.get("data_format") == "channels_first":
            raise CarvisError(f"layer {layer.name!r} is channels_first; vbp needs channels_last")
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
            raise CarvisError(f"layer {layer.name!r} upsamples with "
                              f"{cfg.get('interpolation')!r}; vbp handles nearest only")
        fh, fw = _pair(cfg.get("size", 2))
        return AxisOp(hi, ho, repeat=fh), AxisOp(wi, wo, repeat=fw)
    if cls in _ELEMENTWISE and in_hw == out_hw:
        return None
    raise CarvisError(f"vbp cannot pass back through layer {layer.name!r} ({cls}); it handles "
                      "conv, pooling, padding, cropping, upsampling and pixel-wise layers; "
                      "use --mode gradcam or saliency")


def _padding_pairs(value: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    if isinstance(value, int):
        return (value, value), (value, value)
    a, b = value
    pa = (a, a) if isinstance(a, int) else tuple(a)
    pb = (b, b) if isinstance(b, int) else tuple(b)
    return (int(pa[0]), int(pa[1])), (int(pb[0]), int(pb[1]))


@dataclasses.dataclass
class VBPPlan:
    """VisualBackProp's back-projection, precomputed: per segment between two conv taps, the
    all-ones transposed convolutions of its layers composed into one matrix per axis."""

    input_hw: tuple[int, int]
    taps: tuple[str, ...]                          # conv layers' post-ReLU outputs, shallow first
    tap_hw: tuple[tuple[int, int], ...]
    steps: tuple[tuple[tuple[AxisOp, AxisOp], ...], ...]  # steps[j]: layers into tap j

    def __post_init__(self) -> None:
        prev = self.input_hw
        for j, segment in enumerate(self.steps):
            hw = prev
            for r, c in segment:
                if (r.n_in, c.n_in) != hw:
                    raise CarvisError(f"vbp plan: a step into {self.taps[j]!r} reads "
                                      f"{r.n_in}x{c.n_in}, but gets {hw[0]}x{hw[1]}")
                hw = (r.n_out, c.n_out)
            if hw != tuple(self.tap_hw[j]):
                raise CarvisError(f"vbp plan: segment into {self.taps[j]!r} gives "
                                  f"{hw[0]}x{hw[1]}, expected "
                                  f"{self.tap_hw[j][0]}x{self.tap_hw[j][1]}")
            prev = tuple(self.tap_hw[j])

    def backproject(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """VisualBackProp map at the input size (raw float32) from the taps' activations."""
        x: np.ndarray | None = None
        for j in range(len(self.taps) - 1, -1, -1):
            act = np.asarray(outputs[self.taps[j]])
            if act.ndim == 4:
                act = act[0]
            mean = act.mean(axis=-1, dtype=np.float32)
            x = mean if x is None else np.multiply(self.upsample(j + 1, x), mean)
        return self.upsample(0, x)

    def upsample(self, j: int, x: np.ndarray) -> np.ndarray:
        """Segment j's transposed convolutions: tap j's map → the previous tap's (or the
        input's) size."""
        for rows, cols in reversed(self.steps[j]):
            x = _step_adjoint(rows, cols, np.ascontiguousarray(x, np.float32))
        return np.ascontiguousarray(x)

    def to_json(self) -> str:
        """The plan as JSON (e.g. to ship with a .tflite)."""
        return json.dumps({"input_hw": self.input_hw, "taps": self.taps, "tap_hw": self.tap_hw,
                           "steps": [[[dataclasses.asdict(r), dataclasses.asdict(c)]
                                      for r, c in seg] for seg in self.steps]})

    @classmethod
    def from_json(cls, text: str) -> VBPPlan:
        """Read a plan written by to_json."""
        raw = json.loads(text)
        steps = tuple(tuple((AxisOp(**r), AxisOp(**c)) for r, c in seg) for seg in raw["steps"])
        return cls(tuple(raw["input_hw"]), tuple(raw["taps"]),
                   tuple(tuple(hw) for hw in raw["tap_hw"]), steps)


def _step_adjoint(rows: AxisOp, cols: AxisOp, x: np.ndarray) -> np.ndarray:
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


def _spatial_chain(model: Any, head: SteeringHead) -> list[Any]:
    """The layers from the input to the last spatial layer feeding the steering output."""
    entries = _layer_configs(model)
    input_names = {t.name for t in model.inputs} | {
        e["name"] for e in entries.values() if e.get("class_name") == "InputLayer"}
    chain: list[Any] = []
    name = head.layer
    while name not in input_names:
        inbound = _inbound(entries[name])
        layer = model.get_layer(name)
        if len(inbound) != 1:
            raise CarvisError(f"vbp follows one path from the output to the input, but layer "
                              f"{name!r} ({type(layer).__name__}) has {len(inbound)} inputs; "
                              "use --mode gradcam or saliency")
        chain.append(layer)
        name = inbound[0]
    chain.reverse()
    # Drop the head: keep up to the last layer with a spatial (H, W, C) output.
    last = max((i for i, lay in enumerate(chain) if _spatial(lay.output.shape)), default=-1)
    return chain[: last + 1]


def vbp_plan(model: Any, head: SteeringHead | None = None) -> VBPPlan:
    """The VisualBackProp plan of a model: which conv outputs to average, how to scale up."""
    head = head or steering_head(model)
    chain = _spatial_chain(model, head)
    convs = [i for i, lay in enumerate(chain) if type(lay).__name__ in _CONV_TYPES]
    if not convs:
        raise CarvisError(f"model {model.name!r} has no conv layer on the path to its steering "
                          "output; vbp needs conv layers")
    # Each conv's post-ReLU output: the conv itself if it has an activation, else the last
    # activation layer in the pixel-wise run right after it (conv → BN → ReLU).
    taps: list[int] = []
    for i in convs:
        tap = i
        if _activation_name(chain[i]) in ("", "linear", "None"):
            k = i + 1
            while k < len(chain) and type(chain[k]).__name__ in _ELEMENTWISE:
                if type(chain[k]).__name__ in _ACTIVATION_LAYERS:
                    tap = k
                k += 1
        taps.append(tap)
    input_hw = _spatial(model.inputs[0].shape)
    if input_hw is None:
        raise CarvisError(f"model {model.name!r} input {tuple(model.inputs[0].shape)} is not "
                          "(H, W, C) with a fixed size")
    steps: list[tuple[tuple[AxisOp, AxisOp], ...]] = []
    start = 0
    prev_hw = input_hw
    for tap in taps:
        segment = []
        for lay in chain[start: tap + 1]:
            out_hw = _spatial(lay.output.shape)
            geometry = layer_geometry(lay, prev_hw, out_hw)
            if geometry is not None:
                segment.append(geometry)
            prev_hw = out_hw
        steps.append(tuple(segment))
        start = tap + 1
    return VBPPlan(input_hw=input_hw, taps=tuple(chain[t].name for t in taps),
                   tap_hw=tuple(_spatial(chain[t].output.shape) for t in taps),
                   steps=tuple(steps))


# --------------------------------------------------------------------------- CAM head


def cam_head(model: Any, head: SteeringHead) -> tuple[str, np.ndarray]:
    """(the layer before GlobalAveragePooling2D, the Dense kernel) of a GAP → Dense head."""
    entries = _layer_configs(model)
    path: list[str] = []
    name = head.layer
    dense = None
    for _ in range(len(entries)):
        layer = model.get_layer(name)
        cls = type(layer).__name__
        path.append(f"{cls} ({name!r})")
        inbound = _inbound(entries[name])
        if cls == "GlobalAveragePooling2D" and dense is not None:
            if len(inbound) != 1:
                break
            return inbound[0], np.asarray(dense.get_weights()[0], np.float32)
        if cls == "Dense":
            if dense is not None:
                break
            dense = layer
        elif cls in _PASS_THROUGH_HEAD or (cls in ("Activation", "Softmax") and dense is None):
            pass
        else:
            break
        if len(inbound) != 1:
            break
        name = inbound[0]
    ends = " ← ".join(path[:3])
    raise CarvisError(f"cam needs a head GlobalAveragePooling2D → Dense, but model "
                      f"{model.name!r} ends in {ends}; use --mode gradcam, which works on any "
                      "conv layer")


# --------------------------------------------------------------------------- guided clone


def _guided_relu() -> Any:
    import tensorflow as tf

    @tf.custom_gradient
    def guided_relu(x: Any) -> Any:
        def grad(dy: Any) -> Any:
            # Only positive gradients, only through positive activations.
            return dy * tf.cast(dy > 0, dy.dtype) * tf.cast(x > 0, dy.dtype)

        return tf.nn.relu(x), grad

    return guided_relu


def guided_clone(model: Any) -> Any:
    """A copy of a functional model whose every ReLU backpropagates the guided way; the
    model and its layers are left untouched (weights are copied into the clone)."""
    import keras

    guided_relu = _guided_relu()

    class GuidedReLU(keras.layers.Layer):
        """ReLU forward; guided backpropagation backward."""

        def __init__(self, inner: Any = None, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.inner = inner

        def call(self, x: Any) -> Any:
            return guided_relu(self.inner(x) if self.inner is not None else x)

    copies: list[tuple[Any, Any]] = []

    def copy(layer: Any, config: dict) -> Any:
        try:
            new = layer.__class__.from_config(config)
        except Exception as exc:
            raise CarvisError(f"guided backprop cannot copy layer {layer.name!r} "
                              f"({type(layer).__name__}: {str(exc).splitlines()[0][:120]}); "
                              "use --mode saliency") from exc
        copies.append((layer, new))
        return new

    def clone(layer: Any) -> Any:
        cls = type(layer).__name__
        config = layer.get_config()
        if isinstance(layer, keras.layers.InputLayer):
            return layer.__class__.from_config(config)
        if _activation_name(layer) == "relu":
            inner = copy(layer, {**config, "activation": "linear",
                                 "name": layer.name + "_linear"})
            return GuidedReLU(inner, name=layer.name)
        if cls == "ReLU" and not config.get("max_value") and not config.get(
                "negative_slope") and not config.get("threshold"):
            return GuidedReLU(None, name=layer.name)
        return copy(layer, config)

    cloned = keras.models.clone_model(model, clone_function=clone)
    for old, new in copies:
        if old.weights:
            new.set_weights(old.get_weights())
    return cloned


# --------------------------------------------------------------------------- forward parts


class Forward(Protocol):
    """Runs a model: (B, H, W, C) float32 → named arrays (layers, '@prediction', gradients)."""

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...


class LiteRTForward:
    """A multi-output .tflite on LiteRT: one input, named outputs (its signature's keys)."""

    def __init__(self, flatbuffer: bytes, rename: Mapping[str, str] | None = None,
                 source: str = "<tflite>", num_threads: int = 1) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise CarvisError(f"{source}: the LiteRT backend needs ai-edge-litert; "
                              "pip install ai-edge-litert") from None
        self._flatbuffer = flatbuffer  # the interpreter reads from this buffer: keep it alive
        try:
            self.interpreter = Interpreter(model_content=flatbuffer, num_threads=num_threads)
            self.interpreter.allocate_tensors()
            runner = self.interpreter.get_signature_runner()
            inputs = runner.get_input_details()
            outputs = runner.get_output_details()
            del runner  # it holds references to the interpreter's tensors
        except (ValueError, RuntimeError) as exc:
            raise CarvisError(f"{source}: LiteRT cannot load this model "
                              f"({str(exc).strip().splitlines()[0][:160]})") from None
        if len(inputs) != 1:
            raise CarvisError(f"{source}: has {len(inputs)} inputs; carvis needs one")
        (detail,) = inputs.values()
        self._in = detail["index"]
        self.input_shape = tuple(int(d) for d in detail["shape"][1:])
        rename = dict(rename or {})
        self._out = [(rename.get(name, name), d["index"]) for name, d in outputs.items()]
        self.output_names = tuple(name for name, _ in self._out)

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.interpreter.set_tensor(self._in, np.ascontiguousarray(batch, np.float32))
        self.interpreter.invoke()
        return {name: self.interpreter.get_tensor(index) for name, index in self._out}


# --------------------------------------------------------------------------- explainers


@dataclasses.dataclass
class Explanation:
    """A raw float 2-D map, the steering output for the frame, and the arrays behind them."""

    map: np.ndarray
    prediction: np.ndarray | None
    outputs: dict[str, np.ndarray]


def require_tensorflow(mode: str, backend: str) -> None:
    """One line if a gradient mode is asked of a backend without gradients (LiteRT)."""
    if mode in GRADIENT_MODES and backend != "tensorflow":
        raise CarvisError(f"mode {mode!r} needs gradients, which the {backend} backend does not "
                          "compute; use --backend tensorflow")


class Explainer:
    """Base of the modes: builds the multi-output graph once, runs it per frame.

    Subclasses set ``wrt`` / ``guided`` / ``uses_target`` and override :meth:`reduce` (and
    :meth:`_output_layers` when they read layers of their own choosing). ``forward`` replaces
    the built TensorFlow graph for forward-only modes (e.g. a multi-output LiteRT model
    returning ``output_layers`` and ``'@prediction'``); ``forward_factory(output_layers,
    steering_layer)`` builds one once the explainer knows which layers it needs.
    """

    mode: ClassVar[str] = ""
    wrt: ClassVar[tuple[str, ...]] = ()       # "layer" and/or "input": gradients to compute
    guided: ClassVar[bool] = False            # input gradients through the guided clone
    uses_target: ClassVar[bool] = False

    def __init__(self, model: Any, *, layer: str | int | None = None,
                 channel: int | str = "mean", target: str | Target | None = None,
                 smoothgrad: tuple[int, float] | None = None,
                 forward: Forward | None = None,
                 forward_factory: Callable[[tuple[str, ...], str], Forward] | None = None,
                 seed: int = 0) -> None:
        self.model = model
        self.head = steering_head(model)
        self.channel = channel
        self.layer = self._resolve_layer(layer)
        self.target = (make_target(target, self.head, model, self.layer)
                       if self.uses_target else None)
        n, sigma = smoothgrad or (0, 0.0)
        if n and self.mode not in ("saliency", "guided"):
            raise CarvisError(f"smoothgrad applies to saliency and guided, not to mode "
                              f"{self.mode!r}")
        if not 0 <= int(n) <= 256 or not 0.0 <= float(sigma) <= 1.0:
            raise CarvisError(f"smoothgrad {n},{sigma} is not valid; N in 0..256 noisy copies, "
                              "SIGMA in 0..1 (a fraction of the input's value range)")
        self.smooth_n, self.smooth_sigma = int(n), float(sigma)
        self._rng = np.random.default_rng(seed)
        self.input_shape = tuple(int(d) for d in model.inputs[0].shape[1:])
        self.batch_size = 1 + self.smooth_n
        self.output_layers = self._output_layers()
        if (forward is not None or forward_factory is not None) and self.wrt:
            raise CarvisError(f"mode {self.mode!r} needs gradients; it runs on the TensorFlow "
                              "backend only (--backend tensorflow)")
        if forward is None and forward_factory is not None:
            forward = forward_factory(self.output_layers, self.head.layer)
        self._forward = forward if forward is not None else self._build()
        self._big = np.empty((self.batch_size,) + self.input_shape, np.float32)

    # -- what a mode needs (overridable) -------------------------------------------------------
    def _resolve_layer(self, layer: str | int | None) -> str | None:
        if layer is None:
            return None
        from carvis import models

        return models.resolve_layer(self.model, layer).name

    def _output_layers(self) -> tuple[str, ...]:
        """The layers whose outputs reduce() reads (the forward part's outputs)."""
        names = [self.layer] if self.layer is not None and "layer" in self.wrt else []
        if self.target is not None and self.target.layer is not None:
            names.append(self.target.layer)
        return tuple(dict.fromkeys(names))

    def reduce(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        """The 2-D float map from the forward part's outputs (and gradients)."""
        raise NotImplementedError

    # -- the one graph -------------------------------------------------------------------------
    def _build(self) -> Forward:
        import keras
        import tensorflow as tf

        model = self.model
        names = list(self.output_layers)
        tensors = [model.get_layer(n).output for n in names] + [model.outputs[self.head.index]]
        forward = keras.Model(model.inputs[0], tensors, name=f"{model.name}_{self.mode}")
        keys = names + [PREDICTION]
        guided = guided_clone(forward) if self.guided else None
        target = self.target
        wrt = self.wrt
        layer_key = self.layer

        def score(values: dict[str, Any]) -> Any:
            if target.layer is not None:
                return tf.reduce_sum(target(values[target.layer]))
            return tf.reduce_sum(target(values[PREDICTION]))

        spec = tf.TensorSpec((self.batch_size,) + self.input_shape, tf.float32)

        @tf.function(input_signature=[spec], reduce_retracing=True)
        def run(x: Any) -> dict[str, Any]:
            if not wrt:
                return dict(zip(keys, _listed(forward(x, training=False)), strict=True))
            result: dict[str, Any] = {}
            plain = "layer" in wrt or ("input" in wrt and guided is None)
            if plain:
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    values = dict(zip(keys, _listed(forward(x, training=False)), strict=True))
                    total = score(values)
                sources = []
                if "layer" in wrt:
                    sources.append(("@grad:layer", values[layer_key]))
                if "input" in wrt and guided is None:
                    sources.append(("@grad:input", x))
                grads = tape.gradient(total, [s for _, s in sources])
                result.update(values)
                result.update({k: g for (k, _), g in zip(sources, grads, strict=True)})
            if guided is not None:
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    gvalues = dict(zip(keys, _listed(guided(x, training=False)), strict=True))
                    gtotal = score(gvalues)
                result["@grad:input"] = tape.gradient(gtotal, x)
                if not plain:
                    result.update(gvalues)
            return result

        self._graph_model = forward
        # Trace now, not on the first frame (a live switch builds beside the loop); TF's
        # "frequent retracing" warning counts every explainer's graph as one function's.
        logger = tf.get_logger()
        level = logger.level
        logger.setLevel("ERROR")
        try:
            run(np.zeros((self.batch_size,) + self.input_shape, np.float32))
        finally:
            logger.setLevel(level)

        def call(batch: np.ndarray) -> dict[str, np.ndarray]:
            return {k: v.numpy() for k, v in run(batch).items()}

        return call

    # -- per frame -----------------------------------------------------------------------------
    def explain(self, batch: np.ndarray) -> Explanation:
        """Map and prediction for one model input (1, H, W, C) float32."""
        batch = np.asarray(batch, np.float32)
        if batch.shape[1:] != self.input_shape:
            raise CarvisError(f"input shape {batch.shape[1:]} does not match the model's "
                              f"{self.input_shape}")
        if self.smooth_n:
            big = self._big
            big[:] = batch[0]
            span = float(batch.max() - batch.min()) or 1.0
            noise = self._rng.standard_normal(big[1:].shape, dtype=np.float32)
            big[1:] += noise * np.float32(self.smooth_sigma * span)
            batch = big
        outputs = self._forward(batch)
        prediction = outputs.get(PREDICTION)
        pred = None if prediction is None else np.asarray(prediction)[0].astype(np.float32)
        amap = np.asarray(self.reduce(outputs), np.float32)
        return Explanation(amap, pred, outputs)

    __call__ = explain


class ActivationExplainer(Explainer):
    """One layer's activation: a channel, or the mean / max over channels (the seed's map)."""

    mode = "activation"

    def _output_layers(self) -> tuple[str, ...]:
        if self.layer is None:
            raise CarvisError("mode activation needs a layer; pass --layer L")
        return (self.layer,)

    def reduce(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        from carvis.overlay import select_channel

        return select_channel(np.asarray(outputs[self.layer])[0], self.channel)


class VisualBackProp(Explainer):
    """VisualBackProp: conv means multiplied back to the input through all-ones deconvs."""

    mode = "vbp"

    def __init__(self, model: Any, *, plan: VBPPlan | None = None, **kwargs: Any) -> None:
        self.plan = plan or vbp_plan(model)
        super().__init__(model, **kwargs)

    def _resolve_layer(self, layer: str | int | None) -> str | None:
        return None  # VisualBackProp uses every conv layer

    def _output_layers(self) -> tuple[str, ...]:
        return self.plan.taps

    def reduce(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.plan.backproject(outputs)


def gradcam_map(activation: np.ndarray, grads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ReLU(sum_c w_c A_c), w) with w_c the spatial mean of the gradients; A is (h, w, c)."""
    weights = grads.mean(axis=(0, 1), dtype=np.float64).astype(np.float32)
    cam = (activation * weights).sum(axis=-1, dtype=np.float32)  # elementwise: no BLAS pool
    return np.maximum(cam, 0.0), weights


class GradCAM(Explainer):
    """Grad-CAM on a spatial layer for a target callable."""

    mode = "gradcam"
    wrt = ("layer",)
    uses_target = True

    def _output_layers(self) -> tuple[str, ...]:
        if self.layer is None:
            self.layer = _last_conv(self.model)
        return super()._output_layers()

    def reduce(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        grads = self.target.modify(np.asarray(outputs["@grad:layer"])[0])
        cam, weights = gradcam_map(np.asarray(outputs[self.layer])[0], grads)
        outputs["@weights"] = weights
        return cam


def saliency_map(grads: np.ndarray) -> np.ndarray:
    """max over colour channels of the mean over the batch of |gradient|; grads (B, H, W, C)."""
    return np.abs(grads).mean(axis=0).max(axis=-1)


class Saliency(Explainer):
    """|d target / d input|, max over colour channels; SmoothGrad over a noisy batch."""

    mode = "saliency"
    wrt = ("input",)
    uses_target = True

    def reduce(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        grads = np.asarray(outputs["@grad:input"])
        grads = grads[1:] if self.smooth_n else grads
        return saliency_map(self.target.modify(grads))


class GuidedBackprop(Saliency):
    """Guided backpropagation: saliency through ReLUs that pass only positive gradients."""

    mode = "guided"
    guided = True


class GuidedGradCAM(GradCAM):
    """Guided backpropagation times Grad-CAM (bilinearly resized to the input)."""

    mode = "guided-gradcam"
    wrt = ("layer", "input")
    guided = True

    def reduce(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        cam = super().reduce(outputs)
        h, w = self.input_shape[:2]
        up = cv2.resize(cam, (w, h), interpolation=cv2.INTER_LINEAR)
        guided = saliency_map(self.target.modify(np.asarray(outputs["@grad:input"])))
        return guided * up


class CAM(Explainer):
    """Class activation mapping: the map before GAP weighted by the Dense columns."""

    mode = "cam"
    uses_target = True

    def __init__(self, model: Any, **kwargs: Any) -> None:
        head = steering_head(model)
        self.cam_layer, self.kernel = cam_head(model, head)
        super().__init__(model, **kwargs)
        if self.target.layer is not None:
            raise CarvisError("cam weighs the map by the Dense head; a layer target does not "
                              "apply (use saliency for layer:L)")

    def _resolve_layer(self, layer: str | int | None) -> str | None:
        return None  # CAM uses the layer before global average pooling

    def _output_layers(self) -> tuple[str, ...]:
        return (self.cam_layer,)

    def reduce(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        prediction = np.asarray(outputs[PREDICTION])[0]
        weights = (self.kernel * self.target.coefficients(prediction)).sum(axis=1)
        return (np.asarray(outputs[self.cam_layer])[0] * weights).sum(axis=-1, dtype=np.float32)


def _listed(outputs: Any) -> list[Any]:
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def _last_conv(model: Any) -> str:
    from carvis import models

    convs = [info.name for info in models.layer_table(model) if info.is_conv and info.is_spatial]
    if not convs:
        raise CarvisError(f"model {model.name!r} has no conv layer; pass --layer L")
    return convs[-1]


EXPLAINERS: dict[str, type[Explainer]] = {
    "activation": ActivationExplainer,
    "vbp": VisualBackProp,
    "gradcam": GradCAM,
    "saliency": Saliency,
    "guided": GuidedBackprop,
    "guided-gradcam": GuidedGradCAM,
    "cam": CAM,
}


def parse_mode(mode: Any) -> str:
    """A mode name, checked."""
    text = str(mode).strip().lower()
    if text not in EXPLAINERS:
        raise CarvisError(f"mode {mode!r} is not one of: {', '.join(MODES)}")
    return text


def make_explainer(mode: str, model: Any, **kwargs: Any) -> Explainer:
    """The explainer for a mode, built once (layer, channel, target, smoothgrad, forward)."""
    return EXPLAINERS[parse_mode(mode)](model, **kwargs)
