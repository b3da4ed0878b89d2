"""The table of model kinds: a model file's kind → what loads it, what runs it, what it offers.

:class:`carvis.session.ModelSession` looks a file up here and asks its kind for layer backends,
explainers and the layer table; a new model format is one entry and one module.

| kind | files | runs on | offers |
|---|---|---|---|
| ``tflite`` | a ``.tflite`` (carvis' exports, a car's own file) | LiteRT | the layers and heads its metadata or ops show; forward modes |
| ``onnx`` | ``.onnx`` (PyTorch exports, converted pilots) | onnxruntime (its layers as outputs: a copy read once, cached) | the layers, heads and vbp path its graph shows; forward modes |
| ``keras`` | ``.h5`` (Keras 1/2/3), ``.keras`` | LiteRT (converted once, cached) or TensorFlow | every layer, every mode |
"""

from __future__ import annotations

from pathlib import Path

from carvis.errors import CarvisError
from carvis.kinds.base import KindOptions, ModelKind
from carvis.kinds.keras import KerasKind
from carvis.kinds.onnx import OnnxKind
from carvis.kinds.tflite import TfliteKind

#: Looked at in order: the first kind that claims a file opens it.
KINDS: tuple[type[ModelKind], ...] = (TfliteKind, OnnxKind, KerasKind)


def kind_of(path: Path) -> type[ModelKind]:
    """The kind that opens a model file (one line naming the kinds when none does)."""
    for kind in KINDS:
        if kind.claims(path):
            return kind
    raise CarvisError(f"{path.name}: not a model file carvis reads; give "
                      f"{', '.join(k.described for k in KINDS)}")


__all__ = ["KINDS", "KindOptions", "ModelKind", "kind_of"]
