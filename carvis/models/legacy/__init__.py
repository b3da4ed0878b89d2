"""Rebuilding Keras 1/2 .h5 models that Keras 3 refuses, layer by layer, with their weights."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import h5py

from carvis.models.files import H5Header
from carvis.models.legacy.context import Context
from carvis.models.legacy.graph import read_graph
from carvis.models.legacy.weights import load_weights

if TYPE_CHECKING:
    import keras


def rebuild(path: Path, h5: h5py.File, header: H5Header,
            lambda_policy: str) -> tuple[keras.Model, list[str]]:
    """The file's model rebuilt in Keras 3 with its weights, and the Lambdas made identities."""
    from carvis.models.legacy.wiring import functional_model  # imports keras

    ctx = Context(path, header.dialect, header.version, header.backend, lambda_policy)
    model = functional_model(ctx, read_graph(ctx, header.config))
    load_weights(ctx, h5, model)
    return model, ctx.lambdas
