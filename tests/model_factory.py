"""Car models as real old files: saved by the real Keras 2 (tf_keras) or written as Keras 1.

Each case keeps the file, the input batch, and the reference activations that the model's own
framework computed, so the tests can compare carvis' truncated models against them.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np


@dataclass
class Case:
    """One saved model and what its own framework says its layers output."""

    kind: str
    path: Path
    x: np.ndarray                      # the batch the reference model saw
    carvis_x: np.ndarray               # the batch to give carvis' model (differs for --lambda)
    expected: dict[str, np.ndarray]    # layer name → reference activations for x
    params: int
    layer_names: list[str]
    keras3_loads: bool                 # does keras.models.load_model take the file as it is?
    lambda_policy: str = "error"


# Layers compared per kind (names as saved; the grid in test_models.py is built from this).
GRID_LAYERS: dict[str, list[str]] = {
    "donkey": ["conv2d_1", "conv2d_3", "conv2d_5", "dense_2", "angle_out", "throttle_out"],
    "donkey_theano": ["conv2d_1", "conv2d_5", "angle_out"],
    "pilotnet_bn": ["batch_normalization", "conv2d_1", "conv2d_5", "dense_4"],
    "pilotnet_lambda": ["lambda_1", "conv2d_1", "conv2d_5", "dense_4"],
    "legacy_sequential": ["conv2d_a", "bn_a", "crop_a", "sep_a", "dw_a", "conv2d_dil", "up_a",
                          "dense_a", "softmax_out"],
    "policy_functional": ["concat", "add", "prelu", "relu6", "avg", "sub", "permute", "softmax"],
    "hard_sigmoid": ["conv2d_hs", "dense_hs"],
    "keras3_keras": ["conv_1", "pool_1", "conv_2", "head"],
    "keras3_h5": ["conv_1", "conv_2", "head"],
    "keras1_functional": ["zeropadding2d_1", "convolution2d_1", "batchnormalization_1", "elu_1",
                          "leakyrelu_1", "merge_1", "cropping2d_1", "averagepooling2d_1",
                          "reshape_1", "activation_1"],
    "keras1_sequential": ["convolution2d_1", "batchnormalization_1", "activation_1"],
}


def _tf_keras() -> Any:
    import tf_keras

    return tf_keras


def _randomize(model: Any, rng: np.random.Generator) -> None:
    """Non-trivial biases and BatchNorm statistics, so a dropped bias or eps shows up."""
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        new = []
        for var, w in zip(layer.weights, weights, strict=True):
            name = var.name
            if "moving_variance" in name:
                w = rng.uniform(0.5, 2.0, w.shape)
            elif "gamma" in name:
                w = rng.uniform(0.5, 1.5, w.shape)
            elif "alpha" in name:
                w = rng.uniform(0.05, 0.5, w.shape)
            elif "bias" in name or "beta" in name or "moving_mean" in name:
                w = rng.normal(0.0, 0.2, w.shape)
            new.append(np.asarray(w, np.float32))
        layer.set_weights(new)


def _save(model: Any, path: Path, weights_only: bool = False) -> None:
    """Save without the frameworks' "HDF5 is legacy" chatter (old formats are the point)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        if weights_only:
            model.save_weights(path)
        else:
            model.save(path)


