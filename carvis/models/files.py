"""What a model file is: a .keras zip, an HDF5 file (and its Keras version), or a .tflite."""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py

from carvis.errors import CarvisError

_TFLITE_MAGIC = b"TFL3"
H5_SUFFIXES = (".h5", ".hdf5")


@dataclass(frozen=True)
class H5Header:
    """The model description an HDF5 file carries in its attributes."""

    raw_config: str
    config: dict
    version: str
    backend: str
    dialect: str  # "keras1", "keras2" or "keras3"


def is_tflite(path: str | os.PathLike) -> bool:
    """True if the file is a TensorFlow Lite flatbuffer (by extension or its TFL3 tag)."""
    p = Path(path)
    if p.suffix.lower() == ".tflite":
        return True
    try:
        with open(p, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return False
    return head[4:8] == _TFLITE_MAGIC


def model_kind(path: Path) -> str:
    """'keras' (a zip archive) or 'h5', or one line saying why the file is not a Keras model."""
    if not path.exists():
        raise CarvisError(f"{path}: model file not found; check the path")
    if path.is_dir():
        raise CarvisError(f"{path}: is a directory, not a model file; give a .keras, .h5 or "
                          ".tflite file (TF SavedModel folders are not supported)")
    if is_tflite(path):
        raise CarvisError(f"{path}: .tflite models run on the LiteRT backend (--backend litert), "
                          "not through the Keras loader")
    if zipfile.is_zipfile(path):
        return "keras"
    if not h5py.is_hdf5(path):
        raise CarvisError(f"{path}: not a Keras model file (neither a .keras archive nor HDF5); "
                          "check the path, or re-save the model with model.save()")
    return "h5"


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text, at most 200 characters."""
    text = str(exc).strip().splitlines()
    line = text[0].strip() if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def corrupt(path: Path, exc: BaseException) -> CarvisError:
    """The one error for an HDF5 file that cannot be read."""
    return CarvisError(f"{path}: the HDF5 file is corrupt or truncated ({first_line(exc)}); "
                       "copy the model file again")


def attr_text(value: Any) -> str:
    """An HDF5 attribute as text ('' when absent)."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def open_h5(path: Path) -> h5py.File:
    """The HDF5 file opened for reading, or one line saying it is damaged."""
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise corrupt(path, exc) from exc


def read_header(path: Path, h5: h5py.File) -> H5Header:
    """The model config, Keras version and dialect of an open HDF5 model file."""
    try:
        raw_config = attr_text(h5.attrs.get("model_config"))
        version = attr_text(h5.attrs.get("keras_version"))
        backend = attr_text(h5.attrs.get("backend"))
        weights_only = "layer_names" in h5.attrs or "model_weights" in h5
    except (OSError, KeyError) as exc:
        raise corrupt(path, exc) from exc
    if not raw_config:
        if weights_only:
            raise CarvisError(
                f"{path}: holds only weights (saved with save_weights), no model "
                "architecture; load them into the code that built the model and save it with "
                "model.save('model.keras')")
        raise CarvisError(f"{path}: HDF5 file without a Keras model (no model_config "
                          "attribute); give the file saved with model.save()")
    try:
        config = json.loads(raw_config)
    except ValueError as exc:
        raise CarvisError(f"{path}: the model_config in the file is not valid JSON "
                          f"({first_line(exc)}); re-save the model") from exc
    return H5Header(raw_config, config, version, backend, dialect(version, raw_config))


def dialect(version: str, raw_config: str) -> str:
    """Which Keras wrote the config: 'keras1', 'keras2' or 'keras3'."""
    if version.startswith("1."):
        return "keras1"
    if version.startswith("3."):
        return "keras3"
    if not version and any(key in raw_config for key in ('"nb_filter"', '"output_dim"',
                                                        '"border_mode"')):
        return "keras1"  # the very first Keras 1 releases wrote no keras_version
    return "keras2"


def archive_config(path: Path) -> dict | None:
    """The model config (config.json) of a .keras archive, or None if it has none."""
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("config.json"))
    except (KeyError, OSError, ValueError, zipfile.BadZipFile):
        return None


def lambda_names(config: Any) -> list[str]:
    """The names of the Lambda layers anywhere in a model config."""
    return [str(node.get("config", {}).get("name", "lambda")) for node in dicts(config)
            if node.get("class_name") == "Lambda"]


def dicts(node: Any) -> Iterator[dict]:
    """Every dict in a JSON document, outermost first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from dicts(value)
    elif isinstance(node, list):
        for value in node:
            yield from dicts(value)
