"""Clones of a model whose backward pass is rewritten, the model itself left untouched.

- Guided backpropagation: every ReLU lets only positive gradients flow back through positive
  activations.
- Built-in gradients (``builtin=True``): every op whose TensorFlow gradient is an op TFLite's
  built-in set lacks (ReluGrad, EluGrad, TanhGrad, SigmoidGrad, MaxPoolGrad) backpropagates
  through built-in ops instead (a mask, a select, a product; a pool's gradient through a
  mask per window position), so the whole gradient graph converts to a
  plain .tflite and runs on LiteRT — on the car too. A convolution's input gradient is a
  CONV_2D of the gradient with the flipped kernel, its stride's phases as channels and a
  DEPTH_TO_SPACE, not TRANSPOSE_CONV, which LiteRT runs ~14x slower than the forward conv
  (4.3 against 0.3 ms for a DonkeyCar pilot's first layer). The values are TensorFlow's: the
  same formulas on the same tensors, up to the order of a convolution's sums.
"""

from __future__ import annotations

from typing import Any

from carvis.errors import CarvisError
from carvis.explain.graph import activation_name

#: The built-in gradient graphs' version: cached conversions of another are made again.
BUILTIN_GRADIENTS = 1

#: Activations whose gradient the built-in clone rewrites ('linear' needs nothing).
BUILTIN_ACTIVATIONS = ("relu", "elu", "tanh", "sigmoid")


def _activation_fns(guided: bool) -> dict[str, Any]:
    """name → a tf.custom_gradient activation whose backward pass uses built-in ops only."""
    import tensorflow as tf

    @tf.custom_gradient
    def relu(x: Any) -> Any:
        y = tf.nn.relu(x)

        def grad(dy: Any) -> Any:
            # TensorFlow's ReluGrad: dy where the output is positive. Guided: only positive dy.
            if guided:
                return dy * tf.cast(dy > 0, dy.dtype) * tf.cast(x > 0, dy.dtype)
            return dy * tf.cast(y > 0, dy.dtype)

        return y, grad

    @tf.custom_gradient
    def elu(x: Any) -> Any:
        y = tf.nn.elu(x)
        return y, lambda dy: tf.where(y < 0, dy * (y + 1), dy)  # EluGrad's formula

    @tf.custom_gradient
    def tanh(x: Any) -> Any:
        y = tf.tanh(x)
        return y, lambda dy: dy * (1 - y * y)  # TanhGrad's formula

    @tf.custom_gradient
    def sigmoid(x: Any) -> Any:
        y = tf.sigmoid(x)
        return y, lambda dy: dy * (y * (1 - y))  # SigmoidGrad's formula

    return {"relu": relu, "elu": elu, "tanh": tanh, "sigmoid": sigmoid}


def _max_pool(pool: tuple[int, int], padding: str) -> Any:
    """A 2-D max pool (square, stride = size, as a car's nets use them) whose gradient is
    built in and TensorFlow's MaxPoolGrad's to the bit: each window's gradient goes to the
    first input (in row-major order) equal to the window's maximum; inputs in no window get
    none. Through SPACE_TO_DEPTH, a mask per window position, DEPTH_TO_SPACE."""
    import tensorflow as tf

    p = pool[0]

    @tf.custom_gradient
    def max_pool(x: Any) -> Any:
        y = tf.nn.max_pool2d(x, pool, pool, padding.upper())

        def grad(dy: Any) -> Any:
            h, w, c = (int(d) for d in x.shape[1:])
            oh, ow = int(y.shape[1]), int(y.shape[2])
            phases = tf.nn.space_to_depth(x[:, : oh * p, : ow * p], p)
            taken = None
            parts = []
            for k in range(p * p):  # the window's positions, row-major
                hit = tf.cast(tf.equal(phases[..., k * c: (k + 1) * c], y), dy.dtype)
                first = hit if taken is None else hit * (1 - taken)
                taken = first if taken is None else taken + first
                parts.append(dy * first)
            dx = tf.nn.depth_to_space(tf.concat(parts, axis=-1), p)
            return tf.pad(dx, [[0, 0], [0, h - oh * p], [0, w - ow * p], [0, 0]])

        return y, grad

    return max_pool


