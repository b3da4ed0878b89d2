"""Load any car model (Keras 1/2/3 .h5, .keras) as a Keras 3 functional model; pick a layer."""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from carvis.errors import CarvisError

if TYPE_CHECKING:  # keras is imported lazily: the LiteRT path must not pull in TensorFlow
    import keras

LAMBDA_POLICIES = ("error", "identity")

# Keras 2 `hard_sigmoid` is clip(0.2 x + 0.5, 0, 1); Keras 3 changed it to relu6(x + 3) / 6.
# Keras 3 loads such files without complaint, so files using it always go through our builders.
_CHANGED_ACTIVATIONS = ("hard_sigmoid",)

_TFLITE_MAGIC = b"TFL3"
_H5_SUFFIXES = (".h5", ".hdf5")


@dataclass(frozen=True)
class LayerInfo:
    """One row of the layer table."""

    index: int
    name: str
    type: str
    output_shape: tuple[int | None, ...]
    is_conv: bool
    is_spatial: bool


# --------------------------------------------------------------------------- public API


def is_tflite(path: str | os.PathLike) -> bool:
    """True if the file is a TensorFlow Lite flatbuffer (by extension or its TFL3 tag)."""
    p = Path(path)
    if p.suffix.lower() == ".tflite":
        return True
    try:
        with open(p, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return False
    return head[4:8] == _TFLITE_MAGIC


def load_model(path: str | os.PathLike, *, lambda_policy: str = "error") -> keras.Model:
    """Load any car model as a Keras 3 functional model (never mutate it afterwards)."""
    if lambda_policy not in LAMBDA_POLICIES:
        raise CarvisError(f"lambda policy {lambda_policy!r} is not one of "
                          f"{', '.join(LAMBDA_POLICIES)}; pass --lambda error or --lambda identity")
    p = Path(path)
    if not is_tflite(p):
        from carvis.tfquiet import import_tensorflow

        import_tensorflow()  # without the CUDA-stub chatter, so errors stay one line
    if not p.exists():
        raise CarvisError(f"{path}: model file not found; check the path")
    if p.is_dir():
        raise CarvisError(f"{path}: is a directory, not a model file; give a .keras, .h5 or "
                          ".tflite file (TF SavedModel folders are not supported)")
    if is_tflite(p):
        raise CarvisError(f"{path}: .tflite models run on the LiteRT backend (--backend litert), "
                          "not through the Keras loader")
    if zipfile.is_zipfile(p):
        return _load_keras_archive(p)
    import h5py

    if not h5py.is_hdf5(p):
        raise CarvisError(f"{path}: not a Keras model file (neither a .keras archive nor HDF5); "
                          "check the path, or re-save the model with model.save()")
    return _load_h5(p, lambda_policy)


def layer_table(model: keras.Model) -> list[LayerInfo]:
    """One LayerInfo per layer of the model, in model order (index 0 is the input layer)."""
    table = []
    for index, layer in enumerate(model.layers):
        shape = _output_shape(layer)
        table.append(LayerInfo(
            index=index,
            name=layer.name,
            type=type(layer).__name__,
            output_shape=shape,
            is_conv=_is_conv(layer),
            is_spatial=len(shape) == 3,
        ))
    return table


def resolve_layer(model: keras.Model, spec: str | int, *,
                  require_spatial: bool = True) -> keras.layers.Layer:
    """The layer named by spec: a name, an index ("3", -1) or "conv:N" (N-th conv, from 1)."""
    table = layer_table(model)
    info = _find(model, table, spec)
    if require_spatial and not info.is_spatial:
        raise CarvisError(
            f"layer {info.name!r} ({info.type}) outputs shape {_shape_text(info.output_shape)}, "
            f"not a spatial "
            f"(H, W, C) map; pick a conv layer: {_conv_choices(table)}")
    return model.layers[info.index]


def truncated_model(model: keras.Model, layer: keras.layers.Layer | str | int) -> keras.Model:
    """A new model from the model's input to the layer's output; the model is left untouched."""
    import keras

    if isinstance(layer, (str, int, np.integer)):
        layer = resolve_layer(model, layer, require_spatial=False)
    if not any(candidate is layer for candidate in model.layers):
        raise CarvisError(f"layer {getattr(layer, 'name', layer)!r} is not part of model "
                          f"{model.name!r}; resolve it with resolve_layer(model, spec) first")
    try:
        output = layer.output
    except (AttributeError, ValueError) as exc:
        raise CarvisError(f"layer {layer.name!r} is used more than once in model {model.name!r} "
                          "and has no single output; pick another layer") from exc
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, output, name=f"{model.name}_to_{layer.name}")


