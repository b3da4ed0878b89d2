"""Keras model → .tflite with carvis metadata (needs TensorFlow); `carvis export`'s work.

A one-layer file has the model cut at the layer as its one output; a several-output file has
one output per named layer (the signature's keys are the layer names) — what vbp, cam and
the HUD read on LiteRT.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from carvis import models
from carvis.backends import litert_available
from carvis.backends.cache import file_sha256, write_atomic
from carvis.backends.litert import LiteRTModel
from carvis.backends.tflite import LayerMeta, with_metadata
from carvis.errors import CarvisError
from carvis.tfquiet import held_stderr, quiet_environment


class ConversionError(CarvisError):
    """The TFLite converter could not convert the model."""


def layer_meta(model: Any, names: list[str] | tuple[str, ...], source: Path | None,
               sha256: str | None) -> LayerMeta:
    """Describe the output layer(s) of a loaded Keras model for the .tflite metadata."""
    table = models.layer_table(model)
    convs = [info for info in table if info.is_conv]
    first = next(info for info in table if info.name == names[0])
    conv = next((k for k, info in enumerate(convs, 1) if info.name == first.name), None)
    one = len(names) == 1
    return LayerMeta(
        layer="+".join(names),
        layer_index=first.index if one else None,
        layers=len(table),
        conv=conv if one else None,
        input_shape=tuple(int(d) for d in model.inputs[0].shape[1:]),
        output_shape=tuple(int(d) for d in first.output_shape) if one else (),
        model=source.name if source else None,
        model_sha256=sha256,
        conv_layers=tuple(info.name for info in convs if info.is_spatial),
        layer_names=tuple(info.name for info in table),
        outputs=tuple(names), shown=tuple(names),
        layer_types=tuple(info.type for info in table),
        layer_shapes=tuple(info.output_shape for info in table),
    )


def convert(model: Any, names: list[str] | tuple[str, ...], meta: LayerMeta) -> bytes:
    """The model with one output per named layer, as a float32 .tflite with metadata."""
    quiet_environment()
    import keras
    import tensorflow as tf

    names = list(dict.fromkeys(names))
    try:
        if len(names) == 1:
            sub = models.truncated_model(model, model.get_layer(names[0]))
        else:
            outputs = [model.get_layer(name).output for name in names]
            sub = keras.Model(models.image_input(model), outputs, name=f"{model.name}_outputs")
    except ValueError as exc:  # a layer that needs the model's other inputs too
        raise ConversionError(f"{', '.join(names)} of model {model.name!r} depend on more "
                              f"than its image input ({str(exc).splitlines()[0][:120]})"
                              ) from None
    shape = (1,) + tuple(int(d) for d in sub.inputs[0].shape[1:])
    spec = [tf.TensorSpec(shape, tf.float32, name=sub.inputs[0].name)]

    def serve(x: Any) -> dict[str, Any]:
        values = sub(x, training=False)
        values = values if isinstance(values, (list, tuple)) else [values]
        return dict(zip(names, values, strict=True))

    what = (f"layer {names[0]!r}" if len(names) == 1 else f"layers {', '.join(names)}")
    return with_metadata(_to_tflite(sub, serve, spec, f"{what} of model {model.name!r}"), meta)


def convert_graph(graph: Any, meta: LayerMeta, what: str) -> bytes:
    """A mode's whole graph (carvis.explain.base.GradientGraph: gradients through built-in
    ops) as a float32 .tflite whose metadata names its outputs (out0, out1, ... stand for
    meta.outputs)."""
    quiet_environment()
    data = _to_tflite(graph.tracked, graph.serve, [graph.spec], what)
    graph.check()
    return with_metadata(data, dataclasses.replace(meta, outputs=tuple(graph.keys)))


def _to_tflite(sub: Any, serve: Any, specs: list, what: str) -> bytes:
    """A Keras export archive of sub (a model, or a list of them) with one endpoint, converted
    to a .tflite flatbuffer."""
    import keras
    import tensorflow as tf

    # Keras' own export tracks the Keras 3 variables; a bare tf.Module would not, and the
    # converter would then emit READ_VARIABLE ops over uninitialised resources.
    error: Exception | None = None
    with tempfile.TemporaryDirectory(prefix="carvis-export-") as tmp, held_stderr() as lines:
        try:
            archive = keras.export.ExportArchive()
            for tracked in sub if isinstance(sub, list) else [sub]:
                archive.track(tracked)
            archive.add_endpoint(name="serving_default", fn=serve, input_signature=specs)
            archive.write_out(tmp, verbose=False)
            return tf.lite.TFLiteConverter.from_saved_model(tmp).convert()
        except Exception as exc:  # noqa: BLE001 - converter errors are many and deep
            error = exc
    detail = str(error).strip().splitlines() or lines[-1:] or [type(error).__name__]
    raise ConversionError(f"cannot convert {what} to TFLite ({detail[0][:160]}); "
                          "use --backend tensorflow") from None


def convert_whole(model: Any, name: str) -> bytes:
    """The whole model (every input by its name, every output by its layer's name) as a
    float32 .tflite: a DonkeyCar pilot with several inputs, run as the car runs it."""
    quiet_environment()
    import tensorflow as tf

    inputs = list(model.inputs)
    outputs = list(getattr(model, "output_names", None) or [t.name for t in model.outputs])
    specs = [tf.TensorSpec((1, *(int(d) for d in t.shape[1:])), tf.float32,
                           name=t.name.split(":")[0]) for t in inputs]

    def serve(*xs: Any) -> dict[str, Any]:
        values = model(list(xs) if len(xs) > 1 else xs[0], training=False)
        values = values if isinstance(values, (list, tuple)) else [values]
        return dict(zip(outputs, values, strict=True))

    return _to_tflite(model, serve, specs, f"the whole of {name}")


#: Adds what modes need to an export: (model, shown layers) → (more outputs, meta fields).
Extra = Callable[[Any, list[str]], tuple[list[str], dict[str, Any]]]


def export(model_path: str | os.PathLike, layer_specs: Sequence[str | int] | str | int,
           out: str | os.PathLike, lambda_policy: str = "error", extra: Extra | None = None
           ) -> tuple[LayerMeta, float | None]:
    """Write the model's named layers (and what extra adds: the steering output, vbp's taps,
    ...) to OUT.tflite; its metadata and max |LiteRT − TF| over the outputs (or None)."""
    out = Path(out)
    if out.suffix.lower() != ".tflite":
        raise CarvisError(f"output {str(out)!r} must end in .tflite")
    if not out.resolve().parent.is_dir():
        raise CarvisError(f"output {str(out)!r}: folder does not exist; create it first")
    if models.is_tflite(model_path):
        raise CarvisError(f"{model_path}: already a .tflite; export from the .h5/.keras model")
    source = Path(model_path)
    try:
        model = models.load_model(source, lambda_policy=lambda_policy)
    except ImportError as exc:
        raise CarvisError(f"carvis export needs TensorFlow ({exc.name or exc}): "
                          "pip install tensorflow") from None
    if isinstance(layer_specs, (str, int)):  # one layer
        layer_specs = [layer_specs]
    names = list(dict.fromkeys(models.resolve_layer(model, spec).name for spec in layer_specs))
    meta = layer_meta(model, names, source, file_sha256(source)) if names else None
    outputs, fields = extra(model, names) if extra is not None else ([], {})
    outputs = list(dict.fromkeys([*names, *outputs]))
    if not outputs:
        raise CarvisError("nothing to export: give --layer/--layers/--all-conv, or --with "
                          "hud,vbp,cam, or --car")
    if meta is None:
        meta = dataclasses.replace(layer_meta(model, outputs[:1], source, file_sha256(source)),
                                   shown=(), layer_index=None, conv=None, output_shape=())
    meta = dataclasses.replace(meta, outputs=tuple(outputs), **fields)
    if len(outputs) > 1:
        meta = dataclasses.replace(meta, layer=names[0] if names else outputs[0])
    data = convert(model, outputs, meta)
    write_atomic(out, data)
    return meta, check(model, outputs, data)


def check(model: Any, names: Sequence[str], data: bytes) -> float | None:
    """Largest |LiteRT − TensorFlow| over the outputs, on one random input in [0, 1]."""
    if not litert_available():
        return None
    import keras

    lite = LiteRTModel(data)
    x = np.random.default_rng(0).uniform(0, 1, (1,) + lite.input_shape).astype(np.float32)
    sub = keras.Model(model.inputs[0], [model.get_layer(n).output for n in names])
    expected = sub(x, training=False)
    expected = expected if isinstance(expected, (list, tuple)) else [expected]
    got = lite(x)
    if len(names) == 1:
        got = {names[0]: next(iter(got.values()))}
    return max(float(np.abs(got[n] - np.asarray(e)).max()) for n, e in zip(names, expected,
                                                                          strict=True))
