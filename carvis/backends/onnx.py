"""The ONNX backend: onnxruntime's one InferenceSession wrapper, for a model with one image input.

An ``.onnx`` file (a PyTorch export, a Keras or .tflite pilot converted by tf2onnx) is read once
from its graph (:mod:`.onnxgraph`: layers, steering output, VisualBackProp's path, each tensor's
layout) and a copy with its layers as graph outputs is kept in carvis' cache (per file content),
with what was read in its metadata: later runs need onnxruntime only, not the ``onnx`` package.
Callers give and get carvis' convention, (batch, h, w, c) float32, whatever the model's layout
(PyTorch's NCHW is transposed at the boundary).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from carvis import models
from carvis.backends import cache as conversion_cache
from carvis.backends import installed
from carvis.backends.tflite import FORMAT, LayerMeta, shape_text
from carvis.errors import CarvisError

log = logging.getLogger("carvis")

ONNX_HELP = "pip install onnxruntime onnx (or carvis' extra: pip install -e '.[onnx]')"
META_KEY = "carvis"
#: Bumped when what is kept in the cached copy changes.
ONNX_FORMAT = 1


def onnx_available() -> bool:
    """True if onnxruntime is installed (checked without importing it)."""
    return installed("onnxruntime")


@dataclasses.dataclass
class OnnxFacts:
    """What carvis read from an ONNX graph, kept in the cached copy's metadata."""

    meta: LayerMeta
    tensors: dict[str, str]  # output name → the graph's tensor
    layouts: dict[str, str]  # tensor → "NCHW" or "NHWC" (4-D tensors)
    rows: list[tuple[str, str, tuple[int, ...], bool]]
    sha256: str = ""

    def to_json(self) -> str:
        return json.dumps({"format": ONNX_FORMAT, "sha256": self.sha256,
                           "meta": json.loads(self.meta.to_json()), "tensors": self.tensors,
                           "layouts": self.layouts, "rows": self.rows})

    @classmethod
    def from_json(cls, text: str) -> OnnxFacts | None:
        try:
            raw = json.loads(text)
            if raw.get("format") != ONNX_FORMAT:
                return None
            rows = [(n, t, tuple(s), bool(c)) for n, t, s, c in raw["rows"]]
            return cls(LayerMeta.from_json(json.dumps(raw["meta"]).encode()), raw["tensors"],
                       raw["layouts"], rows, raw["sha256"])
        except (ValueError, KeyError, TypeError):
            return None


class OnnxModel:
    """An ONNX model on onnxruntime: (batch, H, W, C) float32 → {output name: array}."""

    backend = "onnxruntime"

    def __init__(self, data: bytes | str, source: str, facts: OnnxFacts,
                 num_threads: int = 1, opened: Any = None) -> None:
        try:
            self.session = opened or session(data, num_threads)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
            raise CarvisError(f"{source}: onnxruntime cannot load this model "
                              f"({models.files.first_line(exc)})") from None
        self.source = source
        self.facts = facts
        self.meta = facts.meta
        (inp,) = self.session.get_inputs()
        if inp.type != "tensor(float)":
            raise CarvisError(f"{source}: input {inp.name!r} is {inp.type}; carvis feeds "
                              "float32 images")
        self.input_name = inp.name
        self.channels_first = facts.layouts.get(inp.name) == "NCHW"
        self.input_shape = tuple(int(d) for d in facts.meta.input_shape)
        batch = inp.shape[0]
        self.max_batch = int(batch) if isinstance(batch, int) and batch > 0 else None
        self._tensor = dict(facts.tensors)
        self.output_names = tuple(facts.tensors)
        self.output_shapes = {name: shape for name, shape in _held_shapes(facts).items()}

    def __call__(self, batch: np.ndarray, names: tuple[str, ...] | None = None
                 ) -> dict[str, np.ndarray]:
        """The named outputs (all by default) for a batch (B, H, W, C); 4-D ones as (B, h, w, c).
        A model with a fixed batch size is run in slices of that size."""
        names = self.output_names if names is None else names
        x = np.asarray(batch, np.float32)
        if self.channels_first:
            x = x.transpose(0, 3, 1, 2)
        x = np.ascontiguousarray(x)
        step = self.max_batch or len(x)
        tensors = [self._tensor[n] for n in names]
        parts = []
        for i in range(0, len(x), step):
            chunk = x[i:i + step]
            if len(chunk) < step:  # a fixed batch: pad the last slice
                chunk = np.concatenate([chunk, np.zeros((step - len(chunk),) + x.shape[1:],
                                                        np.float32)])
            try:
                parts.append(self.session.run(tensors, {self.input_name: chunk}))
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
                raise CarvisError(f"{self.source}: onnxruntime cannot run this model "
                                  f"({models.files.first_line(exc)})") from None
        out = {}
        for j, name in enumerate(names):
            value = np.concatenate([p[j] for p in parts])[:len(x)] if len(parts) > 1 \
                else parts[0][j][:len(x)]
            if self.facts.layouts.get(tensors[j]) == "NCHW":
                value = value.transpose(0, 2, 3, 1)
            out[name] = np.ascontiguousarray(value, np.float32)
        return out


