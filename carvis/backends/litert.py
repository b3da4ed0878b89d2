"""The LiteRT backend: the one interpreter wrapper carvis has, for 1..N named inputs and outputs.

A .tflite runs here without TensorFlow: carvis' own exports (one layer, or every output a
mode needs, named after the layers by the file's signature) and a car's own file (input →
steering), whose layers :mod:`carvis.backends.flatgraph` reads from its ops and adds as
outputs. The interpreter is LiteRT's, from the first runtime installed of ai-edge-litert,
tflite-runtime (DonkeyCar's Pi runtime) and TensorFlow's tf.lite (DonkeyCar's ``pc`` env):
one Interpreter API. A file with several inputs (DonkeyCar's memory, imu and behavior pilots)
takes them by name. int8/uint8 tensors are (de)quantized at the boundary, so callers always
see float32.
"""

from __future__ import annotations

import importlib
import logging
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from carvis import models
from carvis.backends import LITERT_HELP, RUNTIMES, flatgraph
from carvis.backends.tflite import LayerMeta, read_meta, read_tflite, schema, shape_text
from carvis.errors import CarvisError
from carvis.tfquiet import held_stderr, import_tensorflow

log = logging.getLogger("carvis")

_FLEX = re.compile(r"Flex\w+")


def interpreter_class() -> tuple[Any, str]:
    """LiteRT's Interpreter class and the pip name of the runtime it comes from: the first of
    ai-edge-litert, tflite-runtime, tensorflow (tf.lite) that imports; else one line."""
    for module, package in RUNTIMES:
        try:
            if module == "tensorflow":
                import_tensorflow()  # its start-up lines held back
                import tensorflow as tf

                return tf.lite.Interpreter, package
            return importlib.import_module(module).Interpreter, package
        except (ImportError, AttributeError):
            continue
    raise CarvisError(f"running a .tflite needs a LiteRT runtime; {LITERT_HELP}")


