"""An ONNX model (a PyTorch export, a converted Keras or .tflite pilot) read from its graph.

:func:`describe` turns the graph into the record a car's own .tflite gets from its ops
(:class:`~carvis.backends.tflite.LayerMeta`, ``derived``; see :mod:`.flatgraph`): the layer
table (a Conv with the pixel-wise ops right after it is one row, so conv:N counts Conv nodes and
shows their post-activation output), the steering output found by its shape when the converter
lost its name, and VisualBackProp's path with each op's window from its attributes
(kernel_shape, strides, dilations, pads or auto_pad) as the records
:func:`carvis.explain.geometry.record_geometry` reads. Each 4-D tensor's layout (NCHW from
PyTorch, NHWC where a converter kept Keras') is followed from the ops that fix it, so every map
comes out as carvis' (h, w, c). :func:`with_outputs` makes tensors graph outputs; a single
``(2,)`` output that is no softmax (DonkeyCar's PyTorch pilots: angle, throttle) is split into
two outputs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from carvis.backends.tflite import LayerMeta
from carvis.errors import CarvisError

#: Ops whose 4-D output is NCHW by the ONNX spec.
_NCHW_OPS = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "BatchNormalization",
             "InstanceNormalization", "LRN", "GlobalAveragePool", "GlobalMaxPool",
             "DepthToSpace", "SpaceToDepth"}
_ACTIVATIONS = {"Relu", "LeakyRelu", "Elu", "Selu", "Celu", "PRelu", "Sigmoid", "HardSigmoid",
                "Tanh", "HardSwish", "Softplus", "Softsign", "Clip", "ThresholdedRelu", "Gelu",
                "Mish", "Swish"}
_PIXELWISE = {"BatchNormalization", "InstanceNormalization", "Dropout", "Identity", "Mul", "Add",
              "Sub", "Div", "Cast", "Neg", "Abs", "Sqrt", "Exp", "Pow", "Max", "Min",
              "QuantizeLinear", "DequantizeLinear", "Transpose"}
_KERAS_TYPES = {"BatchNormalization": "BatchNormalization", "Dropout": "Dropout"}


@dataclasses.dataclass
class Graph:
    """A model's graph: nodes, who makes and who reads each tensor, the constant ones."""

    model: Any
    shapes: dict[str, tuple[int, ...]]  # tensor → its shape with the batch (from a probe run)

    def __post_init__(self) -> None:
        g = self.model.graph
        self.nodes = list(g.node)
        inits = {t.name for t in g.initializer}
        self.init_shapes = {t.name: tuple(int(d) for d in t.dims) for t in g.initializer}
        self.inputs = [v.name for v in g.input if v.name not in inits]
        self.outputs = [v.name for v in g.output]
        self.producer = {t: k for k, n in enumerate(self.nodes) for t in n.output if t}
        self.consumers: dict[str, list[int]] = {}
        for k, n in enumerate(self.nodes):
            for t in n.input:
                self.consumers.setdefault(t, []).append(k)
        # Constant-derived tensors (weights, shapes computed by Shape → Gather → Concat): an
        # input that is one of these is an op's parameter, not the data flowing through it.
        self.static = set(inits)
        for n in self.nodes:
            if n.op_type in ("Constant", "Shape", "Size") or all(
                    t in self.static or not t for t in n.input):
                self.static.update(t for t in n.output if t)

    def data_inputs(self, k: int) -> list[str]:
        """The node's inputs that are data (not weights or shapes)."""
        return [t for t in self.nodes[k].input if t and t not in self.static]

    def attrs(self, k: int) -> dict[str, Any]:
        import onnx

        return {a.name: onnx.helper.get_attribute_value(a) for a in self.nodes[k].attribute}


