"""A Keras 2 TFOpLambda as a Keras 3 layer running the keras.ops function the table names."""

from __future__ import annotations

from typing import Any

import keras

from carvis.models.legacy.context import Context, Spec
from carvis.models.legacy.tfops import Op, bind, filled, op_of


class TFOpLambda(keras.layers.Layer):
    """Calls one keras.ops function on the inbound tensors, placed where the saved call had
    them; constants (2.0, axis=1) are kept from the config. Named as Keras 2 named the layer."""

    def __init__(self, function: str, op: Op, bound: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.function, self.op, self.bound = function, op, bound
        self._fn = getattr(keras.ops, op.keras)

    def call(self, tensors: list[Any]) -> Any:
        """The op on the call's tensors (a list, in the order the config lists them)."""
        values = filled(self.bound, list(tensors))
        args = [values[p] for p in self.op.params if p in values and p not in self.op.options]
        options = {p: values[p] for p in self.op.options if p in values}
        return self._fn(*args, **options)

    def get_config(self) -> dict:
        """The layer's config (the function's name; the op comes from carvis' table)."""
        return {**super().get_config(), "function": self.function}


def build_op(ctx: Context, spec: Spec) -> TFOpLambda:
    """The TFOpLambda layer of a spec, from the table, or one line naming what is missing."""
    op = op_of(ctx, spec)
    if not spec.calls:
        raise ctx.fail(f"layer {spec.name!r} (TFOpLambda) is called nowhere in the config; "
                       "the saved config is damaged, re-save the model")
    bound = [bind(ctx, spec, op, call) for call in spec.calls]
    if any(b != bound[0] for b in bound[1:]):
        raise ctx.unsupported(spec.name, "a TFOpLambda layer called with different arguments")
    return TFOpLambda(str(spec.config["function"]), op, bound[0], name=spec.name)
