"""A saved model config as a list of layer specs and their connections (no Keras needed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from carvis.models.files import dicts
from carvis.models.legacy import keras1
from carvis.models.legacy.context import Context, Slot, Spec

Ref = tuple[str, int, int]  # (layer name, node index, tensor index)

#: Keras 2's name for a constant argument of a call: [_CONSTANT_VALUE, -1, value, kwargs].
_CONSTANT = "_CONSTANT_VALUE"


@dataclass
class Graph:
    """The layers of a saved model in config order, and which of them are inputs and outputs."""

    name: str
    specs: list[Spec]
    input_names: list[str]
    output_refs: list[Ref]


def read_graph(ctx: Context, config: dict) -> Graph:
    """The graph of a Sequential or functional config, in Keras 2 terms (Keras 3's as it is)."""
    class_name = config.get("class_name")
    body = config.get("config")
    if class_name == "Sequential":
        name, specs = _sequential_specs(ctx, body)
        return Graph(name, specs, [specs[0].name], [(specs[-1].name, 0, 0)])
    if class_name in ("Model", "Functional"):
        specs = [_spec(ctx, layer, layer.get("inbound_nodes", [])) for layer in body["layers"]]
        return Graph(body.get("name", "model"), specs,
                     [ref[0] for ref in refs(body["input_layers"])], refs(body["output_layers"]))
    raise ctx.fail(f"the saved model is a {class_name}, which carvis cannot rebuild; "
                   "save a Sequential or functional model")


def refs(raw: list) -> list[Ref]:
    """input_layers / output_layers as a list of (name, node, tensor)."""
    if raw and isinstance(raw[0], str):  # a single [name, node, tensor]
        raw = [raw]
    return [(str(r[0]), int(r[1]), int(r[2])) for r in raw]


def input_shape(config: dict) -> Any:
    """The batch shape an InputLayer (or a Sequential's first layer) declares, or None."""
    return config.get("batch_input_shape") or config.get("batch_shape")


def _sequential_specs(ctx: Context, body: Any) -> tuple[str, list[Spec]]:
    if isinstance(body, list):  # Keras 1 and Keras 2.0-2.2: the config is the layer list
        name, layers, build_shape = "sequential", body, None
    else:
        name, layers = body.get("name", "sequential"), body["layers"]
        build_shape = body.get("build_input_shape")
    specs: list[Spec] = []
    if layers and layers[0].get("class_name") != "InputLayer":
        first = layers[0].get("config", {})
        shape = input_shape(first) or build_shape
        if not shape:
            raise ctx.fail("the Sequential model has no input shape in its config; re-save "
                           "it with an Input(shape=...) first layer")
        input_name = f"{first.get('name', 'sequential')}_input"
        specs.append(Spec(input_name, "InputLayer", {"name": input_name,
                                                     "batch_input_shape": shape}))
    for layer in layers:
        previous = [[(specs[-1].name, 0, 0)]] if specs else []
        specs.append(_spec(ctx, layer, previous, raw_nodes=False))
    return name, specs


def _spec(ctx: Context, layer: dict, nodes: list, raw_nodes: bool = True) -> Spec:
    class_name = layer["class_name"]
    config = dict(layer.get("config") or {})
    name = layer.get("name") or config.get("name")
    config["name"] = name
    if class_name in ("Sequential", "Model", "Functional"):
        raise ctx.unsupported(name, f"a nested {class_name} model")
    if class_name == "Merge" and config.get("layers"):
        raise ctx.unsupported(name, "a Merge of Sequential branches")
    if ctx.dialect == "keras1":
        class_name, config = keras1.translate(ctx, name, class_name, config)
    if not raw_nodes:
        return Spec(name, class_name, config, list(nodes))
    if class_name == "TFOpLambda" and ctx.dialect != "keras3":
        calls = [_op_call(node) for node in nodes]
        return Spec(name, class_name, config, [refs for refs, _, _ in calls],
                    [(args, kwargs) for _, args, kwargs in calls])
    return Spec(name, class_name, config, [_node_refs(ctx, name, class_name, node)
                                           for node in nodes])


def _is_entry(value: Any) -> bool:
    """True for Keras 2's [layer name, node, tensor] or [..., kwargs] (its own test, too)."""
    return isinstance(value, (list, tuple)) and len(value) in (3, 4) and isinstance(value[0], str)


def _op_call(node: Any) -> tuple[list[Ref], Any, dict]:
    """One call of a TFOpLambda: its tensors, and its (args, kwargs) with a Slot for each.

    Keras 2 keeps a TFOpLambda's argument structure: a bare entry is one tensor, a list of
    entries a list (tf.concat's values); constants are _CONSTANT_VALUE entries, and the last
    entry's kwargs are the call's, tensors in them written as entries too.
    """
    refs: list[Ref] = []

    def slot(entry: Any) -> Any:
        if entry[0] == _CONSTANT:
            return entry[2]
        refs.append((str(entry[0]), int(entry[1]), int(entry[2])))
        return Slot(len(refs) - 1)

    def fill(value: Any) -> Any:
        if _is_entry(value):
            return slot(value)
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [fill(v) for v in value]
        return value

    entries = [node] if _is_entry(node) else list(node)
    args = slot(entries[0]) if _is_entry(node) else [slot(entry) for entry in entries]
    kwargs = entries[-1][3] if entries and len(entries[-1]) == 4 else {}
    return refs, args, fill(dict(kwargs or {}))


def _node_refs(ctx: Context, name: str, class_name: str, node: Any) -> list[Ref]:
    """The tensors one call of a layer took: [[name, node, tensor, kwargs], ...] in Keras 1/2."""
    if not isinstance(node, dict):
        entries = [node] if _is_entry(node) else node
        return [(str(ref[0]), int(ref[1]), int(ref[2])) for ref in entries
                if ref[0] != _CONSTANT]
    if ctx.dialect != "keras3":
        raise ctx.unsupported(name, f"a {class_name} layer with a Keras 3 style call")
    # Keras 3: {"args": [...], "kwargs": {...}} holding {"class_name": "__keras_tensor__"}s
    histories = [item["config"]["keras_history"] for item in dicts([node.get("args", []),
                                                                    node.get("kwargs", {})])
                 if item.get("class_name") == "__keras_tensor__"]
    return [(str(h[0]), int(h[1]), int(h[2])) for h in histories]
