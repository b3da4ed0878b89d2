"""DonkeyCar tubs as a source: v2 (manifest.json + catalogs) and v1 (record_N.json), records kept.

Tub v2 (donkeycar.parts.tub_v2): ``manifest.json`` is newline-delimited JSON — inputs, types,
user metadata, manifest metadata, then the catalog metadata (``paths``, ``current_index``,
``max_len``, ``deleted_indexes``); each ``catalog_N.catalog`` holds one JSON record a line, and
the images are in ``images/``. Every time the car starts recording into the same tub is a new
session (``_session_id``). Tub v1 (donkeycar.parts.datastore): ``meta.json`` (inputs, types,
``start``), ``record_N.json`` beside ``N_cam-image_array_.jpg``, ``exclude.json`` for dropped
records, and ``milliseconds`` since ``start`` instead of ``_timestamp_ms``.
"""

from __future__ import annotations

import itertools
import logging
import re
import statistics
import time
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from carvis import limits
from carvis.errors import CarvisError, first_line, shown
from carvis.frame import Frame
from carvis.sources.base import Source
from carvis.sources.files import read_image

log = logging.getLogger("carvis")

DEFAULT_FPS = 20.0  # DonkeyCar's DRIVE_LOOP_HZ, for a tub whose timestamps say nothing
IMAGE_TYPES = ("image_array", "image")
MANIFEST = "manifest.json"
V1_META = "meta.json"
_RECORD_V1 = re.compile(r"record_(\d+)\.json$")

Record = dict[str, Any]


def tub_version(path: str | Path) -> int | None:
    """2 for a tub v2 folder, 1 for a tub v1 folder, None for anything else."""
    path = Path(path)
    if not path.is_dir():
        return None
    if (path / MANIFEST).is_file():
        return 2
    if (path / V1_META).is_file() or any(path.glob("record_*.json")):
        return 1
    return None


def is_tub(path: str | Path) -> bool:
    """True for a folder that is a DonkeyCar tub (v1 or v2)."""
    return tub_version(path) is not None


def tub_hint(path: str | Path) -> str | None:
    """One line naming the tub(s) to give, for a tub's images/ folder or a folder of tubs."""
    path = Path(path)
    if not path.is_dir() or is_tub(path):
        return None
    if path.name == "images" and tub_version(path.parent) == 2:
        return (f"{str(path)!r} is the images/ folder of the DonkeyCar tub "
                f"{str(path.parent)!r}; give the tub itself to keep its records "
                f"(steering, throttle, timestamps): {path.parent}")
    tubs = sorted(child for child in path.iterdir() if is_tub(child))
    if not tubs:
        return None
    if len(tubs) == 1:
        return f"{str(path)!r} holds the DonkeyCar tub {tubs[0].name!r}; give it: {tubs[0]}"
    names = ", ".join(t.name for t in tubs[:6]) + (", ..." if len(tubs) > 6 else "")
    return (f"{str(path)!r} holds {len(tubs)} DonkeyCar tubs ({names}); give one of them, "
            f"e.g. {tubs[0]}")


def _bad(tub: Path, where: str, what: str) -> CarvisError:
    """The one line for a tub file holding what DonkeyCar never writes."""
    return CarvisError(f"tub {str(tub)!r}: {where}: {what}; fix or delete it, or give the "
                       "tub's images/ folder as a plain folder of images")


def _text(path: Path, tub: Path) -> str:
    """A tub's JSON side file as text (a regular file, at most limits.MAX_JSON_BYTES)."""
    try:
        return limits.read_text(path, "tub file", hint="DonkeyCar never writes one that big")
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8
        raise _bad(tub, path.name, f"cannot be read ({getattr(exc, 'strerror', None) or exc})"
                   ) from None


def _json_lines(path: Path, tub: Path) -> list[Any]:
    """The JSON values of a newline-delimited file."""
    return [limits.json_loads(line) for line in _text(path, tub).splitlines() if line.strip()]


