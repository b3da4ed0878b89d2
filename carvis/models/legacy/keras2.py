"""Keras 2 layer configs as Keras 3 layers: one small builder per Keras 2 class name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

from carvis.models.legacy.context import Context, Spec, tupled
from carvis.models.legacy.oplayer import build_op

L = keras.layers

Builder = Callable[[Context, Spec], Any]


def build(ctx: Context, spec: Spec) -> Any:
    """The Keras 3 layer for one spec, or one line naming what cannot be rebuilt."""
    if spec.config.get("data_format") == "channels_first":
        raise ctx.fail(f"layer {spec.name!r} ({spec.class_name}) uses data_format "
                       "'channels_first', which carvis does not rebuild; re-save the model "
                       "channels_last")
    builder = BUILDERS.get(spec.class_name)
    if builder is None:
        raise ctx.unsupported(spec.name, f"a {spec.class_name} layer")
    return builder(ctx, spec)


def activation(ctx: Context, layer_name: str, value: Any) -> Any:
    """A Keras 2 activation as Keras 3 takes it (hard_sigmoid keeps its Keras 2 meaning)."""
    if isinstance(value, dict):  # newer tf.keras serialises built-ins as {"config": "relu"}
        value = value.get("config") if isinstance(value.get("config"), str) else None
        if value is None:
            raise ctx.unsupported(layer_name, "a layer with a custom activation function")
    name = value or "linear"
    if name == "hard_sigmoid":
        return legacy_hard_sigmoid
    try:
        keras.activations.get(name)
    except (ValueError, TypeError) as exc:
        raise ctx.unsupported(layer_name, f"a layer with activation {name!r}") from exc
    return name


def legacy_hard_sigmoid(x: Any) -> Any:
    """Keras 1/2 hard_sigmoid: clip(0.2 x + 0.5, 0, 1)."""
    return keras.ops.clip(0.2 * x + 0.5, 0.0, 1.0)


def _act(ctx: Context, spec: Spec) -> Any:
    return activation(ctx, spec.name, spec.config.get("activation"))


def _conv_args(spec: Spec) -> dict[str, Any]:
    """What every conv layer takes besides its size: strides, padding, dilation, bias, name."""
    c = spec.config
    return {"strides": tupled(c.get("strides", (1, 1))), "padding": c.get("padding", "valid"),
            "dilation_rate": tupled(c.get("dilation_rate", (1, 1))),
            "use_bias": c.get("use_bias", True), "name": spec.name}


def _conv2d(ctx: Context, spec: Spec) -> Any:
    c = spec.config
    if ctx.backend == "theano":
        # Theano convolves (flips the kernel); Keras 2 flipped such kernels on load too.
        ctx.fixes[spec.name] = lambda w: [w[0][::-1, ::-1, :, :].copy()] + list(w[1:])
    return L.Conv2D(c["filters"], tupled(c["kernel_size"]), activation=_act(ctx, spec),
                    groups=c.get("groups", 1), **_conv_args(spec))


def _separable(ctx: Context, spec: Spec) -> Any:
    c = spec.config
    return L.SeparableConv2D(c["filters"], tupled(c["kernel_size"]), activation=_act(ctx, spec),
                             depth_multiplier=c.get("depth_multiplier", 1), **_conv_args(spec))


def _depthwise(ctx: Context, spec: Spec) -> Any:
    c = spec.config
    return L.DepthwiseConv2D(tupled(c["kernel_size"]), activation=_act(ctx, spec),
                             depth_multiplier=c.get("depth_multiplier", 1), **_conv_args(spec))


def _conv3d(ctx: Context, spec: Spec) -> Any:
    c = spec.config
    return L.Conv3D(c["filters"], tupled(c["kernel_size"]), activation=_act(ctx, spec),
                    groups=c.get("groups", 1), **{**_conv_args(spec), **_dims3(c)})


def _dims3(c: dict) -> dict[str, Any]:
    """A 3-D layer's strides and dilation (Keras 2 writes both; defaults of 1 otherwise)."""
    return {"strides": tupled(c.get("strides", (1, 1, 1))),
            "dilation_rate": tupled(c.get("dilation_rate", (1, 1, 1)))}


