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
import json
import logging
import re
import statistics
import time
from pathlib import Path
from typing import Any

import cv2

from carvis.errors import CarvisError
from carvis.frame import Frame
from carvis.sources.base import Source

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


def _json_lines(path: Path) -> list[Any]:
    """The JSON values of a newline-delimited file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _image_key(inputs: list[str], types: list[str], where: Path) -> str:
    """The record key of the camera image: the first image input of the tub."""
    for key, kind in zip(inputs, types, strict=False):
        if kind in IMAGE_TYPES:
            return key
    if "cam/image_array" in inputs:
        return "cam/image_array"
    raise CarvisError(f"tub {str(where)!r} records no image (inputs: {', '.join(inputs)}); "
                      "give a tub recorded with a camera (cam/image_array)")


def _read_catalog(path: Path) -> list[Record]:
    """One catalog's records; a line cut short by a car switched off mid-write is skipped."""
    records, bad = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            bad += 1
    if bad:
        log.warning("tub catalog %s: skipped %d unreadable record line(s)", path.name, bad)
    return records


def read_tub_v2(path: Path) -> tuple[list[tuple[Record, Path]], str]:
    """The live records of a tub v2 with their image paths, in recording order."""
    try:
        lines = _json_lines(path / MANIFEST)
        inputs, types, catalogs = lines[0], lines[1], lines[4]
        paths, deleted = catalogs["paths"], set(catalogs.get("deleted_indexes", ()))
    except (IndexError, KeyError, TypeError, ValueError) as exc:
        raise CarvisError(f"tub {str(path)!r}: {MANIFEST} is not a DonkeyCar tub v2 manifest "
                          f"({type(exc).__name__}: {exc}); check the file, or give the "
                          "tub's images/ folder as a plain folder of images") from None
    key = _image_key(inputs, types, path)
    images = path / "images"
    out: list[tuple[Record, Path]] = []
    position = 0  # DonkeyCar's own iterator counts records across catalogs, in order
    for name in paths:
        catalog = path / name
        if not catalog.is_file():
            log.warning("tub %s: catalog %s listed in %s is missing", path.name, name, MANIFEST)
            continue
        for record in _read_catalog(catalog):
            index = record.get("_index", position)
            position += 1
            if index in deleted or key not in record:
                continue
            out.append((record, images / str(record[key])))
    return out, key


def _json_file(path: Path, default: Any) -> Any:
    """A tub v1 side file (meta.json, exclude.json), or default where there is none."""
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise CarvisError(f"tub {str(path.parent)!r}: {path.name} is not JSON ({exc}); "
                          "fix or remove the file") from None


def read_tub_v1(path: Path) -> tuple[list[tuple[Record, Path]], str]:
    """The records of a tub v1 (not in exclude.json), in index order, with their images."""
    meta = _json_file(path / V1_META, {})
    excluded = set(_json_file(path / "exclude.json", []))
    numbered = sorted((int(m.group(1)), p) for p in path.iterdir()
                      if (m := _RECORD_V1.match(p.name)))
    key = _image_key(meta.get("inputs", []) or ["cam/image_array"],
                     meta.get("types", []) or ["image_array"], path)
    start_ms = float(meta["start"]) * 1000 if "start" in meta else 0.0
    out: list[tuple[Record, Path]] = []
    for index, record_path in numbered:
        if index in excluded:
            continue
        try:
            record = json.loads(record_path.read_text())
        except ValueError:
            log.warning("tub %s: skipped %s, not JSON", path.name, record_path.name)
            continue
        if key not in record:
            continue
        # v1 kept time as milliseconds since the tub's start; give the v2 names too.
        if "milliseconds" in record:
            record.setdefault("_timestamp_ms", round(start_ms + record["milliseconds"]))
        record.setdefault("_index", index)
        record.setdefault("_session_id", path.name)
        out.append((record, path / str(record[key])))
    return out, key


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
    return min(1000.0 / statistics.median(intervals), 1000.0)


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
        self._entries, self.image_key = _READERS[self.version](self.path)
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
        log.info("tub %s (v%d): %d records, %d session(s), %.3g fps", self.name, self.version,
                 self.frame_count, len(self.sessions), self.fps)

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
            image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
            if image is not None:
                frame = Frame(image, self._index, time.monotonic(), image_path.name, dict(record),
                              self._seconds(record))
                self._index += 1
                return frame
            self.skipped.append(str(image_path))
            log.warning("tub %s: skipping record %s: image %s missing or unreadable",
                        self.name, record.get("_index"), image_path.name)
        return None
