"""Keras 3 files (.keras, Keras-3 .h5) whose Lambda layers hold Python code.

Keras 3 refuses to deserialise a Python lambda unless told to run it (``safe_mode=False``:
arbitrary code from the file). carvis never does that. With ``--lambda identity`` each Lambda
is replaced in a copy of the file's config by an Identity layer (no weights either way), so the
model loads; without it, one line names the layer and says what to do.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py

from carvis import limits
from carvis.errors import CarvisError
from carvis.models import files


def refuse(path: Path, names: list[str]) -> CarvisError:
    """The one line for a Lambda carvis will not run."""
    shown = ", ".join(repr(n) for n in names)
    return CarvisError(f"{path}: layer {shown} is a Lambda (Python code stored in the file) that "
                       "carvis will not run; pass --lambda identity to treat it as identity and "
                       "do its scaling in the profile (preprocess.scale/offset), or re-save the "
                       "model without it")


def without_lambdas(config: Any) -> tuple[Any, list[str]]:
    """A copy of a Keras 3 model config with every Lambda layer an Identity; their names."""
    config = json.loads(json.dumps(config))
    names = []
    for node in files.dicts(config):
        if node.get("class_name") == "Lambda":
            inner = node.get("config", {})
            names.append(str(inner.get("name", "lambda")))
            node["class_name"] = "Identity"
            node["module"] = "keras.layers"
            node["registered_name"] = None
            node["config"] = {k: inner[k] for k in ("name", "trainable", "dtype") if k in inner}
            for call in node.get("inbound_nodes", []):
                if isinstance(call, dict):
                    call["kwargs"] = {}  # Lambda's call took a mask; Identity's takes nothing
    return config, names


@contextlib.contextmanager
def identity_copy(path: Path, kind: str) -> Iterator[tuple[Path, list[str]]]:
    """A temporary copy of a .keras / Keras-3 .h5 file with its Lambdas as Identity layers."""
    with tempfile.TemporaryDirectory(prefix="carvis-") as tmp:
        if kind == "keras":
            copy = Path(tmp) / (path.stem + ".keras")
            with zipfile.ZipFile(path) as src, zipfile.ZipFile(copy, "w") as dst:
                config, names = without_lambdas(json.loads(src.read("config.json")))
                for item in src.infolist():
                    data = json.dumps(config).encode() if item.filename == "config.json" \
                        else src.read(item.filename)
                    dst.writestr(item, data)
        else:
            copy = Path(tmp) / (path.stem + ".h5")
            copy.write_bytes(path.read_bytes())
            with h5py.File(copy, "r+") as h5:
                config, names = without_lambdas(json.loads(files.attr_text(
                    h5.attrs["model_config"])))
                h5.attrs["model_config"] = json.dumps(config)
        yield copy, names


def lambdas_in(path: Path, kind: str) -> list[str]:
    """The Lambda layers a Keras 3 file's config names."""
    if kind == "keras":
        return files.lambda_names(files.archive_config(path))
    with h5py.File(path, "r") as h5:
        raw = h5.attrs.get("model_config")
        return files.lambda_names(limits.json_loads(files.attr_text(raw))) if raw is not None \
            else []
