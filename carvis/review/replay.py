"""A track's maps as a map source: the model render's pictures re-drawn without the model.

:class:`TrackMaps` stands where a :class:`carvis.maps.MapMaker` stands — a Renderer asks it
for a frame's map — and the composer draws as for the model's own maps. Read in order
(``render --maps``), the maps go through the profile's own MapNormalizer (running range and EMA
exactly as the model render had them); read at random (the review page), each row is
normalised from the track-wide ranges (the EMA is left out). A re-render keeps the track's
preprocessing (its maps belong to that ROI) and takes the drawing settings from the profile and
flags given.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from carvis import limits, settings
from carvis import profile as prof
from carvis.backends.cache import file_sha256
from carvis.errors import CarvisError
from carvis.frame import Frame
from carvis.maps import MapResult, StageTimes
from carvis.overlay import MapNormalizer, normalize_minmax, normalize_range, running_range
from carvis.review.track import Track

#: The profile keys a re-render may change (the rest belongs to the track's maps).
DRAWING = ("normalize", "range", "decay", "ema", "threshold", "colormap", "output",
           "output_size", "view", "hud", "compare")
GRID_HELP = ("view grid needs every channel of the layer and a track keeps one map; re-render "
             "with the model (carvis render SOURCE -o OUT --view grid)")


def drawing_profile(track: Track, profile: prof.Profile | None = None,
                    changes: Mapping[str, Any] | None = None) -> prof.Profile:
    """The track's profile with the drawing settings of another profile and of flags."""
    data = dict(track.meta["profile"])
    if profile is not None:
        given = profile.to_dict()
        data.update({key: given[key] for key in DRAWING})
    base = prof.parse(data, source=f"{track.path.name} (profile)", base=None)
    changes = {k: v for k, v in (changes or {}).items() if v is not None}
    checked = {k: settings.check(k, v, settings.FLAGS) for k, v in changes.items()}
    profile = base.replace(**checked) if checked else base
    if profile.view == "grid":
        raise CarvisError(GRID_HELP)
    return profile


def open_track(path: str | Path | Track, source: Any = None, model: str | Path | None = None
               ) -> Track:
    """A track, refused in one line if it does not match the source or the model asked for."""
    track = path if isinstance(path, Track) else Track(path)
    if model is not None:
        limits.check_regular(model, "model")
    sha = file_sha256(model) if model is not None else None
    track.check(source, sha, Path(model).name if model is not None else "the model")
    return track


class TrackMaps:
    """A track's rows as maps (carvis.maps.MapResult), in order or at random."""

    def __init__(self, track: Track, profile: prof.Profile | None = None) -> None:
        self.track = track
        self.profile = profile or drawing_profile(track)
        self.times = StageTimes()
        self.layer_name = track.meta["layer"]
        self.normalize = self.profile.normalize
        p = self.profile
        self.lo, self.hi = self._ranges(self.normalize)
        value_range = p.range
        if p.normalize == "fixed" and value_range is None:
            value_range = (float(self.lo[0]), float(self.hi[0]))
        self.normalizer = MapNormalizer(p.normalize, value_range, p.decay, p.ema)

    def settings(self) -> dict[str, Any]:
        """What it draws from: the track's map settings, the normalisation in force."""
        meta = self.track.meta
        return {"layer": self.layer_name, "channel": meta["channel"], "mode": meta["mode"],
                "target": meta["target"], "normalize": self.normalize}

    def prepare(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """A track's maps are made: only the normalisation may change."""
        fixed = [k for k in values if k not in ("normalize",)]
        if fixed:
            raise CarvisError(f"{', '.join(fixed)} made the maps of track {self.track.path.name}; "
                              "render with the model to change them")
        return dict(values)

    def apply(self, values: Mapping[str, Any]) -> None:
        """A new normalisation for random access (the review page's)."""
        if "normalize" in values:
            self.lo, self.hi = self._ranges(values["normalize"])
            self.normalize = values["normalize"]

    def map_of(self, frame: Frame) -> MapResult:
        """The map of a source frame, read in order: the profile's normaliser, exactly."""
        row = self.track.row(frame.index)
        raw = self.track.raw(row)
        return self._result(row, raw, self.normalizer(raw).copy())

    def at(self, row: int) -> MapResult:
        """A row's map at random: normalised from the track-wide ranges (no EMA)."""
        raw = self.track.raw(row)
        if self.normalize == "minmax":
            norm = normalize_minmax(raw)
        else:
            norm = normalize_range(raw, float(self.lo[row]), float(self.hi[row]))
        return self._result(row, raw, norm)

    def _result(self, row: int, raw: np.ndarray, norm: np.ndarray) -> MapResult:
        t = self.track
        prediction = t.prediction[row] if t.has_steering else None
        return MapResult(norm, raw, None, prediction, bool(t.meta.get("softmax", True)),
                         self.layer_name, t.meta["mode"], t.steering(row))

    def _ranges(self, normalize: str) -> tuple[np.ndarray, np.ndarray]:
        """Each row's (low, high) under a normalisation, as MapNormalizer would have them."""
        t = self.track
        lo, hi = t.map_min.astype(np.float64), t.map_max.astype(np.float64)
        if normalize == "fixed":
            low, high = self.profile.range or (float(lo.min()), float(hi.max()))
            return np.full(len(t), low), np.full(len(t), high)
        if normalize == "running":
            return running_range(lo, hi, self.profile.decay)
        return lo, hi