def _references(model: Any, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    K = _tf_keras()
    out = {}
    for name in names:
        sub = K.Model(model.inputs, model.get_layer(name).output)
        out[name] = np.asarray(sub(x, training=False))
    return out


def _edit_config(path: Path, edit: Any) -> None:
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        edit(config)
        f.attrs["model_config"] = json.dumps(config)


def _case(kind: str, path: Path, model: Any, x: np.ndarray, keras3_loads: bool,
          carvis_x: np.ndarray | None = None, lambda_policy: str = "error") -> Case:
    return Case(kind=kind, path=path, x=x, carvis_x=x if carvis_x is None else carvis_x,
                expected=_references(model, x, GRID_LAYERS[kind]),
                params=int(model.count_params()), layer_names=[lay.name for lay in model.layers],
                keras3_loads=keras3_loads, lambda_policy=lambda_policy)


# --------------------------------------------------------------------------- Keras 2 models


def _donkey_pilot(tmp: Path, rng: np.random.Generator, name: str, angle_units: int,
                  throttle_units: int, activation: str) -> tuple[Any, Path]:
    """A DonkeyCar pilot: the shared body, angle and throttle heads; (model, saved .h5)."""
    K = _tf_keras()
    L = K.layers
    img_in, x = _donkey_body(L)
    angle = L.Dense(angle_units, activation=activation, name="angle_out")(x)
    throttle = L.Dense(throttle_units, activation=activation, name="throttle_out")(x)
    model = K.Model(inputs=[img_in], outputs=[angle, throttle])
    _randomize(model, rng)
    path = tmp / f"{name}.h5"
    _save(model, path)
    return model, path


def donkey(tmp: Path, rng: np.random.Generator) -> tuple[Case, Case]:
    """DonkeyCar KerasLinear (120×160×3, 5 convs, angle + throttle heads), and its Theano twin."""
    model, path = _donkey_pilot(tmp, rng, "donkey", 1, 1, "linear")
    x_in = rng.uniform(0.0, 1.0, (2, 120, 160, 3)).astype(np.float32)
    case = _case("donkey", path, model, x_in, keras3_loads=True)

    # The same weights as if trained on Theano: Keras 2 records backend 'theano', and Theano
    # convolves, so the stored kernels are the spatially flipped ones.
    theano = tmp / "donkey_theano.h5"
    shutil.copy(path, theano)
    with h5py.File(theano, "r+") as f:
        f.attrs["backend"] = "theano"
        for i in range(1, 6):
            group = f["model_weights"][f"conv2d_{i}"]
            first = group.attrs["weight_names"][0]
            kernel_name = first.decode() if isinstance(first, bytes) else first
            data = group[kernel_name]
            data[...] = np.asarray(data)[::-1, ::-1]
    twin = Case(kind="donkey_theano", path=theano, x=x_in, carvis_x=x_in,
                expected={k: case.expected[k] for k in GRID_LAYERS["donkey_theano"]},
                params=case.params, layer_names=case.layer_names, keras3_loads=True)
    return case, twin


def _donkey_body(L: Any) -> tuple[Any, Any]:
    """DonkeyCar's default_n_linear / default_categorical body: 5 convs, 2 dense, dropouts."""
    img_in = L.Input(shape=(120, 160, 3), name="img_in")
    x = img_in
    for i, (filters, size, stride) in enumerate(
            [(24, 5, 2), (32, 5, 2), (64, 5, 2), (64, 3, 1), (64, 3, 1)], start=1):
        x = L.Conv2D(filters, (size, size), strides=(stride, stride), activation="relu",
                     name=f"conv2d_{i}")(x)
        x = L.Dropout(0.1)(x)
    x = L.Flatten(name="flattened")(x)
    x = L.Dense(100, activation="relu", name="dense_1")(x)
    x = L.Dropout(0.1)(x)
    x = L.Dense(50, activation="relu", name="dense_2")(x)
    return img_in, L.Dropout(0.1)(x)


def donkey_categorical(tmp: Path, rng: np.random.Generator) -> Path:
    """DonkeyCar KerasCategorical: the same body, a softmax of 15 angle and 20 throttle bins."""
    return _donkey_pilot(tmp, rng, "donkey_categorical", 15, 20, "softmax")[1]


def gap_pilot(tmp: Path, rng: np.random.Generator) -> Path:
    """A small car ConvNet with a GlobalAveragePooling2D → Dense softmax head (for cam)."""
    K = _tf_keras()
    L = K.layers
    img_in = L.Input(shape=(66, 200, 3), name="img_in")
    x = L.Conv2D(16, (5, 5), strides=(2, 2), activation="relu", name="conv2d_1")(img_in)
    x = L.MaxPooling2D((2, 2), name="pool_1")(x)
    x = L.Conv2D(24, (3, 3), padding="same", activation="relu", name="conv2d_2")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    out = L.Dense(5, activation="softmax", name="steering")(x)
    model = K.Model(img_in, out)
    _randomize(model, rng)
    path = tmp / "gap_pilot.h5"
    _save(model, path)
    return path


def to_tflite(h5: Path) -> Path:
    """A Keras 2 .h5 converted by the real TFLite converter, as a car would ship it."""
    import tensorflow as tf

    model = _tf_keras().models.load_model(h5, compile=False)
    path = h5.with_suffix(".tflite")
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return path


def _pilotnet_body(L: Any, first: Any) -> list[Any]:
    return [
        first,
        L.Conv2D(24, (5, 5), strides=(2, 2), activation="elu", name="conv2d_1"),
        L.Conv2D(36, (5, 5), strides=(2, 2), activation="elu", name="conv2d_2"),
        L.Conv2D(48, (5, 5), strides=(2, 2), activation="elu", name="conv2d_3"),
        L.Conv2D(64, (3, 3), activation="elu", name="conv2d_4"),
        L.Conv2D(64, (3, 3), activation="elu", name="conv2d_5"),
        L.Dropout(0.5, name="dropout"),
        L.Flatten(name="flatten"),
        L.Dense(100, activation="elu", name="dense_1"),
        L.Dense(50, activation="elu", name="dense_2"),
        L.Dense(10, activation="elu", name="dense_3"),
        L.Dense(1, name="dense_4"),
    ]


def pilotnet_bn(tmp: Path, rng: np.random.Generator) -> Case:
    """DAVE-2 / PilotNet, Sequential, 66×200×3, BatchNormalization as the first layer."""
    K = _tf_keras()
    L = K.layers
    model = K.Sequential([L.InputLayer(input_shape=(66, 200, 3), name="img_in")]
                         + _pilotnet_body(L, L.BatchNormalization(name="batch_normalization")))
    _randomize(model, rng)
    path = tmp / "pilotnet_bn.h5"
    _save(model, path)
    x = rng.uniform(-1.0, 1.0, (2, 66, 200, 3)).astype(np.float32)
    return _case("pilotnet_bn", path, model, x, keras3_loads=True)


def pilotnet_lambda(tmp: Path, rng: np.random.Generator) -> Case:
    """PilotNet with the classic Lambda(x / 127.5 - 1) first layer (bytecode in the file)."""
    K = _tf_keras()
    L = K.layers
    scale = L.Lambda(lambda t: t / 127.5 - 1.0, name="lambda_1")
    model = K.Sequential([L.InputLayer(input_shape=(66, 200, 3), name="img_in")]
                         + _pilotnet_body(L, scale))
    _randomize(model, rng)
    path = tmp / "pilotnet_lambda.h5"
    _save(model, path)
    x = rng.uniform(0.0, 255.0, (2, 66, 200, 3)).astype(np.float32)
    # carvis turns the Lambda into identity: the profile does the scaling instead.
    return _case("pilotnet_lambda", path, model, x, keras3_loads=False,
                 carvis_x=x / 127.5 - 1.0, lambda_policy="identity")


def legacy_sequential(tmp: Path, rng: np.random.Generator) -> Case:
    """A Keras 2.0–2.2 style file: Sequential config as a bare list, Keras 2.0 initializers."""
    K = _tf_keras()
    L = K.layers
    model = K.Sequential([
        L.Conv2D(8, 3, padding="same", activation="relu", name="conv2d_a",
                 input_shape=(24, 32, 3)),
        L.BatchNormalization(name="bn_a"),
        L.MaxPooling2D(2, name="pool_a"),
        L.ZeroPadding2D(((1, 0), (2, 1)), name="pad_a"),
        L.Cropping2D(((0, 1), (1, 0)), name="crop_a"),
        L.SeparableConv2D(8, 3, depth_multiplier=2, padding="same", name="sep_a"),
        L.LeakyReLU(alpha=0.2, name="leaky_a"),
        L.DepthwiseConv2D(3, name="dw_a"),
        L.ELU(alpha=0.5, name="elu_a"),
        L.Conv2D(6, 3, dilation_rate=2, padding="same", activation="tanh", name="conv2d_dil"),
        L.AveragePooling2D(2, name="avg_a"),
        L.SpatialDropout2D(0.2, name="sdrop_a"),
        L.UpSampling2D(2, name="up_a"),
        L.GlobalMaxPooling2D(name="gmax_a"),
        L.Dense(16, activation="selu", name="dense_a"),
        L.Dense(3, name="logits"),
        L.Activation("softmax", name="softmax_out"),
    ])
    _randomize(model, rng)
    path = tmp / "legacy_sequential.h5"
    _save(model, path)

    def to_keras20(config: dict) -> None:
        layers = [lay for lay in config["config"]["layers"] if lay["class_name"] != "InputLayer"]
        for lay in layers:
            cfg = lay["config"]
            if "kernel_initializer" in cfg:  # Keras 2.0 wrote glorot_uniform like this
                cfg["kernel_initializer"] = {"class_name": "VarianceScaling", "config": {
                    "scale": 1.0, "mode": "fan_avg", "distribution": "uniform", "seed": None}}
        layers[0]["config"]["batch_input_shape"] = [None, 24, 32, 3]
        config["config"] = layers

    _edit_config(path, to_keras20)
    x = rng.uniform(0.0, 1.0, (2, 24, 32, 3)).astype(np.float32)
    return _case("legacy_sequential", path, model, x, keras3_loads=False)


def policy_functional(tmp: Path, rng: np.random.Generator) -> Case:
    """A functional graph with merges whose config carries tf.keras dtype-policy dicts."""
    K = _tf_keras()
    L = K.layers
    img = L.Input(shape=(16, 16, 3), name="img_in")
    a = L.Conv2D(4, 3, padding="same", activation="relu", name="conv_a")(img)
    b = L.Conv2D(4, 1, use_bias=False, name="conv_b")(img)
    cat = L.Concatenate(name="concat")([a, b])
    c = L.Conv2D(8, 3, padding="same", name="conv_c")(cat)
    add = L.Add(name="add")([c, cat])
    prelu = L.PReLU(shared_axes=[1, 2], name="prelu")(add)
    relu6 = L.ReLU(max_value=6.0, name="relu6")(prelu)
    mul = L.Multiply(name="mul")([relu6, cat])
    avg = L.Average(name="avg")([relu6, mul])
    sub = L.Subtract(name="sub")([avg, relu6])
    gap = L.GlobalAveragePooling2D(name="gap")(sub)
    rs = L.Reshape((2, 4), name="reshape")(gap)
    perm = L.Permute((2, 1), name="permute")(rs)
    flat = L.Flatten(name="flat")(perm)
    logits = L.Dense(2, name="logits")(flat)
    out = L.Softmax(name="softmax")(logits)
    model = K.Model(img, out, name="policy_functional")
    _randomize(model, rng)
    path = tmp / "policy_functional.h5"
    _save(model, path)

    def add_policies(config: dict) -> None:
        for lay in config["config"]["layers"]:
            lay["config"]["dtype"] = {"class_name": "Policy", "config": {"name": "float32"}}

    _edit_config(path, add_policies)
    x = rng.uniform(-1.0, 1.0, (2, 16, 16, 3)).astype(np.float32)
    return _case("policy_functional", path, model, x, keras3_loads=False)


def hard_sigmoid(tmp: Path, rng: np.random.Generator) -> Case:
    """hard_sigmoid changed meaning in Keras 3; Keras 3 loads the file but computes otherwise."""
    K = _tf_keras()
    L = K.layers
    model = K.Sequential([
        L.InputLayer(input_shape=(10, 12, 3), name="img_in"),
        L.Conv2D(3, 3, activation="hard_sigmoid", name="conv2d_hs"),
        L.Flatten(name="flatten"),
        L.Dense(4, activation="hard_sigmoid", name="dense_hs"),
    ])
    _randomize(model, rng)
    path = tmp / "hard_sigmoid.h5"
    _save(model, path)
    x = rng.uniform(-4.0, 4.0, (2, 10, 12, 3)).astype(np.float32)
    return _case("hard_sigmoid", path, model, x, keras3_loads=True)


def lambda_reshaper(tmp: Path) -> Path:
    """A Lambda that changes the shape and says so: --lambda identity must refuse it."""
    K = _tf_keras()
    L = K.layers
    img = L.Input(shape=(8, 8, 3), name="img_in")
    y = L.Lambda(lambda t: t[:, 2:, :, :], output_shape=(6, 8, 3), name="crop_lambda")(img)
    y = L.Conv2D(2, 3, name="conv")(y)
    path = tmp / "lambda_reshaper.h5"
    _save(K.Model(img, y), path)
    return path


def custom_layer(tmp: Path) -> Path:
    """A model with a custom layer class that only the training code knows."""
    K = _tf_keras()
    L = K.layers

    class Scale(L.Layer):
        def call(self, inputs):
            return inputs * 2.0

    img = L.Input(shape=(8, 8, 3), name="img_in")
    y = Scale(name="scale_1")(img)
    y = L.Conv2D(2, 3, name="conv")(y)
    path = tmp / "custom_layer.h5"
    _save(K.Model(img, y), path)
    return path


def weights_only(tmp: Path) -> Path:
    """save_weights output: weights, no architecture."""
    K = _tf_keras()
    L = K.layers
    model = K.Sequential([L.InputLayer(input_shape=(8, 8, 3)), L.Conv2D(2, 3, name="conv")])
    path = tmp / "weights_only.h5"
    _save(model, path, weights_only=True)
    return path


# --------------------------------------------------------------------------- Keras 3 models


def keras3_models(tmp: Path, rng: np.random.Generator) -> tuple[Case, Case]:
    """A Keras 3 model saved as .keras and as Keras 3 .h5 (reference: the model itself)."""
    import keras

    L = keras.layers
    img = keras.Input((32, 32, 3), name="img_in")
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv_1")(img)
    x = L.MaxPooling2D(2, name="pool_1")(x)
    x = L.Conv2D(8, 3, activation="relu", name="conv_2")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    out = L.Dense(3, activation="softmax", name="head")(x)
    model = keras.Model(img, out, name="keras3_model")
    for var in model.weights:
        value = np.array(var.numpy(), np.float32)
        var.assign(value + rng.normal(0.0, 0.1, value.shape).astype(np.float32))
    x_in = rng.uniform(0.0, 1.0, (2, 32, 32, 3)).astype(np.float32)
    cases = []
    for kind, name in (("keras3_keras", "keras3.keras"), ("keras3_h5", "keras3.h5")):
        path = tmp / name
        _save(model, path)
        expected = {n: np.asarray(keras.Model(img, model.get_layer(n).output)(x_in))
                    for n in GRID_LAYERS[kind]}
        cases.append(Case(kind=kind, path=path, x=x_in, carvis_x=x_in, expected=expected,
                          params=int(model.count_params()),
                          layer_names=[lay.name for lay in model.layers], keras3_loads=True))
    return cases[0], cases[1]


def keras3_lambda(tmp: Path) -> Path:
    """A Keras 3 .keras file with a Lambda layer."""
    import keras

    img = keras.Input((8, 8, 3), name="img_in")
    y = keras.layers.Lambda(lambda t: t / 255.0, name="scale_lambda")(img)
    y = keras.layers.Conv2D(2, 3, name="conv")(y)
    path = tmp / "keras3_lambda.keras"
    _save(keras.Model(img, y), path)
    return path


# --------------------------------------------------------------------------- Keras 1 files


def write_keras1_h5(path: Path, config: dict, weights: dict[str, list[tuple[str, np.ndarray]]],
                    layer_names: list[str], version: str = "1.2.1") -> None:
    """Write an HDF5 file laid out exactly as Keras 1 model.save() did."""
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = version.encode()
        f.attrs["model_config"] = json.dumps(config).encode()
        group = f.create_group("model_weights")
        group.attrs["layer_names"] = [n.encode() for n in layer_names]
        for name in layer_names:
            g = group.create_group(name)
            pairs = weights.get(name, [])
            g.attrs["weight_names"] = [w.encode() for w, _ in pairs]
            for wname, array in pairs:
                g.create_dataset(wname, data=np.asarray(array, np.float32))


def _k1_node(*names: str) -> list:
    return [[[n, 0, 0] for n in names]]


def _k1_conv(name: str, filters: int, size: int, stride: int, mode: str, activation: str,
             bias: bool = True) -> dict:
    return {"class_name": "Convolution2D", "config": {
        "name": name, "nb_filter": filters, "nb_row": size, "nb_col": size,
        "subsample": [stride, stride], "border_mode": mode, "activation": activation,
        "bias": bias, "dim_ordering": "tf", "init": "glorot_uniform", "W_regularizer": None,
        "b_regularizer": None, "activity_regularizer": None, "W_constraint": None,
        "b_constraint": None, "trainable": True}}


def keras1_functional(tmp: Path, rng: np.random.Generator) -> Case:
    """A Keras 1.2.1 functional model written by hand; reference: the same net in tf_keras."""
    K = _tf_keras()
    L = K.layers

    def layer(spec: dict, *inbound: str) -> dict:
        spec = dict(spec)
        spec["name"] = spec["config"]["name"]
        spec["inbound_nodes"] = _k1_node(*inbound) if inbound else []
        return spec

    def plain(cls: str, name: str, **cfg: Any) -> dict:
        return {"class_name": cls, "config": {"name": name, "trainable": True, **cfg}}

    layers = [
        layer(plain("InputLayer", "img_in", batch_input_shape=[None, 12, 16, 3],
                    input_dtype="float32", sparse=False)),
        layer(plain("ZeroPadding2D", "zeropadding2d_1", padding=[1, 1], dim_ordering="tf"),
              "img_in"),
        layer(_k1_conv("convolution2d_1", 4, 3, 2, "valid", "relu"), "zeropadding2d_1"),
        layer(plain("BatchNormalization", "batchnormalization_1", epsilon=0.01, mode=0, axis=-1,
                    momentum=0.99, gamma_regularizer=None, beta_regularizer=None),
              "convolution2d_1"),
        layer(plain("ELU", "elu_1", alpha=0.7), "batchnormalization_1"),
        layer(_k1_conv("convolution2d_2", 4, 3, 1, "same", "linear"), "elu_1"),
        layer(plain("LeakyReLU", "leakyrelu_1", alpha=0.2), "convolution2d_2"),
        layer(_k1_conv("convolution2d_3", 2, 1, 1, "valid", "linear", bias=False), "elu_1"),
        layer(plain("Merge", "merge_1", mode="concat", concat_axis=-1, mode_type="raw",
                    layers=None, output_shape=None, output_mask=None, dot_axes=-1,
                    arguments={}, node_indices=None, tensor_indices=None),
              "leakyrelu_1", "convolution2d_3"),
        layer(plain("Cropping2D", "cropping2d_1", cropping=[[1, 1], [0, 2]], dim_ordering="tf"),
              "merge_1"),
        layer(plain("AveragePooling2D", "averagepooling2d_1", pool_size=[2, 2], strides=None,
                    border_mode="valid", dim_ordering="tf"), "cropping2d_1"),
        layer(plain("GlobalAveragePooling2D", "globalaveragepooling2d_1", dim_ordering="tf"),
              "averagepooling2d_1"),
        layer(plain("Reshape", "reshape_1", target_shape=[2, 3]), "globalaveragepooling2d_1"),
        layer(plain("Flatten", "flatten_1"), "reshape_1"),
        layer(plain("Dense", "dense_1", output_dim=3, activation="linear", bias=True,
                    init="glorot_uniform", input_dim=6), "flatten_1"),
        layer(plain("Activation", "activation_1", activation="softmax"), "dense_1"),
    ]
    config = {"class_name": "Model", "config": {
        "name": "model_1", "layers": layers, "input_layers": [["img_in", 0, 0]],
        "output_layers": [["activation_1", 0, 0]]}}

    # The same network in tf_keras, for the reference activations.
    img = L.Input((12, 16, 3), name="img_in")
    pad = L.ZeroPadding2D((1, 1), name="zeropadding2d_1")(img)
    c1 = L.Conv2D(4, 3, strides=2, activation="relu", name="convolution2d_1")(pad)
    bn = L.BatchNormalization(epsilon=0.01, name="batchnormalization_1")(c1)
    elu = L.ELU(alpha=0.7, name="elu_1")(bn)
    leaky = L.LeakyReLU(alpha=0.2, name="leakyrelu_1")(
        L.Conv2D(4, 3, padding="same", name="convolution2d_2")(elu))
    c3 = L.Conv2D(2, 1, use_bias=False, name="convolution2d_3")(elu)
    merged = L.Concatenate(name="merge_1")([leaky, c3])
    crop = L.Cropping2D(((1, 1), (0, 2)), name="cropping2d_1")(merged)
    avg = L.AveragePooling2D(2, name="averagepooling2d_1")(crop)
    gap = L.GlobalAveragePooling2D(name="globalaveragepooling2d_1")(avg)
    flat = L.Flatten(name="flatten_1")(L.Reshape((2, 3), name="reshape_1")(gap))
    out = L.Activation("softmax", name="activation_1")(L.Dense(3, name="dense_1")(flat))
    model = K.Model(img, out)
    _randomize(model, rng)

    # Keras 1 weight names; BatchNormalization's 4th array is called running_std but holds the
    # moving variance (Keras ≥ 1.1), so tf_keras' moving_variance takes it unchanged.
    suffixes = {"convolution2d_1": ["W", "b"], "convolution2d_2": ["W", "b"],
                "convolution2d_3": ["W"], "dense_1": ["W", "b"],
                "batchnormalization_1": ["gamma", "beta", "running_mean", "running_std"]}
    weights = {name: [(f"{name}_{s}", w) for s, w in
                      zip(parts, model.get_layer(name).get_weights(), strict=True)]
               for name, parts in suffixes.items()}
    path = tmp / "keras1_functional.h5"
    write_keras1_h5(path, config, weights, [lay["name"] for lay in layers])
    x = rng.uniform(0.0, 1.0, (2, 12, 16, 3)).astype(np.float32)
    return _case("keras1_functional", path, model, x, keras3_loads=False)


def keras1_sequential(tmp: Path, rng: np.random.Generator) -> Case:
    """A Keras 1.0.8 Sequential (list config); its BatchNormalization stored the running std."""
    K = _tf_keras()
    L = K.layers
    conv = _k1_conv("convolution2d_1", 3, 3, 1, "same", "linear")
    conv["config"].update(batch_input_shape=[None, 8, 10, 3], input_dtype="float32")
    eps = 1e-3
    config = {"class_name": "Sequential", "config": [
        conv,
        {"class_name": "BatchNormalization", "config": {
            "name": "batchnormalization_1", "epsilon": eps, "mode": 0, "axis": -1,
            "momentum": 0.99}},
        {"class_name": "Activation", "config": {"name": "activation_1", "activation": "relu"}},
        {"class_name": "MaxPooling2D", "config": {
            "name": "maxpooling2d_1", "pool_size": [2, 2], "strides": [2, 2],
            "border_mode": "valid", "dim_ordering": "tf"}},
        {"class_name": "Flatten", "config": {"name": "flatten_1"}},
        {"class_name": "Dense", "config": {"name": "dense_1", "output_dim": 2,
                                           "activation": "linear", "bias": True}},
    ]}
    conv_model = K.Sequential([L.Conv2D(3, 3, padding="same", name="convolution2d_1",
                                        input_shape=(8, 10, 3))])
    _randomize(conv_model, rng)
    kernel, bias = conv_model.get_layer("convolution2d_1").get_weights()
    gamma = rng.uniform(0.5, 1.5, 3).astype(np.float32)
    beta = rng.normal(0.0, 0.2, 3).astype(np.float32)
    mean = rng.normal(0.0, 0.2, 3).astype(np.float32)
    std = rng.uniform(0.5, 2.0, 3).astype(np.float32)
    dense_w = rng.normal(0.0, 0.3, (4 * 5 * 3, 2)).astype(np.float32)
    dense_b = rng.normal(0.0, 0.2, 2).astype(np.float32)
    weights = {
        "convolution2d_1": [("convolution2d_1_W", kernel), ("convolution2d_1_b", bias)],
        "batchnormalization_1": [("batchnormalization_1_gamma", gamma),
                                 ("batchnormalization_1_beta", beta),
                                 ("batchnormalization_1_running_mean", mean),
                                 ("batchnormalization_1_running_std", std)],
        "dense_1": [("dense_1_W", dense_w), ("dense_1_b", dense_b)],
    }
    names = ["convolution2d_1", "batchnormalization_1", "activation_1", "maxpooling2d_1",
             "flatten_1", "dense_1"]
    path = tmp / "keras1_sequential.h5"
    write_keras1_h5(path, config, weights, names, version="1.0.8")
    x = rng.uniform(0.0, 1.0, (2, 8, 10, 3)).astype(np.float32)
    conv_out = np.asarray(conv_model(x, training=False), np.float64)
    # Keras 1.0 at inference: gamma * (x - running_mean) / (running_std + epsilon) + beta
    bn_out = gamma * (conv_out - mean) / (std + eps) + beta
    expected = {"convolution2d_1": conv_out, "batchnormalization_1": bn_out,
                "activation_1": np.maximum(bn_out, 0.0)}
    params = kernel.size + bias.size + 4 * 3 + dense_w.size + dense_b.size
    return Case(kind="keras1_sequential", path=path, x=x, carvis_x=x, expected=expected,
                params=int(params), layer_names=["convolution2d_1_input"] + names,
                keras3_loads=False)


def build_all(tmp: Path) -> dict[str, Case]:
    """Every grid case, built and saved once."""
    rng = np.random.default_rng(1234)
    cases: list[Case] = []
    cases.extend(donkey(tmp, rng))
    cases.append(pilotnet_bn(tmp, rng))
    cases.append(pilotnet_lambda(tmp, rng))
    cases.append(legacy_sequential(tmp, rng))
    cases.append(policy_functional(tmp, rng))
    cases.append(hard_sigmoid(tmp, rng))
    cases.extend(keras3_models(tmp, rng))
    cases.append(keras1_functional(tmp, rng))
    cases.append(keras1_sequential(tmp, rng))
    return {case.kind: case for case in cases}
