"""A season: a folder of runs (DonkeyCar tubs, videos) and their kept review tracks, as one row
per run — which runs to look at first.

A run's tracks are those `carvis review --prepare` (or an earlier `carvis review`) kept for it
in the review cache; its row: the date (a tub's first record, else the file's time), its length,
the models, each model's mean |recorded − predicted| steering, where two models disagree most,
each model's mask area (mean and 90th percentile, at the track's threshold) and a sparkline. A
row is computed once from the tracks and kept beside them (``season.json``) until they change.
"""

from __future__ import annotations

import collections
import datetime
import itertools
import json
import logging
import threading
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from carvis import sources
from carvis.errors import CarvisError
from carvis.review import stats
from carvis.review.app import Review, source_key
from carvis.review.replay import TrackMaps
from carvis.review.track import META_KEY, Track

log = logging.getLogger("carvis")

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".ts")
SUMMARY = "season.json"
SUMMARY_FORMAT = 1
SPARK_POINTS = 120  # a sparkline's points (each the largest value of its stretch)
OPEN_RUNS = 2  # runs whose tracks stay in memory at a time


def runs(folder: str | Path) -> list[Path]:
    """The runs in a season folder: its DonkeyCar tubs and video files, by name."""
    path = Path(folder)
    if not path.is_dir():
        raise CarvisError(f"season {str(path)!r} is not a folder; give a folder of tubs and "
                          "videos (or one source with --model)")
    found = sorted(p for p in path.iterdir()
                   if (p.is_dir() and sources.is_tub(p))
                   or (p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES))
    if not found:
        raise CarvisError(f"season {str(path)!r} holds no DonkeyCar tub and no video "
                          f"({', '.join(VIDEO_SUFFIXES[:4])}, ...); give the folder that holds "
                          "the runs")
    return found


def is_season(path: str | Path) -> bool:
    """True for a folder that is not itself a source but holds runs."""
    p = Path(path)
    return p.is_dir() and not sources.is_tub(p) and any(
        (c.is_dir() and sources.is_tub(c)) or c.suffix.lower() in VIDEO_SUFFIXES
        for c in p.iterdir())


def kept_tracks(folder: Path) -> list[Path]:
    """A run's whole tracks in its review folder, by model file name, then layer, then file."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.glob("*.h5") if p.is_file()), key=_model_order)


def _model_order(path: Path) -> tuple[str, str, str]:
    """(model file, layer, track file) from a track's metadata alone (its maps unread)."""
    try:
        with h5py.File(path, "r") as f:
            meta = json.loads(f.attrs[META_KEY])
        return str(meta.get("model", "")), str(meta.get("layer", "")), path.name
    except (OSError, KeyError, ValueError, TypeError, AttributeError):
        return "", "", path.name


def _stamp(paths: list[Path]) -> list[list[Any]]:
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in paths]


def _date(run: Path) -> str:
    """When the run was recorded: a tub's first record, else the file's modification time."""
    when = run.stat().st_mtime
    if run.is_dir():
        try:
            with sources.open_source(str(run)) as tub:
                stamp = (tub.records[0] if tub.records else {}).get("_timestamp_ms")
                if stamp is not None:
                    when = float(stamp) / 1000.0
        except CarvisError as exc:
            log.warning("%s: %s", run.name, exc)
    return datetime.datetime.fromtimestamp(when).strftime("%Y-%m-%d %H:%M")


def _spark(values: np.ndarray, points: int = SPARK_POINTS) -> list[float | None]:
    """A sparkline of values: the largest of each stretch, at most `points` of them."""
    if values.size == 0:
        return []
    edges = np.linspace(0, values.size, min(points, values.size) + 1).astype(int)
    out: list[float | None] = []
    for a, b in itertools.pairwise(edges):
        part = values[a:b]
        part = part[np.isfinite(part)]
        out.append(round(float(part.max()), 4) if part.size else None)
    return out


def _mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return round(float(finite.mean()), 4) if finite.size else None


