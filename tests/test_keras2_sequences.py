"""Keras 2 layers beyond DonkeyCar's own pilots, saved by the real tf_keras: frame sequences
(TimeDistributed, Conv3D, pooling and cropping in 3-D, LSTM) and the tf functions Keras 2 writes
as TFOpLambda layers, rebuilt by carvis' legacy loader and compared with tf_keras' outputs."""

from __future__ import annotations

import json
import warnings

import h5py
import numpy as np
import pytest

from carvis import models
from carvis.errors import CarvisError

tf_keras = pytest.importorskip("tf_keras",
                               reason="tf-keras (the real Keras 2) is in the test extra")


def _randomize(model, rng: np.random.Generator) -> None:
    for layer in model.layers:
        layer.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32)
                           for w in layer.get_weights()])


def _same(path, model, inputs: list[np.ndarray]) -> None:
    """carvis' model gives tf_keras' outputs on these inputs (and the file's own table is the
    loaded model's)."""
    expected = model(inputs if len(inputs) > 1 else inputs[0], training=False)
    expected = expected if isinstance(expected, (list, tuple)) else [expected]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mine = models.load_model(path)
        got = mine(inputs if len(inputs) > 1 else inputs[0], training=False)
    got = got if isinstance(got, (list, tuple)) else [got]
    assert models.format_layer_table_from_file(path) == models.format_layer_table(mine)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-5, atol=1e-5)


def test_frame_sequence_layers_equal_tf_keras(tmp_path):
    import tensorflow as tf

    L = tf_keras.layers
    frames = L.Input((4, 20, 24, 3), name="img_in")
    x = L.TimeDistributed(L.Conv2D(4, 3, strides=2, activation="relu"))(frames)
    x = L.TimeDistributed(L.MaxPooling2D(2))(x)
    y = L.Cropping3D(((1, 0), (1, 1), (2, 1)))(frames)
    y = L.Conv3D(5, (2, 3, 3), strides=(1, 2, 2), padding="same", activation="tanh")(y)
    y = L.AveragePooling3D((1, 2, 2))(y)
    x = L.TimeDistributed(L.Flatten())(x)
    x = L.LSTM(6, return_sequences=True, recurrent_activation="hard_sigmoid")(x)
    x = L.LSTM(3)(x)
    y = L.Flatten()(y)
    out = tf.concat([x, y], axis=-1)  # a TFOpLambda: Keras 3 itself refuses the file
    model = tf_keras.Model(frames, L.Dense(2, name="out")(out))
    _randomize(model, np.random.default_rng(1))
    path = tmp_path / "sequence.h5"
    model.save(path)
    _same(path, model, [np.random.default_rng(2).uniform(0, 1, (2, 4, 20, 24, 3))
                        .astype(np.float32)])
    convs = [(row.type, row.output_shape) for row in models.layer_table_from_file(path)
             if row.is_conv]
    assert convs == [("TimeDistributed(Conv2D)", (4, 9, 11, 4)), ("Conv3D", (3, 9, 11, 5))]


def test_tf_functions_as_tfoplambda_layers_equal_tf_keras(tmp_path):
    import tensorflow as tf

    a = tf_keras.Input((4,), name="a")
    b = tf_keras.Input((4,), name="b")
    x = a * 2.0  # tf.math.multiply with a constant
    x = x + b  # tf.__operators__.add of two tensors (the second in the call's kwargs)
    x = tf.math.multiply(x, b)
    x = tf.concat([x, a], axis=1)
    x = tf.nn.relu(x) / 3.0
    x = 1.0 - tf.math.tanh(x)  # a constant first: tf.math.subtract(_CONSTANT_VALUE, y=...)
    x = tf.clip_by_value(tf.math.sigmoid(x), 0.2, 0.7)
    model = tf_keras.Model([a, b], tf.stack([x, tf.math.abs(x - 0.5)], axis=1))
    path = tmp_path / "ops.h5"
    model.save(path)
    with h5py.File(path) as h5:
        config = json.loads(h5.attrs["model_config"])
    functions = [layer["config"]["function"] for layer in config["config"]["layers"]
                 if layer["class_name"] == "TFOpLambda"]
    assert len(functions) == 13 and "__operators__.add" in functions
    rng = np.random.default_rng(3)
    _same(path, model, [rng.normal(0, 1, (3, 4)).astype(np.float32) for _ in range(2)])
    rows = models.layer_table_from_file(path)  # names count up per process: tf.concat_1
    stack, concat = (next(r for r in rows if r.name.startswith(f"tf.{f}")) for f in ("stack",
                                                                                    "concat"))
    assert (stack.type, stack.output_shape, concat.output_shape) == ("TFOpLambda", (2, 8), (8,))


def test_a_tf_function_outside_the_table_is_one_line(tmp_path):
    import tensorflow as tf

    a = tf_keras.Input((4,), name="a")
    model = tf_keras.Model(a, tf_keras.layers.Dense(1)(tf.math.cumsum(a, axis=1)))
    path = tmp_path / "cumsum.h5"
    model.save(path)
    with pytest.raises(CarvisError) as caught:
        models.load_model(path)
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: layer 'tf.math.cumsum' is a TFOpLambda calling "
                           "tf.math.cumsum, which carvis does not rebuild (it rebuilds tf.concat, ")
    assert text.endswith("; re-save the model with Keras layers in its place (e.g. "
                         "Concatenate), or export a .tflite (--backend litert)")
