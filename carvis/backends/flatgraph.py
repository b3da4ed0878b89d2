"""A car's own .tflite (input → steering, no carvis metadata), read from its ops.

:func:`describe` turns the flatbuffer's graph into the record a carvis export carries
(:class:`~carvis.backends.tflite.LayerMeta`, ``derived``): the layer table (one row per Keras
layer the converter left its name on, e.g. CONV_2D+ELU for ``conv2d_1``; conv:N counts
CONV_2D / DEPTHWISE_CONV_2D), the steering outputs, and VisualBackProp's path with each op's
window from its own options (Conv2DOptions, Pool2DOptions, PAD's paddings).
:func:`with_outputs` adds intermediate tensors as graph outputs (and one signature naming
them all), so LiteRT keeps and returns them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from carvis import layerspec
from carvis.backends.tflite import DAMAGED, TFLITE_MAGIC, LayerMeta, damaged, schema_objects
from carvis.errors import CarvisError

# TFLite op → the Keras class VisualBackProp's geometry knows; pixel-wise ops have none.
_WINDOW_OPS = {"CONV_2D": "Conv2D", "DEPTHWISE_CONV_2D": "DepthwiseConv2D",
               "MAX_POOL_2D": "MaxPooling2D", "AVERAGE_POOL_2D": "AveragePooling2D"}
_ACTIVATION_OPS = {"RELU", "RELU6", "RELU_N1_TO_1", "RELU_0_TO_1", "ELU", "LEAKY_RELU",
                   "LOGISTIC", "TANH", "HARD_SWISH", "PRELU", "GELU"}
_PIXELWISE_OPS = {"MUL", "ADD", "SUB", "DIV", "QUANTIZE", "DEQUANTIZE", "MAXIMUM", "MINIMUM",
                  "SQUARED_DIFFERENCE", "RSQRT", "SQRT", "EXP", "NEG", "ABS"}
_FUSED = {0: "", 1: "relu", 2: "relu_n1_to_1", 3: "relu6", 4: "tanh", 5: "sign_bit"}
_SAME = 0  # tflite Padding.SAME


@dataclasses.dataclass
class _Row:
    name: str
    ops: list[str]
    tensor: int


class _Graph:
    """The first subgraph: ops by name, producers, the signature's names."""

    def __init__(self, flatbuffer: bytes) -> None:
        s = schema_objects()
        self.model = s.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
        names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
        self.sub = self.model.subgraphs[0]
        self.codes = []
        for code in self.model.operatorCodes:
            number = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
            self.codes.append(names.get(number, f"OP_{number}"))
        self.producer = {int(t): k for k, op in enumerate(self.sub.operators)
                         for t in op.outputs if t >= 0}
        self.inputs = [int(t) for t in self.sub.inputs]
        self.outputs = [int(t) for t in self.sub.outputs]
        # The camera image: the only input, else the one with rows, columns and channels
        # (DonkeyCar's memory, imu and behavior pilots take vectors beside it).
        images = [t for t in self.inputs if len(self.shape(t)) in (4, 5)]
        self.image = images[0] if len(images) == 1 else self.inputs[0]
        self.signature: dict[int, str] = {}
        for sig in (self.model.signatureDefs or [])[:1]:
            for entry in (sig.inputs or []) + (sig.outputs or []):
                self.signature[int(entry.tensorIndex)] = _text(entry.name)

    def op(self, k: int) -> str:
        return self.codes[self.sub.operators[k].opcodeIndex]

    def tensor_name(self, t: int) -> str:
        return _text(self.sub.tensors[t].name)

    def shape(self, t: int) -> tuple[int, ...]:
        return tuple(int(d) for d in self.sub.tensors[t].shape)

    def data_inputs(self, k: int) -> list[int]:
        """The op's inputs that are activations (produced by an op, or the graph input)."""
        return [int(t) for t in self.sub.operators[k].inputs
                if t >= 0 and (int(t) in self.producer or int(t) in self.inputs)]

    def constant(self, t: int) -> np.ndarray:
        tensor = self.sub.tensors[t]
        data = self.model.buffers[tensor.buffer].data
        dtype = {2: np.int32, 4: np.int64}.get(int(tensor.type), np.int32)
        return np.frombuffer(bytes(bytearray(data)), dtype).reshape(self.shape(t))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def _layer_name(tensor_name: str) -> str | None:
    """'model/conv2d_1/Relu;model/conv2d_1/BiasAdd;...' → 'conv2d_1' (None: no layer in it)."""
    parts = [p for p in tensor_name.split(";")[0].split("/") if p]
    return parts[-2] if len(parts) >= 2 else None


