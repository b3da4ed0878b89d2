"""What a model file is: a .keras zip, an HDF5 file (and its Keras version), or a .tflite."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py

from carvis import limits
from carvis.errors import CarvisError, first_line

_TFLITE_MAGIC = b"TFL3"
H5_SUFFIXES = (".h5", ".hdf5")
CONFIG = "config.json"
#: Objects (HDF5 groups and datasets, zip members) a model file may hold: real ones hold
#: hundreds; a file of millions would take minutes just to walk.
MAX_OBJECTS = 100_000


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
    if not p.is_file():  # a FIFO would block the read below forever
        return False
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
    limits.check_regular(path, "model")
    if is_tflite(path):
        raise CarvisError(f"{path}: .tflite models run on the LiteRT backend (--backend litert), "
                          "not through the Keras loader")
    if zipfile.is_zipfile(path):
        return "keras"
    if not h5py.is_hdf5(path):
        raise CarvisError(f"{path}: not a Keras model file (neither a .keras archive nor HDF5); "
                          "check the path, or re-save the model with model.save()")
    return "h5"


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
    """The HDF5 file opened for reading (read once in a probe first), or one line saying it
    is damaged."""
    limits.probe_hdf5(path, "model")
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
    except (OSError, KeyError, RuntimeError, ValueError, TypeError) as exc:
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
        config = limits.json_loads(raw_config)
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
    """The model config (config.json) of a .keras archive, or None if it has none (or a bad
    one: damaged, over limits.MAX_JSON_BYTES, nested too deeply)."""
    try:
        with zipfile.ZipFile(path) as archive:
            if archive.getinfo(CONFIG).file_size > limits.MAX_JSON_BYTES:
                return None
            return limits.json_loads(archive.read(CONFIG))
    except (KeyError, OSError, ValueError, EOFError, zipfile.BadZipFile, NotImplementedError):
        return None


def check_archive(path: Path) -> None:
    """Refuse, before anything is unpacked, a .keras archive whose members declare more than
    limits.MAX_MODEL_BYTES (a 3 MB zip can declare gigabytes), or whose weights declare it."""
    hint = "a car's model is a few megabytes; check the file, or re-save the model"
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if len(members) > MAX_OBJECTS:
                raise CarvisError(f"{path}: the .keras archive holds {len(members)} files; a "
                                  "model has three (config.json, metadata.json, "
                                  "model.weights.h5)")
            total = sum(m.file_size for m in members)
            biggest = max(members, key=lambda m: m.file_size, default=None)
            if total > limits.MAX_MODEL_BYTES:
                raise CarvisError(
                    f"{path}: the .keras archive unpacks to {limits.size_text(total)} "
                    f"({biggest.filename!r} declares {limits.size_text(biggest.file_size)}), "
                    f"more than carvis loads ({limits.size_text(limits.MAX_MODEL_BYTES)}); {hint}")
            for member in members:
                if member.filename.endswith(".h5"):
                    limits.probe_hdf5(path, "model", member.filename)
                    with archive.open(member) as fh, h5py.File(fh, "r") as h5:
                        check_h5(path, h5, f" ({member.filename})")
    except CarvisError:
        raise
    except (OSError, ValueError, EOFError, KeyError, RuntimeError, zipfile.BadZipFile,
            NotImplementedError) as exc:  # RuntimeError: an encrypted member
        raise CarvisError(f"{path}: the .keras archive is damaged ({first_line(exc)}); copy "
                          "the model file again") from None


def check_h5(path: Path, h5: h5py.File, where: str = "") -> None:
    """Refuse, before any weight is read, an HDF5 model whose datasets declare more than
    limits.MAX_MODEL_BYTES (a compressed or unwritten dataset costs nothing on disk), or keep
    their data outside the file (external storage: any file on the machine)."""
    seen = total = 0
    problem = ""

    def visit(name: str, link: Any) -> Any:
        nonlocal seen, total, problem
        seen += 1
        obj = h5.get(name) if isinstance(link, h5py.HardLink) else None
        if seen > MAX_OBJECTS:
            problem = f"holds more than {MAX_OBJECTS} objects"
        elif isinstance(link, h5py.ExternalLink):
            problem = f"links {name!r} to another file ({link.filename!r})"
        elif isinstance(obj, h5py.Dataset):
            total += limits.dataset_bytes(obj)
            problem = limits.dataset_storage(obj)
            if total > limits.MAX_MODEL_BYTES:
                problem = (f"declares {limits.size_text(total)} of weights (up to {name!r}), "
                           f"more than carvis loads ({limits.size_text(limits.MAX_MODEL_BYTES)})")
            elif problem:
                problem = f"dataset {name!r} {problem}"
        return True if problem else None

    try:
        h5.visititems_links(visit)
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        raise corrupt(path, exc) from None
    if problem:
        raise CarvisError(f"{path}{where}: the HDF5 file {problem}; check the file, or re-save "
                          "the model")


def lambda_names(config: Any) -> list[str]:
    """The names of the Lambda layers anywhere in a model config."""
    return [str(node.get("config", {}).get("name", "lambda")) for node in dicts(config)
            if node.get("class_name") == "Lambda"]


def dicts(node: Any) -> Iterator[dict]:
    """Every dict in a JSON document, outermost first (no recursion: any depth)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend(reversed(item))
