"""One model, and what runs it: its kind (carvis.kinds' table), a backend per layer, explainers.

The session opens a model file through the kind that claims it and keeps what it builds —
a backend per layer spec, an explainer per (mode, target, layer, smoothgrad) — so each is
built once. What differs between formats (which backend runs, what a mode needs, where the
layer table comes from) is the kind's; the session has no branch per format.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from carvis import explain, kinds, limits
from carvis.backends import BACKENDS, Backend
from carvis.backends import cache as conversion_cache
from carvis.errors import CarvisError
from carvis.tfquiet import quiet_environment

log = logging.getLogger("carvis")

RUNTIMES = {"litert": "LiteRT", "tensorflow": "TensorFlow"}


class ModelSession:
    """One model and the backends for its layers (tensorflow, litert, auto), built once each."""

    def __init__(self, path: str | Path, backend: str = "auto", lambda_policy: str = "error",
                 num_threads: int = 1) -> None:
        self.path = Path(path)
        if backend not in BACKENDS:
            raise CarvisError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
        if not self.path.exists():
            raise CarvisError(f"{path}: model file not found; check the path")
        limits.check_regular(self.path, "model")  # a FIFO would block reading forever
        self.requested = backend
        self.lambda_policy = lambda_policy
        self._sha256: str | None = None
        self._backends: dict[str, Backend] = {}
        self._explainers: dict[tuple, explain.Explainer] = {}
        # Only settings here: importing TensorFlow (quietly) is models.load_model's business;
        # a .tflite, or a layer LiteRT finds in the cache, must not pull it in at all.
        quiet_environment()
        options = kinds.KindOptions(backend, lambda_policy, num_threads, lambda: self.sha256)
        self.kind = kinds.kind_of(self.path)(self.path, options)

    # -- the model and its layers ---------------------------------------------------------------
    @property
    def backend_name(self) -> str:
        """What runs the model: "litert" or "tensorflow"."""
        return self.kind.backend_name

    @property
    def model(self) -> Any:
        """The Keras model, where the kind has one (None for a .tflite)."""
        return self.kind.model

    @property
    def sha256(self) -> str:
        """The model file's content hash (computed once)."""
        if self._sha256 is None:
            self._sha256 = conversion_cache.file_sha256(self.path)
        return self._sha256

    @property
    def conversions(self) -> int:
        """.tflite conversions this session made (0 if all came from the cache)."""
        return self.kind.conversions

    def input_shape(self) -> tuple[int, int, int]:
        """The model's image input (H, W, C)."""
        return self.kind.input_shape()

    def conv_layers(self) -> list[str]:
        """Names of the model's spatial conv layers, in order (for 'next layer' keys)."""
        return self.kind.conv_layers()

    def layer_names(self) -> list[str]:
        """All layer names in model order, without loading Keras when LiteRT has them."""
        return self.kind.layer_names()

    def backend(self, layer_spec: str | int) -> Backend:
        """The backend for a layer spec (name, index or conv:N), built on first use."""
        key = str(layer_spec).strip()
        if key not in self._backends:
            self._backends[key] = self.kind.layer_backend(layer_spec)
        return self._backends[key]

    def explainer(self, mode: str, target: str, layer: str | None,
                  smoothgrad: tuple[int, float] | None = None) -> explain.Explainer:
        """The explainer for a mode (the HUD's, for activation), built once and kept; the
        channel is the caller's to pick from its outputs."""
        key = (mode, target, layer, smoothgrad)
        if key not in self._explainers:
            self._explainers[key] = self.kind.explainer(*key)
        return self._explainers[key]

    def describe(self, layer: str) -> str:
        """One line: the model, the backend that runs it, the layer, and any conversion."""
        runtime = RUNTIMES.get(self.backend_name, self.backend_name)
        line = f"model {self.path.name} on {runtime}, layer {layer!r}"
        made = [str(p) for p, converted in self.kind.made if converted]
        reused = [str(p) for p, converted in self.kind.made if not converted]
        if made:
            line += f"; converted to .tflite once, kept in {', '.join(made)}"
        if reused:
            line += f"; using the conversion cached in {', '.join(reused)}"
        return line