def _is_number(value: Any, lo: float, hi: float) -> bool:
    """True for an int or a finite float in lo..hi (bool and NaN are not numbers here)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and lo <= value <= hi)  # NaN fails both comparisons


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _inside(value: Any) -> str | None:
    """Why a path from a tub file would leave the tub (absolute, '..', not a name), or None."""
    if not isinstance(value, str) or not value or "\0" in value:
        return "is not a file name"
    if PurePosixPath(value).is_absolute() or PureWindowsPath(value).is_absolute() \
            or PureWindowsPath(value).drive:
        return "is absolute"
    if ".." in PurePosixPath(value).parts or ".." in PureWindowsPath(value).parts:
        return "goes up with '..'"
    return None


#: Record values carvis reads, and what each must be: (check, what it is).
_STAMP_MAX = float(2 ** 53)  # milliseconds: beyond the year 285000, and past float's integers
_FIELDS: dict[str, tuple[Any, str]] = {
    "_timestamp_ms": (lambda v: _is_number(v, 0, _STAMP_MAX), "a time in milliseconds"),
    "milliseconds": (lambda v: _is_number(v, 0, _STAMP_MAX), "a time in milliseconds"),
    "_index": (lambda v: isinstance(v, int) and _is_number(v, 0, _STAMP_MAX),
               "a record number (an integer >= 0)"),
    "_session_id": (lambda v: isinstance(v, str), "a session name"),
    **{key: (lambda v: _is_number(v, -1e6, 1e6), "a number")
       for key in ("user/angle", "user/throttle", "pilot/angle", "pilot/throttle")},
}


def _checked(record: Any, key: str, tub: Path, where: str) -> Record:
    """A record whose values carvis reads are of the types DonkeyCar writes, and whose image
    path stays inside the tub; else one line naming the record and the value."""
    if not isinstance(record, dict):
        raise _bad(tub, where, f"a record is a JSON object, not {shown(record)}")
    name = f"record {shown(record.get('_index', where))}"
    for field, (ok, what) in _FIELDS.items():
        value = record.get(field)
        if value is not None and not ok(value):
            raise _bad(tub, f"{where}, {name}", f"{field} {shown(value)} is not {what}")
    if key in record:
        why = _inside(record[key])
        if why:
            raise CarvisError(f"tub {str(tub)!r}: {where}, {name}: image path "
                              f"{shown(record[key])} {why}; images of a tub are read from "
                              "inside the tub only")
    return record


def _image_key(inputs: list[str], types: list[str], where: Path) -> str:
    """The record key of the camera image: the first image input of the tub."""
    for key, kind in zip(inputs, types, strict=False):
        if kind in IMAGE_TYPES:
            return key
    if "cam/image_array" in inputs:
        return "cam/image_array"
    raise CarvisError(f"tub {str(where)!r} records no image (inputs: {', '.join(inputs)}); "
                      "give a tub recorded with a camera (cam/image_array)")


def _read_catalog(path: Path, tub: Path) -> list[tuple[Any, int]]:
    """One catalog's values with their line numbers; a line cut short by a car switched off
    mid-write is skipped."""
    records, bad = [], 0
    for number, line in enumerate(_text(path, tub).splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append((limits.json_loads(line), number))
        except ValueError:
            bad += 1
    if bad:
        log.warning("tub catalog %s: skipped %d unreadable record line(s)", path.name, bad)
    return records


def _manifest(path: Path) -> tuple[list[str], list[str], list[str], set[int]]:
    """A tub v2 manifest's inputs, types, catalog files and deleted record numbers."""
    try:
        lines = _json_lines(path / MANIFEST, path)
        inputs, types, catalogs = lines[0], lines[1], lines[4]
        paths, deleted = catalogs["paths"], catalogs.get("deleted_indexes", [])
    except (IndexError, KeyError, TypeError, ValueError) as exc:
        raise CarvisError(f"tub {str(path)!r}: {MANIFEST} is not a DonkeyCar tub v2 manifest "
                          f"({type(exc).__name__}: {first_line(exc)}); check the file, or "
                          "give the tub's images/ folder as a plain folder of images") from None
    if not (_strings(inputs) and _strings(types) and _strings(paths)):
        raise _bad(path, MANIFEST, "its inputs, types and catalog paths are lists of names")
    if not isinstance(deleted, list) or not all(_FIELDS["_index"][0](i) for i in deleted):
        raise _bad(path, MANIFEST, "deleted_indexes is a list of record numbers")
    for name in paths:
        why = _inside(name)
        if why:
            raise CarvisError(f"tub {str(path)!r}: {MANIFEST}: catalog path {shown(name)} "
                              f"{why}; a tub's catalogs are read from inside the tub only")
    return inputs, types, paths, set(deleted)