class LiteRTModel:
    """A .tflite on LiteRT: its named inputs (batch 1) → {output name: float32 array}."""

    backend = "litert"

    def __init__(self, flatbuffer: bytes, source: str = "<tflite>", num_threads: int = 1,
                 rename: Mapping[str, str] | None = None, meta: LayerMeta | None = None,
                 preserve_all_tensors: bool = False, batch: int = 1) -> None:
        self._batch = batch  # the batch every input is given (a SmoothGrad graph's: 1 + N)
        try:
            Interpreter, self.runtime = interpreter_class()
        except CarvisError as exc:
            raise CarvisError(f"{source}: {exc}") from None
        self.source = source
        self._flatbuffer = flatbuffer  # the interpreter reads from this buffer: keep it alive
        lines: list[str] = []
        try:
            # LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate" and the like on
            # fd 2; tf.lite warns that it is deprecated in favour of LiteRT
            with held_stderr() as lines, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.interpreter = Interpreter(
                    model_content=flatbuffer, num_threads=num_threads,
                    experimental_preserve_all_tensors=preserve_all_tensors)
                inputs, outputs = self._prepare()
        except (ValueError, RuntimeError) as exc:
            raise self._failure(exc, "load") from None
        finally:
            for line in lines:
                if not line.startswith("INFO: "):
                    log.warning("%s", line)
        self.meta: LayerMeta | None = meta or read_meta(flatbuffer)
        self._ins = {name: (d["index"], _quant(d), d["dtype"]) for name, d in inputs}
        self.input_names = tuple(self._ins)
        self._in = self._ins[self.input_names[0]]  # the first input's (index, quant, dtype)
        self.input_shapes = {name: tuple(int(x) for x in d["shape"][1:]) for name, d in inputs}
        # the camera image: the only input, else the first with rows, columns (and channels)
        image = next((n for n in self.input_names if len(self.input_shapes[n]) >= 3),
                     self.input_names[0])
        self.input_shape = self.input_shapes[image]
        rename = dict(rename or {})
        self._out = {rename.get(name, name): (d["index"], _quant(d)) for name, d in outputs}
        self.output_names = tuple(self._out)
        self.output_shapes = {rename.get(name, name): tuple(int(x) for x in d["shape"][1:])
                              for name, d in outputs}
        for kind, d in (*(("input", d) for _, d in inputs), *(("output", d) for _, d in outputs)):
            if _quant(d) is None and d["dtype"] != np.float32:
                raise CarvisError(f"{source}: {kind} type {np.dtype(d['dtype']).name} is not "
                                  "supported (float32, or int8/uint8 with quantization)")

    def _prepare(self) -> tuple[list[tuple[str, dict]], list[tuple[str, dict]]]:
        """Every input given its batch (1), the tensors allocated; the named inputs, outputs."""
        interpreter = self.interpreter
        inputs = interpreter.get_input_details()
        if not inputs:
            raise CarvisError(f"{self.source}: has no input; carvis needs the camera image")
        for d in inputs:
            shape = [int(x) for x in d["shape_signature"]]
            if len(shape) < 2:
                raise CarvisError(f"{self.source}: input {d['name']!r} has shape {tuple(shape)}, "
                                  "without a batch axis")
            if shape[0] != self._batch:
                interpreter.resize_tensor_input(d["index"], [self._batch] + shape[1:],
                                                strict=False)
        interpreter.allocate_tensors()
        named_in, named_out = _signature(interpreter)
        by_index = {d["index"]: d for d in interpreter.get_input_details()}
        if named_in and set(named_in.values()) == set(by_index):
            ins = [(name, by_index[index]) for name, index in named_in.items()]
        else:
            ins = [(str(d["name"]), d) for d in by_index.values()]
        by_index = {d["index"]: d for d in interpreter.get_output_details()}
        if named_out and set(named_out.values()) == set(by_index):
            return ins, [(name, by_index[index]) for name, index in named_out.items()]
        return ins, [(str(d["name"]), d) for d in by_index.values()]

    def __call__(self, batch: np.ndarray | Mapping[str, np.ndarray],
                 names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Every output (or the named ones) for one input batch (1, ...) or, for a file with
        several inputs, {input name: batch}; float32, batch axis kept."""
        if not isinstance(batch, Mapping):
            if len(self._ins) != 1:
                raise CarvisError(f"{self.source}: has {len(self._ins)} inputs "
                                  f"({', '.join(self.input_names)}); give each by name")
            batch = {self.input_names[0]: batch}
        elif len(self._ins) == 1 and self.input_names[0] not in batch:
            batch = {self.input_names[0]: image_of(batch)}  # a pilot's inputs: the image
        for name, value in batch.items():
            if name not in self._ins:
                continue  # a pilot's other inputs, to a file cut at a layer before them
            index, quant, dtype = self._ins[name]
            if quant is not None:
                scale, zero = quant
                info = np.iinfo(dtype)
                value = np.clip(np.rint(value / scale + zero), info.min, info.max).astype(dtype)
            self.interpreter.set_tensor(index, np.ascontiguousarray(value, dtype))
        try:
            self.interpreter.invoke()
        except RuntimeError as exc:  # e.g. TensorFlow ops the runtime lacks, met in a loop body
            raise self._failure(exc, "run") from None
        out = {}
        for name in self.output_names if names is None else names:
            tensor, q = self._out[name]
            value = self.interpreter.get_tensor(tensor)  # a copy: safe past the next invoke
            if q is not None:
                value = (value.astype(np.float32) - q[1]) * np.float32(q[0])
            out[name] = value
        return out

    def _failure(self, exc: BaseException, verb: str) -> CarvisError:
        """The one line for a file this runtime cannot load or run."""
        text = str(exc).strip()
        flex = sorted(set(_FLEX.findall(text)))
        if flex or "Select TensorFlow op" in text:
            return CarvisError(
                f"{self.source}: uses TensorFlow ops that {self.runtime} cannot {verb} "
                f"({', '.join(flex) or 'Select TF ops'}; DonkeyCar's rnn and 3d .tflite have "
                "them); give the .h5 (--backend tensorflow), or use TensorFlow <= 2.15, whose "
                "tf.lite runs them")
        first = text.splitlines()[0][:160] if text else type(exc).__name__
        return CarvisError(f"{self.source}: LiteRT ({self.runtime}) cannot {verb} this model "
                           f"({first})")


def image_of(feeds: Mapping[str, np.ndarray]) -> np.ndarray:
    """The camera image among a pilot's inputs: the one with rows, columns and channels."""
    images = [v for v in feeds.values() if np.ndim(v) >= 4]
    if len(images) != 1:
        raise CarvisError(f"{len(images)} image inputs among {', '.join(feeds)}; carvis needs "
                          "one (the camera)")
    return images[0]


class LayerBackend:
    """One output of a LiteRT model as a one-layer backend: (1, H, W, C), or a pilot's inputs
    by name, → (h, w, c) (a frame sequence's pilot: (T, h, w, c))."""

    name = "litert"

    def __init__(self, model: LiteRTModel, output: str | None = None) -> None:
        self.model = model
        self.meta = model.meta
        self.output = output or model.output_names[0]
        self.layer_name = self.output
        self.input_shape = model.input_shape
        self.output_shape = model.output_shapes[self.output]
        self._names = (self.output,)

    def __call__(self, batch: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
        return self.model(batch, self._names)[self.output][0]


def load(path: str | Path, num_threads: int = 1, preserve_all_tensors: bool = False
         ) -> LiteRTModel:
    """A .tflite file on LiteRT; a car's own file with its layers added as outputs (a file of
    several subgraphs runs as it is: its outputs, no layers)."""
    data, name = read_tflite(path), Path(path).name
    interpreter_class()  # the runtime first: TensorFlow's is imported quietly
    meta = read_meta(data)
    if meta is None:
        subgraphs = schema().Model.GetRootAs(data, 0).SubgraphsLength()
        if subgraphs == 1:
            meta, tensors = flatgraph.describe(data, name)
            if not preserve_all_tensors:
                data = flatgraph.with_outputs(data, tensors)
        else:
            log.debug("%s: %d subgraphs; its layers are not read, only its outputs", name,
                      subgraphs)
    return LiteRTModel(data, name, num_threads, meta=meta,
                       preserve_all_tensors=preserve_all_tensors)


def describe(path: str | Path) -> str:
    """What `carvis layers` shows for a .tflite: its layers, shapes, what the modes can use."""
    model = load(path)
    name, meta = Path(path).name, model.meta
    if meta is None or not meta.layer_types:
        return _describe_one(name, model)
    held = set(model.output_names)
    head = meta.head or {}
    notes = {n: "in the file" for n in held}
    notes.update({n: "shown" for n in meta.shown})
    if head:
        kind = "softmax of bins" if head.get("softmax") else (
            "bins" if head.get("units", 1) > 1 else "regression")
        notes[head["layer"]] = f"steering, {head.get('units')} unit(s), {kind} (HUD)"
    rows = [models.layer_info(i, n, t, tuple(sh)) for i, (n, t, sh) in enumerate(zip(
        meta.layer_names, meta.layer_types, meta.layer_shapes, strict=True))]
    vbp = (meta.vbp or {}).get("chain") and "vbp" or (meta.vbp or {}).get("error", "")
    modes = ", ".join(x for x in ("HUD" if head else "", vbp, "cam" if meta.cam else "") if x)
    what = ("a car's own model, read from its ops" if meta.derived
            else f"exported by carvis {meta.carvis} from {meta.model}")
    header = (f"{name}: {what}; input {shape_text(meta.input_shape)}; "
              f"modes beyond activation: {modes or 'none'}")
    return header + "\n" + models.format_rows(rows, notes)


def _describe_one(name: str, model: LiteRTModel) -> str:
    """A one-layer carvis file, or the inputs and outputs of a file whose layers carvis does
    not read (several inputs or subgraphs: DonkeyCar's memory, imu, behavior, rnn pilots)."""
    meta = model.meta
    if meta is None:
        lines = [(f"{name}: a car's own model whose layers carvis does not read yet (several "
                  "inputs or subgraphs); it runs for its outputs")]
        lines += [f"  input   {n!r} {shape_text(model.input_shapes[n])}"
                  for n in model.input_names]
        lines += [f"  output  {out!r} {shape_text(model.output_shapes[out])}"
                  for out in model.output_names]
        return "\n".join(lines)
    where = " ".join(x for x in (f"#{meta.layer_index}" if meta.layer_index is not None else "",
                                  f"conv:{meta.conv}" if meta.conv else "") if x)
    lines = [
        f"{name}: {meta.describe()}, exported by carvis {meta.carvis}; the only layer it holds",
        f"  input   {shape_text(meta.input_shape)}",
        f"  output  {meta.layer!r} {shape_text(meta.output_shape)}" + (f"  ({where})" if where
                                                                     else ""),
    ]
    if meta.conv_layers:
        lines.append(f"  source conv layers: {', '.join(meta.conv_layers)} "
                     "(carvis export MODEL --layer L exports another)")
    return "\n".join(lines)


def _quant(details: dict) -> tuple[float, int] | None:
    """(scale, zero point) of a quantized int8/uint8 tensor, else None."""
    scale, zero = details.get("quantization", (0.0, 0))
    if details["dtype"] in (np.int8, np.uint8) and scale:
        return float(scale), int(zero)
    return None


def _signature(interpreter: Any) -> tuple[dict[str, int], dict[str, int]]:
    """Input and output name → tensor index from the file's one signature ({} without one)."""
    try:
        signatures = interpreter.get_signature_list()
        if len(signatures) != 1:
            return {}, {}
        runner = interpreter.get_signature_runner()
        inputs, outputs = runner.get_input_details(), runner.get_output_details()
        del runner  # it holds references to the interpreter's tensors
    except (ValueError, RuntimeError):
        return {}, {}
    return ({str(name): int(d["index"]) for name, d in inputs.items()},
            {str(name): int(d["index"]) for name, d in outputs.items()})