def _conv_transpose(ctx: Context, spec: Spec) -> Any:
    c = spec.config
    padding = c.get("output_padding")
    return L.Conv2DTranspose(c["filters"], tupled(c["kernel_size"]), activation=_act(ctx, spec),
                             output_padding=None if padding is None else tupled(padding),
                             **_conv_args(spec))


def _pool(ctx: Context, spec: Spec) -> Any:
    c = spec.config
    square = (2, 2, 2) if spec.class_name.endswith("3D") else (2, 2)
    return getattr(L, spec.class_name)(pool_size=tupled(c.get("pool_size", square)),
                                       strides=tupled(c.get("strides")),
                                       padding=c.get("padding", "valid"), name=spec.name)


def _global_pool(ctx: Context, spec: Spec) -> Any:
    return getattr(L, spec.class_name)(keepdims=spec.config.get("keepdims", False),
                                       name=spec.name)


def _dropout(ctx: Context, spec: Spec) -> Any:
    return getattr(L, spec.class_name)(rate=float(spec.config.get("rate", 0.0)), name=spec.name)


def _noise(ctx: Context, spec: Spec) -> Any:
    return L.GaussianNoise(stddev=float(spec.config.get("stddev", 0.0)), name=spec.name)


def _flatten(ctx: Context, spec: Spec) -> Any:
    return L.Flatten(name=spec.name)


def _dense(ctx: Context, spec: Spec) -> Any:
    c = spec.config
    return L.Dense(c["units"], activation=_act(ctx, spec), use_bias=c.get("use_bias", True),
                   name=spec.name)


def _activation(ctx: Context, spec: Spec) -> Any:
    return L.Activation(_act(ctx, spec), name=spec.name)


def _batchnorm(ctx: Context, spec: Spec) -> Any:
    c, name = spec.config, spec.name
    axis = c.get("axis", -1)
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            raise ctx.unsupported(name, f"a BatchNormalization layer over axes {axis}")
        axis = axis[0]
    if c.get("renorm"):
        raise ctx.unsupported(name, "a BatchNormalization layer with batch renormalization")
    return L.BatchNormalization(axis=axis, epsilon=float(c.get("epsilon", 1e-3)),
                                center=c.get("center", True), scale=c.get("scale", True),
                                name=name)


def _relu(ctx: Context, spec: Spec) -> Any:
    c = spec.config
    return L.ReLU(max_value=c.get("max_value"), negative_slope=c.get("negative_slope", 0),
                  threshold=c.get("threshold", 0), name=spec.name)


def _leaky_relu(ctx: Context, spec: Spec) -> Any:
    c = spec.config
    return L.LeakyReLU(negative_slope=float(c.get("negative_slope", c.get("alpha", 0.3))),
                       name=spec.name)


def _elu(ctx: Context, spec: Spec) -> Any:
    return L.ELU(alpha=float(spec.config.get("alpha", 1.0)), name=spec.name)


def _prelu(ctx: Context, spec: Spec) -> Any:
    shared = spec.config.get("shared_axes")
    return L.PReLU(shared_axes=list(shared) if shared else None, name=spec.name)


def _softmax(ctx: Context, spec: Spec) -> Any:
    return L.Softmax(axis=spec.config.get("axis", -1), name=spec.name)


def _cropping(ctx: Context, spec: Spec) -> Any:
    return L.Cropping2D(cropping=tupled(spec.config.get("cropping", ((0, 0), (0, 0)))),
                        name=spec.name)


def _cropping3d(ctx: Context, spec: Spec) -> Any:
    return L.Cropping3D(cropping=tupled(spec.config.get("cropping", ((1, 1),) * 3)),
                        name=spec.name)


def _time_distributed(ctx: Context, spec: Spec) -> Any:
    """TimeDistributed(layer): the inner layer by its own builder, applied to every frame."""
    inner = spec.config.get("layer") or {}
    class_name = str(inner.get("class_name", "?"))
    config = dict(inner.get("config") or {})
    if class_name in ("TimeDistributed", "Lambda", "TFOpLambda") or class_name not in BUILDERS:
        raise ctx.unsupported(spec.name, f"a TimeDistributed layer wrapping a {class_name}")
    config["name"] = str(config.get("name") or f"{spec.name}_inner")
    return L.TimeDistributed(build(ctx, Spec(config["name"], class_name, config)),
                             name=spec.name)