class OnnxLayer:
    """One output of an ONNX model as a one-layer backend: (1, H, W, C) → (h, w, c)."""

    name = "onnxruntime"

    def __init__(self, model: OnnxModel, output: str) -> None:
        self.model = model
        self.output = self.layer_name = output
        self.input_shape = model.input_shape
        self.output_shape = model.output_shapes[output]
        self._names = (output,)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.model(batch, self._names)[self.output][0]


def _held_shapes(facts: OnnxFacts) -> dict[str, tuple[int, ...]]:
    """Each held output's shape without the batch, 4-D ones as (h, w, c)."""
    by_row = {name: shape for name, _, shape, _ in facts.rows}
    shapes = dict(zip(facts.meta.layer_names, facts.meta.layer_shapes, strict=True))
    for rec in (facts.meta.vbp or {}).get("chain", []):
        shapes.setdefault(rec["name"], tuple(rec["out_hw"]))
    head = facts.meta.head or {}
    out = {}
    for name in facts.tensors:
        out[name] = tuple(by_row.get(name) or shapes.get(name) or ())
    for name in head.get("outputs", []):
        if not out.get(name):
            out[name] = (int(head["units"]),) if name == head.get("layer") else (1,)
    return out


def cache_file(sha256: str) -> Path:
    """Where the copy of an ONNX model with its layers as outputs is kept."""
    return conversion_cache.cache_dir() / f"{sha256[:24]}-onnx-f{FORMAT}.{ONNX_FORMAT}.onnx"


def load(path: str | Path, sha256: str, num_threads: int = 1) -> tuple[OnnxModel, Path, bool]:
    """An ONNX file on onnxruntime with its layers as outputs; (model, cached copy, whether it
    was made just now)."""
    if not onnx_available():
        raise CarvisError(f"{Path(path).name}: ONNX models need onnxruntime; {ONNX_HELP}")
    name = Path(path).name
    cached = cache_file(sha256)
    if cached.is_file():
        model = _from_cache(cached, name, sha256, num_threads)
        if model is not None:
            log.debug("using the cached copy %s", cached)
            return model, cached, False
    data, facts = _read(Path(path), sha256)
    try:
        conversion_cache.write_atomic(cached, data)
    except OSError as exc:
        log.warning("cannot cache the ONNX model's layers in %s (%s); set CARVIS_CACHE to a "
                    "writable folder", cached.parent, exc.strerror or exc)
    return OnnxModel(data, name, facts, num_threads), cached, True