def layouts(g: Graph) -> dict[str, str]:
    """Each 4-D data tensor's layout ("NCHW" or "NHWC"), followed from the ops that fix it."""
    out: dict[str, str] = {}
    for name in g.inputs:
        if len(g.shapes.get(name, ())) == 4:
            out[name] = _input_layout(g, name)
    for k, node in enumerate(g.nodes):
        data = g.data_inputs(k)
        for t in node.output:
            if len(g.shapes.get(t, ())) != 4 or t in g.static:
                continue
            if node.op_type in _NCHW_OPS:
                out[t] = "NCHW"
            elif node.op_type == "Transpose":
                src = out.get(data[0]) if data else None
                perm = list(g.attrs(k).get("perm", [3, 2, 1, 0]))
                moved = "".join(src[p] for p in perm) if src else ""
                if moved in ("NCHW", "NHWC"):
                    out[t] = moved
            elif node.op_type in ("Reshape", "Squeeze", "Unsqueeze") and data and \
                    data[0] in out:  # tf2onnx reshapes a 1-channel NCHW map to NHWC
                h, w, c = hwc(g.shapes[data[0]], out[data[0]])
                shape = tuple(g.shapes[t][1:])
                found = {(h, w, c): "NHWC", (c, h, w): "NCHW"}.get(shape)
                if found:
                    out[t] = found
            elif data and data[0] in out and (g.shapes.get(data[0]) == g.shapes.get(t) or
                                               node.op_type in ("Pad", "Resize", "Upsample",
                                                                "Concat")):
                out[t] = out[data[0]]
    return out


def _input_layout(g: Graph, name: str) -> str:
    """The image input's layout: what its first layout-fixing reader says, else its shape."""
    seen, todo = set(), [name]
    while todo:
        t = todo.pop()
        for k in g.consumers.get(t, []):
            node = g.nodes[k]
            if node.op_type in _NCHW_OPS:
                return "NCHW"
            if node.op_type == "Transpose":
                return "NHWC" if list(g.attrs(k).get("perm", [])) == [0, 3, 1, 2] else "NCHW"
            if node.op_type in _ACTIVATIONS | _PIXELWISE and node.output[0] not in seen:
                seen.add(node.output[0])
                todo.append(node.output[0])
    shape = g.shapes[name]
    return "NHWC" if shape[-1] <= 4 < shape[1] else "NCHW"


def hwc(shape: tuple[int, ...], layout: str | None) -> tuple[int, ...]:
    """A tensor's shape without the batch, a 4-D one as (h, w, c)."""
    if layout == "NCHW":
        return (shape[2], shape[3], shape[1])
    return tuple(shape[1:])


@dataclasses.dataclass
class _Row:
    name: str
    ops: list[str]
    tensor: str


def _short(node: Any, k: int) -> list[str]:
    """Candidate names of a node's row: '/layer1/layer1.0/conv1/Conv' → conv1, then the whole
    scope 'layer1/layer1.0/conv1'; a node without a name is called by its op and place."""
    parts = [p for p in (node.name or "").split(";")[0].split("/") if p]
    if len(parts) >= 2:
        return [parts[-2], "/".join(parts[:-1])]
    return [parts[0]] if parts else [f"{node.op_type.lower()}_{k}"]


def _rows(g: Graph, lay: dict[str, str]) -> list[_Row]:
    """Input, then one row per node; a Conv's row takes the pixel-wise ops that alone read its
    output (Conv → BatchNormalization → Relu is one row: conv:N shows the post-ReLU map)."""
    (inp,) = g.inputs
    rows = [_Row(inp, ["Input"], inp)]
    used = {inp}
    for k, node in enumerate(g.nodes):
        if node.op_type == "Constant" or not node.output or node.output[0] in g.static:
            continue
        if node.op_type in ("Transpose", "Reshape", "Squeeze", "Unsqueeze") and \
                node.output[0] in lay and g.data_inputs(k)[:1] and g.data_inputs(k)[0] in lay:
            continue  # a layout change (a converter's NHWC ↔ NCHW), not a layer
        out, last = node.output[0], rows[-1]
        if (last.ops[0] == "Conv" and node.op_type in _ACTIVATIONS | _PIXELWISE - {"Transpose"}
                and g.data_inputs(k) == [last.tensor] and len(g.consumers[last.tensor]) == 1
                and g.shapes.get(out) == g.shapes.get(last.tensor)):
            last.ops.append(node.op_type)
            last.tensor = out
            continue
        names = _short(node, k)
        name = next((n for n in names if n not in used), names[-1])
        base, n = name, 1
        while name in used:
            n += 1
            name = f"{base}_{n}"
        used.add(name)
        rows.append(_Row(name, [node.op_type], out))
    return rows


