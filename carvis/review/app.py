"""A review: a source, one or two models' map tracks and its frames, computed once and kept.

Tracks and the frame cache live in ``$CARVIS_CACHE/review/<source key>/``: the source key is its
path with the size and modification time of what it holds (the spec for a synthetic clip), a
track's name the model file's SHA-256 and a hash of what makes its maps (preprocessing, layer,
channel, mode, target). A second review of the same source and model reads them and loads no
model at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from carvis import profile as prof
from carvis import settings, sources, views
from carvis.backends.cache import cache_dir, file_sha256
from carvis.composer import Composer
from carvis.errors import CarvisError
from carvis.frame import Frame
from carvis.maps import MapMaker
from carvis.review import stats
from carvis.review.frames import CacheWriter, FrameCache
from carvis.review.replay import GRID_HELP, TrackMaps, drawing_profile
from carvis.review.track import Track, record
from carvis.session import ModelSession
from carvis.sinks.table import SinkOptions, open_sink

log = logging.getLogger("carvis")

#: What a bar of progress is made from: (description, total) -> update(n).
Progress = Callable[[str, int | None], Callable[[int], None]]
MAP_KEYS = ("layer", "channel", "mode", "target", "smoothgrad")
#: What the review page may change, each checked by carvis.settings.
PAGE_KEYS = ("threshold", "colormap", "overlay", "view", "hud", "compare", "normalize")


def source_key(spec: str) -> str:
    """The source's identity: path, and the size and mtime of it or of what its folder holds."""
    path = Path(spec)
    if not path.exists():
        parts = [spec]
    elif path.is_dir():
        parts = [str(path.resolve())] + [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                                         for p in sorted(path.iterdir())]
    else:
        st = path.stat()
        parts = [str(path.resolve()), str(st.st_size), str(st.st_mtime_ns)]
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', path.name)[:40] or 'source'}-{digest}"


def track_name(model_sha256: str, profile: prof.Profile) -> str:
    """A track's file name: the model's content and what makes the maps."""
    data = profile.to_dict()
    what = {"preprocess": data["preprocess"], **{k: data[k] for k in MAP_KEYS}}
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]
    return f"{model_sha256[:16]}-{data['layer']}-{data['mode']}-{digest}.h5".replace("/", "_")


