"""The layer table of a loaded model, picking a layer by spec, and cutting the model there."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from carvis import layerspec
from carvis.errors import CarvisError

if TYPE_CHECKING:  # keras is imported lazily: the LiteRT path must not pull in TensorFlow
    import keras


@dataclass(frozen=True)
class LayerInfo:
    """One row of the layer table."""

    index: int
    name: str
    type: str
    output_shape: tuple[int | None, ...]
    is_conv: bool
    is_spatial: bool


def layer_info(index: int, name: str, type_name: str,
               shape: tuple[int | None, ...]) -> LayerInfo:
    """A table row; conv and spatial are worked out from the type and the shape."""
    return LayerInfo(index=index, name=name, type=type_name, output_shape=shape,
                     is_conv=layerspec.is_conv_type(type_name),
                     is_spatial=is_map_shape(type_name, shape))


def layer_table(model: keras.Model) -> list[LayerInfo]:
    """One LayerInfo per layer of the model, in model order (index 0 is the input layer)."""
    return [layer_info(index, layer.name, type_name(layer), _output_shape(layer))
            for index, layer in enumerate(model.layers)]


def type_name(layer: Any) -> str:
    """A layer's class name; a wrapper's with what it wraps: 'TimeDistributed(Conv2D)'."""
    inner = getattr(layer, "layer", None) if type(layer).__name__ == "TimeDistributed" else None
    return f"TimeDistributed({type(inner).__name__})" if inner is not None else \
        type(layer).__name__


def is_map_shape(type_name: str, shape: Sequence[Any]) -> bool:
    """True for a layer that gives a map: (H, W, C), or one per frame of a sequence pilot's
    window, (T, H, W, C), from a TimeDistributed conv or pool or a 3-D one."""
    if len(shape) == 3:
        return True
    return len(shape) == 4 and ("TimeDistributed" in type_name or "3D" in type_name)


def resolve_layer(model: keras.Model, spec: str | int, *,
                  require_spatial: bool = True) -> keras.layers.Layer:
    """The layer named by spec: a name, an index ("3", -1) or "conv:N" (N-th conv, from 1)."""
    table = layer_table(model)
    info = layerspec.find(table, spec, model.name)
    if require_spatial and not info.is_spatial:
        raise CarvisError(
            f"layer {info.name!r} ({info.type}) outputs shape {shape_text(info.output_shape)}, "
            f"not a spatial (H, W, C) map; pick a conv layer: {_conv_choices(table)}")
    return model.layers[info.index]


def truncated_model(model: keras.Model, layer: keras.layers.Layer | str | int) -> keras.Model:
    """A new model from the model's input to the layer's output; the model is left untouched."""
    import keras

    if isinstance(layer, (str, int, np.integer)):
        layer = resolve_layer(model, layer, require_spatial=False)
    if not any(candidate is layer for candidate in model.layers):
        raise CarvisError(f"layer {getattr(layer, 'name', layer)!r} is not part of model "
                          f"{model.name!r}; resolve it with resolve_layer(model, spec) first")
    try:
        output = layer.output
    except (AttributeError, ValueError) as exc:
        raise CarvisError(f"layer {layer.name!r} is used more than once in model {model.name!r} "
                          "and has no single output; pick another layer") from exc
    return keras.Model(image_input(model), output, name=f"{model.name}_to_{layer.name}")


def image_input(model: keras.Model) -> Any:
    """The model's camera-image input: its only input, else the one with rows, columns and
    channels (DonkeyCar's memory, imu and behavior pilots take vectors beside it); a layer
    cut from it must depend on it alone (a conv layer does)."""
    if len(model.inputs) == 1:
        return model.inputs[0]
    images = [t for t in model.inputs if len(t.shape) >= 4]
    if len(images) != 1:
        raise CarvisError(f"model {model.name!r} has {len(images)} image inputs among "
                          f"{len(model.inputs)}; carvis needs one (the camera)")
    return images[0]


def format_layer_table(model: keras.Model) -> str:
    """The layer table as text: index, conv pick (conv:N), name, type, output shape."""
    return format_rows(layer_table(model))


def format_rows(table: Sequence[LayerInfo], notes: Mapping[str, str] | None = None) -> str:
    """A layer table as aligned text, one line per layer under a header line (a note after
    the shape for the layers named in notes)."""
    rows = [("#", "conv", "name", "type", "output shape")]
    n_conv = 0
    for info in table:
        pick = ""
        if info.is_conv:
            n_conv += 1
            pick = f"conv:{n_conv}"
        rows.append((str(info.index), pick, info.name, info.type, shape_text(info.output_shape)))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for row in rows:
        cells = [row[0].rjust(widths[0])] + [row[i].ljust(widths[i]) for i in (1, 2, 3)]
        note = (notes or {}).get(row[2], "")
        last = [row[4].ljust(widths[4]), note] if notes else [row[4]]
        lines.append("  ".join(cells + last).rstrip())
    return "\n".join(lines)


def shape_text(shape: tuple[int | None, ...]) -> str:
    """A shape as text, unknown dimensions as '?': (35, 125, 2), (20,)."""
    dims = ["?" if d is None else str(d) for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def _output_shape(layer: Any) -> tuple[int | None, ...]:
    try:
        output = layer.output
    except (AttributeError, ValueError):  # shared layer: several outputs
        return ()
    if isinstance(output, (list, tuple)):
        output = output[0]
    return tuple(None if d is None else int(d) for d in output.shape[1:])


def _conv_choices(table: list[LayerInfo]) -> str:
    convs = [info for info in table if info.is_conv and info.is_spatial]
    if not convs:
        spatial = [info.name for info in table if info.is_spatial and info.index > 0]
        return ", ".join(spatial[:12]) or "(the model has no spatial layer)"
    parts = [f"conv:{k} = {info.name}" for k, info in enumerate(convs, start=1)]
    if len(parts) > 12:
        parts = parts[:12] + ["..."]
    return ", ".join(parts)
