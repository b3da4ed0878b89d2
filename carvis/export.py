"""A model truncated at one layer, as a .tflite file for LiteRT; and the cache of such files.

A carvis .tflite has one input (the model's) and one output: the chosen layer, all its
channels. Its signature names that output after the layer, and a ``carvis`` metadata entry
(JSON) records the layer, its index and conv:N, shapes and the source model, so
``carvis layers X.tflite`` and error messages can name it. Reading it needs neither
TensorFlow nor Keras; writing it needs TensorFlow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from carvis import __version__
from carvis.errors import CarvisError
from carvis.models import is_tflite

META_NAME = "carvis"
#: Bumped when the conversion changes, so cached files from an older carvis are not reused.
FORMAT = 1
_TFLITE_MAGIC = b"TFL3"


class ConversionError(CarvisError):
    """The TFLite converter could not convert the truncated model."""


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

    def to_json(self) -> bytes:
        """The metadata as compact UTF-8 JSON."""
        return json.dumps(dataclasses.asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> LayerMeta:
        """Parse metadata written by to_json (unknown keys are ignored)."""
        raw = json.loads(data.decode())
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in raw.items() if k in fields}
        for key in ("input_shape", "output_shape", "conv_layers", "layer_names"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def matches(self, spec: str | int) -> bool:
        """True if a layer spec (name, index, conv:N) names this layer."""
        if isinstance(spec, bool):
            return False
        text = str(spec).strip()
        if text == self.layer:
            return True
        if re.fullmatch(r"[+-]?\d+", text) and self.layer_index is not None:
            index = int(text)
            if index < 0 and self.layers:
                index += self.layers
            return index == self.layer_index
        m = re.fullmatch(r"conv:(\d+)", text.lower())
        return bool(m) and self.conv is not None and int(m.group(1)) == self.conv

    def describe(self) -> str:
        """'layer 'x' (17, 62, 2) of model.h5' in a few words."""
        shape = "(" + ", ".join(str(d) for d in self.output_shape) + ")"
        source = f" of {self.model}" if self.model else ""
        return f"layer {self.layer!r} {shape}{source}"


# --------------------------------------------------------------------------- reading


def _schema() -> Any:
    """The generated TFLite flatbuffer schema (LiteRT's; TensorFlow's copy as a fallback)."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        try:
            from tensorflow.lite.python import schema_py_generated as schema
        except ImportError:
            raise CarvisError("reading .tflite metadata needs ai-edge-litert; "
                              "pip install ai-edge-litert") from None
    return schema