def _lstm(ctx: Context, spec: Spec) -> Any:
    c = spec.config
    for key, what in (("time_major", "time-major"), ("stateful", "stateful")):
        if c.get(key):
            raise ctx.unsupported(spec.name, f"a {what} LSTM layer")
    return L.LSTM(c["units"], activation=activation(ctx, spec.name, c.get("activation", "tanh")),
                  recurrent_activation=activation(ctx, spec.name,
                                                  c.get("recurrent_activation", "sigmoid")),
                  use_bias=c.get("use_bias", True),
                  unit_forget_bias=c.get("unit_forget_bias", True),
                  return_sequences=c.get("return_sequences", False),
                  return_state=c.get("return_state", False),
                  go_backwards=c.get("go_backwards", False), unroll=c.get("unroll", False),
                  name=spec.name)


def _zero_padding(ctx: Context, spec: Spec) -> Any:
    return L.ZeroPadding2D(padding=tupled(spec.config.get("padding", (1, 1))), name=spec.name)


def _upsampling(ctx: Context, spec: Spec) -> Any:
    c = spec.config
    return L.UpSampling2D(size=tupled(c.get("size", (2, 2))),
                          interpolation=c.get("interpolation", "nearest"), name=spec.name)


def _reshape(ctx: Context, spec: Spec) -> Any:
    return L.Reshape(tupled(spec.config["target_shape"]), name=spec.name)


def _permute(ctx: Context, spec: Spec) -> Any:
    return L.Permute(tupled(spec.config["dims"]), name=spec.name)


def _rescaling(ctx: Context, spec: Spec) -> Any:
    c = spec.config
    return L.Rescaling(scale=c.get("scale", 1.0), offset=c.get("offset", 0.0), name=spec.name)


def _concatenate(ctx: Context, spec: Spec) -> Any:
    return L.Concatenate(axis=spec.config.get("axis", -1), name=spec.name)


def _merge(ctx: Context, spec: Spec) -> Any:
    return getattr(L, spec.class_name)(name=spec.name)


def _lambda(ctx: Context, spec: Spec) -> Any:
    if ctx.lambda_policy != "identity":
        raise ctx.fail(
            f"layer {spec.name!r} is a Lambda (Python code stored in the file) that carvis "
            "cannot rebuild; re-save the model without it, or pass --lambda identity "
            "and do its scaling in the profile (preprocess.scale/offset)")
    ctx.lambdas.append(spec.name)
    return L.Identity(name=spec.name)


#: Keras 2 class name -> its builder; a layer type carvis can rebuild is one entry here.
BUILDERS: dict[str, Builder] = {
    "Conv2D": _conv2d,
    "SeparableConv2D": _separable,
    "DepthwiseConv2D": _depthwise,
    "Conv2DTranspose": _conv_transpose,
    "Conv3D": _conv3d,
    "MaxPooling2D": _pool,
    "AveragePooling2D": _pool,
    "MaxPooling3D": _pool,
    "AveragePooling3D": _pool,
    "GlobalAveragePooling2D": _global_pool,
    "GlobalMaxPooling2D": _global_pool,
    "Dropout": _dropout,
    "SpatialDropout2D": _dropout,
    "GaussianDropout": _dropout,
    "GaussianNoise": _noise,
    "Flatten": _flatten,
    "Dense": _dense,
    "Activation": _activation,
    "BatchNormalization": _batchnorm,
    "ReLU": _relu,
    "LeakyReLU": _leaky_relu,
    "ELU": _elu,
    "PReLU": _prelu,
    "Softmax": _softmax,
    "Cropping2D": _cropping,
    "Cropping3D": _cropping3d,
    "ZeroPadding2D": _zero_padding,
    "UpSampling2D": _upsampling,
    "Reshape": _reshape,
    "Permute": _permute,
    "Rescaling": _rescaling,
    "Concatenate": _concatenate,
    "Add": _merge,
    "Subtract": _merge,
    "Multiply": _merge,
    "Average": _merge,
    "Maximum": _merge,
    "Minimum": _merge,
    "Lambda": _lambda,
    "TFOpLambda": build_op,
    "TimeDistributed": _time_distributed,
    "LSTM": _lstm,
}
