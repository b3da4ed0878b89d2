"""A Keras model's conversions to LiteRT, each made once per file content and kept in the
cache (carvis.backends.cache): one layer, several outputs for a forward-only mode, the whole
model (a pilot with other inputs), a gradient mode's whole graph, and the model's facts (what
the modes read of it). The Keras model is loaded only to make one; a later run reads them all
without TensorFlow."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from carvis import explain, models
from carvis.backends import cache as conversion_cache
from carvis.backends.convert import (
    ConversionError,
    convert,
    convert_graph,
    convert_whole,
    layer_meta,
)
from carvis.backends.litert import LayerBackend, LiteRTModel
from carvis.backends.tflite import LayerMeta, read_meta
from carvis.errors import CarvisError
from carvis.explain.export import described
from carvis.explain.guided import BUILTIN_GRADIENTS
from carvis.kinds.base import KindOptions


class KerasLiteRT:
    """The cached LiteRT conversions of one Keras model file."""

    def __init__(self, path: Path, options: KindOptions, model: Callable[[], Any],
                 made: list[tuple[Path, bool]]) -> None:
        self.path = path
        self.options = options
        self._model = model  # loads the Keras model (TensorFlow) when a conversion is made
        self.made = made  # (cached file, converted just now), shared with the kind
        self._facts: explain.ModelFacts | None = None

    def converted(self, outputs: list[str], make_names: Any) -> tuple[bytes, Path]:
        """The .tflite of some outputs, converted once per file content and cached."""
        sha = self.options.sha256()
        path = conversion_cache.cache_path(sha, outputs, self.options.lambda_policy)

        def make() -> bytes:
            model = self._model()
            names = make_names()
            return convert(model, names, layer_meta(model, names, self.path, sha))

        data, converted = conversion_cache.get_or_convert(path, sha, make)
        self.made.append((path, converted))
        return data, path

    def layer(self, spec: str | int) -> LayerBackend:
        """The model to one layer (name, index or conv:N) on LiteRT."""
        def names() -> list[str]:
            return [models.resolve_layer(self._model(), spec).name]

        data, path = self.converted([str(spec)], names)
        converted = self.made[-1][1]
        where = self.path.name if converted else f"{self.path.name} (cached {path.name})"
        return LayerBackend(LiteRTModel(data, where, self.options.num_threads))

    def whole(self) -> LiteRTModel:
        """The whole model, every input and output by name (a pilot with other inputs)."""
        sha = self.options.sha256()
        path = conversion_cache.cache_path(sha, ["@whole"], self.options.lambda_policy)
        data, converted = conversion_cache.get_or_convert(
            path, sha, lambda: convert_whole(self._model(), self.path.name))
        self.made.append((path, converted))
        return LiteRTModel(data, self.path.name, self.options.num_threads)

    def forward(self, names: tuple[str, ...], steering: str) -> LiteRTModel:
        """The layers' outputs and the steering output in one LiteRT model (converted once and
        cached); the steering output is named explain.PREDICTION."""
        outputs = [*dict.fromkeys(names), steering]
        data, _ = self.converted(outputs, lambda: outputs)
        return LiteRTModel(data, self.path.name, self.options.num_threads,
                           rename={steering: explain.PREDICTION})

    def facts(self) -> explain.ModelFacts:
        """What the modes and the HUD read of the model (layer table, steering head,
        VisualBackProp's path, CAM's weights), described from Keras once per file content and
        cached: later runs read it without TensorFlow (which costs ~4 s to import)."""
        if self._facts is None:
            sha = self.options.sha256()
            path = conversion_cache.cache_path(sha, ["@facts"], self.options.lambda_policy,
                                               suffix=".json")
            data, _ = conversion_cache.get_or_convert(
                path, sha, lambda: described(self._model(), self.path, sha).to_json(),
                read=_whole_facts)
            meta = LayerMeta.from_json(data)
            self._facts = explain.facts_from(meta, self.path.name, meta.input_shape,
                                             dict(zip(meta.layer_names, meta.layer_shapes,
                                                      strict=True)))
        return self._facts

    def describes(self, mode: str) -> bool:
        """Whether the facts hold what a mode needs (a steering head; vbp's path; CAM's
        weights)."""
        facts = self.facts()
        needs = {"vbp": bool(facts.vbp and "chain" in facts.vbp), "cam": bool(facts.cam)}
        return facts.head is not None and needs.get(mode, True)

    def gradients(self, explainer: explain.Explainer) -> LiteRTModel:
        """A gradient mode's whole graph — outputs, prediction and gradients, through
        TFLite's built-in ops — converted once per (file content, mode, layer, target, batch)
        and cached: one invoke per frame on LiteRT."""
        sha = self.options.sha256()
        key = [f"@{explainer.mode}", f"gradients={BUILTIN_GRADIENTS}",
               f"layer={explainer.layer}",
               f"target={explainer.target.name if explainer.target else ''}",
               f"batch={explainer.batch_size}", *explainer.output_layers]
        path = conversion_cache.cache_path(sha, key, self.options.lambda_policy)
        what = f"mode {explainer.mode!r} of {self.path.name}"

        def make() -> bytes:
            try:
                graph = explainer.gradient_graph(self._model())
            except ConversionError:
                raise
            except CarvisError as exc:  # a layer the built-in gradients cannot rewrite
                raise ConversionError(f"cannot convert {what} to TFLite ({exc})") from None
            meta = LayerMeta(layer=f"@{explainer.mode}", model=self.path.name,
                             model_sha256=sha, input_shape=explainer.input_shape)
            return convert_graph(graph, meta, what)

        data, converted = conversion_cache.get_or_convert(path, sha, make)
        self.made.append((path, converted))
        meta = read_meta(data)
        names = meta.outputs if meta is not None else ()
        return LiteRTModel(data, self.path.name, self.options.num_threads,
                           rename={f"out{i}": name for i, name in enumerate(names)},
                           batch=explainer.batch_size)


def _whole_facts(data: bytes) -> LayerMeta | None:
    """A kept description that holds what the facts are made of (a table with a shape per
    layer, an image input), or None: a damaged one is described again."""
    meta = conversion_cache.read_json_meta(data)
    if meta is None or not (meta.layer_names and meta.layer_types and meta.layer_shapes) or \
            len(meta.input_shape) != 3:
        return None
    return meta
