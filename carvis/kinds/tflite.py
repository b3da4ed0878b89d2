"""A ``.tflite`` file: carvis' own exports and a car's own model, on LiteRT, no TensorFlow.

A layer spec must name a layer the file holds; the forward-only modes and the HUD run from
what its metadata (or, for a car's own file, its ops) says; gradient modes need the Keras model
on a machine with TensorFlow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from carvis import explain, models, settings
from carvis.backends import LITERT_HELP, Backend, flatgraph, litert_available
from carvis.backends.litert import LayerBackend, LiteRTModel, load
from carvis.backends.tflite import read_tflite
from carvis.errors import CarvisError
from carvis.kinds.base import KindOptions, ModelKind


class TfliteKind(ModelKind):
    """A .tflite on LiteRT; its facts (layers, head, vbp geometry) from metadata or ops."""

    name = "tflite"
    described = ".tflite"
    backend_name = "litert"

    def __init__(self, path: Path, options: KindOptions) -> None:
        super().__init__(path, options)
        if options.backend == "tensorflow":
            raise CarvisError(f"{path.name} is a .tflite model: it runs on LiteRT only; use "
                              "--backend litert (or auto), or give the .h5/.keras model for "
                              "--backend tensorflow")
        if not litert_available():
            raise CarvisError(f"{path.name}: a .tflite needs a LiteRT runtime; {LITERT_HELP}")
        self.file = load(path, options.num_threads)
        self._data = read_tflite(path)
        # A car's own file reads its layers through outputs added to its graph; each backend
        # and explainer gets a file with only the outputs it reads (every added output costs
        # the invoke: 9% on a DonkeyCar pilot with all of them).
        self._tensors = flatgraph.describe(self._data, path.name)[1] \
            if self.file.meta is not None and self.file.meta.derived else None
        self._models: dict[tuple[str, ...], Any] = {}
        if self.file.meta is None:
            raise CarvisError(f"{path.name}: holds several subgraphs (an LSTM's loop, as "
                              "DonkeyCar's rnn .tflite does); carvis reads the layers of a "
                              "one-subgraph file: give the .h5")
        self.facts = explain.facts_from(self.file.meta, path.name, self.file.input_shape,
                                        self.file.output_shapes)
        self._layers: dict[str, Backend] = {}

    @classmethod
    def claims(cls, path: Path) -> bool:
        return path.is_file() and models.is_tflite(path)

    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.file.input_shape)

    def signature(self) -> tuple[list[tuple[str, tuple]], list[tuple[str, tuple]]]:
        from carvis.donkeytype import signature_of_tflite

        return signature_of_tflite(read_tflite(self.path))

    def whole(self) -> Any:
        _, outputs = self.signature()
        model = self._model(tuple(name for name, _ in outputs))
        names = tuple(name for name, _ in outputs if name in model.output_shapes)
        return lambda feeds: model(feeds, names)

    def conv_layers(self) -> list[str]:
        facts = self.facts
        held = [n for n in facts.shown if n in facts.held]
        return held or [row.name for row in facts.rows if row.is_conv and row.is_spatial
                        and row.name in facts.held]

    def layer_names(self) -> list[str]:
        return [row.name for row in self.facts.rows]

    def layer_backend(self, spec: str | int) -> Backend:
        name = self.facts.resolve(spec)
        if name not in self._layers:
            self._layers[name] = LayerBackend(self._model((name,)), name)
        return self._layers[name]

    def _model(self, names: tuple[str, ...]) -> Any:
        """The file with these outputs readable (a car's own: only these; carvis' export:
        the file as it is)."""
        if self._tensors is None or not set(names) <= set(self._tensors):
            return self.file
        key = tuple(sorted(set(names)))
        if key not in self._models:
            data = flatgraph.with_outputs(self._data, {n: self._tensors[n] for n in key})
            self._models[key] = LiteRTModel(data, self.path.name, self.options.num_threads,
                                            meta=self.file.meta)
        return self._models[key]

    def explainer(self, mode: str, target: str, layer: str | None,
                  smoothgrad: tuple[int, float] | None) -> explain.Explainer:
        if mode in settings.GRADIENT_MODES:
            raise CarvisError(f"mode {mode!r} needs gradients, which a .tflite does not hold: "
                              "give the .h5/.keras model (on the laptop, where TensorFlow is, "
                              "carvis converts its gradient graph once; LiteRT runs it from "
                              "then on)")
        try:
            return explain.make_explainer(mode, self.facts, layer=layer, target=target,
                                          smoothgrad=smoothgrad, forward_factory=self._forward)
        except CarvisError as exc:
            what = "the HUD" if mode == "activation" else f"mode {mode!r}"
            raise CarvisError(f"{what} needs the Keras model (.h5/.keras) or a .tflite "
                              f"exported for it: {exc}") from None

    def _forward(self, names: tuple[str, ...], steering: str) -> explain.Forward:
        """The named outputs and the steering output (as explain.PREDICTION), read from the one
        interpreter after one invoke."""
        wanted = tuple(dict.fromkeys((*names, steering)))
        model = self._model(wanted)

        def forward(batch: Any) -> dict[str, Any]:
            out = model(batch, wanted)
            result = {name: out[name] for name in names}
            result[explain.PREDICTION] = out[steering]
            return result

        return forward
