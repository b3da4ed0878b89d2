"""Reading a functional Keras model's graph: layer configs, who feeds whom, the steering head."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from carvis.errors import CarvisError


@dataclasses.dataclass(frozen=True)
class SteeringHead:
    """The steering output of a model: which output, how many units, softmax or not."""

    index: int
    layer: str
    units: int
    softmax: bool

    @property
    def kind(self) -> str:
        """'bins' for a (softmax of) steering bins, 'regression' for one steering value."""
        return "bins" if self.units > 1 else "regression"

    def describe(self) -> str:
        """'a softmax of 5 steering bins ('activation_2')' in a few words."""
        if self.kind == "bins":
            what = "a softmax of" if self.softmax else "logits of"
            return f"{what} {self.units} steering bins ({self.layer!r})"
        return f"a regression output ({self.layer!r})"


def layer_configs(model: Any) -> dict[str, dict]:
    """Layer name → its entry in the functional model's config (class, config, inbound)."""
    config = model.get_config()
    layers = config.get("layers") if isinstance(config, dict) else None
    if not layers:
        raise CarvisError(f"model {model.name!r} has no functional layer graph; carvis needs a "
                          "functional or Sequential model")
    return {entry["config"]["name"] if "name" not in entry else entry["name"]: entry
            for entry in layers}


def inbound(entry: dict) -> list[str]:
    """Names of the layers feeding a layer (from its config's keras_history entries)."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            history = node.get("config", {}).get("keras_history") if isinstance(
                node.get("config"), dict) else None
            if node.get("class_name") == "__keras_tensor__" and history:
                found.append(str(history[0]))
                return
            for value in node.values():
                walk(value)
        elif isinstance(node, (list, tuple)):
            if len(node) >= 3 and isinstance(node[0], str) and isinstance(node[1], int) \
                    and isinstance(node[2], int):  # Keras 2 style [name, node, tensor]
                found.append(node[0])
                return
            for value in node:
                walk(value)

    walk(entry.get("inbound_nodes", []))
    return found


def output_layer_names(model: Any) -> list[str]:
    """Names of the layers whose outputs are the model's outputs, in order."""
    config = model.get_config()
    outs = config.get("output_layers", [])
    if outs and isinstance(outs[0], str):  # a single output as [name, node, tensor]
        outs = [outs]
    return [str(o[0]) for o in outs]


def activation_name(layer: Any) -> str:
    """The name of a layer's built-in activation ('relu', 'linear'), or '' if it has none."""
    try:
        value = layer.get_config().get("activation")
    except (AttributeError, NotImplementedError, TypeError):
        return ""
    if isinstance(value, dict):
        value = value.get("config") if isinstance(value.get("config"), str) else ""
    return str(value or "")


def spatial(shape: Sequence[Any]) -> tuple[int, int] | None:
    """(H, W) of a fixed-size (B, H, W, C) shape, else None."""
    dims = tuple(shape)
    if len(dims) != 4 or dims[1] is None or dims[2] is None:
        return None
    return int(dims[1]), int(dims[2])


def steering_head(model: Any) -> SteeringHead:
    """The steering output: the only output, else the first whose name says angle/steer."""
    names = output_layer_names(model)
    if not names:
        raise CarvisError(f"model {model.name!r} has no outputs; carvis needs a steering output")
    # Of several outputs, the first whose name says angle/steer, else the first of (units,)
    # (a DonkeyCar latent pilot's first output is an image).
    vectors = [i for i, t in enumerate(model.outputs) if len(t.shape) == 2] or [0]
    index = vectors[0]
    if len(names) > 1:
        for i, name in enumerate(names):
            if ("angle" in name.lower() or "steer" in name.lower()) and i in vectors:
                index = i
                break
    name = names[index]
    layer = model.get_layer(name)
    shape = tuple(model.outputs[index].shape[1:])
    if len(shape) != 1 or shape[0] is None:
        raise CarvisError(f"output {name!r} of model {model.name!r} has shape {shape}, not "
                          "(units,); carvis explains a steering value or a vector of bins")
    softmax = type(layer).__name__ == "Softmax" or activation_name(layer) == "softmax"
    return SteeringHead(index=index, layer=name, units=int(shape[0]), softmax=softmax)


def spatial_chain(model: Any, head: SteeringHead) -> list[Any]:
    """The layers from the input to the last spatial layer feeding the steering output."""
    entries = layer_configs(model)
    input_names = {t.name for t in model.inputs} | {
        e["name"] for e in entries.values() if e.get("class_name") == "InputLayer"}
    chain: list[Any] = []
    name = head.layer
    while name not in input_names:
        feeds = inbound(entries[name])
        layer = model.get_layer(name)
        if len(feeds) != 1:
            raise CarvisError(f"vbp follows one path from the output to the input, but layer "
                              f"{name!r} ({type(layer).__name__}) has {len(feeds)} inputs; "
                              "use --mode gradcam or saliency")
        chain.append(layer)
        name = feeds[0]
    chain.reverse()
    # Drop the head: keep up to the last layer with a spatial (H, W, C) output.
    last = max((i for i, lay in enumerate(chain) if spatial(lay.output.shape)), default=-1)
    return chain[: last + 1]
