"""The layer table read from a model file's config alone: h5py and json, no TensorFlow.

It gives the text ``format_layer_table(load_model(path))`` gives: Keras 1 class names in their
Keras 3 form, the layers in the order Keras 3 puts a functional model's layers, and output shapes
worked out from each layer's config. A Lambda keeps its type and, unless it declares an output
shape, the shape of its input (as ``--lambda identity`` runs it); a layer type without a shape
rule shows ``()``, and so does everything after it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

from carvis.errors import CarvisError, first_line
from carvis.models import files
from carvis.models.layers import LayerInfo, format_rows, layer_info
from carvis.models.legacy import tfops
from carvis.models.legacy.context import Context, Spec
from carvis.models.legacy.graph import Graph, input_shape, read_graph

Shape = tuple[int | None, ...] | None  # None: not worked out from the config
ShapeRule = Callable[[dict, list[tuple[int | None, ...]]], Shape]


def layer_table_from_file(path: str | os.PathLike) -> list[LayerInfo]:
    """One LayerInfo per layer, as layer_table(load_model(path)) would give, without Keras;
    one line if the file's config is not one Keras writes."""
    p = Path(path)
    try:
        graph = _read(p)
        specs = {spec.name: spec for spec in graph.specs}
        shapes = _output_shapes(graph.specs)
        return [layer_info(index, name, _type_name(specs[name]), shapes.get(name) or ())
                for index, name in enumerate(keras_order(graph))]
    except CarvisError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError,
            RecursionError) as exc:
        # A config of the wrong types, or a graph too long to walk: the file's, not carvis'.
        raise CarvisError(f"{p}: cannot read the model's layers from its config "
                          f"({type(exc).__name__}: {first_line(exc)}); re-save the model"
                          ) from None


def _type_name(spec: Spec) -> str:
    """The class name, a TimeDistributed's with what it wraps (as layers.type_name)."""
    if spec.class_name == "TimeDistributed":
        return f"TimeDistributed({(spec.config.get('layer') or {}).get('class_name', '?')})"
    return spec.class_name


def format_layer_table_from_file(path: str | os.PathLike) -> str:
    """The layer table as text, read from the file's config (what `carvis layers` prints)."""
    return format_rows(layer_table_from_file(path))


def _read(path: Path) -> Graph:
    if files.model_kind(path) == "keras":
        config = files.archive_config(path)
        if config is None:
            raise CarvisError(f"{path}: the .keras archive has no readable config.json; "
                              "re-save the model with model.save('model.keras')")
        return read_graph(Context(path, "keras3"), config)
    with files.open_h5(path) as h5:
        header = files.read_header(path, h5)
    return read_graph(Context(path, header.dialect, header.version, header.backend),
                      header.config)


# --------------------------------------------------------------------------- order


Node = tuple[str, int]  # (layer name, index of the call)


def keras_order(graph: Graph) -> list[str]:
    """Layer names in Keras 3's functional order: by depth from the outputs, then first visit."""
    parents = {(spec.name, k): [(ref[0], ref[1]) for ref in node]
               for spec in graph.specs for k, node in enumerate(spec.inbound)}
    visited, first_seen = _walk_from_outputs(graph, parents)
    node_depth: dict[Node, int] = {}
    layer_depth: dict[str, int] = {}
    for node in reversed(visited):
        depth = max(node_depth.setdefault(node, 0), layer_depth.get(node[0], 0))
        layer_depth[node[0]] = node_depth[node] = depth
        for parent in parents.get(node, []):
            node_depth[parent] = max(depth + 1, node_depth.get(parent, 0))
    for name in graph.input_names:  # inputs that no output needs still belong to the model
        if name not in layer_depth:
            layer_depth[name], first_seen[name] = 0, -1
    return sorted(layer_depth, key=lambda name: (-layer_depth[name], first_seen[name]))


def _walk_from_outputs(graph: Graph,
                       parents: dict[Node, list[Node]]) -> tuple[list[Node], dict[str, int]]:
    """Keras' _build_map: nodes inputs first, and each layer's place in the depth-first walk."""
    visited: list[Node] = []
    first_seen: dict[str, int] = {}

    def visit(node: Node) -> None:
        if node in visited:
            return
        first_seen.setdefault(node[0], len(first_seen))
        for parent in parents.get(node, []):
            visit(parent)
        visited.append(node)

    for name, node_index, _ in graph.output_refs:
        visit((name, node_index))
    return visited, first_seen


