"""Every cap on what carvis reads from a file, and the checks that apply them before memory is
taken: a file that is not a regular file (a FIFO would block forever), a file larger than its
kind ever is, JSON nested deeper than any real document, a declared size (an image header, a
zip member, an HDF5 dataset) that would not fit a 4 GB Raspberry Pi.
"""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
from typing import Any

from carvis.errors import CarvisError

MiB = 1 << 20
GiB = 1 << 30

#: A YAML profile (a real one is ~2 KB).
MAX_PROFILE_BYTES = 1 * MiB
#: YAML nodes in a profile (a real one has ~60) and the nesting of YAML and JSON documents
#: (a Keras model config nests ~12 deep, a nested model adds ~6 a level).
MAX_YAML_NODES = 10_000
MAX_DEPTH = 100
#: A JSON side file of a tub (manifest, one catalog, a v1 record or meta.json).
MAX_JSON_BYTES = 64 * MiB
#: An image file and its decoded size (an 8K frame is 33 MP; BGR at 40 MP is 120 MB).
MAX_IMAGE_BYTES = 256 * MiB
MAX_IMAGE_PIXELS = 40_000_000
#: A picture carvis makes (output_size, a camera size): H.264's largest level (6.2) frame.
MAX_FRAME_SIDE = 8192
MAX_FRAME_PIXELS = 8192 * 4320
#: A model: a .tflite file, a .keras archive's members unpacked, an HDF5 file's datasets.
MAX_MODEL_BYTES = 1 * GiB
#: A map track's datasets, read whole into memory by review and --maps.
MAX_TRACK_BYTES = 1 * GiB


def size_text(n: float) -> str:
    """A byte count for people: '512 MiB', '50 GiB', '900 bytes'."""
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} bytes"


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


def not_regular(what: str, path: str | os.PathLike, mode: int) -> CarvisError:
    """The refusal of a path that is not a regular file."""
    return CarvisError(f"{what} {str(path)!r} is {_kind(mode)}, not a regular file; give a file")


def check_regular(path: str | os.PathLike, what: str) -> None:
    """One line if path exists but is not a regular file (reading a FIFO blocks forever);
    a missing path is the caller's to word."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return
    if not stat.S_ISREG(mode):
        raise not_regular(what, path, mode)


def check_size(what: str, path: str | os.PathLike, size: int, limit: int, hint: str) -> None:
    """One line if a (declared) size is over its cap."""
    if size > limit:
        raise CarvisError(f"{what} {str(path)!r} is {size_text(size)}, more than carvis reads "
                          f"({size_text(limit)}); {hint}")


def read_bytes(path: str | os.PathLike, what: str, limit: int, hint: str = "check the file"
               ) -> bytes:
    """A regular file's bytes, refused in one line before reading if it is not a regular file
    or is over limit. OSError (missing, unreadable) is the caller's to word."""
    # O_NONBLOCK: opening a FIFO with no writer returns at once instead of waiting for one.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise not_regular(what, path, info.st_mode)
        check_size(what, path, info.st_size, limit, hint)
        return fh.read(limit + 1)


def read_text(path: str | os.PathLike, what: str, limit: int = MAX_JSON_BYTES,
              hint: str = "check the file") -> str:
    """read_bytes() as UTF-8 text (UnicodeDecodeError is a ValueError)."""
    return read_bytes(path, what, limit, hint).decode("utf-8")


def depth(value: Any) -> int:
    """How deep lists and dicts nest in a parsed document (0 for a scalar), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


def json_loads(text: str | bytes) -> Any:
    """json.loads, with a document nested deeper than MAX_DEPTH (or deep enough to exhaust
    Python's recursion) a ValueError like any other bad JSON."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep") from None
    if depth(value) > MAX_DEPTH:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
    return value


def dataset_bytes(dataset: Any) -> int:
    """What an HDF5 dataset (h5py) declares it holds, in bytes, read from its header only."""
    return math.prod(dataset.shape or ()) * dataset.dtype.itemsize


def dataset_storage(dataset: Any) -> str:
    """Why an HDF5 dataset's data is not in its own file ('' if it is): external raw files
    and virtual datasets can name any file on the machine (a FIFO, /dev/zero)."""
    if dataset.external:
        return "keeps its data in another file (external storage)"
    if dataset.is_virtual:
        return "is a virtual dataset (its data is in other files)"
    return ""


#: How long reading an HDF5 file in the probe may take: a whole car model reads in well under
#: a second, a 1 GiB map track in a few.
HDF5_PROBE_SECONDS = 30.0

# Reads every attribute, link and dataset header of an HDF5 file (a .keras member: from the
# zip) and walks each chunked dataset's chunk index, the way the loaders will; no data (a file
# can declare millions of chunks: the size checks after the probe refuse those).
_PROBE = """
import io, sys, zipfile
import h5py
path, member = sys.argv[1], sys.argv[2]
src = io.BytesIO(zipfile.ZipFile(path).read(member)) if member else path
with h5py.File(src, "r") as f:
    def visit(name, link):
        obj = f.get(name) if isinstance(link, h5py.HardLink) else None
        if obj is None:
            return None
        for key in obj.attrs:
            obj.attrs[key]
        if isinstance(obj, h5py.Dataset):
            obj.shape, obj.dtype, obj.chunks, obj.compression, obj.external
            if obj.chunks:
                obj.id.get_num_chunks()
        return None
    for key in f.attrs:
        f.attrs[key]
    f.visititems_links(visit)
"""
_probed: set[tuple] = set()


def probe_hdf5(path: str | os.PathLike, what: str, member: str = "") -> None:
    """Read an HDF5 file once in a child process before carvis opens it: on some damaged
    files the HDF5 library loops forever or crashes, and neither can be stopped from Python.
    One line if the child does not finish; its other errors are left to the real read."""
    info = os.stat(path)
    key = (os.fspath(path), member, info.st_size, info.st_mtime_ns)
    if key in _probed:
        return
    command = [sys.executable, "-c", _PROBE, os.fspath(path), member]
    where = f"{str(path)!r}" + (f" ({member})" if member else "")
    try:
        proc = subprocess.run(command, capture_output=True, timeout=HDF5_PROBE_SECONDS,
                              check=False)
    except OSError:  # no interpreter to start (an embedded Python): read it in process
        return
    except subprocess.TimeoutExpired:
        raise CarvisError(f"{what} {where}: the HDF5 library did not finish reading it in "
                          f"{HDF5_PROBE_SECONDS:.0f} s (it loops on some damaged files); the "
                          "file is damaged: copy it again") from None
    if proc.returncode < 0:
        raise CarvisError(f"{what} {where}: the HDF5 library crashed reading it (signal "
                          f"{-proc.returncode}); the file is damaged: copy it again")
    _probed.add(key)
