"""Guided backpropagation's graph: a clone of a model whose every ReLU lets only positive
gradients flow back through positive activations; the model itself is left untouched."""

from __future__ import annotations

from typing import Any

from carvis.errors import CarvisError
from carvis.explain.graph import activation_name


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
        if activation_name(layer) == "relu":
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