def _head(g: Graph, names: dict[str, str]) -> dict:
    """The steering output among the (units,) outputs: the one named angle/steer; else, when
    converters lost the names, the only one with an odd number of bins (a straight-ahead bin:
    DonkeyCar's 15 angle bins beside its 20 throttle bins); else the source model's first
    output (TensorFlow converters keep its index: 'StatefulPartitionedCall:0'); else the first."""
    flat = [t for t in g.outputs if len(g.shapes.get(t, ())) == 2]
    if not flat:
        return {}
    named = [t for t in flat if "angle" in t.lower() or "steer" in t.lower()]
    odd = [t for t in flat if g.shapes[t][1] > 1 and g.shapes[t][1] % 2]
    indexed = sorted(flat, key=lambda t: int(t.rsplit(":", 1)[1])) if all(
        t.rsplit(":", 1)[-1].isdigit() and ":" in t for t in flat) else flat
    t = (named or (odd if len(odd) == 1 and len(flat) > 1 else []) or indexed)[0]
    k = g.producer.get(t)
    while k is not None and g.nodes[k].op_type in ("Identity", "Cast") and g.data_inputs(k):
        k = g.producer.get(g.data_inputs(k)[0])
    softmax = k is not None and g.nodes[k].op_type in ("Softmax", "LogSoftmax")
    return {"index": g.outputs.index(t), "tensor": t, "units": int(g.shapes[t][1]),
            "softmax": softmax, "layer": names.get(t, t)}


