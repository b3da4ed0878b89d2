"""Keras 1 layer configs in Keras 2 terms: one small translator per Keras 1 class name."""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from carvis.models.legacy.context import Context, WeightFix, tupled

# (context, Keras 1 class name, Keras 1 config, new config holding the name) -> Keras 2 terms
Translator = Callable[[Context, str, dict, dict], tuple[str, dict]]

_MERGE_MODES = {"concat": "Concatenate", "sum": "Add", "mul": "Multiply", "ave": "Average",
                "max": "Maximum"}


def translate(ctx: Context, name: str, class_name: str, c: dict) -> tuple[str, dict]:
    """A Keras 1 layer config as (Keras 2 class name, Keras 2 config)."""
    if c.get("dim_ordering") == "th":
        # Theano ordering means channels-first inputs and (out, in, rows, cols) kernels that
        # the Theano backend also flipped; rebuilding that faithfully needs the training
        # backend, which Keras 1 never recorded.
        raise ctx.fail(f"layer {name!r} uses Theano dim_ordering 'th' (channels first), "
                       "which carvis does not rebuild; convert the model to dim_ordering "
                       "'tf' with Keras 1 and save it again")
    if class_name in ("InputLayer", "Lambda"):
        return class_name, c
    translator = TRANSLATORS.get(class_name)
    if translator is None:
        raise ctx.unsupported(name, f"a {class_name} layer")
    return translator(ctx, class_name, c, {"name": name})


def _conv(ctx: Context, cls: str, c: dict, out: dict) -> tuple[str, dict]:
    padding = str(c.get("border_mode", "valid"))
    if padding not in ("valid", "same"):
        raise ctx.unsupported(out["name"], f"a {cls} layer with border_mode {padding!r}")
    # Keras 1 with dim_ordering "tf" stored kernels as (rows, cols, in, out), the layout
    # Keras 3 uses: no transpose and no flip needed (TensorFlow-backend training assumed).
    out.update(filters=c["nb_filter"], kernel_size=(c["nb_row"], c["nb_col"]),
               strides=tupled(c.get("subsample", (1, 1))), padding=padding,
               activation=c.get("activation", "linear"), use_bias=c.get("bias", True))
    if cls == "AtrousConvolution2D":
        out["dilation_rate"] = tupled(c.get("atrous_rate", (1, 1)))
    if cls == "SeparableConvolution2D":
        out["depth_multiplier"] = c.get("depth_multiplier", 1)
        return "SeparableConv2D", out
    return "Conv2D", out


def _pool(ctx: Context, cls: str, c: dict, out: dict) -> tuple[str, dict]:
    out.update(pool_size=tupled(c.get("pool_size", (2, 2))), strides=tupled(c.get("strides")),
               padding=str(c.get("border_mode", "valid")))
    return cls, out


def _plain(ctx: Context, cls: str, c: dict, out: dict) -> tuple[str, dict]:
    return cls, out


def _dropout(ctx: Context, cls: str, c: dict, out: dict) -> tuple[str, dict]:
    out["rate"] = c.get("p", 0.0)
    return cls, out


def _noise(ctx: Context, cls: str, c: dict, out: dict) -> tuple[str, dict]:
    out["stddev"] = c.get("sigma", 0.0)
    return cls, out


def _dense(ctx: Context, cls: str, c: dict, out: dict) -> tuple[str, dict]:
    out.update(units=c["output_dim"], activation=c.get("activation", "linear"),
               use_bias=c.get("bias", True))
    return cls, out


def _activation(ctx: Context, cls: str, c: dict, out: dict) -> tuple[str, dict]:
    out["activation"] = c.get("activation", "linear")
    return cls, out


def _batchnorm(ctx: Context, cls: str, c: dict, out: dict) -> tuple[str, dict]:
    mode = int(c.get("mode", 0))
    if mode != 0:
        raise ctx.unsupported(out["name"], f"a BatchNormalization layer in mode {mode} "
                              "(batch statistics at inference)")
    out.update(axis=c.get("axis", -1), epsilon=c.get("epsilon", 1e-3))
    ctx.fixes[out["name"]] = _batchnorm_fix(ctx.version, float(out["epsilon"]))
    return cls, out