def format_layer_table(model: keras.Model) -> str:
    """The layer table as text: index, conv pick (conv:N), name, type, output shape."""
    rows = [("#", "conv", "name", "type", "output shape")]
    n_conv = 0
    for info in layer_table(model):
        pick = ""
        if info.is_conv:
            n_conv += 1
            pick = f"conv:{n_conv}"
        shape = _shape_text(info.output_shape)
        rows.append((str(info.index), pick, info.name, info.type, shape))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for row in rows:
        cells = [row[0].rjust(widths[0])] + [row[i].ljust(widths[i]) for i in (1, 2, 3)]
        lines.append("  ".join(cells + [row[4]]).rstrip())
    return "\n".join(lines)


# --------------------------------------------------------------------------- layer lookup


def _shape_text(shape: tuple[int | None, ...]) -> str:
    dims = ["?" if d is None else str(d) for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def _output_shape(layer: Any) -> tuple[int | None, ...]:
    try:
        output = layer.output
    except (AttributeError, ValueError):  # shared layer: several outputs
        return ()
    if isinstance(output, (list, tuple)):
        output = output[0]
    return tuple(None if d is None else int(d) for d in output.shape[1:])


def _is_conv(layer: Any) -> bool:
    import keras

    conv_types = (keras.layers.Conv2D, keras.layers.SeparableConv2D,
                  keras.layers.DepthwiseConv2D, keras.layers.Conv2DTranspose)
    return isinstance(layer, conv_types)


def _find(model: Any, table: list[LayerInfo], spec: str | int) -> LayerInfo:
    n = len(table)
    if isinstance(spec, np.integer):
        spec = int(spec)
    if isinstance(spec, bool) or not isinstance(spec, (str, int)):
        raise CarvisError(f"layer spec {spec!r} is not a name, an index or conv:N; "
                          "run `carvis layers MODEL` to see the layers")
    if isinstance(spec, str):
        text = spec.strip()
        if re.fullmatch(r"[+-]?\d+", text):
            spec = int(text)
        elif text.lower().startswith("conv:"):
            return _find_conv(model, table, text)
        else:
            for info in table:
                if info.name == text:
                    return info
            close = difflib.get_close_matches(text, [i.name for i in table], n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise CarvisError(f"no layer named {text!r} in model {model.name!r}; {hint}"
                              f"{_layer_choices(table)}")
    if not -n <= spec < n:
        raise CarvisError(f"layer index {spec} is out of range: model {model.name!r} has {n} "
                          f"layers (0..{n - 1}, or -1..-{n} from the end); "
                          "run `carvis layers MODEL` to see them")
    return table[spec]


def _find_conv(model: Any, table: list[LayerInfo], text: str) -> LayerInfo:
    convs = [info for info in table if info.is_conv]
    number = text[5:].strip()
    if not re.fullmatch(r"\d+", number) or int(number) < 1:
        raise CarvisError(f"layer spec {text!r}: conv:N needs a whole number N from 1 "
                          f"(model {model.name!r} has {len(convs)} conv layers)")
    k = int(number)
    if k > len(convs):
        names = ", ".join(i.name for i in convs) or "none"
        raise CarvisError(f"layer spec {text!r}: model {model.name!r} has only {len(convs)} conv "
                          f"layers ({names}); use conv:1..conv:{len(convs)}")
    return convs[k - 1]


def _layer_choices(table: list[LayerInfo]) -> str:
    if len(table) <= 16:
        return "layers: " + ", ".join(info.name for info in table)
    picks = [info.name for info in table
             if info.is_spatial and (info.is_conv or "Pool" in info.type)]
    shown = ", ".join(picks[:16]) + (", ..." if len(picks) > 16 else "")
    return (f"conv/pool layers: {shown or '(none)'} ({len(table)} layers in all; "
            "`carvis layers MODEL` lists them)")


def _conv_choices(table: list[LayerInfo]) -> str:
    convs = [info for info in table if info.is_conv and info.is_spatial]
    if not convs:
        spatial = [info.name for info in table if info.is_spatial and info.index > 0]
        return ", ".join(spatial[:12]) or "(the model has no spatial layer)"
    parts = [f"conv:{k} = {info.name}" for k, info in enumerate(convs, start=1)]
    if len(parts) > 12:
        parts = parts[:12] + ["..."]
    return ", ".join(parts)


# --------------------------------------------------------------------------- file formats


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0].strip() if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence Keras' user warnings about legacy configs while loading."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


@contextlib.contextmanager
def _with_suffix(path: Path, suffix: str) -> Iterator[Path]:
    """The path itself, or a temporary copy whose name ends in suffix (Keras dispatches on it)."""
    if path.suffix.lower() == suffix or (suffix == ".h5" and path.suffix.lower() in _H5_SUFFIXES):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="carvis-") as tmp:
        alias = Path(tmp) / (path.stem + suffix)
        try:
            os.symlink(path.resolve(), alias)
        except OSError:
            shutil.copyfile(path, alias)
        yield alias


