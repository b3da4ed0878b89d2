"""Calling the rebuilt Keras 3 layers on each other's outputs, in the saved graph's order."""

from __future__ import annotations

from typing import Any

import keras

from carvis.models.legacy.context import Context, Spec
from carvis.models.legacy.graph import Graph, input_shape
from carvis.models.legacy.keras2 import build

Tensors = dict[str, list[list[Any]]]  # layer name -> per node, its output tensors


def functional_model(ctx: Context, graph: Graph) -> keras.Model:
    """The graph as a Keras 3 functional model (weights not loaded yet)."""
    tensors = wire(ctx, graph.specs, graph.input_names)
    inputs = [tensors[n][0][0] for n in graph.input_names]
    outputs = [tensors[layer_name][node][index] for layer_name, node, index in graph.output_refs]
    return keras.Model(inputs if len(inputs) > 1 else inputs[0],
                       outputs if len(outputs) > 1 else outputs[0], name=graph.name)


def wire(ctx: Context, specs: list[Spec], input_names: list[str]) -> Tensors:
    """Call each rebuilt layer on its inbound tensors, in dependency order."""
    tensors: Tensors = {}
    pending = list(specs)
    while pending:
        progress = False
        for spec in list(pending):
            if _ready(spec, tensors):
                tensors[spec.name] = _call(ctx, spec, tensors)
                pending.remove(spec)
                progress = True
        if not progress:
            names = ", ".join(repr(s.name) for s in pending[:5])
            raise ctx.fail(f"layer(s) {names} are not connected to the model's input; the "
                           "config is damaged or uses an unsupported graph")
    missing = [n for n in input_names if n not in tensors]
    if missing:
        raise ctx.fail(f"input layer {missing[0]!r} is missing from the config")
    return tensors


def _ready(spec: Spec, tensors: Tensors) -> bool:
    return spec.class_name == "InputLayer" or all(
        ref[0] in tensors and len(tensors[ref[0]]) > ref[1]
        for node in spec.inbound for ref in node)


def _call(ctx: Context, spec: Spec, tensors: Tensors) -> list[list[Any]]:
    """The layer's outputs, one list per inbound node (an InputLayer: its one tensor)."""
    if spec.class_name == "InputLayer":
        shape = input_shape(spec.config)
        if not shape:
            raise ctx.fail(f"input layer {spec.name!r} has no shape in its config; "
                           "re-save the model with a fixed input shape")
        return [[keras.Input(shape=tuple(shape[1:]), name=spec.name, dtype="float32")]]
    layer = build(ctx, spec)
    outputs = []
    for node in spec.inbound:
        args = [tensors[ref[0]][ref[1]][ref[2]] for ref in node]
        # a TFOpLambda takes its tensors as one list, whatever their number (see tfops)
        out = layer(args if len(args) > 1 or spec.class_name == "TFOpLambda" else args[0])
        if spec.class_name == "Lambda":
            _check_identity(ctx, spec, args[0])
        outputs.append(list(out) if isinstance(out, (list, tuple)) else [out])
    return outputs


def _check_identity(ctx: Context, spec: Spec, tensor: Any) -> None:
    declared = spec.config.get("output_shape")
    if spec.config.get("output_shape_type", "raw") != "raw" or not declared:
        return
    declared = tuple(declared)
    if len(declared) == len(tensor.shape):  # some files include the batch axis
        declared = declared[1:]
    actual = tuple(tensor.shape[1:])
    if any(d is not None and a is not None and int(d) != int(a)
           for d, a in zip(declared, actual, strict=False)) or len(declared) != len(actual):
        raise ctx.fail(f"layer {spec.name!r} is a Lambda that changes the shape "
                       f"{actual} to {declared}, so --lambda identity cannot stand in for "
                       "it; re-save the model without it")
