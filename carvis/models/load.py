"""Load any car model (Keras 1/2/3 .h5, .keras) as a Keras 3 functional model."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py

from carvis.errors import CarvisError
from carvis.models import files, keras3, legacy

log = logging.getLogger("carvis")

if TYPE_CHECKING:  # keras is imported lazily: the LiteRT path must not pull in TensorFlow
    import keras

LAMBDA_POLICIES = ("error", "identity")

# Keras 2 `hard_sigmoid` is clip(0.2 x + 0.5, 0, 1); Keras 3 changed it to relu6(x + 3) / 6.
# Keras 3 loads such files without complaint, so files using it always go through our builders.
_CHANGED_ACTIVATIONS = ("hard_sigmoid",)


def load_model(path: str | os.PathLike, *, lambda_policy: str = "error") -> keras.Model:
    """Load any car model as a Keras 3 functional model (never mutate it afterwards)."""
    if lambda_policy not in LAMBDA_POLICIES:
        raise CarvisError(f"lambda policy {lambda_policy!r} is not one of "
                          f"{', '.join(LAMBDA_POLICIES)}; pass --lambda error or --lambda identity")
    p = Path(path)
    # A file refused for what it is (missing, a FIFO, a .tflite, a bomb) is refused before
    # TensorFlow's seconds and 600 MB.
    if files.model_kind(p) == "keras":
        files.check_archive(p)
        _import_tensorflow()
        return _load_keras_archive(p, lambda_policy)
    return _load_h5(p, lambda_policy)


def _import_tensorflow() -> None:
    from carvis.tfquiet import import_tensorflow

    import_tensorflow()  # without the CUDA-stub chatter, so errors stay one line


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence Keras' user warnings about legacy configs while loading."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


@contextlib.contextmanager
def _with_suffix(path: Path, suffix: str) -> Iterator[Path]:
    """The path itself, or a temporary copy whose name ends in suffix (Keras dispatches on it)."""
    if path.suffix.lower() == suffix or (suffix == ".h5"
                                         and path.suffix.lower() in files.H5_SUFFIXES):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="carvis-") as tmp:
        alias = Path(tmp) / (path.stem + suffix)
        try:
            os.symlink(path.resolve(), alias)
        except OSError:
            shutil.copyfile(path, alias)
        yield alias


def _load_keras_archive(path: Path, lambda_policy: str) -> keras.Model:
    lambdas = keras3.lambdas_in(path, "keras")
    if lambdas:
        return _load_keras3_identity(path, "keras", lambdas, lambda_policy)
    try:
        return _keras3_load(path, ".keras")
    except Exception as exc:  # any Keras failure becomes one line
        raise CarvisError(f"{path}: Keras 3 cannot load this .keras file "
                          f"({files.first_line(exc)}); re-save it with the current Keras, or "
                          "export a .tflite") from exc


def _keras3_load(path: Path, suffix: str) -> keras.Model:
    """Keras 3's own loader on the file (never running code stored in it)."""
    import keras

    with _quiet(), _with_suffix(path, suffix) as alias:
        model = keras.models.load_model(alias, compile=False, safe_mode=True)
    return _as_functional(model, path)


def _load_keras3_identity(path: Path, kind: str, lambdas: list[str], lambda_policy: str
                          ) -> keras.Model:
    """A Keras 3 file with Lambda layers: refused, or loaded with them as identity."""
    if lambda_policy != "identity":
        raise keras3.refuse(path, lambdas)
    try:
        with keras3.identity_copy(path, kind) as (copy, names):
            model = _keras3_load(copy, copy.suffix)
    except CarvisError:
        raise
    except Exception as exc:  # e.g. a Lambda that changed the shape: identity does not fit
        raise CarvisError(f"{path}: the model does not load with its Lambda layer(s) "
                          f"{', '.join(map(repr, lambdas))} as identity "
                          f"({files.first_line(exc)}); re-save it without them") from exc
    _warn_identity(path, names)
    return model


def _warn_identity(path: Path, names: list[str]) -> None:
    log.warning("%s: Lambda layer(s) %s replaced by identity (--lambda identity); do their "
                "scaling in the profile (preprocess.scale/offset)", path,
                ", ".join(repr(n) for n in names))


def _as_functional(model: Any, path: Path) -> keras.Model:
    """The model as a functional graph (Sequential → functional, same layer objects)."""
    import keras

    if isinstance(model, keras.Sequential):
        try:
            inputs, outputs = model.inputs, model.outputs
        except (AttributeError, ValueError) as exc:
            raise CarvisError(f"{path}: the Sequential model has no fixed input shape; re-save it "
                              "with an Input(shape=...) first layer") from exc
        return keras.Model(inputs, outputs, name=model.name)
    try:
        _ = model.inputs[0], model.outputs[0]
    except (AttributeError, ValueError, IndexError, TypeError) as exc:
        raise CarvisError(f"{path}: {type(model).__name__} is a subclassed model without a layer "
                          "graph; carvis needs a functional or Sequential model") from exc
    return model


def _load_h5(path: Path, lambda_policy: str) -> keras.Model:
    with files.open_h5(path) as h5:
        header = files.read_header(path, h5)
        files.check_h5(path, h5)
        _import_tensorflow()
        if header.dialect == "keras3":
            lambdas = keras3.lambdas_in(path, "h5")
            if lambdas:
                return _load_keras3_identity(path, "h5", lambdas, lambda_policy)
            return _load_with_keras3(path, header.version)
        if header.dialect == "keras2" and header.backend != "theano" and not any(
                f'"{name}"' in header.raw_config for name in _CHANGED_ACTIVATIONS):
            try:
                return _load_with_keras3(path, header.version)
            except CarvisError:
                pass  # Keras 3 rejects the old config: rebuild it ourselves below
        model, lambdas = _rebuild(path, h5, header, lambda_policy)
    if lambdas:
        _warn_identity(path, lambdas)
    return model


def _rebuild(path: Path, h5: h5py.File, header: files.H5Header,
             lambda_policy: str) -> tuple[keras.Model, list[str]]:
    version = header.version
    try:
        with _quiet():
            return legacy.rebuild(path, h5, header, lambda_policy)
    except CarvisError:
        raise
    except OSError as exc:
        raise files.corrupt(path, exc) from exc
    except Exception as exc:  # a config we did not foresee: still one line, not a traceback
        raise CarvisError(f"{path}: cannot rebuild the Keras {version or '?'} model "
                          f"({type(exc).__name__}: {files.first_line(exc)}); re-save it with "
                          "Keras 3 as .keras, or export a .tflite") from exc


def _load_with_keras3(path: Path, version: str) -> keras.Model:
    try:
        return _keras3_load(path, ".h5")
    except Exception as exc:  # any Keras failure becomes one line
        raise CarvisError(f"{path}: Keras 3 cannot load this Keras {version or '?'} .h5 "
                          f"({files.first_line(exc)}); re-save it as .keras, or export a .tflite"
                          ) from exc