def _load_keras_archive(path: Path) -> keras.Model:
    import keras

    try:
        with _quiet(), _with_suffix(path, ".keras") as alias:
            model = keras.models.load_model(alias, compile=False)
    except Exception as exc:  # any Keras failure becomes one line
        lambdas = _lambda_names_in_archive(path)
        if lambdas:
            raise CarvisError(
                f"{path}: layer {lambdas[0]!r} is a Lambda (Python code stored in the file) that "
                "carvis cannot rebuild; re-save the model without it and do its scaling in the "
                "profile (preprocess.scale/offset)") from exc
        raise CarvisError(f"{path}: Keras 3 cannot load this .keras file ({_first_line(exc)}); "
                          "re-save it with the current Keras, or export a .tflite") from exc
    return _as_functional(model, path)


def _lambda_names_in_archive(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (KeyError, OSError, ValueError, zipfile.BadZipFile):
        return []
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("class_name") == "Lambda":
                found.append(str(node.get("config", {}).get("name", "lambda")))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return found


def _as_functional(model: Any, path: Path) -> keras.Model:
    """The model as a functional graph (Sequential → functional, same layer objects)."""
    import keras

    if isinstance(model, keras.Sequential):
        try:
            inputs, outputs = model.inputs, model.outputs
        except (AttributeError, ValueError) as exc:
            raise CarvisError(f"{path}: the Sequential model has no fixed input shape; re-save it "
                              "with an Input(shape=...) first layer") from exc
        return keras.Model(inputs, outputs, name=model.name)
    try:
        _ = model.inputs[0], model.outputs[0]
    except (AttributeError, ValueError, IndexError, TypeError) as exc:
        raise CarvisError(f"{path}: {type(model).__name__} is a subclassed model without a layer "
                          "graph; carvis needs a functional or Sequential model") from exc
    return model


def _attr_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _load_h5(path: Path, lambda_policy: str) -> keras.Model:
    import h5py

    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise CarvisError(f"{path}: the HDF5 file is corrupt or truncated ({_first_line(exc)}); "
                          "copy the model file again") from exc
    with h5:
        try:
            raw_config = _attr_text(h5.attrs.get("model_config"))
            version = _attr_text(h5.attrs.get("keras_version"))
            backend = _attr_text(h5.attrs.get("backend"))
            weights_only = "layer_names" in h5.attrs or "model_weights" in h5
        except (OSError, KeyError) as exc:
            raise CarvisError(f"{path}: the HDF5 file is corrupt or truncated "
                              f"({_first_line(exc)}); copy the model file again") from exc
        if not raw_config:
            if weights_only:
                raise CarvisError(
                    f"{path}: holds only weights (saved with save_weights), no model "
                    "architecture; load them into the code that built the model and save it with "
                    "model.save('model.keras')")
            raise CarvisError(f"{path}: HDF5 file without a Keras model (no model_config "
                              "attribute); give the file saved with model.save()")
        try:
            config = json.loads(raw_config)
        except ValueError as exc:
            raise CarvisError(f"{path}: the model_config in the file is not valid JSON "
                              f"({_first_line(exc)}); re-save the model") from exc
        dialect = _dialect(version, raw_config)
        if dialect == "keras3":
            return _load_with_keras3(path, version)
        if dialect == "keras2" and backend != "theano" and not any(
                f'"{name}"' in raw_config for name in _CHANGED_ACTIVATIONS):
            try:
                return _load_with_keras3(path, version)
            except CarvisError:
                pass  # Keras 3 rejects the old config: rebuild it ourselves below
        try:
            rebuild = _Rebuild(path, h5, dialect, version, backend, lambda_policy)
            return rebuild.model(config)
        except CarvisError:
            raise
        except OSError as exc:
            raise CarvisError(f"{path}: the HDF5 file is corrupt or truncated "
                              f"({_first_line(exc)}); copy the model file again") from exc
        except Exception as exc:  # a config we did not foresee: still one line, not a traceback
            raise CarvisError(f"{path}: cannot rebuild the Keras {version or '?'} model "
                              f"({type(exc).__name__}: {_first_line(exc)}); re-save it with "
                              "Keras 3 as .keras, or export a .tflite") from exc


def _dialect(version: str, raw_config: str) -> str:
    if version.startswith("1."):
        return "keras1"
    if version.startswith("3."):
        return "keras3"
    if not version and any(key in raw_config for key in ('"nb_filter"', '"output_dim"',
                                                        '"border_mode"')):
        return "keras1"  # the very first Keras 1 releases wrote no keras_version
    return "keras2"


def _load_with_keras3(path: Path, version: str) -> keras.Model:
    import keras

    try:
        with _quiet(), _with_suffix(path, ".h5") as alias:
            model = keras.models.load_model(alias, compile=False)
    except Exception as exc:  # any Keras failure becomes one line
        raise CarvisError(f"{path}: Keras 3 cannot load this Keras {version or '?'} .h5 "
                          f"({_first_line(exc)}); re-save it as .keras, or export a .tflite"
                          ) from exc
    return _as_functional(model, path)


# --------------------------------------------------------------------------- rebuilding


def _tupled(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_tupled(v) for v in value)
    return value


def _legacy_hard_sigmoid(x: Any) -> Any:
    """Keras 1/2 hard_sigmoid: clip(0.2 x + 0.5, 0, 1)."""
    import keras

    return keras.ops.clip(0.2 * x + 0.5, 0.0, 1.0)


@dataclass
class _Spec:
    """One layer of the saved config, already in the Keras 2 vocabulary."""

    name: str
    class_name: str
    config: dict
    inbound: list[list[tuple[str, int, int]]] = field(default_factory=list)


class _Rebuild:
    """Builds a Keras 3 functional model from a Keras 1/2 config and loads its weights by name."""

    def __init__(self, path: Path, h5: Any, dialect: str, version: str, backend: str,
                 lambda_policy: str) -> None:
        self.path = path
        self.h5 = h5
        self.dialect = dialect
        self.version = version
        self.backend = backend
        self.lambda_policy = lambda_policy
        self.lambdas: list[str] = []
        self.fixes: dict[str, Callable[[list[np.ndarray]], list[np.ndarray]]] = {}

    # ---- errors

    def fail(self, message: str) -> CarvisError:
        return CarvisError(f"{self.path}: {message}")

    def unsupported(self, name: str, kind: str) -> CarvisError:
        """kind completes "layer 'x' is ...", e.g. "a Highway layer"."""
        return self.fail(
            f"layer {name!r} is {kind}, which carvis cannot rebuild from a Keras "
            f"{self.version or '?'} file; rebuild the model in Keras 3 and save it as .keras, "
            "or export a .tflite (--backend litert)")

    # ---- config → graph

    def model(self, config: dict) -> keras.Model:
        import keras

        class_name = config.get("class_name")
        body = config.get("config")
        if class_name == "Sequential":
            name, specs = self.sequential_specs(body)
            input_names, output_refs = [specs[0].name], [(specs[-1].name, 0, 0)]
        elif class_name in ("Model", "Functional"):
            name = body.get("name", "model")
            specs = [self.spec(layer, layer.get("inbound_nodes", [])) for layer in body["layers"]]
            input_names = [ref[0] for ref in self.refs(body["input_layers"])]
            output_refs = self.refs(body["output_layers"])
        else:
            raise self.fail(f"the saved model is a {class_name}, which carvis cannot rebuild; "
                            "save a Sequential or functional model")
        tensors = self.wire(specs, input_names)
        inputs = [tensors[n][0][0] for n in input_names]
        outputs = []
        for layer_name, node, index in output_refs:
            outputs.append(tensors[layer_name][node][index])
        with _quiet():
            model = keras.Model(inputs if len(inputs) > 1 else inputs[0],
                                outputs if len(outputs) > 1 else outputs[0], name=name)
        self.load_weights(model)
        if self.lambdas:
            names = ", ".join(repr(n) for n in self.lambdas)
            warnings.warn(f"{self.path}: Lambda layer(s) {names} replaced by identity "
                          "(--lambda identity); do their scaling in the profile "
                          "(preprocess.scale/offset)", UserWarning, stacklevel=4)
        return model

    def refs(self, raw: list) -> list[tuple[str, int, int]]:
        if raw and isinstance(raw[0], str):  # a single [name, node, tensor]
            raw = [raw]
        return [(str(r[0]), int(r[1]), int(r[2])) for r in raw]

    def sequential_specs(self, body: Any) -> tuple[str, list[_Spec]]:
        if isinstance(body, list):  # Keras 1 and Keras 2.0-2.2: the config is the layer list
            name, layers, build_shape = "sequential", body, None
        else:
            name, layers = body.get("name", "sequential"), body["layers"]
            build_shape = body.get("build_input_shape")
        specs: list[_Spec] = []
        if layers and layers[0].get("class_name") != "InputLayer":
            first = layers[0].get("config", {})
            shape = first.get("batch_input_shape") or first.get("batch_shape") or build_shape
            if not shape:
                raise self.fail("the Sequential model has no input shape in its config; re-save "
                                "it with an Input(shape=...) first layer")
            input_name = f"{first.get('name', 'sequential')}_input"
            specs.append(_Spec(input_name, "InputLayer", {"name": input_name,
                                                          "batch_input_shape": shape}))
        for layer in layers:
            previous = [[(specs[-1].name, 0, 0)]] if specs else []
            specs.append(self.spec(layer, previous, raw_nodes=False))
        return name, specs

    def spec(self, layer: dict, nodes: list, raw_nodes: bool = True) -> _Spec:
        class_name = layer["class_name"]
        config = dict(layer.get("config") or {})
        name = layer.get("name") or config.get("name")
        config["name"] = name
        if class_name in ("Sequential", "Model", "Functional"):
            raise self.unsupported(name, f"a nested {class_name} model")
        if class_name == "Merge" and config.get("layers"):
            raise self.unsupported(name, "a Merge of Sequential branches")
        if self.dialect == "keras1":
            class_name, config = self.from_keras1(name, class_name, config)
        inbound = []
        for node in nodes:
            if raw_nodes:
                if isinstance(node, dict):
                    raise self.unsupported(name, f"a {class_name} layer with a Keras 3 style call")
                node = [(str(ref[0]), int(ref[1]), int(ref[2])) for ref in node]
            inbound.append(node)
        return _Spec(name, class_name, config, inbound)

    def wire(self, specs: list[_Spec], input_names: list[str]) -> dict[str, list[list[Any]]]:
        """Call each rebuilt layer on its inbound tensors, in dependency order."""
        import keras

        tensors: dict[str, list[list[Any]]] = {}
        pending = list(specs)
        while pending:
            progress = False
            for spec in list(pending):
                if spec.class_name == "InputLayer":
                    shape = spec.config.get("batch_input_shape") or spec.config.get("batch_shape")
                    if not shape:
                        raise self.fail(f"input layer {spec.name!r} has no shape in its config; "
                                        "re-save the model with a fixed input shape")
                    tensors[spec.name] = [[keras.Input(shape=tuple(shape[1:]), name=spec.name,
                                                       dtype="float32")]]
                    pending.remove(spec)
                    progress = True
                    continue
                if not all(ref[0] in tensors and len(tensors[ref[0]]) > ref[1]
                           for node in spec.inbound for ref in node):
                    continue
                layer = self.build(spec)
                tensors[spec.name] = []
                for node in spec.inbound:
                    args = [tensors[ref[0]][ref[1]][ref[2]] for ref in node]
                    out = layer(args if len(args) > 1 else args[0])
                    if spec.class_name == "Lambda":
                        self.check_identity(spec, args[0])
                    tensors[spec.name].append(list(out) if isinstance(out, (list, tuple))
                                              else [out])
                pending.remove(spec)
                progress = True
            if not progress:
                names = ", ".join(repr(s.name) for s in pending[:5])
                raise self.fail(f"layer(s) {names} are not connected to the model's input; the "
                                "config is damaged or uses an unsupported graph")
        missing = [n for n in input_names if n not in tensors]
        if missing:
            raise self.fail(f"input layer {missing[0]!r} is missing from the config")
        return tensors

    def check_identity(self, spec: _Spec, tensor: Any) -> None:
        declared = spec.config.get("output_shape")
        if spec.config.get("output_shape_type", "raw") != "raw" or not declared:
            return
        declared = tuple(declared)
        if len(declared) == len(tensor.shape):  # some files include the batch axis
            declared = declared[1:]
        actual = tuple(tensor.shape[1:])
        if any(d is not None and a is not None and int(d) != int(a)
               for d, a in zip(declared, actual, strict=False)) or len(declared) != len(actual):
            raise self.fail(f"layer {spec.name!r} is a Lambda that changes the shape "
                            f"{actual} to {declared}, so --lambda identity cannot stand in for "
                            "it; re-save the model without it")

    # ---- Keras 1 vocabulary

    def from_keras1(self, name: str, class_name: str, c: dict) -> tuple[str, dict]:
        """Translate a Keras 1 layer config into Keras 2 terms."""
        if c.get("dim_ordering") == "th":
            # Theano ordering means channels-first inputs and (out, in, rows, cols) kernels that
            # the Theano backend also flipped; rebuilding that faithfully needs the training
            # backend, which Keras 1 never recorded.
            raise self.fail(f"layer {name!r} uses Theano dim_ordering 'th' (channels first), "
                            "which carvis does not rebuild; convert the model to dim_ordering "
                            "'tf' with Keras 1 and save it again")
        out: dict[str, Any] = {"name": name}
        padding = str(c.get("border_mode", "valid"))
        if class_name in ("Convolution2D", "AtrousConvolution2D", "SeparableConvolution2D"):
            if padding not in ("valid", "same"):
                raise self.unsupported(name, f"a {class_name} layer with border_mode {padding!r}")
            # Keras 1 with dim_ordering "tf" stored kernels as (rows, cols, in, out), the layout
            # Keras 3 uses: no transpose and no flip needed (TensorFlow-backend training assumed).
            out.update(filters=c["nb_filter"], kernel_size=(c["nb_row"], c["nb_col"]),
                       strides=_tupled(c.get("subsample", (1, 1))), padding=padding,
                       activation=c.get("activation", "linear"), use_bias=c.get("bias", True))
            if class_name == "AtrousConvolution2D":
                out["dilation_rate"] = _tupled(c.get("atrous_rate", (1, 1)))
            if class_name == "SeparableConvolution2D":
                out["depth_multiplier"] = c.get("depth_multiplier", 1)
                return "SeparableConv2D", out
            return "Conv2D", out
        if class_name in ("MaxPooling2D", "AveragePooling2D"):
            out.update(pool_size=_tupled(c.get("pool_size", (2, 2))),
                       strides=_tupled(c.get("strides")), padding=padding)
            return class_name, out
        if class_name in ("GlobalAveragePooling2D", "GlobalMaxPooling2D", "Flatten"):
            return class_name, out
        if class_name in ("Dropout", "SpatialDropout2D", "GaussianDropout"):
            out["rate"] = c.get("p", 0.0)
            return class_name, out
        if class_name == "GaussianNoise":
            out["stddev"] = c.get("sigma", 0.0)
            return class_name, out
        if class_name == "Dense":
            out.update(units=c["output_dim"], activation=c.get("activation", "linear"),
                       use_bias=c.get("bias", True))
            return "Dense", out
        if class_name == "Activation":
            out["activation"] = c.get("activation", "linear")
            return "Activation", out
        if class_name == "BatchNormalization":
            mode = int(c.get("mode", 0))
            if mode != 0:
                raise self.unsupported(name, f"a BatchNormalization layer in mode {mode} "
                                       "(batch statistics at inference)")
            out.update(axis=c.get("axis", -1), epsilon=c.get("epsilon", 1e-3))
            self.fixes[name] = self.keras1_batchnorm(float(out["epsilon"]))
            return class_name, out
        if class_name in ("ELU", "LeakyReLU"):
            out["alpha"] = c.get("alpha", 1.0 if class_name == "ELU" else 0.3)
            return class_name, out
        if class_name == "PReLU":
            return class_name, out
        if class_name == "Cropping2D":
            out["cropping"] = _tupled(c.get("cropping", ((0, 0), (0, 0))))
            return class_name, out
        if class_name == "ZeroPadding2D":
            out["padding"] = self.keras1_padding(c.get("padding", (1, 1)))
            return class_name, out
        if class_name == "UpSampling2D":
            out["size"] = _tupled(c.get("size", (2, 2)))
            return class_name, out
        if class_name in ("Reshape", "Permute"):
            key = "target_shape" if class_name == "Reshape" else "dims"
            out[key] = _tupled(c[key])
            return class_name, out
        if class_name == "Merge":
            mode = c.get("mode", "sum")
            merged = {"concat": "Concatenate", "sum": "Add", "mul": "Multiply",
                      "ave": "Average", "max": "Maximum"}.get(mode if isinstance(mode, str) else "")
            if merged is None or c.get("mode_type", "raw") != "raw":
                raise self.unsupported(name, f"a Merge layer with mode {mode!r}")
            if merged == "Concatenate":
                out["axis"] = c.get("concat_axis", -1)
            return merged, out
        if class_name in ("InputLayer", "Lambda"):
            return class_name, c
        raise self.unsupported(name, f"a {class_name} layer")

    def keras1_padding(self, padding: Any) -> Any:
        if isinstance(padding, dict):
            return ((padding.get("top_pad", 0), padding.get("bottom_pad", 0)),
                    (padding.get("left_pad", 0), padding.get("right_pad", 0)))
        padding = _tupled(padding)
        if isinstance(padding, tuple) and len(padding) == 4:
            return (padding[0], padding[1]), (padding[2], padding[3])
        return padding

    def keras1_batchnorm(self, epsilon: float) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
        match = re.match(r"1\.(\d+)", self.version)
        stores_std = bool(match) and int(match.group(1)) < 1

        def fix(weights: list[np.ndarray]) -> list[np.ndarray]:
            gamma, beta, mean, running = weights
            # Keras 1.1+ names it running_std but stores the moving *variance* (the TF backend's
            # normalize_batch_in_training returns var; batch_normalization adds epsilon to it).
            if stores_std:
                # Keras 1.0 stored the std and divided by (std + epsilon); this variance gives
                # exactly that divisor under Keras 3's sqrt(var + epsilon).
                running = (running + epsilon) ** 2 - epsilon
            return [gamma, beta, mean, running]

        return fix

    # ---- Keras 2 vocabulary → Keras 3 layers

    def build(self, spec: _Spec) -> Any:
        import keras

        L = keras.layers
        c = spec.config
        name, cls = spec.name, spec.class_name
        if c.get("data_format") == "channels_first":
            raise self.fail(f"layer {name!r} ({cls}) uses data_format 'channels_first', which "
                            "carvis does not rebuild; re-save the model channels_last")

        def act(key: str = "activation") -> Any:
            return self.activation(name, c.get(key))

        conv_common = {"strides": _tupled(c.get("strides", (1, 1))),
                       "padding": c.get("padding", "valid"),
                       "dilation_rate": _tupled(c.get("dilation_rate", (1, 1)))}
        if cls == "Conv2D":
            if self.backend == "theano":
                # Theano convolves (flips the kernel); Keras 2 flipped such kernels on load too.
                self.fixes[name] = lambda w: [w[0][::-1, ::-1, :, :].copy()] + list(w[1:])
            return L.Conv2D(c["filters"], _tupled(c["kernel_size"]), activation=act(),
                            use_bias=c.get("use_bias", True), groups=c.get("groups", 1),
                            name=name, **conv_common)
        if cls == "SeparableConv2D":
            return L.SeparableConv2D(c["filters"], _tupled(c["kernel_size"]), activation=act(),
                                     depth_multiplier=c.get("depth_multiplier", 1),
                                     use_bias=c.get("use_bias", True), name=name, **conv_common)
        if cls == "DepthwiseConv2D":
            return L.DepthwiseConv2D(_tupled(c["kernel_size"]), activation=act(),
                                     depth_multiplier=c.get("depth_multiplier", 1),
                                     use_bias=c.get("use_bias", True), name=name, **conv_common)
        if cls in ("MaxPooling2D", "AveragePooling2D"):
            return getattr(L, cls)(pool_size=_tupled(c.get("pool_size", (2, 2))),
                                   strides=_tupled(c.get("strides")),
                                   padding=c.get("padding", "valid"), name=name)
        if cls in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
            return getattr(L, cls)(keepdims=c.get("keepdims", False), name=name)
        if cls in ("Dropout", "SpatialDropout2D", "GaussianDropout"):
            return getattr(L, cls)(rate=float(c.get("rate", 0.0)), name=name)
        if cls == "GaussianNoise":
            return L.GaussianNoise(stddev=float(c.get("stddev", 0.0)), name=name)
        if cls == "Flatten":
            return L.Flatten(name=name)
        if cls == "Dense":
            return L.Dense(c["units"], activation=act(), use_bias=c.get("use_bias", True),
                           name=name)
        if cls == "Activation":
            return L.Activation(act(), name=name)
        if cls == "BatchNormalization":
            axis = c.get("axis", -1)
            if isinstance(axis, (list, tuple)):
                if len(axis) != 1:
                    raise self.unsupported(name, f"a {cls} layer over axes {axis}")
                axis = axis[0]
            if c.get("renorm"):
                raise self.unsupported(name, f"a {cls} layer with batch renormalization")
            return L.BatchNormalization(axis=axis, epsilon=float(c.get("epsilon", 1e-3)),
                                        center=c.get("center", True), scale=c.get("scale", True),
                                        name=name)
        if cls == "ReLU":
            return L.ReLU(max_value=c.get("max_value"), negative_slope=c.get("negative_slope", 0),
                          threshold=c.get("threshold", 0), name=name)
        if cls == "LeakyReLU":
            return L.LeakyReLU(negative_slope=float(c.get("negative_slope", c.get("alpha", 0.3))),
                               name=name)
        if cls == "ELU":
            return L.ELU(alpha=float(c.get("alpha", 1.0)), name=name)
        if cls == "PReLU":
            shared = c.get("shared_axes")
            return L.PReLU(shared_axes=list(shared) if shared else None, name=name)
        if cls == "Softmax":
            return L.Softmax(axis=c.get("axis", -1), name=name)
        if cls == "Cropping2D":
            return L.Cropping2D(cropping=_tupled(c.get("cropping", ((0, 0), (0, 0)))), name=name)
        if cls == "ZeroPadding2D":
            return L.ZeroPadding2D(padding=_tupled(c.get("padding", (1, 1))), name=name)
        if cls == "UpSampling2D":
            return L.UpSampling2D(size=_tupled(c.get("size", (2, 2))),
                                  interpolation=c.get("interpolation", "nearest"), name=name)
        if cls == "Reshape":
            return L.Reshape(_tupled(c["target_shape"]), name=name)
        if cls == "Permute":
            return L.Permute(_tupled(c["dims"]), name=name)
        if cls == "Rescaling":
            return L.Rescaling(scale=c.get("scale", 1.0), offset=c.get("offset", 0.0), name=name)
        if cls == "Concatenate":
            return L.Concatenate(axis=c.get("axis", -1), name=name)
        if cls in ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"):
            return getattr(L, cls)(name=name)
        if cls == "Lambda":
            if self.lambda_policy != "identity":
                raise self.fail(
                    f"layer {name!r} is a Lambda (Python code stored in the file) that carvis "
                    "cannot rebuild; re-save the model without it, or pass --lambda identity "
                    "and do its scaling in the profile (preprocess.scale/offset)")
            self.lambdas.append(name)
            return L.Identity(name=name)
        raise self.unsupported(name, f"a {cls} layer")

    def activation(self, layer_name: str, value: Any) -> Any:
        import keras

        if isinstance(value, dict):  # newer tf.keras serialises built-ins as {"config": "relu"}
            value = value.get("config") if isinstance(value.get("config"), str) else None
            if value is None:
                raise self.unsupported(layer_name, "a layer with a custom activation function")
        name = value or "linear"
        if name == "hard_sigmoid":
            return _legacy_hard_sigmoid
        try:
            keras.activations.get(name)
        except (ValueError, TypeError) as exc:
            raise self.unsupported(layer_name, f"a layer with activation {name!r}") from exc
        return name

    # ---- weights

    def load_weights(self, model: Any) -> None:
        group = self.h5.get("model_weights", self.h5)
        for layer in model.layers:
            expected = [tuple(w.shape) for w in layer.weights]
            if not expected:
                continue
            if layer.name not in group:
                raise self.fail(f"layer {layer.name!r} has no weights in the file's "
                                "model_weights; the file is incomplete, re-save the model")
            layer_group = group[layer.name]
            names = [_attr_text(n) for n in layer_group.attrs.get("weight_names", [])]
            arrays = [np.asarray(layer_group[n], dtype=np.float32) for n in names]
            fix = self.fixes.get(layer.name)
            if fix is not None:
                arrays = fix(arrays)
            found = [tuple(a.shape) for a in arrays]
            if found != expected:
                raise self.fail(f"layer {layer.name!r} stores weights of shapes {found}, but the "
                                f"rebuilt {type(layer).__name__} needs {expected}; the file is "
                                "damaged or uses an unsupported variant of the layer")
            layer.set_weights(arrays)
