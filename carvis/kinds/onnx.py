"""An ``.onnx`` file (a PyTorch-trained pilot, or a Keras / .tflite one converted by tf2onnx) on
onnxruntime, no TensorFlow.

Its facts (layers, conv:N, the steering head found by shape when the converter lost the names,
VisualBackProp's path from the ops' attributes) are read from the graph once and cached with a
copy whose layers are graph outputs; the forward modes (activation, vbp, occlusion, rise) and
the HUD run from them. Gradient modes need the framework the model was trained in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from carvis import explain, models, settings
from carvis.backends import Backend
from carvis.backends.onnx import OnnxLayer, OnnxModel, load
from carvis.errors import CarvisError
from carvis.kinds.base import KindOptions, ModelKind


class OnnxKind(ModelKind):
    """An ONNX model on onnxruntime; maps in carvis' (h, w, c) whatever its layout."""

    name = "onnx"
    described = ".onnx (PyTorch exports, converted pilots)"
    backend_name = "onnxruntime"

    @classmethod
    def claims(cls, path: Path) -> bool:
        return path.is_file() and path.suffix.lower() == ".onnx"

    def __init__(self, path: Path, options: KindOptions) -> None:
        super().__init__(path, options)
        if options.backend not in ("auto",):
            raise CarvisError(f"{path.name} is an ONNX model: it runs on onnxruntime; use "
                              f"--backend auto (not {options.backend})")
        self.file, self.cached, _ = load(path, options.sha256(), options.num_threads)
        meta = self.file.meta
        rows = tuple(models.LayerInfo(i, n, t, tuple(s), conv, len(s) == 3)
                     for i, (n, t, s, conv) in enumerate(self.file.facts.rows))
        head = explain.SteeringHead(**{k: meta.head[k] for k in ("index", "layer", "units",
                                                                  "softmax")}) \
            if meta.head else None
        self.facts = explain.ModelFacts(
            name=path.name, input_shape=self.file.input_shape, rows=rows,
            held=dict(self.file.output_shapes), shown=meta.shown, head=head, vbp=meta.vbp,
            cam=None, meta=meta)
        self._layers: dict[str, Backend] = {}

    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.file.input_shape)

    def conv_layers(self) -> list[str]:
        return [row.name for row in self.facts.rows if row.is_conv and row.is_spatial]

    def layer_names(self) -> list[str]:
        return [row.name for row in self.facts.rows]

    def layer_backend(self, spec: str | int) -> Backend:
        name = self.facts.resolve(spec)
        return self._layers.setdefault(name, OnnxLayer(self.file, name))

    def explainer(self, mode: str, target: str, layer: str | None,
                  smoothgrad: tuple[int, float] | None) -> explain.Explainer:
        if mode in settings.GRADIENT_MODES:
            raise CarvisError(f"mode {mode!r} needs gradients, which carvis computes from a "
                              "Keras model only; on an ONNX model use vbp, occlusion, rise or "
                              "activation")
        options = {"layer": layer, "target": target, "smoothgrad": smoothgrad,
                   "forward_factory": lambda names, steering: _Forward(self.file, names, steering)}
        try:
            return explain.make_explainer(mode, self.facts, **options)
        except CarvisError as exc:
            what = "the HUD" if mode == "activation" else f"mode {mode!r}"
            raise CarvisError(f"{what} on ONNX model {self.path.name}: {exc}") from None


class _Forward:
    """One OnnxModel run as the explainers call it (explain.Forward): the named outputs and the
    steering output as explain.PREDICTION, for a batch of any size; ``max_batch``: how many
    copies occlusion and rise hand it at once."""

    backend = OnnxModel.backend

    def __init__(self, model: OnnxModel, names: tuple[str, ...], steering: str) -> None:
        self.model, self.names, self.steering = model, names, steering
        self.wanted = tuple(dict.fromkeys((*names, steering)))
        # onnxruntime takes batches (a fixed batch size is run in slices of it), but on one
        # core copies one at a time were as fast or faster (DonkeyCar's categorical pilot,
        # occlusion's 130 copies: 155 ms one by one, 170 ms by 8, 175 ms by 64); TensorFlow,
        # whose every call costs milliseconds, is the backend batches pay on.
        self.max_batch = model.max_batch or 1

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        out = self.model(batch, self.wanted)
        result = {name: out[name] for name in self.names}
        result[explain.PREDICTION] = out[self.steering]
        return result
