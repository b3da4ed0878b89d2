"""A Keras model (``.h5`` from Keras 1, 2 or 3; ``.keras``): converted once to LiteRT and
cached, or run on TensorFlow.

``auto`` runs LiteRT when it is installed (a conversion per file content and layer, cached, so
later runs import neither TensorFlow nor Keras) and TensorFlow otherwise; a conversion that
fails under ``auto`` falls back to TensorFlow with a note. On LiteRT every mode runs from
cached conversions (carvis.kinds.keras_litert), the gradient modes from their whole graph with
the gradients through built-in ops.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from carvis import explain, models, settings
from carvis.backends import LITERT_HELP, Backend, litert_available, litert_runtime
from carvis.backends.convert import ConversionError
from carvis.backends.tensorflow import TensorFlowBackend
from carvis.errors import CarvisError
from carvis.kinds.base import KindOptions, ModelKind
from carvis.kinds.keras_litert import KerasLiteRT

log = logging.getLogger("carvis")


class KerasKind(ModelKind):
    """A Keras model file; layers from the model (or, on LiteRT, the cached conversions)."""

    name = "keras"
    described = ".h5 (Keras 1/2/3), .keras"

    def __init__(self, path: Path, options: KindOptions) -> None:
        super().__init__(path, options)
        self._model: Any = None
        self._whole: Any = None
        self._built: list[Backend] = []
        # The conversions to LiteRT, cached (they load the Keras model only when converting).
        self.litert = KerasLiteRT(path, options, lambda: self.model, self.made)
        if options.backend == "litert" and not litert_available():
            raise CarvisError(f"--backend litert needs a LiteRT runtime; {LITERT_HELP}, or use "
                              "--backend tensorflow")
        # auto: converted to LiteRT where a LiteRT runtime of its own is installed; with only
        # TensorFlow the model runs on TensorFlow itself (its tf.lite would add a conversion
        # and buy nothing).
        if options.backend == "tensorflow" or (options.backend == "auto"
                                               and litert_runtime() in (None, "tensorflow")):
            self.backend_name = "tensorflow"
            _ = self.model  # load now: a bad model file fails before any frame is read
        else:
            self.backend_name = "litert"

    @classmethod
    def claims(cls, path: Path) -> bool:
        return path.is_file()  # load_model says in one line what it cannot read

    @property
    def model(self) -> Any:
        """The Keras model, loaded on first use."""
        if self._model is None:
            try:
                self._model = models.load_model(self.path,
                                                lambda_policy=self.options.lambda_policy)
            except ImportError as exc:
                raise CarvisError(f"{self.path.name}: reading a Keras model needs TensorFlow "
                                  f"({exc.name or exc}): pip install tensorflow, or export a "
                                  ".tflite where TensorFlow is (carvis export MODEL --layer L "
                                  "-o OUT.tflite) and run that") from None
        return self._model

    def _meta(self) -> Any:
        """Metadata of a built LiteRT conversion, if any (the layer table without Keras)."""
        if self._model is not None:
            return None
        for built in self._built:
            meta = getattr(built, "meta", None)
            if meta is not None:
                return meta
        return None

    def input_shape(self) -> tuple[int, int, int]:
        if self._built:
            return tuple(self._built[0].input_shape)
        return tuple(int(d) for d in self.model.inputs[0].shape[1:])

    def signature(self) -> tuple[list[tuple[str, tuple]], list[tuple[str, tuple]]]:
        from carvis import donkeytype

        if self._model is None and self.backend_name == "litert" and \
                not zipfile.is_zipfile(self.path):  # an .h5's config: no TensorFlow
            return donkeytype.signature_of_h5(self.path)
        return donkeytype.signature_of_keras(self.model)

    def whole(self) -> Any:
        """Converted once to LiteRT (cached) with every input and output by name; TensorFlow
        when it does not convert (an LSTM) or was asked for."""
        if self._whole is not None:
            return self._whole
        if self.backend_name == "litert":
            try:
                model = self.litert.whole()
                self._whole = lambda feeds: model(feeds)
                return self._whole
            except ConversionError as exc:
                if self.options.backend != "auto":
                    raise
                log.info("note: %s; running the whole model on TensorFlow instead", exc)
        self._whole = _tf_whole(self.model)
        return self._whole

    def conv_layers(self) -> list[str]:
        meta = self._meta()
        if meta is not None and meta.conv_layers:
            return list(meta.conv_layers)
        return [info.name for info in models.layer_table(self.model)
                if info.is_conv and info.is_spatial]

    def layer_names(self) -> list[str]:
        meta = self._meta()
        if meta is not None and meta.layer_names:
            return list(meta.layer_names)
        return [layer.name for layer in self.model.layers]

    def layer_backend(self, spec: str | int) -> Backend:
        if self.backend_name == "litert":
            try:
                built = self.litert.layer(spec)
            except ConversionError as exc:
                if self.options.backend != "auto":
                    raise
                log.info("note: %s; running this layer on TensorFlow instead", exc)
                built = self._tensorflow(spec)
        else:
            built = self._tensorflow(spec)
        self._built.append(built)
        return built

    def _tensorflow(self, spec: str | int) -> Backend:
        layer = models.resolve_layer(self.model, spec)
        for built in self._built:
            if built.name == "tensorflow" and built.layer_name == layer.name:
                return built
        return TensorFlowBackend(models.truncated_model(self.model, layer), layer.name)

    def explainer(self, mode: str, target: str, layer: str | None,
                  smoothgrad: tuple[int, float] | None) -> explain.Explainer:
        kwargs = {"layer": layer, "target": target, "smoothgrad": smoothgrad}
        if self.backend_name == "litert":
            lite = self.litert
            # The cached facts where they hold what the mode needs, else the Keras model
            # (which says why it cannot).
            model = lite.facts() if lite.describes(mode) else self.model
            hook = ({"gradients": lite.gradients} if mode in settings.GRADIENT_MODES
                    else {"forward_factory": lite.forward})
            try:
                return explain.make_explainer(mode, model, **kwargs, **hook)
            except ConversionError as exc:
                if self.options.backend != "auto":
                    raise
                log.info("note: %s; running mode %s on TensorFlow instead", exc, mode)
        return explain.make_explainer(mode, self.model, **kwargs)


def _tf_whole(model: Any) -> Any:
    """The whole Keras model through one tf.function, every input and output by name."""
    import tensorflow as tf

    names = list(getattr(model, "output_names", None) or [t.name for t in model.outputs])
    inputs = [t.name.split(":")[0] for t in model.inputs]

    @tf.function(reduce_retracing=True)
    def run(xs: Any) -> Any:
        return model(xs if len(xs) > 1 else xs[0], training=False)

    def whole(feeds: Any) -> dict[str, Any]:
        values = run([tf.constant(feeds[name]) for name in inputs])
        values = values if isinstance(values, (list, tuple)) else [values]
        return {n: np.asarray(v) for n, v in zip(names, values, strict=True)}

    return whole