def session(data: bytes, num_threads: int = 1) -> Any:
    """An onnxruntime session on the CPU (the one place carvis makes one), its log quiet."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(num_threads))
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # its warnings would reach the console raw
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _from_cache(cached: Path, name: str, sha256: str, num_threads: int) -> OnnxModel | None:
    try:
        data = cached.read_bytes()
        opened = session(data, num_threads)
        text = opened.get_modelmeta().custom_metadata_map.get(META_KEY, "")
    except Exception:  # noqa: BLE001 - a damaged cache file is made again
        return None
    facts = OnnxFacts.from_json(text)
    if facts is None or facts.sha256 != sha256:
        return None
    return OnnxModel(data, name, facts, num_threads, opened)


def _read(path: Path, sha256: str) -> tuple[bytes, OnnxFacts]:
    """Read the graph (shapes from one probe run), and the copy with the layers as outputs."""
    try:
        import onnx
    except ImportError:
        raise CarvisError(f"{path.name}: reading an ONNX model's layers needs the onnx package "
                          f"the first time; {ONNX_HELP}") from None
    from carvis.backends import onnxgraph

    try:
        model = onnx.load_model_from_string(path.read_bytes())
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and others
        raise CarvisError(f"{path.name}: not an ONNX model ({models.files.first_line(exc)}); "
                          "check the file, or export it again") from None
    probe = onnxgraph.Graph(model, {})
    wanted = {t: t for n in probe.nodes for t in n.output if t and t not in probe.static}
    wanted.update({t: t for t in probe.outputs})
    trial = onnxgraph.with_outputs(model, wanted, None)
    inputs = [v for v in model.graph.input if v.name in probe.inputs]
    if len(inputs) != 1:
        raise CarvisError(f"{path.name}: has {len(inputs)} inputs; carvis needs one image input")
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or None in dims[1:]:
        raise CarvisError(f"{path.name}: input {inputs[0].name!r} has shape {dims}; carvis "
                          "needs a fixed-size image (batch, H, W, C) or (batch, C, H, W)")
    x = np.zeros([1, *dims[1:]], np.float32)
    try:
        values = session(trial.SerializeToString()).run(list(wanted), {inputs[0].name: x})
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
        raise CarvisError(f"{path.name}: onnxruntime cannot run this model "
                          f"({models.files.first_line(exc)})") from None
    shapes = {t: tuple(np.shape(v)) for t, v in zip(wanted, values, strict=True)}
    shapes[inputs[0].name] = tuple(x.shape)
    found = onnxgraph.describe(onnxgraph.Graph(model, shapes), path.name)
    found.meta.model_sha256 = sha256
    facts = OnnxFacts(found.meta, found.tensors, found.layouts, found.rows, sha256)
    kept = onnxgraph.with_outputs(model, found.tensors, found.split)
    entry = kept.metadata_props.add()
    entry.key, entry.value = META_KEY, facts.to_json()
    return kept.SerializeToString(), facts


def describe_file(path: str | Path) -> str:
    """`carvis layers` of an .onnx file."""
    path = Path(path)
    if not path.is_file():
        raise CarvisError(f"{path}: model file not found; check the path")
    model, _, _ = load(path, conversion_cache.file_sha256(path))
    return describe(model, path.name)


def describe(model: OnnxModel, name: str) -> str:
    """What `carvis layers` shows for an ONNX model: its layers, shapes, what the modes use."""
    meta = model.meta
    head = meta.head or {}
    notes = {n: "in the file" for n in model.output_names}
    notes.update({n: "shown" for n in meta.shown})
    if head:
        kind = "softmax of bins" if head.get("softmax") else (
            "bins" if head.get("units", 1) > 1 else "regression")
        notes[head["layer"]] = f"steering, {head.get('units')} unit(s), {kind} (HUD)"
    rows = [models.LayerInfo(i, n, t, tuple(s), conv, len(s) == 3)
            for i, (n, t, s, conv) in enumerate(model.facts.rows)]
    chain = (meta.vbp or {}).get("chain")
    modes = ", ".join(x for x in ("HUD" if head else "", "vbp" if chain else "",
                                  "occlusion, rise" if head else "") if x)
    if head and not chain:
        modes += f" (no vbp: {(meta.vbp or {}).get('error', 'no path')})"
    layout = "NCHW (channels first)" if model.channels_first else "NHWC"
    header = (f"{name}: an ONNX model read from its graph ({layout} input, shown as "
              f"(h, w, c)); input {shape_text(meta.input_shape)}; modes beyond activation: "
              f"{modes or 'none'}")
    lines = [header, models.format_rows(rows, notes)]
    if head and len(head.get("outputs", [])) > 1 and head["layer"].endswith(":steering"):
        lines.append(f"  its one (2,) output is read as (steering, throttle), as DonkeyCar's "
                     f"PyTorch pilots give them: {', '.join(head['outputs'])}")
    return "\n".join(lines)
