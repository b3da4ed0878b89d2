"""The conversion cache: a .tflite per (model content, what was asked, lambda policy), and a
model's description (its metadata as JSON, what the forward-only modes read of it).

The one way a converted model (or a description) is found again or made: :func:`get_or_convert`. Files are
written atomically (readers see the old file or the new, never half), and a cached file is
used only if its metadata names the model content it was made from.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from carvis.backends.tflite import FORMAT, LayerMeta, read_meta

log = logging.getLogger("carvis")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_dir() -> Path:
    """Where converted models are kept: $CARVIS_CACHE, else $XDG_CACHE_HOME/carvis."""
    env = os.environ.get("CARVIS_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "carvis"


def cache_path(sha256: str, outputs: Sequence[str], lambda_policy: str,
               suffix: str = ".tflite") -> Path:
    """The cache file for (model content, output layers or one layer spec, lambda policy)."""
    if len(outputs) == 1:
        what = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(outputs[0]).strip())[:60] or "_"
    else:
        what = "outputs-" + hashlib.sha256("\n".join(outputs).encode()).hexdigest()[:16]
    return cache_dir() / f"{sha256[:24]}-{what}-{lambda_policy}-f{FORMAT}{suffix}"


def get_or_convert(path: Path, sha256: str, convert: Callable[[], bytes],
                   read: Callable[[bytes], LayerMeta | None] = read_meta) -> tuple[bytes, bool]:
    """The cached flatbuffer at path if it was made from this content, else convert() and
    keep it; (flatbuffer, whether a conversion was made). read: the metadata of what is kept
    (a .tflite's by default; read_json_meta for a description)."""
    if path.is_file():
        try:
            data = path.read_bytes()
            meta = read(data)
            if meta is not None and meta.model_sha256 == sha256:
                log.debug("using the cached conversion %s", path)
                return data, False
        except OSError:
            pass  # unreadable: convert again below
    data = convert()
    try:
        write_atomic(path, data)
    except OSError as exc:
        log.warning("cannot cache the converted model in %s (%s); set CARVIS_CACHE to a "
                    "writable folder", path.parent, exc.strerror or exc)
    return data, True


def read_json_meta(data: bytes) -> LayerMeta | None:
    """A description kept as JSON (LayerMeta.to_json), or None if it is damaged."""
    try:
        return LayerMeta.from_json(data)
    except (ValueError, TypeError, UnicodeDecodeError, RecursionError):
        return None


def write_atomic(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old content or the new, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # mkstemp made it private
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
