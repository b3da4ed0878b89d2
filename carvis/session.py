"""One model, and what runs it: a backend per layer, explainers, and the choice between them.

The policy lives here and nowhere else. ``auto`` runs LiteRT when ai-edge-litert is installed
(a Keras model converted once per file content and cached, so later runs import neither
TensorFlow nor Keras) and TensorFlow otherwise; a conversion that fails under ``auto`` falls
back to TensorFlow with a note. A .tflite always runs on LiteRT and never imports TensorFlow:
a layer spec given with it must name a layer it holds, and the forward-only modes and the HUD
run from what its metadata (or, for a car's own file, its ops) says; gradient modes need the
Keras model on a machine with TensorFlow.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from carvis import explain, models, settings
from carvis.backends import BACKENDS, LITERT_HELP, Backend, litert_available
from carvis.backends import cache as conversion_cache
from carvis.backends.convert import ConversionError, convert, layer_meta
from carvis.backends.litert import LayerBackend, LiteRTModel, load
from carvis.backends.tensorflow import TensorFlowBackend
from carvis.errors import CarvisError
from carvis.tfquiet import quiet_environment

log = logging.getLogger("carvis")


class ModelSession:
    """One model and the backends for its layers (tensorflow, litert, auto), built once each."""

    def __init__(self, path: str | Path, backend: str = "auto", lambda_policy: str = "error",
                 num_threads: int = 1) -> None:
        self.path = Path(path)
        if backend not in BACKENDS:
            raise CarvisError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
        if not self.path.exists():
            raise CarvisError(f"{path}: model file not found; check the path")
        self.requested = backend
        self.lambda_policy = lambda_policy
        self.num_threads = num_threads
        self.is_tflite = self.path.is_file() and models.is_tflite(self.path)
        self.conversions = 0  # .tflite conversions this session did (0 if all were cached)
        self.cache_files: list[tuple[Path, bool]] = []  # (cached .tflite, converted just now)
        self._backends: dict[str, Backend] = {}
        self._explainers: dict[tuple, explain.Explainer] = {}
        self._model: Any = None
        self._sha256: str | None = None
        self._file: LiteRTModel | None = None  # a .tflite: every output it holds
        self._facts: explain.ModelFacts | None = None
        # Only settings here: importing TensorFlow (quietly) is models.load_model's business;
        # a .tflite, or a layer LiteRT finds in the cache, must not pull it in at all.
        quiet_environment()
        if self.is_tflite:
            if backend == "tensorflow":
                raise CarvisError(f"{self.path.name} is a .tflite model: it runs on LiteRT only; "
                                  "use --backend litert (or auto), or give the .h5/.keras "
                                  "model for --backend tensorflow")
            if not litert_available():
                raise CarvisError(f"{self.path.name}: .tflite models need ai-edge-litert; "
                                  f"{LITERT_HELP}")
            self._file = load(self.path, num_threads)
            self._facts = explain.facts_from(self._file.meta, self.path.name,
                                             self._file.input_shape, self._file.output_shapes)
            self.backend_name = "litert"
        elif backend == "litert" and not litert_available():
            raise CarvisError(f"--backend litert needs ai-edge-litert; {LITERT_HELP}, "
                              "or use --backend tensorflow")
        elif backend == "tensorflow" or (backend == "auto" and not litert_available()):
            self.backend_name = "tensorflow"
            _ = self.model  # load now: a bad model file fails before any frame is read
        else:
            self.backend_name = "litert"

    # -- the model and its layers ---------------------------------------------------------------
    @property
    def model(self) -> Any:
        """The Keras model, loaded on first use (None for a .tflite, which has none)."""
        if self.is_tflite:
            return None
        if self._model is None:
            try:
                self._model = models.load_model(self.path, lambda_policy=self.lambda_policy)
            except ImportError as exc:
                raise CarvisError(f"{self.path.name}: reading a Keras model needs TensorFlow "
                                  f"({exc.name or exc}): pip install tensorflow, or export a "
                                  ".tflite where TensorFlow is (carvis export MODEL --layer L "
                                  "-o OUT.tflite) and run that") from None
        return self._model

    @property
    def sha256(self) -> str:
        """The model file's content hash (computed once)."""
        if self._sha256 is None:
            self._sha256 = conversion_cache.file_sha256(self.path)
        return self._sha256

    def _meta(self) -> Any:
        """Metadata of a built LiteRT backend (a .tflite's or a cached conversion's), if any."""
        for built in [self._file, *self._backends.values()]:
            meta = getattr(built, "meta", None)
            if meta is not None:
                return meta
        return None

    def input_shape(self) -> tuple[int, int, int]:
        """The model's input (H, W, C)."""
        built = self._file or next(iter(self._backends.values()), None)
        if built is not None:
            return tuple(built.input_shape)
        return tuple(int(d) for d in self.model.inputs[0].shape[1:])

    def conv_layers(self) -> list[str]:
        """Names of the model's spatial conv layers, in order (for 'next layer' keys)."""
        if self._facts is not None:
            facts = self._facts
            held = [n for n in facts.shown if n in facts.held]
            return held or [row.name for row in facts.rows if row.is_conv and row.is_spatial
                            and row.name in facts.held]
        meta = self._meta() if self._model is None else None
        if meta is not None and meta.conv_layers:
            return list(meta.conv_layers)
        return [info.name for info in models.layer_table(self.model)
                if info.is_conv and info.is_spatial]

    def layer_names(self) -> list[str]:
        """All layer names in model order, without loading Keras when LiteRT has them."""
        meta = self._meta() if self._model is None else None
        if self._facts is not None:
            return [row.name for row in self._facts.rows]
        if meta is not None and meta.layer_names:
            return list(meta.layer_names)
        return [layer.name for layer in self.model.layers]

    # -- backends -------------------------------------------------------------------------------
    def backend(self, layer_spec: str | int) -> Backend:
        """The backend for a layer spec (name, index or conv:N), built on first use."""
        key = str(layer_spec).strip()
        if key not in self._backends:
            if self._facts is not None:
                built: Backend = self._file_layer(self._facts.resolve(layer_spec))
            elif self.backend_name == "litert":
                try:
                    built = self._litert(layer_spec)
                except ConversionError as exc:
                    if self.requested != "auto":
                        raise
                    log.info("note: %s; running this layer on TensorFlow instead", exc)
                    built = self._tensorflow(layer_spec)
            else:
                built = self._tensorflow(layer_spec)
            self._backends[key] = built
        return self._backends[key]

    def _file_layer(self, name: str) -> Backend:
        for built in self._backends.values():
            if built.layer_name == name:
                return built
        return LayerBackend(self._file, name)

    def _tensorflow(self, spec: str | int) -> Backend:
        layer = models.resolve_layer(self.model, spec)
        for built in self._backends.values():
            if built.name == "tensorflow" and built.layer_name == layer.name:
                return built
        return TensorFlowBackend(models.truncated_model(self.model, layer), layer.name)

    def _litert(self, spec: str | int) -> Backend:
        path = conversion_cache.cache_path(self.sha256, [str(spec)], self.lambda_policy)

        def make() -> bytes:
            layer = models.resolve_layer(self.model, spec)
            names = [layer.name]
            return convert(self.model, names, layer_meta(self.model, names, self.path,
                                                         self.sha256))

        data, converted = conversion_cache.get_or_convert(path, self.sha256, make)
        self._note(converted, path)
        where = self.path.name if converted else f"{self.path.name} (cached {path.name})"
        return LayerBackend(LiteRTModel(data, where, self.num_threads))

    def _note(self, converted: bool, path: Path) -> None:
        """Count a conversion (or its reuse from the cache) for describe()."""
        self.conversions += converted
        self.cache_files.append((path, converted))

    def forward(self, names: tuple[str, ...], steering: str) -> LiteRTModel:
        """The layers' outputs and the steering output in one LiteRT model (converted once
        and cached); the steering output is named explain.PREDICTION."""
        outputs = [*dict.fromkeys(names), steering]
        path = conversion_cache.cache_path(self.sha256, outputs, self.lambda_policy)

        def make() -> bytes:
            meta = layer_meta(self.model, outputs, self.path, self.sha256)
            return convert(self.model, outputs, meta)

        data, converted = conversion_cache.get_or_convert(path, self.sha256, make)
        self._note(converted, path)
        return LiteRTModel(data, self.path.name, self.num_threads,
                           rename={steering: explain.PREDICTION})

    def _file_forward(self, names: tuple[str, ...], steering: str) -> explain.Forward:
        """The named outputs of the .tflite and its steering output (as explain.PREDICTION),
        read from the one interpreter after one invoke."""
        model = self._file
        wanted = tuple(dict.fromkeys((*names, steering)))

        def forward(batch: Any) -> dict[str, Any]:
            out = model(batch, wanted)
            result = {name: out[name] for name in names}
            result[explain.PREDICTION] = out[steering]
            return result

        return forward

    def describe(self, layer: str) -> str:
        """One line: the model, the backend that runs it, the layer, and any conversion."""
        backend = {"litert": "LiteRT", "tensorflow": "TensorFlow"}.get(self.backend_name,
                                                                      self.backend_name)
        line = f"model {self.path.name} on {backend}, layer {layer!r}"
        made = [str(p) for p, converted in self.cache_files if converted]
        reused = [str(p) for p, converted in self.cache_files if not converted]
        if made:
            line += f"; converted to .tflite once, kept in {', '.join(made)}"
        if reused:
            line += f"; using the conversion cached in {', '.join(reused)}"
        return line

    # -- explainers -----------------------------------------------------------------------------
    def explainer(self, mode: str, target: str, layer: str | None,
                  smoothgrad: tuple[int, float] | None = None) -> explain.Explainer:
        """The explainer for a mode (the HUD's, for activation), built once and kept; the
        channel is the caller's to pick from its outputs."""
        key = (mode, target, layer, smoothgrad)
        if key not in self._explainers:
            self._explainers[key] = self._build_explainer(*key)
        return self._explainers[key]

    def _build_explainer(self, mode: str, target: str, layer: str | None,
                         smoothgrad: tuple[int, float] | None) -> explain.Explainer:
        kwargs = {"layer": layer, "target": target, "smoothgrad": smoothgrad}
        if self._facts is not None:
            if mode in settings.GRADIENT_MODES:
                raise CarvisError(f"mode {mode!r} needs gradients, which TFLite's built-in ops "
                                  "cannot compute: it needs the laptop (the .h5/.keras model "
                                  "with --backend tensorflow on a machine with TensorFlow)")
            try:
                return explain.make_explainer(mode, self._facts, **kwargs,
                                              forward_factory=self._file_forward)
            except CarvisError as exc:
                what = "the HUD" if mode == "activation" else f"mode {mode!r}"
                raise CarvisError(f"{what} needs the Keras model (.h5/.keras) or a .tflite "
                                  f"exported for it: {exc}") from None
        if mode in settings.GRADIENT_MODES:
            explain.require_tensorflow(mode, "litert" if self.requested == "litert"
                                       else "tensorflow")
        elif self.backend_name == "litert":
            try:
                return explain.make_explainer(mode, self.model, **kwargs,
                                              forward_factory=self.forward)
            except ConversionError as exc:
                if self.requested != "auto":
                    raise
                log.info("note: %s; running mode %s on TensorFlow instead", exc, mode)
        return explain.make_explainer(mode, self.model, **kwargs)