# --------------------------------------------------------------------------- shapes


def _output_shapes(specs: list[Spec]) -> dict[str, Shape]:
    """Each layer's output shape (of its first call), batch axis left out."""
    nodes: dict[str, list[Shape]] = {}
    pending = list(specs)
    while pending:
        ready = [spec for spec in pending if all(
            ref[0] in nodes and len(nodes[ref[0]]) > ref[1] for n in spec.inbound for ref in n)]
        if not ready:
            break  # a broken graph: the rest stays unknown
        for spec in ready:
            nodes[spec.name] = [_node_shape(spec, [nodes[r[0]][r[1]] for r in node], k)
                                for k, node in enumerate(spec.inbound)] or [_node_shape(spec, [])]
            pending.remove(spec)
    return {name: shapes[0] for name, shapes in nodes.items()}


def _node_shape(spec: Spec, inputs: list[Shape], call: int = 0) -> Shape:
    if spec.class_name == "InputLayer":
        shape = input_shape(spec.config)
        return tuple(shape[1:]) if shape else None
    if spec.class_name == "TFOpLambda":  # its shape depends on its call's arguments
        return None if any(s is None for s in inputs) else tfops.shape_of(spec, call, inputs)
    rule = SHAPE_RULES.get(spec.class_name)
    if rule is None or not inputs or any(shape is None for shape in inputs):
        return None
    try:
        return rule(spec.config, inputs)  # type: ignore[arg-type]
    except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError):
        return None  # a config these rules do not cover: shown as ()


def _pair(value: object) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[-1])
    return int(value), int(value)  # type: ignore[call-overload]


def _length(n: int | None, size: int, stride: int, padding: str, dilation: int = 1) -> int | None:
    """One spatial length after a conv or pool window (Keras' conv_output_length)."""
    if n is None:
        return None
    if padding == "same":
        return (n + stride - 1) // stride
    return (n - (size + (size - 1) * (dilation - 1))) // stride + 1


def _window(c: dict, shape: tuple[int | None, ...], size_key: str, channels: int | None) -> Shape:
    size = _pair(c.get(size_key, (2, 2)))
    strides = _pair(c.get("strides") or (size if size_key == "pool_size" else 1))
    dilation = _pair(c.get("dilation_rate", 1))
    padding = str(c.get("padding", "valid"))
    return (_length(shape[0], size[0], strides[0], padding, dilation[0]),
            _length(shape[1], size[1], strides[1], padding, dilation[1]), channels)


def _conv(c: dict, ins: list) -> Shape:
    return _window(c, ins[0], "kernel_size", int(c["filters"]))


def _depthwise(c: dict, ins: list) -> Shape:
    channels = ins[0][-1]
    multiplier = int(c.get("depth_multiplier", 1))
    return _window(c, ins[0], "kernel_size", None if channels is None else channels * multiplier)


def _conv_transpose(c: dict, ins: list) -> Shape:
    size, strides = _pair(c["kernel_size"]), _pair(c.get("strides", 1))
    same = c.get("padding", "valid") == "same"
    h, w = (None if n is None else n * s + (0 if same else max(k - s, 0))
            for n, k, s in zip(ins[0][:2], size, strides, strict=True))
    return h, w, int(c["filters"])


def _pool(c: dict, ins: list) -> Shape:
    return _window(c, ins[0], "pool_size", ins[0][-1])


def _global_pool(c: dict, ins: list) -> Shape:
    return (1, 1, ins[0][-1]) if c.get("keepdims") else (ins[0][-1],)


def _flatten(c: dict, ins: list) -> Shape:
    return (None if None in ins[0] else math.prod(ins[0]),)


def _dense(c: dict, ins: list) -> Shape:
    return (*ins[0][:-1], int(c["units"]))


