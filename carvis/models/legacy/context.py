"""What every rebuilding step shares: the file, its Keras version, the errors, weight fixes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from carvis.errors import CarvisError

#: A change applied to a layer's stored weights before they are set (layout, statistics).
WeightFix = Callable[[list[np.ndarray]], list[np.ndarray]]


@dataclass(frozen=True)
class Slot:
    """Where the k-th inbound tensor of a call goes among its arguments."""

    index: int


@dataclass
class Spec:
    """One layer of the saved config, already in the Keras 2 vocabulary."""

    name: str
    class_name: str
    config: dict
    inbound: list[list[tuple[str, int, int]]] = field(default_factory=list)
    # per call of a TFOpLambda: its (args, kwargs) with a Slot for each inbound tensor
    calls: list[tuple[Any, dict]] = field(default_factory=list)


@dataclass
class Context:
    """One rebuild: where the file came from, which Keras wrote it, what was found on the way."""

    path: Path
    dialect: str
    version: str = ""
    backend: str = ""
    lambda_policy: str = "error"
    lambdas: list[str] = field(default_factory=list)
    fixes: dict[str, WeightFix] = field(default_factory=dict)

    def fail(self, message: str) -> CarvisError:
        """An error about this file."""
        return CarvisError(f"{self.path}: {message}")

    def unsupported(self, name: str, kind: str) -> CarvisError:
        """kind completes "layer 'x' is ...", e.g. "a Highway layer"."""
        return self.fail(
            f"layer {name!r} is {kind}, which carvis cannot rebuild from a Keras "
            f"{self.version or '?'} file; rebuild the model in Keras 3 and save it as .keras, "
            "or export a .tflite (--backend litert)")


def tupled(value: Any) -> Any:
    """Lists from JSON as tuples, all the way down."""
    if isinstance(value, (list, tuple)):
        return tuple(tupled(v) for v in value)
    return value
