"""A map track: every frame's raw float map, its prediction and what made it, in one HDF5 file.

Layout (h5py; the file is written as ``NAME.part`` and renamed when whole, so a track that
exists is complete): datasets ``maps`` (N, h, w) float16, ``index`` int64, ``time`` float64
(seconds into the source: a tub's timestamps, else index / fps), ``angle`` / ``throttle``
(the prediction read as steering, NaN where none), ``prediction`` (N, P) float32 (the model's
raw output), ``recorded_angle`` / ``recorded_throttle`` (a tub's record), ``map_min`` /
``map_max`` (of the stored float16 map); the attribute ``carvis_track`` is a JSON object:
source, model file and SHA-256, layer, mode, target, channel, the profile, the map's shape.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np

from carvis import __version__, limits, pilot
from carvis.errors import CarvisError, first_line, shown
from carvis.frame import Frame
from carvis.maps import MapMaker, MapResult

log = logging.getLogger("carvis")

FORMAT = 1
META_KEY = "carvis_track"
SCALARS = ("time", "angle", "throttle", "recorded_angle", "recorded_throttle", "map_min",
           "map_max")
GROW = 256  # rows written to the file at a time


def track_meta(maker: MapMaker, source: Any) -> dict[str, Any]:
    """What makes a track's maps: the source, the model file and hash, layer, mode, profile."""
    session = maker.session
    profile = maker.profile.to_dict()
    profile.update({k: v for k, v in maker.settings().items() if k in profile})
    state = maker.state
    return {"format": FORMAT, "carvis": __version__, "source": str(getattr(source, "name", "")),
            "fps": float(getattr(source, "fps", 30.0) or 30.0),
            "source_frames": getattr(source, "frame_count", None),
            "model": Path(session.path).name, "model_sha256": session.sha256,
            "layer": maker.layer_name, "mode": state.mode, "target": state.target,
            "channel": state.channel, "profile": profile,
            "softmax": bool(state.explainer is not None and state.explainer.head.softmax)}


def _nan(value: float | None) -> float:
    return np.nan if value is None else float(value)


