"""The TensorFlow functions a Keras 2 TFOpLambda may call, as the keras.ops that do the same.

Keras 2 saves ``tf.concat([x, y], axis=1)`` (DonkeyCar's memory, imu and behavior pilots) or
``x * 2.0`` in a functional model as a TFOpLambda layer naming the function. carvis never runs
anything from the file: the name is looked up here, and a function not in the table is one line
naming the layer and the function. No Keras or TensorFlow is imported here (the layer table of a
file is read without them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from carvis.models.legacy.context import Context, Slot, Spec


@dataclass(frozen=True)
class Op:
    """A TensorFlow function: its parameters in order, and the keras.ops function doing it."""

    params: tuple[str, ...]
    keras: str
    kind: str  # "join" (a list of tensors along an axis), "elementwise"
    options: tuple[str, ...] = ()  # parameters passed on to keras.ops by name


def _unary(keras: str) -> Op:
    return Op(("x",), keras, "elementwise")


def _binary(keras: str) -> Op:
    return Op(("x", "y"), keras, "elementwise")


#: tf function name (as TFOpLambda's config "function" writes it) -> what it is in keras.ops.
OPS: dict[str, Op] = {
    "concat": Op(("values", "axis"), "concatenate", "join", ("axis",)),
    "stack": Op(("values", "axis"), "stack", "join", ("axis",)),
    "__operators__.add": _binary("add"),
    "math.add": _binary("add"),
    "math.subtract": _binary("subtract"),
    "math.multiply": _binary("multiply"),
    "math.truediv": _binary("divide"),
    "math.divide": _binary("divide"),
    "math.maximum": _binary("maximum"),
    "math.minimum": _binary("minimum"),
    "math.tanh": _unary("tanh"),
    "math.sigmoid": _unary("sigmoid"),
    "nn.relu": _unary("relu"),
    "math.abs": _unary("abs"),
    "math.exp": _unary("exp"),
    "math.square": _unary("square"),
    "math.sqrt": _unary("sqrt"),
    "math.negative": _unary("negative"),
    "clip_by_value": Op(("t", "clip_value_min", "clip_value_max"), "clip", "elementwise"),
}


def op_of(ctx: Context, spec: Spec) -> Op:
    """The table's entry for a TFOpLambda layer, or one line naming the layer and function."""
    function = str(spec.config.get("function", ""))
    op = OPS.get(function)
    if op is None:
        known = ", ".join(f"tf.{name}" for name in OPS if not name.startswith("__"))
        raise ctx.fail(f"layer {spec.name!r} is a TFOpLambda calling tf.{function or '?'}, "
                       f"which carvis does not rebuild (it rebuilds {known}); re-save the "
                       "model with Keras layers in its place (e.g. Concatenate), or export a "
                       ".tflite (--backend litert)")
    return op


def bind(ctx: Context, spec: Spec, op: Op, call: tuple[Any, dict]) -> dict[str, Any]:
    """The call's arguments by parameter name (Slots where tensors go), or one line."""
    args, kwargs = call
    bound = {op.params[0]: args}
    for key, value in kwargs.items():
        if key == "name":
            continue
        if key not in op.params:
            raise ctx.fail(f"layer {spec.name!r} calls tf.{spec.config.get('function')} with "
                           f"argument {key!r}, which carvis does not rebuild; re-save the "
                           "model with Keras layers in its place")
        bound[key] = value
    missing = [p for p in op.params if p not in bound and p not in op.options]
    if missing:
        raise ctx.fail(f"layer {spec.name!r} calls tf.{spec.config.get('function')} without "
                       f"{missing[0]!r}; the saved config is damaged, re-save the model")
    return bound


def filled(value: Any, tensors: list[Any]) -> Any:
    """value with each Slot replaced by its tensor (lists and dicts followed)."""
    if isinstance(value, Slot):
        return tensors[value.index]
    if isinstance(value, dict):
        return {k: filled(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [filled(v, tensors) for v in value]
    return value


def output_shape(op: Op, bound: dict[str, Any], shapes: list[tuple[int | None, ...]]
                 ) -> tuple[int | None, ...]:
    """The op's output shape (batch axis left out) from its inputs' shapes."""
    if op.kind == "join":
        rank = len(shapes[0]) + 1  # with the batch axis
        axis = int(bound.get("axis", 0))
        axis = axis + rank if axis < 0 else axis
        if op.keras == "stack":
            out = list(shapes[0])
            out.insert(axis - 1, len(shapes))
            return tuple(out)
        sizes = [shape[axis - 1] for shape in shapes]
        out = list(shapes[0])
        out[axis - 1] = None if None in sizes else sum(sizes)  # type: ignore[arg-type]
        return tuple(out)
    return _broadcast(shapes)


def _broadcast(shapes: list[tuple[int | None, ...]]) -> tuple[int | None, ...]:
    """NumPy broadcasting of the tensor inputs' shapes (a constant adds nothing)."""
    rank = max(len(shape) for shape in shapes)
    out: list[int | None] = []
    for dims in zip(*[(1,) * (rank - len(s)) + tuple(s) for s in shapes], strict=True):
        known = [d for d in dims if d is not None and d != 1]
        out.append(known[0] if known else (None if None in dims else 1))
    return tuple(out)


def shape_of(spec: Spec, call: int, shapes: list[tuple[int | None, ...]]
             ) -> tuple[int | None, ...] | None:
    """The output shape of one call of a TFOpLambda from its inputs' (None: not known)."""
    op = OPS.get(str(spec.config.get("function", "")))
    if op is None or call >= len(spec.calls) or not shapes:
        return None
    args, kwargs = spec.calls[call]
    bound = {op.params[0]: args, **{k: v for k, v in kwargs.items() if k != "name"}}
    return output_shape(op, bound, shapes)