def _crop_pairs(value: object) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, bottom), (left, right)) from an int, (rows, cols) or the pairs themselves."""
    if isinstance(value, (list, tuple)):
        return _pair(value[0]), _pair(value[1])
    return _pair(value), _pair(value)


def _cropping(c: dict, ins: list) -> Shape:
    (t, b), (le, r) = _crop_pairs(c.get("cropping", 0))
    h, w, ch = ins[0]
    return (None if h is None else h - t - b), (None if w is None else w - le - r), ch


def _zero_padding(c: dict, ins: list) -> Shape:
    (t, b), (le, r) = _crop_pairs(c.get("padding", 1))
    h, w, ch = ins[0]
    return (None if h is None else h + t + b), (None if w is None else w + le + r), ch


def _upsampling(c: dict, ins: list) -> Shape:
    sh, sw = _pair(c.get("size", 2))
    h, w, ch = ins[0]
    return (None if h is None else h * sh), (None if w is None else w * sw), ch


def _reshape(c: dict, ins: list) -> Shape:
    target = [int(d) for d in c["target_shape"]]
    if -1 in target:
        known = math.prod(d for d in target if d != -1)
        total = None if None in ins[0] else math.prod(ins[0])
        target[target.index(-1)] = None if total is None else total // known  # type: ignore
    return tuple(target)


def _permute(c: dict, ins: list) -> Shape:
    return tuple(ins[0][int(d) - 1] for d in c["dims"])


def _concatenate(c: dict, ins: list) -> Shape:
    axis = int(c.get("axis", -1))
    out = list(ins[0])
    sizes = [shape[axis] for shape in ins]
    out[axis] = None if None in sizes else sum(sizes)
    return tuple(out)


def _first(c: dict, ins: list) -> Shape:
    return ins[0]


def _window3(c: dict, shape: tuple[int | None, ...], size_key: str, channels: int | None
             ) -> Shape:
    """(frames, rows, columns, channels) after a 3-D conv or pool window."""
    size = tuple(int(v) for v in c[size_key])
    strides = tuple(int(v) for v in (c.get("strides") or size))
    dilation = tuple(int(v) for v in c.get("dilation_rate", (1, 1, 1)))
    padding = str(c.get("padding", "valid"))
    return (*(_length(n, k, s, padding, d) for n, k, s, d in zip(
        shape[:3], size, strides, dilation, strict=True)), channels)


def _conv3d(c: dict, ins: list) -> Shape:
    return _window3(c, ins[0], "kernel_size", int(c["filters"]))


def _pool3d(c: dict, ins: list) -> Shape:
    return _window3(c, ins[0], "pool_size", ins[0][-1])


def _cropping3d(c: dict, ins: list) -> Shape:
    pairs = [_pair(p) for p in c.get("cropping", ((1, 1),) * 3)]
    dims = [None if n is None else n - a - b for n, (a, b) in zip(ins[0][:3], pairs, strict=True)]
    return (*dims, ins[0][-1])


def _time_distributed(c: dict, ins: list) -> Shape:
    inner = c.get("layer") or {}
    frame = SHAPE_RULES[inner["class_name"]](inner.get("config") or {}, [ins[0][1:]])
    return None if frame is None else (ins[0][0], *frame)


def _lstm(c: dict, ins: list) -> Shape:
    units = int(c["units"])
    return (ins[0][0], units) if c.get("return_sequences") else (units,)


def _lambda(c: dict, ins: list) -> Shape:
    declared = c.get("output_shape")
    if not declared or c.get("output_shape_type", "raw") != "raw":
        return ins[0]  # as --lambda identity runs it (a shape-changing one must declare it)
    declared = tuple(declared)
    return declared[1:] if len(declared) == len(ins[0]) + 1 else declared


#: Keras 2/3 class name -> its output shape from config and input shapes; one entry per type.
SHAPE_RULES: dict[str, ShapeRule] = {
    "Conv2D": _conv,
    "SeparableConv2D": _conv,
    "DepthwiseConv2D": _depthwise,
    "Conv2DTranspose": _conv_transpose,
    "MaxPooling2D": _pool,
    "AveragePooling2D": _pool,
    "GlobalAveragePooling2D": _global_pool,
    "GlobalMaxPooling2D": _global_pool,
    "Flatten": _flatten,
    "Dense": _dense,
    "Cropping2D": _cropping,
    "ZeroPadding2D": _zero_padding,
    "UpSampling2D": _upsampling,
    "Reshape": _reshape,
    "Permute": _permute,
    "Concatenate": _concatenate,
    "Lambda": _lambda,
    "Conv3D": _conv3d,
    "MaxPooling3D": _pool3d,
    "AveragePooling3D": _pool3d,
    "Cropping3D": _cropping3d,
    "TimeDistributed": _time_distributed,
    "LSTM": _lstm,
    **dict.fromkeys(("Dropout", "SpatialDropout2D", "GaussianDropout", "GaussianNoise",
                     "Activation", "BatchNormalization", "ReLU", "LeakyReLU", "ELU", "PReLU",
                     "Softmax", "Rescaling", "Identity", "Add", "Subtract", "Multiply",
                     "Average", "Maximum", "Minimum"), _first),
}