def _rows(g: _Graph) -> list[_Row]:
    """Input, then one row per layer: consecutive ops on one tensor path sharing a layer name
    (a conv op always starts a row, so conv:N counts CONV_2D / DEPTHWISE_CONV_2D ops)."""
    inp = g.image
    rows = [_Row(g.signature.get(inp) or g.tensor_name(inp).split(":")[0], ["INPUT"], inp)]
    used = {rows[0].name}

    def layer(t: int) -> str | None:
        named = g.signature.get(t) if t in g.outputs else None
        return _layer_name(g.tensor_name(t)) or named

    for k, op in enumerate(g.sub.operators):
        out = int(op.outputs[0])
        kind, name, last = g.op(k), layer(out), rows[-1]
        if (name is not None and len(rows) > 1 and kind not in layerspec.CONV_OPS
                and layer(last.tensor) == name and last.tensor in g.data_inputs(k)):
            last.ops.append(kind)
            last.tensor = out
            continue
        name = (g.signature.get(out) if out in g.outputs else None) or name or \
            f"{kind.lower()}_{k}"
        base, n = name, 1
        while name in used:
            n += 1
            name = f"{base}_{n}"
        used.add(name)
        rows.append(_Row(name, [kind], out))
    return rows


def _head(g: _Graph) -> dict:
    """The steering output: the only one, else the first named angle/steer."""
    names = [g.signature.get(t) or g.tensor_name(t) for t in g.outputs]
    index = next((i for i, n in enumerate(names) if "angle" in n.lower()
                  or "steer" in n.lower()), 0)
    t = g.outputs[index]
    shape = g.shape(t)[1:]
    if len(shape) != 1:  # not a steering value or a vector of bins
        return {}
    producer = g.producer.get(t)
    softmax = producer is not None and g.op(producer) == "SOFTMAX"
    return {"index": index, "layer": names[index], "units": int(shape[0]),
            "softmax": softmax, "tensor": t}


def _model_outputs(g: _Graph, head: dict, names: dict[int, str]) -> list[str]:
    """The graph outputs by name, the steering one first (a pilot's angle, then throttle)."""
    ordered = [head["tensor"], *(t for t in g.outputs if t != head["tensor"])]
    return [names[t] for t in ordered]


