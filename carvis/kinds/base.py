"""What every model kind offers the session: layers, backends per layer, explainers."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from carvis import explain
from carvis.backends import Backend


@dataclasses.dataclass(frozen=True)
class KindOptions:
    """How the session was asked to run a model (the flags)."""

    backend: str = "auto"  # auto, tensorflow or litert (--backend)
    lambda_policy: str = "error"
    num_threads: int = 1
    sha256: Callable[[], str] = dataclasses.field(default=lambda: "")  # the file's, computed once


class ModelKind:
    """A model file of one kind, opened: the session's questions answered for it."""

    name: ClassVar[str] = ""
    described: ClassVar[str] = ""  # what files it reads, for messages
    backend_name: str = ""  # what runs it: "litert" or "tensorflow"
    model: Any = None  # the Keras model where the kind has one

    def __init__(self, path: Path, options: KindOptions) -> None:
        self.path = path
        self.options = options
        self.made: list[tuple[Path, bool]] = []  # (cached conversion, converted just now)

    @classmethod
    def claims(cls, path: Path) -> bool:
        """True if this kind opens the file."""
        raise NotImplementedError

    def input_shape(self) -> tuple[int, int, int]:
        """The model's image input (H, W, C)."""
        raise NotImplementedError

    def conv_layers(self) -> list[str]:
        """Names of the spatial conv layers, in order (conv:N counts them)."""
        raise NotImplementedError

    def layer_names(self) -> list[str]:
        """Every layer's name, in model order."""
        raise NotImplementedError

    def layer_backend(self, spec: str | int) -> Backend:
        """A backend that runs the model to one layer (name, index or conv:N)."""
        raise NotImplementedError

    def explainer(self, mode: str, target: str, layer: str | None,
                  smoothgrad: tuple[int, float] | None) -> explain.Explainer:
        """The explainer of a mode for this model (built once by the session)."""
        raise NotImplementedError

    def signature(self) -> tuple[list[tuple[str, tuple]], list[tuple[str, tuple]]]:
        """(inputs, outputs) of the whole model: names and shapes without the batch axis
        (what carvis.donkeytype reads a pilot's type from)."""
        raise NotImplementedError

    def whole(self) -> Callable[[Any], dict[str, Any]]:
        """The whole model: {input name: batch} → {output name: array}, every output (a pilot
        with several inputs runs as the car runs it)."""
        raise NotImplementedError

    @property
    def conversions(self) -> int:
        """Conversions this kind made (0 when every one came from the cache)."""
        return sum(converted for _, converted in self.made)
