"""The LiteRT backend: the one interpreter wrapper carvis has, for 1..N named outputs.

A .tflite runs here without TensorFlow: carvis' own exports (one layer, or every output a
mode needs, named after the layers by the file's signature) and a car's own file (input →
steering), whose layers :mod:`carvis.backends.flatgraph` reads from its ops and adds as
outputs. int8/uint8 tensors are (de)quantized at the boundary, so callers always see float32.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from carvis import models
from carvis.backends import LITERT_HELP, flatgraph
from carvis.backends.tflite import LayerMeta, read_meta, read_tflite, shape_text
from carvis.errors import CarvisError
from carvis.tfquiet import held_stderr

log = logging.getLogger("carvis")


class LiteRTModel:
    """A .tflite on LiteRT: one (1, H, W, C) input → {output name: float32 array}."""

    backend = "litert"

    def __init__(self, flatbuffer: bytes, source: str = "<tflite>", num_threads: int = 1,
                 rename: Mapping[str, str] | None = None, meta: LayerMeta | None = None,
                 preserve_all_tensors: bool = False) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise CarvisError(f"{source}: the LiteRT backend needs ai-edge-litert; "
                              f"{LITERT_HELP}") from None
        self.source = source
        self._flatbuffer = flatbuffer  # the interpreter reads from this buffer: keep it alive
        lines: list[str] = []
        try:
            # LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate" and the like on fd 2
            with held_stderr() as lines:
                self.interpreter = Interpreter(
                    model_content=flatbuffer, num_threads=num_threads,
                    experimental_preserve_all_tensors=preserve_all_tensors)
                outputs = self._prepare()
        except (ValueError, RuntimeError) as exc:
            raise CarvisError(f"{source}: LiteRT cannot load this model "
                              f"({str(exc).strip().splitlines()[0][:160]})") from None
        finally:
            for line in lines:
                if not line.startswith("INFO: "):
                    log.warning("%s", line)
        self.meta: LayerMeta | None = meta or read_meta(flatbuffer)
        inp = self.interpreter.get_input_details()[0]
        self.input_shape = tuple(int(d) for d in inp["shape"][1:])
        self._in = (inp["index"], _quant(inp), inp["dtype"])
        rename = dict(rename or {})
        self._out = {rename.get(name, name): (d["index"], _quant(d)) for name, d in outputs}
        self.output_names = tuple(self._out)
        self.output_shapes = {rename.get(name, name): tuple(int(x) for x in d["shape"][1:])
                              for name, d in outputs}
        for kind, d in (("input", inp), *(("output", d) for _, d in outputs)):
            if _quant(d) is None and d["dtype"] != np.float32:
                raise CarvisError(f"{source}: {kind} type {np.dtype(d['dtype']).name} is not "
                                  "supported (float32, or int8/uint8 with quantization)")

    def _prepare(self) -> list[tuple[str, dict]]:
        """Check for one (1, H, W, C) input, allocate with a batch of 1; the named outputs."""
        interpreter = self.interpreter
        inputs = interpreter.get_input_details()
        if len(inputs) != 1:
            raise CarvisError(f"{self.source}: has {len(inputs)} inputs; carvis needs one "
                              "(the camera image)")
        shape = [int(d) for d in inputs[0]["shape_signature"]]
        if len(shape) != 4:
            raise CarvisError(f"{self.source}: input shape {tuple(shape)} is not (1, H, W, C)")
        if shape[0] != 1:
            interpreter.resize_tensor_input(inputs[0]["index"], [1] + shape[1:], strict=False)
        interpreter.allocate_tensors()
        by_index = {d["index"]: d for d in interpreter.get_output_details()}
        named = _signature_outputs(interpreter)
        if named and set(named.values()) == set(by_index):
            return [(name, by_index[index]) for name, index in named.items()]
        return [(str(d["name"]), d) for d in by_index.values()]

    def __call__(self, batch: np.ndarray, names: tuple[str, ...] | None = None
                 ) -> dict[str, np.ndarray]:
        """Every output (or the named ones) for one input batch (1, H, W, C), float32, batch
        axis kept."""
        index, quant, dtype = self._in
        if quant is not None:
            scale, zero = quant
            info = np.iinfo(dtype)
            batch = np.clip(np.rint(batch / scale + zero), info.min, info.max).astype(dtype)
        self.interpreter.set_tensor(index, np.ascontiguousarray(batch))
        self.interpreter.invoke()
        out = {}
        for name in self.output_names if names is None else names:
            tensor, q = self._out[name]
            value = self.interpreter.get_tensor(tensor)  # a copy: safe past the next invoke
            if q is not None:
                value = (value.astype(np.float32) - q[1]) * np.float32(q[0])
            out[name] = value
        return out


class LayerBackend:
    """One output of a LiteRT model as a one-layer backend: (1, H, W, C) → (h, w, c)."""

    name = "litert"

    def __init__(self, model: LiteRTModel, output: str | None = None) -> None:
        self.model = model
        self.meta = model.meta
        self.output = output or model.output_names[0]
        self.layer_name = self.output
        self.input_shape = model.input_shape
        self.output_shape = model.output_shapes[self.output]
        self._names = (self.output,)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.model(batch, self._names)[self.output][0]


def load(path: str | Path, num_threads: int = 1, preserve_all_tensors: bool = False
         ) -> LiteRTModel:
    """A .tflite file on LiteRT; a car's own file with its layers added as outputs."""
    data, name = read_tflite(path), Path(path).name
    meta = read_meta(data)
    if meta is None:
        meta, tensors = flatgraph.describe(data, name)
        if not preserve_all_tensors:
            data = flatgraph.with_outputs(data, tensors)
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
    """A one-layer carvis file, or a plain file's outputs."""
    meta = model.meta
    if meta is None:
        what = "its output is the layer" if len(model.output_names) == 1 else \
            "its outputs are the layers"
        lines = [f"{name}: a .tflite without carvis metadata; {what} carvis shows",
                 f"  input   {shape_text(model.input_shape)}"]
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


def _signature_outputs(interpreter: Any) -> dict[str, int]:
    """Output name → tensor index from the file's one signature ({} without one)."""
    try:
        signatures = interpreter.get_signature_list()
        if len(signatures) != 1:
            return {}
        runner = interpreter.get_signature_runner()
        details = runner.get_output_details()
        del runner  # it holds references to the interpreter's tensors
    except (ValueError, RuntimeError):
        return {}
    return {str(name): int(d["index"]) for name, d in details.items()}