def _record(g: _Graph, k: int, name: str) -> dict:
    """One op on VisualBackProp's path as the metadata keeps a layer: class, window, hw."""
    op = g.sub.operators[k]
    kind, out = g.op(k), int(op.outputs[0])
    hw = list(g.shape(out)[1:3])
    options = op.builtinOptions
    fused = _FUSED.get(int(getattr(options, "fusedActivationFunction", 0) or 0), "")
    record = {"name": name, "type": kind, "out_hw": hw, "config": {}, "activation": fused}
    if kind in _WINDOW_OPS:
        if kind.endswith("POOL_2D"):
            size = [int(options.filterHeight), int(options.filterWidth)]
            config = {"pool_size": size}
        else:
            kernel = g.shape(int(op.inputs[1]))
            config = {"kernel_size": [kernel[1], kernel[2]], "dilation_rate": [
                int(options.dilationHFactor), int(options.dilationWFactor)]}
        config.update(strides=[int(options.strideH), int(options.strideW)],
                      padding="same" if int(options.padding) == _SAME else "valid")
        record.update(type=_WINDOW_OPS[kind], config=config)
    elif kind in ("PAD", "PADV2"):
        pads = g.constant(int(op.inputs[1]))
        record.update(type="ZeroPadding2D", config={"padding": pads[1:3].tolist()})
    elif kind == "RESIZE_NEAREST_NEIGHBOR":
        (hi, wi), (ho, wo) = g.shape(int(op.inputs[0]))[1:3], hw
        record.update(type="UpSampling2D", config={"size": [ho // hi, wo // wi]})
    elif kind in _ACTIVATION_OPS:
        record.update(type="Activation", activation=kind.lower())
    elif kind in _PIXELWISE_OPS:
        record.update(type="Activation" if fused else "Identity")
    return record


def _vbp(g: _Graph, head: dict, names: dict[int, str]) -> tuple[dict, set[int]]:
    """VisualBackProp's path: the ops from the input to the last 4-D tensor before the head;
    and the tensors on it a tap can be (conv and activation outputs)."""
    chain: list[int] = []
    t = head["tensor"]
    while t not in g.inputs:
        k = g.producer.get(t)
        feeds = g.data_inputs(k) if k is not None else []
        if len(feeds) != 1:
            return {"error": f"vbp follows one path from the output to the input, but op "
                             f"{g.op(k) if k is not None else '?'} ({names.get(t, t)!r}) has "
                             f"{len(feeds)} inputs; use --mode activation"}, set()
        chain.append(k)
        t = feeds[0]
    chain.reverse()
    spatial = [i for i, k in enumerate(chain) if len(g.shape(int(g.sub.operators[k]
                                                                    .outputs[0]))) == 4]
    chain = chain[: spatial[-1] + 1] if spatial else []
    records, taps = [], set()
    for k in chain:
        out = int(g.sub.operators[k].outputs[0])
        names.setdefault(out, f"{g.op(k).lower()}@{out}")
        records.append(_record(g, k, names[out]))
        if records[-1]["type"] != "Identity":
            taps.add(out)
    return {"input_hw": list(g.shape(g.image)[1:3]), "chain": records}, taps


def describe(flatbuffer: bytes, source: str = "<tflite>") -> tuple[LayerMeta, dict[str, int]]:
    """A car's own .tflite as carvis metadata (derived from its ops), and the tensors to read:
    output name → tensor index (its 4-D layers, VisualBackProp's path, the graph outputs);
    one line if its graph cannot be read."""
    try:
        return _describe(flatbuffer, source)
    except DAMAGED as exc:
        raise damaged(source, exc) from None


def _describe(flatbuffer: bytes, source: str) -> tuple[LayerMeta, dict[str, int]]:
    g = _Graph(flatbuffer)
    if len(g.model.subgraphs) != 1 or len(g.shape(g.image)) not in (4, 5):
        raise CarvisError(f"{source}: has {len(g.inputs)} inputs in {len(g.model.subgraphs)} "
                          "subgraphs; carvis needs one subgraph and one image input")
    rows = _rows(g)
    head = _head(g)
    names = {row.tensor: row.name for row in rows}
    for t in g.outputs:
        names.setdefault(t, g.signature.get(t) or g.tensor_name(t))
    vbp, taps = {"error": "its output is not a steering value or bins"}, set()
    if head:
        head["layer"] = names[head["tensor"]]
        head["outputs"] = _model_outputs(g, head, names)
        vbp, taps = _vbp(g, head, names)
    rows_4d = {row.tensor for row in rows if len(g.shape(row.tensor)) == 4}
    wanted = (rows_4d - set(g.inputs)) | taps | set(g.outputs)
    tensors = {names[t]: t for t in sorted(wanted)}
    types = tuple("+".join(row.ops) for row in rows)
    shown = tuple(row.name for row, kind in zip(rows, types, strict=True)
                  if layerspec.is_conv_type(kind) and len(g.shape(row.tensor)) == 4)
    head.pop("tensor", None)
    meta = LayerMeta(
        layer=shown[0] if shown else rows[-1].name, layers=len(rows),
        input_shape=g.shape(g.image)[1:], model=source, conv_layers=shown,
        layer_names=tuple(row.name for row in rows), outputs=tuple(tensors), shown=shown,
        layer_types=types, layer_shapes=tuple(g.shape(row.tensor)[1:] for row in rows),
        head=head or None, vbp=vbp, derived=True)
    return meta, tensors


def with_outputs(flatbuffer: bytes, tensors: dict[str, int], source: str = "<tflite>"
                 ) -> bytes:
    """The flatbuffer with these tensors as graph outputs, and one signature naming them."""
    try:
        return _with_outputs(flatbuffer, tensors)
    except DAMAGED as exc:
        raise damaged(source, exc) from None


def _with_outputs(flatbuffer: bytes, tensors: dict[str, int]) -> bytes:
    import flatbuffers

    s = schema_objects()
    model = s.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    sub = model.subgraphs[0]
    sub.outputs = np.asarray(list(tensors.values()), np.int32)
    # The inputs keep the names the file's signature gave them (a pilot's several inputs are
    # fed by name); a file without one names its only input "input".
    named = {}
    for sig in (model.signatureDefs or [])[:1]:
        named = {int(entry.tensorIndex): _text(entry.name) for entry in sig.inputs or []}
    signature = s.SignatureDefT()
    signature.signatureKey = "serving_default"
    signature.subgraphIndex = 0
    signature.inputs = []
    for t in sub.inputs:
        inp = s.TensorMapT()
        inp.name = named.get(int(t)) or ("input" if len(sub.inputs) == 1 else
                                          _text(sub.tensors[int(t)].name))
        inp.tensorIndex = int(t)
        signature.inputs.append(inp)
    signature.outputs = []
    for name, t in tensors.items():
        entry = s.TensorMapT()
        entry.name, entry.tensorIndex = name, int(t)
        signature.outputs.append(entry)
    model.signatureDefs = [signature]
    builder = flatbuffers.Builder(len(flatbuffer) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=TFLITE_MAGIC)
    return bytes(builder.Output())