def read_tub_v2(path: Path) -> tuple[list[tuple[Record, Path]], str, int]:
    """The live records of a tub v2 with their image paths, in recording order; and how many
    were left out (deleted, or without an image)."""
    inputs, types, paths, deleted = _manifest(path)
    key = _image_key(inputs, types, path)
    images = path / "images"
    out: list[tuple[Record, Path]] = []
    position = 0  # DonkeyCar's own iterator counts records across catalogs, in order
    for name in paths:
        catalog = path / name
        if not catalog.is_file():
            limits.check_regular(catalog, "tub catalog")
            log.warning("tub %s: catalog %s listed in %s is missing", path.name, name, MANIFEST)
            continue
        for value, line in _read_catalog(catalog, path):
            record = _checked(value, key, path, f"{name} line {line}")
            index = record.get("_index", position)
            position += 1
            if index in deleted or key not in record:
                continue
            out.append((record, images / record[key]))
    return out, key, position - len(out)


def _json_file(path: Path, default: Any, kind: type, what: str) -> Any:
    """A tub v1 side file (meta.json, exclude.json), or default where there is none."""
    if not path.exists():
        return default
    try:
        value = limits.json_loads(_text(path, path.parent))
    except ValueError as exc:
        raise CarvisError(f"tub {str(path.parent)!r}: {path.name} is not JSON ({exc}); "
                          "fix or remove the file") from None
    if not isinstance(value, kind):
        raise _bad(path.parent, path.name, f"it holds {shown(value)}, not {what}")
    return value


def read_tub_v1(path: Path) -> tuple[list[tuple[Record, Path]], str, int]:
    """The records of a tub v1 (not in exclude.json), in index order, with their images; and
    how many were excluded."""
    meta = _json_file(path / V1_META, {}, dict, "a JSON object (inputs, types, start)")
    excluded = _json_file(path / "exclude.json", [], list, "a list of record numbers")
    if not all(_FIELDS["_index"][0](i) for i in excluded):
        raise _bad(path, "exclude.json", "it is a list of record numbers")
    inputs, types = meta.get("inputs") or ["cam/image_array"], meta.get("types") or \
        ["image_array"]
    if not (_strings(inputs) and _strings(types)):
        raise _bad(path, V1_META, "its inputs and types are lists of names")
    if "start" in meta and not _is_number(meta["start"], 0, _STAMP_MAX / 1000):
        raise _bad(path, V1_META, f"start {shown(meta['start'])} is not a time in seconds")
    numbered = sorted((int(m.group(1)), p) for p in path.iterdir()
                      if (m := _RECORD_V1.match(p.name)))
    key = _image_key(inputs, types, path)
    start_ms = float(meta["start"]) * 1000 if "start" in meta else 0.0
    excluded = set(excluded)
    out: list[tuple[Record, Path]] = []
    for index, record_path in numbered:
        if index in excluded:
            continue
        try:
            value = limits.json_loads(_text(record_path, path))
        except ValueError:
            log.warning("tub %s: skipped %s, not JSON", path.name, record_path.name)
            continue
        record = _checked(value, key, path, record_path.name)
        if key not in record:
            continue
        # v1 kept time as milliseconds since the tub's start; give the v2 names too.
        if record.get("milliseconds") is not None:
            record.setdefault("_timestamp_ms", round(start_ms + record["milliseconds"]))
        record.setdefault("_index", index)
        record.setdefault("_session_id", path.name)
        out.append((_checked(record, key, path, record_path.name), path / record[key]))
    return out, key, sum(index in excluded for index, _ in numbered)


