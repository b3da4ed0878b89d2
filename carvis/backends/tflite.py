"""The .tflite file: its TFL3 tag, and the ``carvis`` metadata entry carvis writes into it.

A carvis .tflite records (as JSON) which layer(s) of which model it holds, their index and
conv:N, the shapes and the source model's layer table, so ``carvis layers X.tflite`` and error
messages can name them without TensorFlow or Keras; and what the modes need beyond the
outputs (format 2): the steering head (the HUD), VisualBackProp's path with every layer's
window (kernel size, stride, padding), CAM's Dense weights. A car's own .tflite has no such
entry: :mod:`carvis.backends.flatgraph` derives the same record from its ops. Reading needs
only the read side of the flatbuffer schema (carvis_vendor.tflite_reader); rewriting one, the
whole schema with its object API.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
from pathlib import Path
from typing import Any

from carvis import __version__, layerspec, limits
from carvis.errors import CarvisError, first_line, shown

META_NAME = "carvis"
#: Bumped when the conversion changes, so cached files from an older carvis are not reused.
#: 2: several outputs, the layer table's types and shapes, head, vbp, cam (1 is still read).
FORMAT = 2
TFLITE_MAGIC = b"TFL3"


@dataclasses.dataclass
class LayerMeta:
    """What a carvis .tflite holds: which layer of which model, and its shapes."""

    layer: str
    layer_index: int | None = None
    layers: int | None = None  # number of layers of the source model (for negative indices)
    conv: int | None = None  # N of conv:N, if the layer is the N-th conv layer
    input_shape: tuple[int, ...] = ()
    output_shape: tuple[int, ...] = ()
    model: str | None = None  # source model file name
    model_sha256: str | None = None
    conv_layers: tuple[str, ...] = ()  # the source model's spatial conv layers, in order
    layer_names: tuple[str, ...] = ()  # all the source model's layers, in order
    carvis: str = __version__
    format: int = FORMAT
    # format 2
    outputs: tuple[str, ...] = ()  # every output of the file, by name (layers, steering, taps)
    shown: tuple[str, ...] = ()  # the layers exported to be shown (the `l` key cycles them)
    layer_types: tuple[str, ...] = ()  # the source model's layer classes (or ops), in order
    layer_shapes: tuple[tuple[int, ...], ...] = ()  # their output shapes (without the batch)
    head: dict | None = None  # the steering head: index, layer, units, softmax
    vbp: dict | None = None  # {"input_hw", "chain": [{name, type, out_hw, config, activation}]}
    cam: dict | None = None  # {"layer": the map before GAP, "kernel": the Dense kernel}
    derived: bool = False  # read from a car's own file's ops, not written by carvis

    def to_json(self) -> bytes:
        """The metadata as compact UTF-8 JSON."""
        return json.dumps(dataclasses.asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> LayerMeta:
        """Parse metadata written by to_json (unknown keys are ignored); ValueError if a value
        is not of the type carvis writes."""
        raw = limits.json_loads(data.decode())
        if not isinstance(raw, dict):
            raise TypeError("the metadata is not a JSON object")
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in raw.items() if k in fields}
        for key, value in values.items():
            if not _META_TYPES.get(key, lambda v: True)(value):
                raise ValueError(f"metadata {key} {shown(value)} is not of the type carvis writes")
        for key in ("input_shape", "output_shape", "conv_layers", "layer_names", "outputs",
                    "shown", "layer_types"):
            if key in values:
                values[key] = tuple(values[key])
        values["layer_shapes"] = tuple(tuple(s) for s in values.get("layer_shapes", ()))
        n_layers = len(values.get("layer_names", ()))
        for key in ("layer_types", "layer_shapes"):  # one per layer, if there at all
            n = len(values.get(key, ()))
            if n and n != n_layers:
                raise ValueError(f"metadata {key} has {n} entries for {n_layers} layers")
        meta = cls(**values)
        if not meta.outputs:  # format 1: one layer, or several joined by '+'
            meta.outputs = meta.shown = tuple(meta.layer.split("+"))
        return meta

    def matches(self, spec: str | int) -> bool:
        """True if a layer spec (name, index, conv:N) names this layer."""
        return layerspec.matches(spec, name=self.layer, index=self.layer_index,
                                 count=self.layers, conv=self.conv)

    def describe(self) -> str:
        """'layer 'x' (17, 62, 2) of model.h5' in a few words (layers a, b, ... for several)."""
        source = f" of {self.model}" if self.model else ""
        modes = [mode for mode, there in (("HUD", self.head), ("vbp", (self.vbp or {}).get(
            "chain")), ("cam", self.cam)) if there]
        extra = f" (with {', '.join(modes)})" if modes else ""
        if len(self.shown) == 1 and self.output_shape:
            return f"layer {self.layer!r} {shape_text(self.output_shape)}{source}{extra}"
        return f"layers {', '.join(self.shown) or '(none to show)'}{source}{extra}"


def _ints(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                           and 0 <= v < 1 << 31 for v in value)


def _names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _maybe(kind: type | tuple[type, ...]) -> Any:
    return lambda v: v is None or (isinstance(v, kind) and not isinstance(v, bool))


def _head(value: Any) -> bool:
    return value is None or (isinstance(value, dict) and isinstance(value.get("index"), int)
                             and isinstance(value.get("layer"), str)
                             and isinstance(value.get("units"), int)
                             and isinstance(value.get("softmax"), bool)
                             and _names(value.get("outputs", [])))


def _vbp(value: Any) -> bool:
    """VisualBackProp's path as carvis writes it: {"error": why} or {"input_hw": [h, w],
    "chain": [{name, type, out_hw: [] or [h, w], config: {key: JSON value}, activation}]}."""
    if value is None:
        return True
    if not isinstance(value, dict):
        return False
    if "chain" not in value:
        return isinstance(value.get("error", ""), str)
    return (_ints(value.get("input_hw")) and len(value["input_hw"]) == 2
            and isinstance(value["chain"], list)
            and all(isinstance(r, dict) and isinstance(r.get("name"), str)
                    and isinstance(r.get("type"), str) and _ints(r.get("out_hw"))
                    and len(r["out_hw"]) in (0, 2) and isinstance(r.get("config"), dict)
                    and isinstance(r.get("activation", ""), str) for r in value["chain"]))


#: The type of each metadata value as carvis writes it (a damaged file says otherwise).
_META_TYPES: dict[str, Any] = {
    "layer": lambda v: isinstance(v, str), "layer_index": _maybe(int), "layers": _maybe(int),
    "conv": _maybe(int), "input_shape": _ints, "output_shape": _ints, "model": _maybe(str),
    "model_sha256": _maybe(str), "conv_layers": _names, "layer_names": _names,
    "carvis": lambda v: isinstance(v, str), "format": _maybe(int), "outputs": _names,
    "shown": _names, "layer_types": _names,
    "layer_shapes": lambda v: isinstance(v, list) and all(_ints(s) for s in v),
    "head": _head, "vbp": _vbp,
    "cam": lambda v: v is None or (isinstance(v, dict) and isinstance(v.get("layer"), str)
                                   and isinstance(v.get("kernel"), list)),
    "derived": lambda v: isinstance(v, bool),
}


def shape_text(shape: tuple[int, ...]) -> str:
    """(17, 62, 2) as text."""
    return "(" + ", ".join(str(d) for d in shape) + ")"


def schema() -> Any:
    """The read side of the generated TFLite flatbuffer schema (the copy carvis ships:
    tflite-runtime, DonkeyCar's Pi runtime, has none): the classes reachable from ``Model``."""
    from carvis_vendor import tflite_reader

    return tflite_reader


def schema_objects() -> Any:
    """The whole generated schema with its object API (``ModelT`` …), to rewrite a .tflite.
    Imported only where a file is rewritten: compiling it costs ~40 MB and 0.2 s."""
    from carvis_vendor import tflite_schema

    return tflite_schema


#: What the flatbuffer reader raises on a damaged file (a byte flipped, the file cut short).
DAMAGED = (struct.error, ValueError, TypeError, KeyError, IndexError, AttributeError,
           OverflowError, RecursionError, UnicodeDecodeError)

def read_meta(data: bytes) -> LayerMeta | None:
    """The carvis metadata of a .tflite flatbuffer, or None if it has none (or it is bad)."""
    generated = schema()
    try:
        model = generated.Model.GetRootAs(data, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() != META_NAME.encode():
                continue
            buf = model.Buffers(entry.Buffer())
            return LayerMeta.from_json(buf.DataAsNumpy().tobytes())
    except DAMAGED:
        return None
    return None


#: Bytes per element of each TFLite tensor type (TensorType's values); others count 16.
_ITEMSIZE = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 5: 1, 6: 1, 7: 2, 8: 8, 9: 1, 10: 8, 11: 16,
             12: 8, 15: 4, 16: 2, 17: 1, 18: 2, 19: 1, 20: 1, 21: 1, 22: 1}
#: Types whose constant data is exactly elements x itemsize (not strings, not packed 4/2-bit).
_EXACT = frozenset(_ITEMSIZE) - {5, 17, 19, 20}


def damaged(source: str, exc: BaseException) -> CarvisError:
    """The one line for a .tflite whose flatbuffer cannot be read."""
    return CarvisError(f"{source}: the .tflite file is damaged or truncated "
                       f"({type(exc).__name__}: {first_line(exc)}); copy or export it again")


def check_flatbuffer(data: bytes, source: str) -> None:
    """Walk a .tflite's graph before LiteRT is given it: one line if the flatbuffer cannot
    be read, an index points outside its table, a constant's data does not fit its shape
    (LiteRT's kernels would read past it), its tensors declare more than
    limits.MAX_MODEL_BYTES (LiteRT would allocate them), or it keeps weights in other files."""
    generated = schema()
    try:
        model = generated.Model.GetRootAs(data, 0)
        if model.ExternalBufferGroupsLength() or model.ExternalBuffersLength():
            raise CarvisError(f"{source}: the .tflite keeps weights in other files (external "
                              "buffers); carvis reads self-contained models only")
        if model.SubgraphsLength() < 1:
            raise ValueError("no subgraph")
        total = 0
        for i in range(model.SubgraphsLength()):
            total += _check_subgraph(model, model.Subgraphs(i), source, total)
    except DAMAGED as exc:
        raise damaged(source, exc) from None


def _check_subgraph(model: Any, sub: Any, source: str, total: int) -> int:
    """One subgraph's indices and constants checked; the bytes its tensors declare."""
    tensors, buffers = sub.TensorsLength(), model.BuffersLength()

    def indices(values: Any, what: str, optional: bool = False) -> None:
        for v in ([] if isinstance(values, int) else values.tolist()):
            if not (0 <= v < tensors or (optional and v == -1)):
                raise ValueError(f"{what} names tensor {v} of {tensors}")

    def listed(values: Any) -> list[int]:
        return [] if isinstance(values, int) else values.tolist()

    inputs, ops = listed(sub.InputsAsNumpy()), [sub.Operators(k)
                                                for k in range(sub.OperatorsLength())]
    indices(sub.InputsAsNumpy(), "an input")
    indices(sub.OutputsAsNumpy(), "an output")
    produced: set[int] = set()
    for k, op in enumerate(ops):
        if op.OpcodeIndex() >= model.OperatorCodesLength():
            raise ValueError(f"op {k} has operator code {op.OpcodeIndex()}")
        indices(op.InputsAsNumpy(), f"op {k}", optional=True)
        indices(op.OutputsAsNumpy(), f"op {k}")
        produced.update(listed(op.OutputsAsNumpy()))
    if produced & set(inputs):
        raise ValueError(f"graph input {sorted(produced & set(inputs))} is an op's output")
    for t in listed(sub.OutputsAsNumpy()):
        if t not in produced and t not in inputs and not _data_size(model, sub.Tensors(t)):
            raise ValueError(f"graph output {t} is made by no op")
    # What an op reads that no op makes and the graph is not given must be a constant.
    for k, op in enumerate(ops):
        for t in listed(op.InputsAsNumpy()):
            tensor = sub.Tensors(t) if t >= 0 else None
            if tensor is not None and t not in produced and t not in inputs and \
                    not tensor.IsVariable() and _elements(tensor) and \
                    not _data_size(model, tensor):
                raise ValueError(f"op {k} reads tensor {t}, which has no data")
    declared = 0
    for t in range(tensors):
        tensor = sub.Tensors(t)
        dims = _dims(tensor)
        if any(d < 0 for d in dims):
            raise ValueError(f"tensor {t} has shape {dims}")
        size = math.prod(dims) * _ITEMSIZE.get(tensor.Type(), 16)
        declared += size
        if total + declared > limits.MAX_MODEL_BYTES:
            raise CarvisError(f"{source}: the .tflite's tensors declare more than "
                              f"{limits.size_text(limits.MAX_MODEL_BYTES)} (tensor {t} has "
                              f"shape {tuple(dims)}); the file is damaged, or not a car's model")
        b = tensor.Buffer()
        if b >= buffers:
            raise ValueError(f"tensor {t} has buffer {b} of {buffers}")
        held = _data_size(model, tensor)
        if held and tensor.Type() in _EXACT and tensor.Sparsity() is None and held != size:
            raise ValueError(f"tensor {t} of shape {tuple(dims)} holds {held} bytes")
    return declared


def _dims(tensor: Any) -> list[int]:
    shape = tensor.ShapeAsNumpy()
    return [] if isinstance(shape, int) else [int(d) for d in shape]


def _elements(tensor: Any) -> int:
    return math.prod(max(d, 0) for d in _dims(tensor))


def _data_size(model: Any, tensor: Any) -> int:
    """The bytes of constant data a tensor's buffer holds (0: none; buffer 0 is empty)."""
    b = tensor.Buffer()
    if not 0 < b < model.BuffersLength():
        return 0
    buffer = model.Buffers(b)
    return buffer.DataLength() or buffer.Size()


def read_tflite(path: str | os.PathLike) -> bytes:
    """The bytes of a .tflite file, checked (check_flatbuffer), or one line saying why not."""
    p = Path(path)
    limits.check_regular(p, "model")
    if not p.is_file():
        raise CarvisError(f"{path}: model file not found; check the path")
    try:
        data = limits.read_bytes(p, "model", limits.MAX_MODEL_BYTES,
                                 "a car's model is a few megabytes")
    except OSError as exc:
        raise CarvisError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if data[4:8] != TFLITE_MAGIC:
        raise CarvisError(f"{path}: not a TFLite model (no TFL3 tag); export one with "
                          "carvis export MODEL --layer L -o OUT.tflite")
    check_flatbuffer(data, p.name)
    return data


def with_metadata(flatbuffer: bytes, meta: LayerMeta) -> bytes:
    """The flatbuffer with a 'carvis' metadata entry holding meta (replacing an older one)."""
    import flatbuffers
    import numpy as np

    generated = schema_objects()
    model = generated.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    model.metadata = [m for m in (model.metadata or [])
                      if m.name not in (META_NAME, META_NAME.encode())]
    buffer = generated.BufferT()
    buffer.data = np.frombuffer(meta.to_json(), np.uint8)
    model.buffers.append(buffer)
    entry = generated.MetadataT()
    entry.name = META_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
    builder = flatbuffers.Builder(len(flatbuffer) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=TFLITE_MAGIC)
    return bytes(builder.Output())