class Review:
    """A source and its models' tracks: frames composed from the tracks, never the model."""

    def __init__(self, spec: str, models: Sequence[tuple[str | Path, prof.Profile]] = (), *,
                 backend: str = "auto", lambda_policy: str = "error", fps: float | None = None,
                 progress: Progress | None = None, cache: str | Path | None = None,
                 kept: Sequence[str | Path] = ()) -> None:
        if not 1 <= len(models) + len(kept) <= 2:
            raise CarvisError(f"review takes one or two models (--model M [--model M2]), "
                              f"got {len(models) + len(kept)}")
        self.spec, self.fps_flag = str(spec), fps
        self.backend, self.lambda_policy = backend, lambda_policy
        self.progress = progress
        self.model_calls = 0  # frames this review ran a model on (none for a kept track)
        with sources.open_source(self.spec, fps=fps) as source:
            self.name, self.fps = source.name, float(source.fps)
            self.frame_count = source.frame_count
        self.folder = Path(cache or cache_dir() / "review") / source_key(self.spec)
        self.frames: FrameCache | None = None
        if FrameCache.exists(self.folder / "frames.jpg"):
            self.frames = FrameCache(self.folder / "frames.jpg")
        self.tracks = [Track(path) for path in kept]  # computed earlier: a season's run
        for track in self.tracks:
            track.check(self._counted())
        self.tracks += [self._track(Path(path), profile) for path, profile in models]
        if self.frames is None:  # every track was kept, the frame cache was not
            self._pass(None)
        # The drawing settings given (flags, profile) over each track's own.
        drawn = [None] * len(kept) + [profile for _, profile in models]
        self.maps = [TrackMaps(t, drawing_profile(t, p)) for t, p in zip(self.tracks, drawn,
                                                                           strict=True)]
        self.composers = [Composer(m.profile) for m in self.maps]
        self.labels = self._labels()
        self.requests: list[float] = []  # seconds per frame answered
        self.lock = threading.Lock()

    def _track(self, model: Path, profile: prof.Profile) -> Track:
        if not model.is_file():
            raise CarvisError(f"{model}: model file not found; check the path")
        sha = file_sha256(model)
        path = self.folder / track_name(sha, profile)
        if path.is_file():
            track = Track(path)
            track.check(self._counted(), sha, model.name)
            log.info("map track of %s kept from an earlier review: %s", model.name, path)
            return track
        session = ModelSession(model, backend=self.backend, lambda_policy=self.lambda_policy)
        # The steering on: the explainer runs to the model's output, so every frame's
        # prediction is kept in the track (the page draws or hides the HUD from it).
        try:
            maker = MapMaker(session, profile, steering=True)
        except CarvisError as exc:
            log.warning("%s: no prediction on the page: %s", model.name, exc)
            maker = MapMaker(session, profile)
        return self._pass(maker, path, model.name)

    def _pass(self, maker: MapMaker | None, path: Path | None = None, what: str = "frames"
              ) -> Track | None:
        """One pass over the source: a model's track, and the frame cache if there is none."""
        update = self.progress(what, self.frame_count) if self.progress else None
        writer = None if self.frames is not None else CacheWriter(self.folder / "frames.jpg")
        try:
            with sources.open_source(self.spec, fps=self.fps_flag) as source:
                if maker is None:
                    for frame in source:
                        writer(frame)
                        if update:
                            update(1)
                    track = None
                else:
                    track = record(source, maker, path, source, update, writer)
                    self.model_calls += len(track)
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        if writer is not None:
            self.frames = writer.close()
        if track is not None:
            track.check(self._counted())
        return track

    def _counted(self) -> Any:
        """The source as a track is checked against it: its name, the frames decoded."""
        count = len(self.frames) if self.frames is not None else self.frame_count
        return types.SimpleNamespace(name=self.name, frame_count=count)

    def _labels(self) -> list[str]:
        names = [t.meta["model"] for t in self.tracks]
        if len(set(names)) < len(names):  # two files of one name: told apart by their content
            names = [f"{n} #{t.meta['model_sha256'][:8]}" for n, t in zip(names, self.tracks,
                                                                         strict=True)]
        return [f"{n} ({t.meta['layer']}, {t.meta['mode']})" for n, t in
                zip(names, self.tracks, strict=True)]

    # -- what the page asks --------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.frames)

    def settings(self) -> dict[str, Any]:
        """The drawing settings in force (the same for every model)."""
        return {**self.composers[0].settings(), "normalize": self.maps[0].normalize}

    def change(self, changes: Any) -> dict[str, Any]:
        """Check a change with carvis.settings, apply it to every model's drawing."""
        values = settings.validate(changes, keys=PAGE_KEYS)
        if values.get("view") == "grid":
            raise CarvisError(GRID_HELP)
        with self.lock:
            for maps, composer in zip(self.maps, self.composers, strict=True):
                maps.apply(values)
                composer.apply(values)
        return self.settings()

    def info(self) -> dict[str, Any]:
        """What the page shows about the review: the source, the models, the choices."""
        return {"source": self.name, "frames": len(self), "fps": self.fps,
                "models": [{"label": label, "model": t.meta["model"], "layer": t.meta["layer"],
                            "mode": t.meta["mode"], "sha256": t.meta["model_sha256"][:12]}
                           for label, t in zip(self.labels, self.tracks, strict=True)],
                "recorded": self.tracks[0].has_recorded, "settings": self.settings(),
                "choices": {"colormaps": sorted(settings.COLORMAPS), "views": ["overlay"],
                            "normalize": list(settings.NORMALIZATIONS)}}

    def timeline(self) -> dict[str, Any]:
        """The chart's series at the settings in force."""
        # Marks a second apart, or closer on a short source: about 40 of them could fit.
        return stats.timeline(self.maps, self.composers,
                              spacing=max(1, min(round(self.fps), len(self) // 40)))

    def picture(self, n: int, model: int | None = None) -> np.ndarray:
        """Frame n with one model's overlay, or every model's side by side (model None)."""
        t0 = time.perf_counter()
        if not 0 <= n < len(self):
            raise CarvisError(f"frame {n} is out of range; give 0..{len(self) - 1}")
        image = self.frames.get(n)
        chosen = range(len(self.composers)) if model is None else [model]
        if not set(chosen) <= set(range(len(self.composers))):
            raise CarvisError(f"model {model} is out of range; give 0..{len(self.composers) - 1}")
        pictures = []
        with self.lock:  # the composers' buffers and settings: one request draws at a time
            for k in chosen:
                maps, row = self.maps[k], self.maps[k].track.row(n)
                shown = Frame(image.copy() if len(chosen) > 1 else image, n, 0.0,
                              record=maps.track.record(row),
                              time=float(maps.track.time[row]))
                pictures.append(self.composers[k](shown.image, maps.at(row), shown))
        out = pictures[0] if len(pictures) == 1 else views.side_by_side(
            pictures[0], pictures[1], labels=self.labels)
        self.requests.append(time.perf_counter() - t0)
        del self.requests[:-1000]
        return out

    def stats(self) -> dict[str, Any]:
        """Model calls and frame times, for the page and the tests."""
        times = np.asarray(self.requests or [0.0]) * 1e3
        return {"model_calls": self.model_calls, "frames_answered": len(self.requests),
                "frame_ms_p50": round(float(np.percentile(times, 50)), 2),
                "frame_ms_p95": round(float(np.percentile(times, 95)), 2)}

    def export(self, start: int, end: int, path: str | Path) -> int:
        """Frames start..end (inclusive), every model side by side, as H.264; frames written."""
        if not 0 <= start <= end < len(self):
            raise CarvisError(f"range {start}..{end} is not valid; give 0 <= start <= end <= "
                              f"{len(self) - 1}")
        with open_sink(path, SinkOptions(self.fps), allowed=(".mp4",)) as sink:
            for n in range(start, end + 1):
                sink.write(self.picture(n))
            return sink.frames

    def png(self, n: int) -> bytes:
        """Frame n, every model side by side, as PNG bytes."""
        ok, data = cv2.imencode(".png", self.picture(n))
        if not ok:
            raise CarvisError(f"PNG encoding failed for frame {n}")
        return data.tobytes()

    def close(self) -> None:
        """Release the frame cache."""
        if self.frames is not None:
            self.frames.close()