def fps_from_records(records: list[Record], default: float = DEFAULT_FPS) -> float:
    """The frame rate the car recorded at: 1 / median interval between timestamps."""
    intervals = []
    for before, after in itertools.pairwise(records):
        t0, t1 = before.get("_timestamp_ms"), after.get("_timestamp_ms")
        if t0 is None or t1 is None or before.get("_session_id") != after.get("_session_id"):
            continue  # a new session is a pause in recording, not a frame interval
        if t1 > t0:
            intervals.append(t1 - t0)
    if not intervals:
        return default
    return min(max(1000.0 / statistics.median(intervals), 0.1), 1000.0)


_READERS = {2: read_tub_v2, 1: read_tub_v1}


class TubSource(Source):
    """A DonkeyCar tub's images in recording order, each Frame carrying its record."""

    def __init__(self, path: str | Path, loop: bool = False) -> None:
        self.path = Path(path)
        self.loop = loop
        if self.path.name == MANIFEST and self.path.is_file():
            self.path = self.path.parent
        self.version = tub_version(self.path)
        if self.version is None:
            hint = tub_hint(self.path)
            raise CarvisError(hint or f"{str(self.path)!r} is not a DonkeyCar tub (no "
                              f"{MANIFEST}, {V1_META} or record_N.json); give a tub folder")
        self.name = self.path.name
        self._entries, self.image_key, self.deleted = _READERS[self.version](self.path)
        if not self._entries:
            raise CarvisError(f"tub {str(self.path)!r} has no records with images (all "
                              "deleted, or never recorded); give a tub with records")
        self.records = [record for record, _ in self._entries]
        self.sessions = list(dict.fromkeys(r.get("_session_id") for r in self.records))
        self.fps = fps_from_records(self.records)
        self.frame_count = len(self._entries)
        self.skipped: list[str] = []
        self._pos = 0
        self._index = 0
        gone = f" ({self.deleted} deleted, skipped)" if self.deleted else ""
        log.info("tub %s (v%d): %d records%s, %d session(s), %.3g fps", self.name, self.version,
                 self.frame_count, gone, len(self.sessions), self.fps)

    def _next_entry(self) -> tuple[Record, Path] | None:
        """The next record and its image path; from the start again when looping."""
        if self._pos >= len(self._entries) and self.loop and self._index > 0:
            self._pos = 0
        if self._pos >= len(self._entries):
            return None
        self._pos += 1
        return self._entries[self._pos - 1]

    def _seconds(self, record: Record) -> float | None:
        """Seconds since the tub's first record, by the records' timestamps."""
        first = self.records[0].get("_timestamp_ms")
        stamp = record.get("_timestamp_ms")
        if not isinstance(first, int | float) or not isinstance(stamp, int | float):
            return None
        return (stamp - first) / 1000.0

    def read(self) -> Frame | None:
        while (entry := self._next_entry()) is not None:
            record, image_path = entry
            image, problem = read_image(image_path)
            if image is not None:
                frame = Frame(image, self._index, time.monotonic(), image_path.name, dict(record),
                              self._seconds(record))
                self._index += 1
                return frame
            self.skipped.append(str(image_path))
            log.warning("tub %s: skipping record %s: image %s %s", self.name,
                        record.get("_index"), image_path.name,
                        "is missing" if not image_path.exists() else problem)
        return None
