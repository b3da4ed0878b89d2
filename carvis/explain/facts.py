"""A .tflite as the modes see it, from its metadata alone (no Keras): the input, the layer
table for layer specs, which outputs the file holds, the steering head, VisualBackProp's path
and CAM's weights. The explainers take it where they take a Keras model."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from carvis import layerspec, models
from carvis.errors import CarvisError
from carvis.explain.graph import SteeringHead

EXPORT_HINT = "carvis export MODEL --car -o OUT.tflite (where TensorFlow is)"


@dataclasses.dataclass
class ModelFacts:
    """What the modes need of a model, read from a .tflite's metadata (or its ops)."""

    name: str
    input_shape: tuple[int, int, int]
    rows: tuple[models.LayerInfo, ...]
    held: dict[str, tuple[int, ...]]  # output name → shape (no batch axis)
    shown: tuple[str, ...]
    head: SteeringHead | None
    vbp: dict | None
    cam: dict | None
    meta: Any = None

    def steering_head(self) -> SteeringHead:
        """The steering head, or one line saying the file lacks it."""
        if self.head is None or self.head.layer not in self.held:
            raise CarvisError(f"{self.name} holds no steering output, which the HUD and the "
                              f"modes beyond activation need; export one with {EXPORT_HINT}")
        return self.head

    @property
    def model_outputs(self) -> tuple[str, ...]:
        """The source model's outputs the file holds, in order (a pilot's angle, throttle)."""
        head = self.meta.head if self.meta is not None and self.meta.head else {}
        return tuple(n for n in head.get("outputs", [head.get("layer")]) if n in self.held)

    def resolve(self, spec: str | int) -> str:
        """The name of the output a layer spec names, or one line saying what the file holds."""
        if isinstance(spec, str) and spec.strip() in self.held:
            return spec.strip()
        row = layerspec.find(self.rows, spec, self.name)
        if row.name in self.held:
            return row.name
        shown = [n for n in self.shown if n in self.held]
        if len(shown) == 1 and self.meta is not None:
            raise CarvisError(f"{self.name} holds one layer, its {self.meta.describe()}; it "
                              f"cannot show layer {str(spec)!r}: pass --layer {shown[0]}, or "
                              f"export that layer with carvis export MODEL --layer {spec} "
                              "-o OUT.tflite")
        raise CarvisError(f"{self.name} does not hold layer {str(spec)!r} ({row.name}); it "
                          f"holds {', '.join(shown) or 'no layer to show'}: pass one of those, "
                          f"or export it with carvis export MODEL --layers {row.name},... "
                          "-o OUT.tflite")

    def cam_head(self) -> tuple[str, np.ndarray]:
        """(the map before GAP, the Dense kernel) from the metadata, or one line why not."""
        if not self.cam or self.cam["layer"] not in self.held:
            raise CarvisError(f"{self.name} holds no CAM weights (a GlobalAveragePooling2D → "
                              "Dense head, exported with carvis export MODEL --with cam); use --mode "
                              "vbp or activation")
        return self.cam["layer"], np.asarray(self.cam["kernel"], np.float32)


def facts_from(meta: Any, name: str, input_shape: tuple[int, ...],
               output_shapes: dict[str, tuple[int, ...]]) -> ModelFacts:
    """The facts of a .tflite from its metadata (format 1 or 2) and its outputs' shapes."""
    names = meta.layer_names or (meta.layer,)
    types = meta.layer_types or tuple("Conv2D" if n in meta.conv_layers else "" for n in names)
    shapes = meta.layer_shapes or tuple(output_shapes.get(n, ()) for n in names)
    rows = tuple(models.layer_info(i, n, t, tuple(s)) for i, (n, t, s) in enumerate(
        zip(names, types, shapes, strict=True)))
    head = SteeringHead(**{k: meta.head[k] for k in ("index", "layer", "units", "softmax")}) \
        if meta.head else None
    return ModelFacts(name=name, input_shape=tuple(input_shape), rows=rows,
                      held=dict(output_shapes), shown=meta.shown, head=head, vbp=meta.vbp,
                      cam=meta.cam, meta=meta)