class TrackWriter:
    """Appends frames to a new track; close() makes it whole, abort() leaves nothing."""

    def __init__(self, path: str | Path, meta: dict[str, Any]) -> None:
        self.path = Path(path)
        self.part = self.path.with_name(self.path.name + ".part")
        self.meta = dict(meta)
        self.rows = 0
        try:
            self.part.parent.mkdir(parents=True, exist_ok=True)
            self._file = h5py.File(self.part, "w")
        except OSError as exc:
            raise CarvisError(f"cannot write the map track {str(self.path)!r} ({exc}); give a "
                              "path in a writable folder") from None
        self._sets: dict[str, Any] = {}
        self._pending = 0  # rows in the block, not yet in the file
        self._first: list[float] = []  # a tub's first timestamp

    def _create(self, shape: tuple[int, int], outputs: int) -> None:
        f = self._file
        self._sets["maps"] = f.create_dataset("maps", (0, *shape), np.float16,
                                              maxshape=(None, *shape), chunks=(1, *shape))
        self._sets["index"] = f.create_dataset("index", (0,), np.int64, maxshape=(None,))
        self._sets["prediction"] = f.create_dataset("prediction", (0, outputs), np.float32,
                                                    maxshape=(None, outputs))
        for name in SCALARS:
            dtype = np.float64 if name == "time" else np.float32
            self._sets[name] = f.create_dataset(name, (0,), dtype, maxshape=(None,))
        # Rows wait in a block and go to the file GROW at a time: one write per dataset.
        self._block = {name: np.empty((GROW, *ds.shape[1:]), ds.dtype)
                       for name, ds in self._sets.items()}
        self.meta["map_shape"] = list(shape)

    def append(self, frame: Frame, result: MapResult) -> None:
        """One frame's raw map (stored as float16), prediction and recorded steering."""
        raw16 = np.asarray(result.raw, np.float16)
        prediction, steering = result.prediction, result.steering
        time = source_time(frame, self.meta["fps"], self._first)
        pred = None if prediction is None else np.asarray(prediction, np.float32).reshape(-1)
        if not self._sets:
            self._create(raw16.shape, 1 if pred is None else pred.size)
        block, k = self._block, self._pending
        if raw16.shape != block["maps"].shape[1:]:
            raise CarvisError(f"frame {frame.index}: map shape {raw16.shape} differs from the "
                              f"track's {block['maps'].shape[1:]}; a track holds one layer")
        recorded = pilot.recorded(frame.record)
        block["maps"][k] = raw16
        values = {"index": frame.index, "time": time,
                  "angle": _nan(steering and steering.angle),
                  "throttle": _nan(steering and steering.throttle),
                  "recorded_angle": _nan(recorded and recorded.angle),
                  "recorded_throttle": _nan(recorded and recorded.throttle),
                  "map_min": float(raw16.min()), "map_max": float(raw16.max())}
        for name, value in values.items():
            block[name][k] = value
        fits = pred is not None and pred.size == block["prediction"].shape[1]
        block["prediction"][k] = pred if fits else np.nan
        self._pending += 1
        if self._pending == GROW:
            self._flush()

    def _flush(self) -> None:
        k, n = self._pending, self.rows
        for name, ds in self._sets.items():
            ds.resize(n + k, axis=0)
            ds[n:n + k] = self._block[name][:k]
        self.rows, self._pending = n + k, 0

    def close(self) -> Path:
        """Write what is pending and the metadata, and put the whole track in its place."""
        if self._sets:
            self._flush()
        if self.rows == 0:
            self.abort()
            raise CarvisError(f"no frame was read, so no map track was written to "
                              f"{str(self.path)!r}; check the source")
        self.meta["frames"] = self.rows
        self._file.attrs[META_KEY] = json.dumps(self.meta)
        self._file.close()
        os.replace(self.part, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the unfinished track."""
        with contextlib.suppress(Exception):
            self._file.close()
        self.part.unlink(missing_ok=True)


def source_time(frame: Frame, fps: float, first_ms: list[float]) -> float:
    """Seconds into the source: a tub record's timestamp (from the first), else index / fps."""
    stamp = (frame.record or {}).get("_timestamp_ms")
    if stamp is None:
        return frame.index / fps
    if not first_ms:
        first_ms.append(float(stamp))
    return (float(stamp) - first_ms[0]) / 1000.0


def record(frames: Iterable[Frame], maker: MapMaker, path: str | Path, source: Any = None,
           progress: Callable[[int], None] | None = None,
           keep: Callable[[Frame], None] | None = None) -> Track:
    """Every frame's map (no picture) into a new track at path; returns it opened. ``keep`` is
    handed each frame first (the review page's frame cache)."""
    writer = TrackWriter(path, track_meta(maker, source))
    try:
        for frame in frames:
            if keep is not None:
                keep(frame)
            writer.append(frame, maker(frame.image, frame.record))
            if progress is not None:
                progress(1)
    except BaseException:
        writer.abort()
        raise
    return Track(writer.close())


class Track:
    """A whole track, read into memory (maps as float16): one row per frame."""

    #: What a track's metadata holds, and the type of each value (a damaged file differs).
    META_TYPES: ClassVar[dict[str, tuple[type, ...]]] = {
        "format": (int,), "source": (str,), "fps": (int, float),
        "source_frames": (int, type(None)), "model": (str,), "model_sha256": (str,),
        "layer": (str,), "mode": (str,), "target": (str,), "channel": (int, str),
        "profile": (dict,), "softmax": (bool,), "map_shape": (list,), "frames": (int,)}

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        limits.check_regular(self.path, "map track")
        if not self.path.is_file():
            part = self.path.with_name(self.path.name + ".part")
            hint = " (only an unfinished .part: the recording was stopped)" if part.exists() \
                else ""
            raise CarvisError(f"map track {str(self.path)!r} not found{hint}; write one with "
                              "carvis render SOURCE --save-maps TRACK")
        limits.probe_hdf5(self.path, "map track")
        try:
            with h5py.File(self.path, "r") as f:
                self.meta = self._read_meta(f)
                if self.meta.get("format") != FORMAT:
                    raise CarvisError(f"map track {str(self.path)!r} has format "
                                      f"{shown(self.meta.get('format'))}, this carvis reads "
                                      f"{FORMAT}; record it again")
                sets = self._datasets(f, self.meta)
                self.maps = sets["maps"][...]
                self.index = sets["index"][...]
                self.prediction = sets["prediction"][...]
                for name in SCALARS:
                    setattr(self, name, sets[name][...])
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise CarvisError(f"{str(self.path)!r} is not a carvis map track "
                              f"({first_line(exc)}); write one with carvis render SOURCE "
                              "--save-maps TRACK") from None
        self.position = {int(k): n for n, k in enumerate(self.index)}

    def __len__(self) -> int:
        return int(self.maps.shape[0])

    @property
    def has_steering(self) -> bool:
        """True when the maps were made with the model's steering (the HUD's prediction)."""
        return bool(np.isfinite(self.angle).any())

    @property
    def has_recorded(self) -> bool:
        """True when the source's records carried a recorded angle (a tub)."""
        return bool(np.isfinite(self.recorded_angle).any())

    def row(self, index: int) -> int:
        """The row of a source frame index; one line if the track has none for it."""
        try:
            return self.position[int(index)]
        except KeyError:
            raise CarvisError(f"map track {self.path.name} has no map for frame {index} "
                              f"(it holds {len(self)} frames); record it again") from None

    def raw(self, row: int) -> np.ndarray:
        """A row's raw map as float32."""
        return self.maps[row].astype(np.float32)

    def record(self, row: int) -> dict[str, Any] | None:
        """What a tub recorded for a row, as a record (None for another source)."""
        angle, throttle = float(self.recorded_angle[row]), float(self.recorded_throttle[row])
        if not np.isfinite(angle):
            return None
        return {pilot.RECORDED_ANGLE: angle,
                pilot.RECORDED_THROTTLE: throttle if np.isfinite(throttle) else None}

    def steering(self, row: int) -> pilot.Steering | None:
        """A row's prediction as Steering, as the model render's HUD has it."""
        angle = float(self.angle[row])
        if not np.isfinite(angle):
            return None
        throttle = float(self.throttle[row])
        pred = self.prediction[row]
        bins = pilot.probabilities(pred, self.meta.get("softmax", True)) if pred.size > 1 \
            else None
        return pilot.Steering(angle, throttle if np.isfinite(throttle) else None, bins)

    def check(self, source: Any = None, model_sha256: str | None = None,
              model: str = "the model") -> None:
        """Refuse, in one line, a track made from another source or by another model."""
        name = self.path.name
        count = getattr(source, "frame_count", None)
        expected = self.meta.get("source_frames") or len(self)  # --start/--end: a part
        if count is not None and count != expected:
            raise CarvisError(f"map track {name} was made from a source of {expected} frames "
                              f"but {getattr(source, 'name', 'the source')} has {count}; give "
                              "the source it was made from, or record it again")
        if model_sha256 is not None and model_sha256 != self.meta["model_sha256"]:
            raise CarvisError(f"map track {name} was made by {self.meta['model']} (sha256 "
                              f"{self.meta['model_sha256'][:12]}), not by {model} (sha256 "
                              f"{model_sha256[:12]}); record it with that model")
        if source is not None and getattr(source, "name", None) != self.meta.get("source"):
            log.warning("map track %s was made from %s, not %s (same frame count: used)",
                        name, self.meta.get("source"), getattr(source, "name", "?"))

    @staticmethod
    def _read_meta(f: h5py.File) -> dict[str, Any]:
        """The track's metadata, each value of the type carvis writes; ValueError if not."""
        meta = limits.json_loads(f.attrs[META_KEY])
        if not isinstance(meta, dict):
            raise TypeError(f"its {META_KEY} attribute is not a JSON object")
        if meta.get("format") != FORMAT:
            return meta  # the caller words it: another format
        for key, kinds in Track.META_TYPES.items():
            value = meta.get(key)
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                raise ValueError(f"metadata {key} {shown(value)} is not what carvis writes")
        shape = meta["map_shape"]
        if len(shape) != 2 or not all(isinstance(d, int) and 1 <= d <= limits.MAX_FRAME_SIDE
                                      for d in shape):
            raise ValueError(f"metadata map_shape {shown(shape)} is not [height, width]")
        return meta

    @staticmethod
    def _datasets(f: h5py.File, meta: dict[str, Any]) -> dict[str, Any]:
        """The track's datasets, their declared shapes, types and sizes checked before any is
        read (a small file can declare 50 GiB); ValueError naming the first that is wrong."""
        frames = meta["frames"]
        h, w = meta["map_shape"]
        # name → (shape it must have, kinds of numbers it may hold)
        wanted: dict[str, tuple[tuple[int | None, ...], str]] = {
            "maps": ((frames, h, w), "f"), "index": ((frames,), "iu"),
            "prediction": ((frames, None), "f"), **{name: ((frames,), "f") for name in SCALARS}}
        sets, total = {}, 0
        for name, (shape, kinds) in wanted.items():
            ds = f.get(name)
            if not isinstance(ds, h5py.Dataset):
                raise TypeError(f"it has no dataset {name!r}")
            storage = limits.dataset_storage(ds)
            if storage:
                raise ValueError(f"dataset {name!r} {storage}")
            fits = len(ds.shape or ()) == len(shape) and all(
                want is None or want == got for want, got in zip(shape, ds.shape, strict=True))
            if not fits or ds.dtype.kind not in kinds or (name == "prediction"
                                                          and ds.shape[1] < 1):
                expected = "(" + ", ".join("P" if d is None else str(d) for d in shape) + ")"
                raise ValueError(f"dataset {name!r} is {ds.dtype} {tuple(ds.shape or ())}, not "
                                 f"{'float' if kinds == 'f' else 'integer'} {expected} for "
                                 f"{frames} frames of a {h}x{w} map")
            total += limits.dataset_bytes(ds)
            sets[name] = ds
        if total > limits.MAX_TRACK_BYTES:
            raise ValueError(f"its datasets declare {limits.size_text(total)}, more than carvis "
                             f"reads into memory ({limits.size_text(limits.MAX_TRACK_BYTES)})")
        return sets