def read_meta(data: bytes) -> LayerMeta | None:
    """The carvis metadata of a .tflite flatbuffer, or None if it has none (or it is bad)."""
    schema = _schema()
    try:
        model = schema.Model.GetRootAs(data, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() != META_NAME.encode():
                continue
            buf = model.Buffers(entry.Buffer())
            return LayerMeta.from_json(buf.DataAsNumpy().tobytes())
    except (ValueError, TypeError, KeyError, IndexError, AttributeError,
            UnicodeDecodeError, json.JSONDecodeError):
        return None
    return None


def read_tflite(path: str | os.PathLike) -> bytes:
    """The bytes of a .tflite file, or one line saying why not."""
    p = Path(path)
    if not p.is_file():
        raise CarvisError(f"{path}: model file not found; check the path")
    data = p.read_bytes()
    if data[4:8] != _TFLITE_MAGIC:
        raise CarvisError(f"{path}: not a TFLite model (no TFL3 tag); export one with "
                          "carvis export MODEL --layer L -o OUT.tflite")
    return data


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def format_tflite_table(path: str | os.PathLike) -> str:
    """What `carvis layers` shows for a .tflite: its one layer, shapes and source model."""
    data = read_tflite(path)
    meta = read_meta(data)
    name = Path(path).name
    if meta is None:
        from carvis.extractor import LiteRTBackend

        backend = LiteRTBackend(data, source=name)
        return "\n".join([
            f"{name}: a .tflite without carvis metadata; its output is the layer carvis shows",
            f"  input   {_shape(backend.input_shape)}",
            f"  output  {backend.layer_name!r} {_shape(backend.output_shape)}",
        ])
    where = " ".join(x for x in (f"#{meta.layer_index}" if meta.layer_index is not None else "",
                                  f"conv:{meta.conv}" if meta.conv else "") if x)
    lines = [
        f"{name}: {meta.describe()}, exported by carvis {meta.carvis}; the only layer it holds",
        f"  input   {_shape(meta.input_shape)}",
        f"  output  {meta.layer!r} {_shape(meta.output_shape)}" + (f"  ({where})" if where else ""),
    ]
    if meta.conv_layers:
        lines.append(f"  source conv layers: {', '.join(meta.conv_layers)} "
                     "(carvis export MODEL --layer L exports another)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- writing


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def held_stderr() -> Iterator[list[str]]:
    """Hold C++ log lines written to fd 2 back into a list (TF's converter, LiteRT's INFO)."""
    captured: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured.extend(tmp.read().decode(errors="replace").splitlines())


def with_metadata(flatbuffer: bytes, meta: LayerMeta) -> bytes:
    """The flatbuffer with a 'carvis' metadata entry holding meta (replacing an older one)."""
    import flatbuffers
    import numpy as np

    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    model.metadata = [m for m in (model.metadata or []) if m.name not in (META_NAME,
                                                                           META_NAME.encode())]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(meta.to_json(), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = META_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
    builder = flatbuffers.Builder(len(flatbuffer) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=_TFLITE_MAGIC)
    return bytes(builder.Output())


def layer_meta(model: Any, layer: Any, source: Path | None, sha256: str | None) -> LayerMeta:
    """Describe a layer of a loaded Keras model for the .tflite metadata."""
    from carvis import models

    table = models.layer_table(model)
    convs = [info for info in table if info.is_conv]
    index = next(i.index for i in table if i.name == layer.name)
    conv = next((k for k, info in enumerate(convs, 1) if info.name == layer.name), None)
    return LayerMeta(
        layer=layer.name,
        layer_index=index,
        layers=len(table),
        conv=conv,
        input_shape=tuple(int(d) for d in model.inputs[0].shape[1:]),
        output_shape=tuple(int(d) for d in table[index].output_shape),
        model=source.name if source else None,
        model_sha256=sha256,
        conv_layers=tuple(info.name for info in convs if info.is_spatial),
        layer_names=tuple(info.name for info in table),
    )


def convert(model: Any, layer: Any, meta: LayerMeta) -> bytes:
    """The model truncated at layer, as a float32 .tflite flatbuffer with carvis metadata."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    from carvis import models

    truncated = models.truncated_model(model, layer)
    if len(truncated.inputs) != 1:
        raise CarvisError(f"model {model.name!r} has {len(truncated.inputs)} inputs; "
                          "carvis export handles single-input models")
    shape = (1,) + tuple(int(d) for d in truncated.inputs[0].shape[1:])
    name = layer.name

    def serve(x: Any) -> dict[str, Any]:
        return {name: truncated(x, training=False)}

    flatbuffer = _saved_model_to_tflite(truncated, serve, shape,
                                        f"layer {name!r} of model {model.name!r}")
    return with_metadata(flatbuffer, meta)


def _saved_model_to_tflite(sub: Any, serve: Any, shape: tuple, what: str) -> bytes:
    """Keras export archive of sub with one endpoint, converted to a .tflite flatbuffer."""
    import keras
    import tensorflow as tf

    # Keras' own export tracks the Keras 3 variables; a bare tf.Module would not, and the
    # converter would then emit READ_VARIABLE ops over uninitialised resources.
    error: Exception | None = None
    with tempfile.TemporaryDirectory(prefix="carvis-export-") as tmp, held_stderr() as log:
        try:
            archive = keras.export.ExportArchive()
            archive.track(sub)
            archive.add_endpoint(name="serving_default", fn=serve, input_signature=[
                tf.TensorSpec(shape, tf.float32, name=sub.inputs[0].name)])
            archive.write_out(tmp, verbose=False)
            return tf.lite.TFLiteConverter.from_saved_model(tmp).convert()
        except Exception as exc:  # noqa: BLE001 - converter errors are many and deep
            error = exc
    # The held log is only filled in once the with block has closed.
    detail = str(error).strip().splitlines() or log[-1:] or [type(error).__name__]
    raise ConversionError(f"cannot convert {what} to TFLite ({detail[0][:160]}); "
                          "use --backend tensorflow") from None


def write_cached(path: Path, data: bytes) -> None:
    """Keep a converted model in the cache; a cache that cannot be written only warns."""
    try:
        write_atomic(path, data)
    except OSError as exc:
        print(f"carvis: warning: cannot cache the converted model in {path.parent} "
              f"({exc.strerror or exc}); set CARVIS_CACHE to a writable folder",
              file=sys.stderr)


def write_atomic(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old content or the new, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # mkstemp made it private
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def export(model_path: str | os.PathLike, layer_spec: str | int, out: str | os.PathLike,
           lambda_policy: str = "error") -> tuple[LayerMeta, float | None]:
    """Write a model cut at a layer to OUT.tflite; its metadata and max |LiteRT − TF| (or None)."""
    out = Path(out)
    if out.suffix.lower() != ".tflite":
        raise CarvisError(f"output {str(out)!r} must end in .tflite")
    if not out.resolve().parent.is_dir():
        raise CarvisError(f"output {str(out)!r}: folder does not exist; create it first")
    if is_tflite(model_path):
        raise CarvisError(f"{model_path}: already a .tflite; export from the .h5/.keras model")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from carvis import models

    source = Path(model_path)
    try:
        model = models.load_model(source, lambda_policy=lambda_policy)
    except ImportError as exc:
        raise CarvisError(f"carvis export needs TensorFlow ({exc.name or exc}): "
                          "pip install tensorflow") from None
    layer = models.resolve_layer(model, layer_spec)
    meta = layer_meta(model, layer, source, file_sha256(source))
    data = convert(model, layer, meta)
    write_atomic(out, data)
    return meta, _check(model, layer, data)


def _check(model: Any, layer: Any, data: bytes) -> float | None:
    """Largest |LiteRT − TensorFlow| on one random input in the model's input range."""
    try:
        from carvis.extractor import LiteRTBackend
    except ImportError:
        return None
    import importlib.util

    if importlib.util.find_spec("ai_edge_litert") is None:
        return None
    import numpy as np

    from carvis import models

    backend = LiteRTBackend(data)
    x = np.random.default_rng(0).uniform(0, 1, (1,) + backend.input_shape).astype(np.float32)
    expected = np.asarray(models.truncated_model(model, layer)(x, training=False))[0]
    return float(np.abs(backend(x) - expected).max())


# --------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """Where converted models are kept: $CARVIS_CACHE, else $XDG_CACHE_HOME/carvis."""
    env = os.environ.get("CARVIS_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "carvis"


def cache_path(sha256: str, layer_spec: str | int, lambda_policy: str) -> Path:
    """The cache file for (model content, layer spec, lambda policy, export format)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(layer_spec).strip())[:60] or "_"
    return cache_dir() / f"{sha256[:24]}-{slug}-{lambda_policy}-f{FORMAT}.tflite"


# --------------------------------------------------------------------------- several outputs


def convert_outputs(model: Any, names: list[str] | tuple[str, ...], meta: LayerMeta | None = None
                    ) -> bytes:
    """The model with one output per named layer (its signature keys are the layer names), as a
    float32 .tflite: what forward-only explainers (vbp, cam) read on LiteRT."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    names = list(dict.fromkeys(names))
    if len(model.inputs) != 1:
        raise CarvisError(f"model {model.name!r} has {len(model.inputs)} inputs; "
                          "carvis export handles single-input models")
    outputs = [model.get_layer(name).output for name in names]
    sub = keras.Model(model.inputs[0], outputs, name=f"{model.name}_outputs")
    shape = (1,) + tuple(int(d) for d in sub.inputs[0].shape[1:])

    def serve(x: Any) -> dict[str, Any]:
        values = sub(x, training=False)
        values = values if isinstance(values, (list, tuple)) else [values]
        return dict(zip(names, values, strict=True))

    flatbuffer = _saved_model_to_tflite(sub, serve, shape,
                                        f"layers {', '.join(names)} of model {model.name!r}")
    meta = meta or LayerMeta(layer="+".join(names),
                             input_shape=tuple(int(d) for d in sub.inputs[0].shape[1:]))
    return with_metadata(flatbuffer, meta)


def outputs_cache_path(sha256: str, names: list[str] | tuple[str, ...], lambda_policy: str
                       ) -> Path:
    """The cache file of a several-output .tflite (model content, output layers, policy)."""
    key = hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
    return cache_dir() / f"{sha256[:24]}-outputs-{key}-{lambda_policy}-f{FORMAT}.tflite"