def _conv2d(layer: Any) -> Any:
    """A Conv2D layer's convolution and bias (its activation apart) with constant weights,
    whose input gradient is one stride-1 CONV_2D and a DEPTH_TO_SPACE: with stride s, input
    row q*s + r gets its gradient from the kernel's rows r, r+s, ... only, so the s*s phases
    are one convolution of the gradient with s*s*C output channels, interleaved."""
    import numpy as np
    import tensorflow as tf

    config = layer.get_config()
    weights = layer.get_weights()
    k = np.asarray(weights[0], np.float32)
    kernel = tf.constant(k)
    bias = tf.constant(np.asarray(weights[1], np.float32)) if config.get("use_bias", True) \
        else None
    strides = tuple(config["strides"])
    padding = str(config["padding"]).upper()
    kh, kw, c, f = k.shape
    s = strides[0]
    m_h, m_w = -(-kh // s), -(-kw // s)  # taps per phase
    back = np.zeros((m_h, m_w, f, s, s, c), np.float32)
    for jh in range(m_h):
        for jw in range(m_w):
            for rh in range(s):
                for rw in range(s):
                    th, tw = (m_h - 1 - jh) * s + rh, (m_w - 1 - jw) * s + rw
                    if th < kh and tw < kw:
                        back[jh, jw, :, rh, rw, :] = k[th, tw].T
    back = tf.constant(back.reshape(m_h, m_w, f, s * s * c))

    @tf.custom_gradient
    def conv(x: Any) -> Any:
        y = tf.nn.conv2d(x, kernel, strides, padding)
        if bias is not None:
            y = tf.nn.bias_add(y, bias)

        def grad(dy: Any) -> Any:
            h, w = int(x.shape[1]), int(x.shape[2])
            oh, ow = int(dy.shape[1]), int(dy.shape[2])
            # Where the padded input's rows start (SAME pads as TensorFlow does).
            ph = max((oh - 1) * s + kh - h, 0) // 2 if padding == "SAME" else 0
            pw = max((ow - 1) * s + kw - w, 0) // 2 if padding == "SAME" else 0
            qh, qw = -(-((oh - 1) * s + kh) // s), -(-((ow - 1) * s + kw) // s)
            z = tf.pad(dy, [[0, 0], [m_h - 1, qh - oh], [m_w - 1, qw - ow], [0, 0]])
            full = tf.nn.conv2d(z, back, 1, "VALID")  # (qh, qw, s*s*c): every phase
            if s > 1:
                full = tf.nn.depth_to_space(full, s)
            fh, fw = qh * s, qw * s
            full = tf.pad(full, [[0, 0], [0, max(0, ph + h - fh)], [0, max(0, pw + w - fw)],
                                 [0, 0]])
            return full[:, ph: ph + h, pw: pw + w]

        return y, grad

    return conv


def guided_clone(model: Any) -> Any:
    """A copy of a functional model whose every ReLU backpropagates the guided way."""
    return gradient_clone(model, guided=True)


def _keras_activation(name: str) -> Any:
    """A built-in Keras activation by name (None for linear)."""
    if name in ("", "linear", "None"):
        return None
    import keras

    return keras.activations.get(name)


def gradient_clone(model: Any, *, guided: bool = False, builtin: bool = False) -> Any:
    """A copy of a functional model with its backward pass rewritten (guided ReLUs, and/or
    built-in ops only); the model and its layers are left untouched (weights are copied into
    the clone). builtin: a layer whose gradient cannot be rewritten raises CarvisError."""
    import keras

    fns = _activation_fns(guided)

    class Rewritten(keras.layers.Layer):
        """A layer's forward pass (an inner copy, or none), then an activation or a pool whose
        backward pass is rewritten."""

        def __init__(self, inner: Any = None, fn: Any = None, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.inner = inner
            self.fn = fn

        def call(self, x: Any) -> Any:
            return self.fn(self.inner(x) if self.inner is not None else x)

    copies: list[tuple[Any, Any]] = []

    def copy(layer: Any, config: dict) -> Any:
        try:
            new = layer.__class__.from_config(config)
        except Exception as exc:
            what = "guided backprop" if guided else "the built-in gradient graph"
            raise CarvisError(f"{what} cannot copy layer {layer.name!r} "
                              f"({type(layer).__name__}: {str(exc).splitlines()[0][:120]})"
                              + ("; use --mode saliency" if guided else "")) from exc
        copies.append((layer, new))
        return new

    def rewritten(name: str) -> Any:
        """The activation function to put in, or None to keep the layer as it is."""
        if name == "relu" and (guided or builtin):
            return fns["relu"]
        if builtin and name in BUILTIN_ACTIVATIONS:
            return fns[name]
        return None

    def clone(layer: Any) -> Any:
        cls = type(layer).__name__
        config = layer.get_config()
        if isinstance(layer, keras.layers.InputLayer):
            return layer.__class__.from_config(config)
        fn = rewritten(activation_name(layer))
        if builtin and cls == "Conv2D":
            if tuple(config.get("dilation_rate", (1, 1))) != (1, 1) or \
                    config.get("groups", 1) != 1 or len(set(config["strides"])) != 1 or \
                    config.get("data_format", "channels_last") != "channels_last":
                raise CarvisError(f"the built-in gradient graph takes plain convolutions "
                                  f"with one stride; layer {layer.name!r} is dilated, grouped "
                                  "or strided unevenly")
            conv = _conv2d(layer)
            act = fn or _keras_activation(activation_name(layer))
            return Rewritten(None, conv if act is None else (lambda x: act(conv(x))),
                             name=layer.name)
        if fn is not None and cls != "Activation":
            inner = copy(layer, {**config, "activation": "linear",
                                 "name": layer.name + "_linear"})
            return Rewritten(inner, fn, name=layer.name)
        if fn is not None:  # an Activation layer
            return Rewritten(None, fn, name=layer.name)
        if cls == "ReLU" and not config.get("max_value") and not config.get(
                "negative_slope") and not config.get("threshold") and (guided or builtin):
            return Rewritten(None, fns["relu"], name=layer.name)
        if builtin and cls == "MaxPooling2D":
            pool = tuple(config["pool_size"])
            strides = tuple(config.get("strides") or pool)
            _, h, w, _ = layer.input.shape
            same = str(config.get("padding", "valid")).lower() == "same"
            if pool != strides or pool[0] != pool[1] or config.get(
                    "data_format", "channels_last") != "channels_last" or (
                    same and (h % pool[0] or w % pool[1])):
                raise CarvisError(f"the built-in gradient graph takes square max pools whose "
                                  f"stride is their size (and 'same' ones that fit); layer "
                                  f"{layer.name!r} pools {pool} with stride {strides}")
            return Rewritten(None, _max_pool(pool, config.get("padding", "valid")),
                             name=layer.name)
        if builtin and cls in ("ReLU", "LeakyReLU", "PReLU", "ELU", "MaxPooling1D",
                               "MaxPooling3D"):
            raise CarvisError(f"the built-in gradient graph has no rewrite for layer "
                              f"{layer.name!r} ({cls})")
        return copy(layer, config)

    cloned = keras.models.clone_model(model, clone_function=clone)
    for old, new in copies:
        if old.weights:
            new.set_weights(old.get_weights())
    return cloned
