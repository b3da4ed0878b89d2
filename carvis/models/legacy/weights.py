"""The saved weights of a Keras 1/2 HDF5 file, set on the rebuilt layers by layer name."""

from __future__ import annotations

from typing import Any

import h5py
import numpy as np

from carvis.models.files import attr_text
from carvis.models.legacy.context import Context


def load_weights(ctx: Context, h5: h5py.File, model: Any) -> None:
    """Set every layer's weights from the file, after the layer's fix; one line if they differ."""
    group = h5.get("model_weights", h5)
    for layer in model.layers:
        expected = [tuple(w.shape) for w in layer.weights]
        if not expected:
            continue
        if layer.name not in group:
            raise ctx.fail(f"layer {layer.name!r} has no weights in the file's "
                           "model_weights; the file is incomplete, re-save the model")
        layer_group = group[layer.name]
        names = [attr_text(n) for n in layer_group.attrs.get("weight_names", [])]
        arrays = [np.asarray(layer_group[n], dtype=np.float32) for n in names]
        fix = ctx.fixes.get(layer.name)
        if fix is not None:
            arrays = fix(arrays)
        found = [tuple(a.shape) for a in arrays]
        if found != expected:
            raise ctx.fail(f"layer {layer.name!r} stores weights of shapes {found}, but the "
                           f"rebuilt {type(layer).__name__} needs {expected}; the file is "
                           "damaged or uses an unsupported variant of the layer")
        layer.set_weights(arrays)