def _batchnorm_fix(version: str, epsilon: float) -> WeightFix:
    match = re.match(r"1\.(\d+)", version)
    stores_std = bool(match) and int(match.group(1)) < 1

    def fix(weights: list[np.ndarray]) -> list[np.ndarray]:
        gamma, beta, mean, running = weights
        # Keras 1.1+ names it running_std but stores the moving *variance* (the TF backend's
        # normalize_batch_in_training returns var; batch_normalization adds epsilon to it).
        if stores_std:
            # Keras 1.0 stored the std and divided by (std + epsilon); this variance gives
            # exactly that divisor under Keras 3's sqrt(var + epsilon).
            running = (running + epsilon) ** 2 - epsilon
        return [gamma, beta, mean, running]

    return fix


def _alpha(ctx: Context, cls: str, c: dict, out: dict) -> tuple[str, dict]:
    out["alpha"] = c.get("alpha", 1.0 if cls == "ELU" else 0.3)
    return cls, out


def _cropping(ctx: Context, cls: str, c: dict, out: dict) -> tuple[str, dict]:
    out["cropping"] = tupled(c.get("cropping", ((0, 0), (0, 0))))
    return cls, out


def _zero_padding(ctx: Context, cls: str, c: dict, out: dict) -> tuple[str, dict]:
    padding = c.get("padding", (1, 1))
    if isinstance(padding, dict):
        padding = ((padding.get("top_pad", 0), padding.get("bottom_pad", 0)),
                   (padding.get("left_pad", 0), padding.get("right_pad", 0)))
    padding = tupled(padding)
    if isinstance(padding, tuple) and len(padding) == 4:
        padding = (padding[0], padding[1]), (padding[2], padding[3])
    out["padding"] = padding
    return cls, out


def _upsampling(ctx: Context, cls: str, c: dict, out: dict) -> tuple[str, dict]:
    out["size"] = tupled(c.get("size", (2, 2)))
    return cls, out


def _reshape(ctx: Context, cls: str, c: dict, out: dict) -> tuple[str, dict]:
    out["target_shape"] = tupled(c["target_shape"])
    return cls, out


def _permute(ctx: Context, cls: str, c: dict, out: dict) -> tuple[str, dict]:
    out["dims"] = tupled(c["dims"])
    return cls, out


def _merge(ctx: Context, cls: str, c: dict, out: dict) -> tuple[str, dict]:
    mode = c.get("mode", "sum")
    merged = _MERGE_MODES.get(mode if isinstance(mode, str) else "")
    if merged is None or c.get("mode_type", "raw") != "raw":
        raise ctx.unsupported(out["name"], f"a Merge layer with mode {mode!r}")
    if merged == "Concatenate":
        out["axis"] = c.get("concat_axis", -1)
    return merged, out


#: Keras 1 class name -> its translator; a layer type Keras 1 had is one entry here.
TRANSLATORS: dict[str, Translator] = {
    "Convolution2D": _conv,
    "AtrousConvolution2D": _conv,
    "SeparableConvolution2D": _conv,
    "MaxPooling2D": _pool,
    "AveragePooling2D": _pool,
    "GlobalAveragePooling2D": _plain,
    "GlobalMaxPooling2D": _plain,
    "Flatten": _plain,
    "PReLU": _plain,
    "Dropout": _dropout,
    "SpatialDropout2D": _dropout,
    "GaussianDropout": _dropout,
    "GaussianNoise": _noise,
    "Dense": _dense,
    "Activation": _activation,
    "BatchNormalization": _batchnorm,
    "ELU": _alpha,
    "LeakyReLU": _alpha,
    "Cropping2D": _cropping,
    "ZeroPadding2D": _zero_padding,
    "UpSampling2D": _upsampling,
    "Reshape": _reshape,
    "Permute": _permute,
    "Merge": _merge,
}