def _pads(k: int, g: Graph, node_attrs: dict, in_hw: tuple[int, int], out_hw: tuple[int, int],
          kernel: list[int], strides: list[int], dil: list[int]) -> tuple[str, list[int]]:
    """('same' | 'valid', explicit [top, left, bottom, right]) of a conv or pool."""
    auto = node_attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto == "SAME_UPPER":
        return "same", [0, 0, 0, 0]
    if auto == "SAME_LOWER":
        pads = []
        for n_in, n_out, size, s, d in zip(in_hw, out_hw, kernel, strides, dil, strict=True):
            total = max((n_out - 1) * s + (size - 1) * d + 1 - n_in, 0)
            pads.append(total - total // 2)  # the extra row goes before
        return "valid", [pads[0], pads[1], 0, 0]
    pads = [int(p) for p in node_attrs.get("pads", [0, 0, 0, 0])]
    return "valid", pads


def _record(g: Graph, k: int, name: str, lay: dict[str, str], names: dict[str, str]
            ) -> list[dict]:
    """One node on VisualBackProp's path as the records geometry reads (a padded conv: a
    ZeroPadding2D record, then the conv with 'valid' padding)."""
    node = g.nodes[k]
    out = node.output[0]
    out_hw = list(hwc(g.shapes[out], lay.get(out))[:2])
    record = {"name": name, "type": "Identity", "out_hw": out_hw, "config": {}, "activation": ""}
    op = node.op_type
    if op in ("Conv", "MaxPool", "AveragePool"):
        a = g.attrs(k)
        src = g.data_inputs(k)[0]
        in_hw = tuple(hwc(g.shapes[src], lay.get(src))[:2])
        if op == "Conv":
            kernel = list(a.get("kernel_shape") or g.init_shapes.get(node.input[1], ())[2:])
        else:
            kernel = list(a["kernel_shape"])
        strides = list(a.get("strides", [1, 1]))
        dil = list(a.get("dilations", [1, 1]))
        padding, pads = _pads(k, g, a, in_hw, tuple(out_hw), kernel, strides, dil)
        records = []
        if any(pads):
            top, left, bottom, right = pads
            records.append({"name": f"{name}@pads", "type": "ZeroPadding2D",
                            "out_hw": [in_hw[0] + top + bottom, in_hw[1] + left + right],
                            "config": {"padding": [[top, bottom], [left, right]]},
                            "activation": ""})
        if op == "Conv":
            config = {"kernel_size": kernel, "dilation_rate": dil}
            record["type"] = "Conv2D"
        else:
            config = {"pool_size": kernel}
            record["type"] = "MaxPooling2D" if op == "MaxPool" else "AveragePooling2D"
        config.update(strides=strides, padding=padding)
        record["config"] = config
        return [*records, record]
    if op in _ACTIVATIONS:
        record.update(type="Activation", activation=op.lower())
    elif op in _KERAS_TYPES:
        record["type"] = _KERAS_TYPES[op]
    elif op in ("Resize", "Upsample"):
        src = g.data_inputs(k)[0]
        hi, wi = hwc(g.shapes[src], lay.get(src))[:2]
        mode = g.attrs(k).get("mode", b"nearest")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        record.update(type="UpSampling2D", config={"size": [out_hw[0] // hi, out_hw[1] // wi],
                                                    "interpolation": mode})
    elif op in ("Reshape", "Squeeze", "Unsqueeze") and out in lay:
        record["type"] = "Identity"  # a layout change of a 1-channel map: same pixels
    elif op == "Pad":
        record["type"] = op  # geometry names it: vbp refuses rather than guess its pads
    elif op not in _PIXELWISE:
        record["type"] = op
    return [record]


def _path(g: Graph, t: str) -> tuple[list[int], str | None]:
    """The nodes from the input to tensor t along single data inputs, shallow first; and the
    tensor whose node has several (or none), if the walk stopped there."""
    back: list[int] = []
    while t not in g.inputs:
        k = g.producer.get(t)
        feeds = [] if k is None else g.data_inputs(k)
        if len(feeds) != 1:
            return back[::-1], t
        back.append(k)
        (t,) = feeds
    return back[::-1], None


def _vbp(g: Graph, head: dict, lay: dict[str, str], names: dict[str, str]
         ) -> tuple[dict, set[str]]:
    """VisualBackProp's path: the nodes from the input to the last 4-D tensor before the head,
    as records; and the tensors on it a tap can be."""
    chain, stuck = _path(g, head["tensor"])
    if stuck is not None:
        k = g.producer.get(stuck)
        what = g.nodes[k].op_type if k is not None else "?"
        n = len(g.data_inputs(k)) if k is not None else 0
        return {"error": f"vbp follows one path from the output to the input, but node "
                         f"{what} ({names.get(stuck, stuck)!r}) has {n} data inputs; use "
                         "--mode occlusion or activation"}, set()
    spatial = [i for i, k in enumerate(chain) if g.nodes[k].output[0] in lay]
    chain = chain[: spatial[-1] + 1] if spatial else []
    records: list[dict] = []
    taps: set[str] = set()
    for k in chain:
        out = g.nodes[k].output[0]
        names.setdefault(out, f"{g.nodes[k].op_type.lower()}@{k}")
        records.extend(_record(g, k, names[out], lay, names))
        if records[-1]["type"] not in ("Identity",):
            taps.add(out)
    (inp,) = g.inputs
    return {"input_hw": list(hwc(g.shapes[inp], lay.get(inp))[:2]), "chain": records}, taps


@dataclasses.dataclass
class Described:
    """What :func:`describe` found: the metadata, the tensors to hold (output name → tensor),
    each tensor's layout, and the pair output to split (None: no split)."""

    meta: LayerMeta
    tensors: dict[str, str]
    layouts: dict[str, str]
    rows: list[tuple[str, str, tuple[int, ...], bool]]  # name, type, shape (hwc), is_conv
    split: str | None = None


def describe(g: Graph, source: str) -> Described:
    """An ONNX graph as carvis metadata (derived from its nodes), and the tensors to read."""
    if len(g.inputs) != 1 or len(g.shapes.get(g.inputs[0], ())) != 4:
        shown = ", ".join(f"{n!r} {g.shapes.get(n)}" for n in g.inputs)
        raise CarvisError(f"{source}: has inputs {shown}; carvis needs one image input "
                          "(batch, height, width, channels) or (batch, channels, height, width)")
    lay = layouts(g)
    rows = _rows(g, lay)
    names = {row.tensor: row.name for row in rows}
    for t in g.outputs:
        names.setdefault(t, t)
    head = _head(g, names)
    split = None
    if head and head["units"] == 2 and not head["softmax"] and len(g.outputs) == 1:
        split = head["tensor"]
        head.update(tensor=f"{split}:steering", units=1, layer=f"{split}:steering")
        head["outputs"] = [head["layer"], f"{split}:throttle"]
        head["index"] = 0
    vbp: dict = {"error": "its output is not a steering value or bins"}
    taps: set[str] = set()
    if head:
        if split is None:
            others = [t for t in g.outputs if t != head["tensor"]]
            head["outputs"] = [names[head["tensor"]], *(names[t] for t in others)]
            vbp, taps = _vbp(g, head, lay, names)
        else:
            vbp, taps = _vbp(g, {**head, "tensor": split}, lay, names)
    rows_4d = {row.tensor for row in rows[1:] if row.tensor in lay}
    held = sorted(rows_4d | taps, key=lambda t: g.producer.get(t, -1))
    tensors = {names[t]: t for t in held}
    for t in g.outputs:
        if t != split:
            tensors[names[t]] = t
    if split is not None:
        tensors[f"{split}:steering"] = f"{split}:steering"
        tensors[f"{split}:throttle"] = f"{split}:throttle"
    table = []
    for i, row in enumerate(rows):
        shape = hwc(g.shapes[row.tensor], lay.get(row.tensor))
        table.append((row.name, "+".join(row.ops), shape,
                      i > 0 and row.ops[0] == "Conv" and row.tensor in lay))
    shown = tuple(name for name, _, _, conv in table if conv)
    head.pop("tensor", None)
    columns = dict(zip(("layer_names", "layer_types", "layer_shapes"), zip(*table), strict=False))
    meta = LayerMeta(layer=(shown or (rows[-1].name,))[0], layers=len(rows), model=source,
                     input_shape=table[0][2], conv_layers=shown, outputs=tuple(tensors),
                     shown=shown, head=head or None, vbp=vbp, derived=True, **columns)
    kept = [*tensors.values(), *g.inputs]
    return Described(meta, tensors, {t: lay[t] for t in kept if t in lay}, table, split)


def with_outputs(model: Any, tensors: dict[str, str], split: str | None) -> Any:
    """A copy of the model whose graph outputs are these tensors (a pair output split in two:
    ``NAME:steering`` and ``NAME:throttle``, each (batch, 1))."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                default=0)
    if split is not None and opset < 10:
        raise CarvisError(f"{split!r}: splitting a (2,) output needs opset 10 or newer; the "
                          f"model has {opset}: export it again with a newer opset")
    if split is not None:
        for i, part in enumerate(("steering", "throttle")):
            consts = {f"{split}:{part}:{k}": v for k, v in
                      (("starts", [i]), ("ends", [i + 1]), ("axes", [1]))}
            for cname, value in consts.items():
                graph.initializer.append(numpy_helper.from_array(np.asarray(value, np.int64),
                                                                 cname))
            graph.node.append(helper.make_node("Slice", [split, *consts],
                                               [f"{split}:{part}"], name=f"carvis/{part}"))
    known = {v.name: v for v in graph.output}
    del graph.output[:]
    for name in tensors.values():
        graph.output.append(known.get(name) or onnx.ValueInfoProto(name=name))
    return model