def summarize(run: Path, tracks: list[Track]) -> dict[str, Any]:
    """A run's row from its tracks (the first sets the length and the frame numbers)."""
    first = tracks[0]
    seconds = float(first.time[-1] - first.time[0]) if len(first) > 1 else 0.0
    masks, models = [], []
    for track in tracks:
        maps = TrackMaps(track)
        s = stats.map_stats(maps, maps.profile.threshold)
        masks.append(s["mask"])
        error = np.abs(track.recorded_angle - track.angle) if track.has_recorded else None
        models.append({"model": track.meta["model"], "layer": track.meta["layer"],
                       "mode": track.meta["mode"],
                       "error": None if error is None else _mean(error),
                       "area_mean": round(float(s["area"].mean()), 4),
                       "area_p90": round(float(np.percentile(s["area"], 90)), 4)})
    disagree = None
    if len(tracks) > 1:
        a, b = tracks[0], tracks[1]
        gap = np.abs(a.angle - b.angle)
        what = "steering"
        if not np.isfinite(gap).any():
            gap, what = stats.disagreement(masks[0], masks[1]), "mask 1 - IoU"
        if np.isfinite(gap).any():
            row = int(np.nanargmax(gap))
            disagree = {"frame": int(first.index[row]), "value": round(float(gap[row]), 4),
                        "what": what}
    # The sparkline: the first of these a run has (a model without steering has no angle).
    lines = [(np.abs(first.recorded_angle - first.angle), "|recorded - predicted|"),
             (np.abs(first.angle - tracks[-1].angle) if len(tracks) > 1 else first.angle[:0],
              "|model 1 - model 2|"),
             (masks[0].mean(axis=(1, 2)), "mask area")]
    line, spark_of = next((v, what) for v, what in lines if np.isfinite(v).any())
    errors = [m["error"] for m in models if m["error"] is not None]
    return {"format": SUMMARY_FORMAT, "date": _date(run), "frames": len(first),
            "seconds": round(seconds if seconds > 0 else len(first) / first.meta["fps"], 2),
            "models": models, "error": max(errors) if errors else None,
            "disagree": disagree, "area": max(m["area_mean"] for m in models),
            "spark": _spark(np.asarray(line, np.float64)), "spark_of": spark_of}


class Season:
    """A season folder's runs, their rows, and a run's review opened when asked for."""

    def __init__(self, folder: str | Path, cache: Path) -> None:
        self.folder = Path(folder)
        self.name = self.folder.resolve().name
        self.runs = runs(self.folder)
        self.cache = Path(cache)
        self._open: collections.OrderedDict[int, Review] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.runs)

    def review_folder(self, k: int) -> Path:
        """Where run k's tracks are kept."""
        return self.cache / source_key(str(self.runs[k]))

    def row(self, k: int) -> dict[str, Any]:
        """Run k's row: from its kept summary, or computed from its tracks and kept."""
        run, folder = self.runs[k], self.review_folder(k)
        base = {"run": k, "name": run.name, "kind": "tub" if run.is_dir() else "video"}
        paths = kept_tracks(folder)
        if not paths:
            return {**base, "prepared": False}
        summary_path = folder / SUMMARY
        stamp = _stamp(paths)
        try:
            kept = json.loads(summary_path.read_text())
            if kept.get("tracks") == stamp and kept.get("format") == SUMMARY_FORMAT:
                return {**base, "prepared": True, **kept["row"]}
        except (OSError, ValueError, AttributeError):
            pass
        try:
            row = summarize(run, [Track(p) for p in paths])
        except CarvisError as exc:
            return {**base, "prepared": False, "problem": str(exc)}
        part = summary_path.with_name(SUMMARY + ".part")
        try:
            part.write_text(json.dumps({"format": SUMMARY_FORMAT, "tracks": stamp, "row": row}))
            part.replace(summary_path)
        except OSError as exc:  # a read-only cache: computed again next time
            log.warning("%s: the season row was not kept (%s)", run.name, exc)
        return {**base, "prepared": True, **row}

    def rows(self) -> dict[str, Any]:
        """The season page's data: every run's row."""
        return {"season": self.name, "runs": [self.row(k) for k in range(len(self))]}

    def review(self, k: int) -> Review:
        """Run k's review from its kept tracks (the first two), opened once and kept while
        used (at most OPEN_RUNS at a time)."""
        if not 0 <= k < len(self.runs):
            raise CarvisError(f"run {k} is out of range; the season has runs 0..{len(self) - 1}")
        with self._lock:
            if k in self._open:
                self._open.move_to_end(k)
                return self._open[k]
            paths = kept_tracks(self.review_folder(k))
            if not paths:
                raise CarvisError(f"run {self.runs[k].name} has no review tracks yet; compute "
                                  f"them with carvis review --prepare {self.runs[k]} --model M")
            review = Review(str(self.runs[k]), kept=paths[:2], cache=self.cache)
            self._open[k] = review
            while len(self._open) > OPEN_RUNS:
                self._open.popitem(last=False)[1].close()
            return review

    def close(self) -> None:
        """Release every open run."""
        with self._lock:
            for review in self._open.values():
                review.close()
            self._open.clear()
