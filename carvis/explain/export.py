"""What the car needs in one .tflite (`carvis export`): the layers to show, and what the
forward-only modes read beyond them — the steering output and its head (the HUD), VisualBackProp's
taps and path (every layer's window), CAM's layer and Dense weights. Gradient modes cannot be
exported: TFLite's built-in ops have no ReluGrad, EluGrad or MaxPoolGrad (only Flex has them).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from typing import Any

from carvis import layerspec, models
from carvis.backends import convert
from carvis.backends.tflite import LayerMeta
from carvis.errors import CarvisError
from carvis.explain.cam import cam_head
from carvis.explain.graph import output_layer_names, steering_head
from carvis.explain.vbp import plan_from_chain, vbp_chain

log = logging.getLogger("carvis")


def mode_outputs(model: Any, *, hud: bool, vbp: bool, cam: bool | None
                 ) -> tuple[list[str], dict[str, Any]]:
    """The outputs and metadata fields the HUD, vbp and cam need (cam None: if the head
    allows it)."""
    head = steering_head(model)
    outputs = [head.layer, *(n for n in output_layer_names(model) if n != head.layer)]
    fields: dict[str, Any] = {"head": {**dataclasses.asdict(head), "outputs": list(outputs)}}
    if vbp:
        path = vbp_chain(model, head)
        outputs.extend(plan_from_chain(path, f"model {model.name!r}").taps)
        fields["vbp"] = path
    if cam or cam is None:
        try:
            layer, kernel = cam_head(model, head)
        except CarvisError:
            if cam:
                raise
        else:
            outputs.append(layer)
            fields["cam"] = {"layer": layer, "kernel": kernel.tolist()}
    if not (hud or vbp or "cam" in fields):
        return [], {}
    return outputs, fields


def described(model: Any, source: os.PathLike | None, sha256: str | None) -> LayerMeta:
    """What the forward-only modes and the HUD read of a Keras model — its layer table,
    steering head (and its other outputs), VisualBackProp's path, CAM's weights — as metadata,
    so a later run reads them without TensorFlow. A part the model lacks is left out; whoever
    needs it asks the Keras model, which says why."""
    from pathlib import Path

    meta = convert.layer_meta(model, [model.layers[-1].name], Path(source) if source else None,
                              sha256)
    fields: dict[str, Any] = {"outputs": meta.layer_names, "shown": ()}
    try:
        _, found = mode_outputs(model, hud=True, vbp=False, cam=None)
    except CarvisError:
        return dataclasses.replace(meta, **fields)
    fields.update(found)
    try:
        path = vbp_chain(model, steering_head(model))
        plan_from_chain(path, f"model {model.name!r}")
        fields["vbp"] = path
    except CarvisError:
        pass
    return dataclasses.replace(meta, **fields)


def export(model_path: str | os.PathLike, out: str | os.PathLike, *,
           layers: Sequence[str | int] = (), all_conv: bool = False, hud: bool = False,
           vbp: bool = False, cam: bool | None = False, lambda_policy: str = "error"
           ) -> tuple[LayerMeta, float | None]:
    """Write OUT.tflite with the layers and what the named modes need; its metadata and the
    largest |LiteRT − TensorFlow| on a test input."""

    def extra(model: Any, names: list[str]) -> tuple[list[str], dict[str, Any]]:
        shown = list(names)
        if all_conv:
            shown += [info.name for info in models.layer_table(model)
                      if info.is_conv and info.is_spatial and info.name not in shown]
        outputs, fields = ([], {}) if not (hud or vbp or cam or cam is None) else \
            mode_outputs(model, hud=hud, vbp=vbp, cam=cam)
        fields["shown"] = tuple(shown)
        return shown + outputs, fields

    return convert.export(model_path, layers, out, lambda_policy=lambda_policy, extra=extra)


def export_flags(model_path: str | os.PathLike, out: str | os.PathLike, layer: str | None,
                 layers: str | None, modes: str | None, all_conv: bool, car: bool,
                 lambda_policy: str) -> tuple[LayerMeta, float | None]:
    """`carvis export`'s flags → :func:`export` (--layer, --layers A,B, --with hud,vbp,cam,
    --all-conv, --car), checked."""
    specs = [x for x in [layer, *(layers or "").split(",")] if x is not None and x.strip()]
    wanted = {x.strip().lower() for x in (modes or "").split(",") if x.strip()}
    unknown = wanted - {"hud", "vbp", "cam"}
    if unknown:
        raise CarvisError(f"--with {modes!r}: {', '.join(sorted(unknown))} is not one of hud, "
                          "vbp, cam (gradient modes cannot be exported)")
    if not (specs or wanted or all_conv or car):
        raise CarvisError("carvis export needs what to export: --layer L, --layers A,B, "
                          "--all-conv, --with hud,vbp,cam or --car (or --profile P naming a "
                          "layer)")
    return export(model_path, out, layers=[layerspec.parse(x) for x in specs],
                  all_conv=all_conv or car, hud=car or "hud" in wanted,
                  vbp=car or "vbp" in wanted, cam=None if car else "cam" in wanted,
                  lambda_policy=lambda_policy)
