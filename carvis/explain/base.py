"""The base of every mode (pytorch-grad-cam's BaseCAM shape).

:class:`Explainer` builds ONE multi-output Keras model (the layers the mode needs, plus the
steering output) and, for the gradient modes, the gradient of a target score, all inside one
``tf.function`` with a fixed input signature, built once. A mode is a small subclass that says
which layers and gradients it needs and overrides :meth:`Explainer.reduce`, which turns those
arrays into a 2-D float map in numpy. Or it is handed a ``forward`` callable (e.g. a
several-output LiteRT model) and builds nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import numpy as np

from carvis import models
from carvis.errors import CarvisError
from carvis.explain.facts import ModelFacts
from carvis.explain.graph import output_layer_names, steering_head
from carvis.explain.guided import gradient_clone
from carvis.explain.targets import Target, make_target

log = logging.getLogger("carvis")

PREDICTION = "@prediction"
INPUT = "@input"


class Forward(Protocol):
    """Runs a model: (B, H, W, C) float32 → named arrays (layers, '@prediction', gradients).

    A forward may carry a ``backend`` attribute naming what runs it (default "litert")."""

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...


@dataclasses.dataclass
class Explanation:
    """A raw float 2-D map, the steering output for the frame, and the arrays behind them."""

    map: np.ndarray
    prediction: np.ndarray | None
    outputs: dict[str, np.ndarray]


@dataclasses.dataclass
class GradientGraph:
    """A mode's graph to convert: serve(x) returns outputs named out0, out1, ... which stand,
    once traced, for keys[0], keys[1], ... (layers, '@prediction', '@grad:input'); tracked:
    the Keras models it runs; check(): after the trace, CarvisError if the target does not
    depend on the map layer."""

    serve: Callable[[Any], dict[str, Any]]
    tracked: list[Any]
    keys: list[str]
    spec: Any
    check: Callable[[], None]


class Explainer:
    """Base of the modes: builds the multi-output graph once, runs it per frame.

    Subclasses set ``wrt`` / ``guided`` / ``uses_target`` and override :meth:`reduce` (and
    :meth:`_output_layers` when they read layers of their own choosing). ``forward`` replaces
    the built TensorFlow graph for forward-only modes (e.g. a multi-output LiteRT model
    returning ``output_layers`` and ``'@prediction'``); ``forward_factory(output_layers,
    steering_layer)`` builds one once the explainer knows which layers it needs;
    ``gradients(explainer)`` gives a gradient mode's whole graph run elsewhere (LiteRT, from
    :meth:`gradient_graph` converted).
    :attr:`backend` says what runs the forward part: "tensorflow" for the built graph, else
    the forward's own ``backend`` attribute (default "litert").
    """

    mode: ClassVar[str] = ""
    wrt: ClassVar[tuple[str, ...]] = ()       # "layer" and/or "input": gradients to compute
    guided: ClassVar[bool] = False            # input gradients through the guided clone
    uses_target: ClassVar[bool] = False

    def __init__(self, model: Any, *, layer: str | int | None = None,
                 channel: int | str = "mean", target: str | Target | None = None,
                 smoothgrad: tuple[int, float] | None = None,
                 forward: Forward | None = None,
                 forward_factory: Callable[[tuple[str, ...], str], Forward] | None = None,
                 gradients: Callable[[Explainer], Forward] | None = None,
                 seed: int = 0) -> None:
        self.model = model  # a Keras model, or a .tflite's ModelFacts (forward-only modes)
        facts = isinstance(model, ModelFacts)
        self.head = model.steering_head() if facts else steering_head(model)
        self.channel = channel
        self.layer = self._resolve_layer(layer)
        self.target = (make_target(target, self.head, model, self.layer)
                       if self.uses_target else None)
        n, sigma = smoothgrad or (0, 0.0)
        if n and self.mode not in ("saliency", "guided"):
            raise CarvisError(f"smoothgrad applies to saliency and guided, not to mode "
                              f"{self.mode!r}")
        if not 0 <= int(n) <= 256 or not 0.0 <= float(sigma) <= 1.0:
            raise CarvisError(f"smoothgrad {n},{sigma} is not valid; N in 0..256 noisy copies, "
                              "SIGMA in 0..1 (a fraction of the input's value range)")
        self.smooth_n, self.smooth_sigma = int(n), float(sigma)
        self._rng = np.random.default_rng(seed)
        self.input_shape = tuple(int(d) for d in (model.input_shape if facts
                                                  else model.inputs[0].shape[1:]))
        self.batch_size = 1 + self.smooth_n
        # The model's other outputs (a two-output pilot's throttle) come out of the same run.
        outputs = ((getattr(model.meta, "head", None) or {}).get("outputs", ()) if facts
                   else output_layer_names(model))
        self.other_outputs = tuple(n for n in outputs if n != self.head.layer)
        self.output_layers = tuple(dict.fromkeys(self._output_layers() + self.other_outputs))
        if (forward is not None or forward_factory is not None) and self.wrt:
            raise CarvisError(f"mode {self.mode!r} needs gradients; it runs on the TensorFlow "
                              "backend only (--backend tensorflow)")
        if forward is None and forward_factory is not None:
            forward = forward_factory(self.output_layers, self.head.layer)
        if forward is None and gradients is not None and self.wrt:
            forward = gradients(self)  # the whole graph, gradients included, run elsewhere
        if forward is None:
            self.backend = "tensorflow"
            self._forward = self._build()
        else:
            self.backend = str(getattr(forward, "backend", "litert"))
            self._forward = forward
        log.debug("explainer %s on %s: layers %s", self.mode, self.backend, self.output_layers)
        self._big = np.empty((self.batch_size,) + self.input_shape, np.float32)

    # -- what a mode needs (overridable) -------------------------------------------------------
    def _resolve_layer(self, layer: str | int | None) -> str | None:
        if layer is None:
            return None
        if isinstance(self.model, ModelFacts):
            return self.model.resolve(layer)
        return models.resolve_layer(self.model, layer).name

    def _output_layers(self) -> tuple[str, ...]:
        """The layers whose outputs reduce() reads (the forward part's outputs)."""
        names = [self.layer] if self.layer is not None and "layer" in self.wrt else []
        if self.target is not None and self.target.layer is not None:
            names.append(self.target.layer)
        return tuple(dict.fromkeys(names))

    def reduce(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        """The 2-D float map from the forward part's outputs (and gradients)."""
        raise NotImplementedError

    # -- the one graph -------------------------------------------------------------------------
    def _graph(self, model: Any, builtin: bool = False) -> tuple[Any, list[Any], list]:
        """The forward part as a function of the input batch (outputs and gradients by key),
        the Keras models it runs, and a list that names the map layer after a trace if the
        target does not depend on it. builtin: every gradient through TFLite's built-in ops
        (carvis.explain.guided.gradient_clone), to be converted for LiteRT."""
        import keras
        import tensorflow as tf

        names = list(self.output_layers)
        tensors = [model.get_layer(n).output for n in names] + [model.outputs[self.head.index]]
        forward = keras.Model(model.inputs[0], tensors, name=f"{model.name}_{self.mode}")
        keys = names + [PREDICTION]
        guided = gradient_clone(forward, guided=True, builtin=builtin) if self.guided else None
        if builtin and self.wrt:
            forward = gradient_clone(forward, builtin=True)
        target = self.target
        wrt = self.wrt
        layer_key = self.layer
        unconnected: list[str | None] = []

        def values_and_score(net: Any, x: Any) -> tuple[dict[str, Any], Any]:
            values = dict(zip(keys, _listed(net(x, training=False)), strict=True))
            if target.layer is not None:
                return values, tf.reduce_sum(target(values[target.layer]))
            return values, tf.reduce_sum(target(values[PREDICTION]))

        def run(x: Any) -> dict[str, Any]:
            if not wrt:
                return dict(zip(keys, _listed(forward(x, training=False)), strict=True))
            result: dict[str, Any] = {}
            plain = "layer" in wrt or ("input" in wrt and guided is None)
            if plain:
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    values, total = values_and_score(forward, x)
                sources = []
                if "layer" in wrt:
                    sources.append(("@grad:layer", values[layer_key]))
                if "input" in wrt and guided is None:
                    sources.append(("@grad:input", x))
                grads = tape.gradient(total, [s for _, s in sources])
                if "layer" in wrt and grads[0] is None:
                    # Raised after tracing: TensorFlow rewords what is raised inside it.
                    unconnected.append(layer_key)
                    grads[0] = tf.zeros_like(values[layer_key])
                result.update(values)
                result.update({k: g for (k, _), g in zip(sources, grads, strict=True)})
            if guided is not None:
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    gvalues, gtotal = values_and_score(guided, x)
                result["@grad:input"] = tape.gradient(gtotal, x)
                if not plain:
                    result.update(gvalues)
            return result

        return run, [m for m in (forward, guided) if m is not None], unconnected

    def _build(self) -> Forward:
        """The forward part as one tf.function (outputs and gradients), traced now."""
        import tensorflow as tf

        body, _, unconnected = self._graph(self.model)
        spec = tf.TensorSpec((self.batch_size,) + self.input_shape, tf.float32)
        run = tf.function(body, input_signature=[spec], reduce_retracing=True)
        # Trace now, not on the first frame (a live switch builds beside the loop); TF's
        # "frequent retracing" warning counts every explainer's graph as one function's.
        logger = tf.get_logger()
        level = logger.level
        logger.setLevel("ERROR")
        try:
            run(np.zeros((self.batch_size,) + self.input_shape, np.float32))
        finally:
            logger.setLevel(level)
        if unconnected:
            raise _unconnected(self.target.name, self.layer)

        def call(batch: np.ndarray) -> dict[str, np.ndarray]:
            return {k: v.numpy() for k, v in run(batch).items()}

        return call

    def gradient_graph(self, model: Any) -> GradientGraph:
        """This mode's whole graph (gradients included, through built-in ops), to convert to
        a .tflite. model: the Keras model (the explainer may hold only its facts)."""
        import tensorflow as tf

        body, tracked, unconnected = self._graph(model, builtin=True)
        keys: list[str] = []

        def serve(x: Any) -> dict[str, Any]:
            values = body(x)
            keys[:] = list(values)
            return {f"out{i}": v for i, v in enumerate(values.values())}

        def check() -> None:
            if unconnected:
                raise _unconnected(self.target.name, self.layer)

        spec = tf.TensorSpec((self.batch_size,) + self.input_shape, tf.float32, name="input")
        return GradientGraph(serve, tracked, keys, spec, check)

    # -- per frame -----------------------------------------------------------------------------
    def explain(self, batch: np.ndarray) -> Explanation:
        """Map and prediction for one model input (1, H, W, C) float32."""
        batch = np.asarray(batch, np.float32)
        if batch.shape[1:] != self.input_shape:
            raise CarvisError(f"input shape {batch.shape[1:]} does not match the model's "
                              f"{self.input_shape}")
        if self.smooth_n:
            big = self._big
            big[:] = batch[0]
            span = float(batch.max() - batch.min()) or 1.0
            noise = self._rng.standard_normal(big[1:].shape, dtype=np.float32)
            big[1:] += noise * np.float32(self.smooth_sigma * span)
            batch = big
        outputs = self._forward(batch)
        prediction = outputs.get(PREDICTION)
        pred = None if prediction is None else np.asarray(prediction)[0].astype(np.float32)
        amap = np.asarray(self.reduce(outputs), np.float32)
        return Explanation(amap, pred, outputs)

    __call__ = explain


def _unconnected(target: str, layer: str | None) -> CarvisError:
    """The refusal of a target whose score does not depend on the map layer (no gradient)."""
    return CarvisError(f"target {target!r} does not depend on layer {layer!r} (it comes before "
                       "that layer, or on another branch), so its gradient there is empty; "
                       f"choose a target layer after {layer!r} or a map layer (--layer) before "
                       "the target's")


def _listed(outputs: Any) -> list[Any]:
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
