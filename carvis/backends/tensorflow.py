"""The TensorFlow backend: the Keras model cut at one layer, run through one tf.function."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


class TensorFlowBackend:
    """The model truncated at one layer, run through one tf.function with a fixed signature."""

    name = "tensorflow"

    def __init__(self, truncated: Any, layer_name: str) -> None:
        import tensorflow as tf

        self.layer_name = layer_name
        self.truncated = truncated
        shape = tuple(int(d) for d in truncated.inputs[0].shape[1:])
        self.input_shape = shape
        self.output_shape = tuple(int(d) for d in truncated.outputs[0].shape[1:])

        @tf.function(input_signature=[tf.TensorSpec((1,) + shape, tf.float32)],
                     reduce_retracing=True)
        def run(x):
            return truncated(x, training=False)

        self._run = run

    def __call__(self, batch: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
        if isinstance(batch, Mapping):  # a pilot's inputs: the cut model takes the image
            from carvis.backends.litert import image_of

            batch = image_of(batch)
        return self._run(batch).numpy()[0]
