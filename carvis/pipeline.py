"""Wires a frame's two halves and streams frames: the Renderer (map maker + composer, one verb)
and render() (reader → renderer → writer threads, order kept).

A Renderer is handed its map source — a :class:`carvis.maps.MapMaker` (the model) or a track's
maps (review, ``render --maps``) — and its :class:`carvis.composer.Composer`. Settings change
through one door, :meth:`Renderer.apply` (after :meth:`Renderer.prepare`, which builds what a
change needs outside the loop); each half takes its own keys.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import cv2
import numpy as np

from carvis import handoff, hud, pilot
from carvis.composer import DRAW_KEYS, Composer
from carvis.frame import Frame
from carvis.maps import MAP_KEYS, MapMaker, MapResult, StageTimes
from carvis.profile import Profile
from carvis.session import ModelSession
from carvis.sinks import Sink
from carvis.sinks.threaded import SinkWorker


class Maps(Protocol):
    """Where a frame's map comes from: the model (MapMaker) or a track (review)."""

    times: StageTimes
    layer_name: str

    def map_of(self, frame: Frame) -> MapResult: ...

    def settings(self) -> dict[str, Any]: ...

    def prepare(self, values: dict[str, Any]) -> dict[str, Any]: ...

    def apply(self, values: dict[str, Any]) -> None: ...


class Renderer:
    """A frame's map and its picture: ``render(frame)``, the one per-frame verb."""

    def __init__(self, maps: Maps, composer: Composer,
                 on_map: Callable[[Frame, MapResult], None] | None = None) -> None:
        self.maps = maps
        self.composer = composer
        self.on_map = on_map  # handed every frame's map (a track writer keeps them)
        self.log = pilot.SteeringLog()  # recorded vs predicted angle, frame by frame
        self.last_map: MapResult | None = None  # the last frame's (its steering: a pilot's)
        self.times = maps.times
        composer.times = self.times

    # -- settings: one way in -------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """Every setting in force, the map's and the drawing's."""
        ours = {k: v for k, v in self.maps.settings().items() if k not in ("steering", "grid")}
        return {**ours, **self.composer.settings()}

    def prepare(self, values: dict[str, Any]) -> dict[str, Any]:
        """Build and check a change ahead (any thread): {"maps": the map maker's values (the
        layer resolved), "draw": the composer's}; CarvisError if any part is refused."""
        draw = {k: v for k, v in values.items() if k in DRAW_KEYS}
        wanted = {k: v for k, v in values.items() if k in MAP_KEYS}
        if "hud" in values:
            wanted["steering"] = bool(values["hud"] or self.composer.chart is not None)
        if "view" in values:
            wanted["grid"] = values["view"] == "grid"
        change: dict[str, Any] = {"draw": draw}
        if wanted:
            change["maps"] = self.maps.prepare(wanted)
        return change

    def apply(self, values: dict[str, Any]) -> None:
        """Apply checked settings (carvis.settings) all or nothing: a value the model refuses
        (a channel the layer lacks, a mode the backend cannot run) changes nothing."""
        change = values if set(values) <= {"maps", "draw"} else self.prepare(values)
        if "maps" in change:
            self.maps.apply(change["maps"])
        self.composer.apply(change["draw"])

    @property
    def layer_name(self) -> str:
        """The map's layer."""
        return self.maps.layer_name

    # -- per frame ------------------------------------------------------------------------------
    def render(self, frame: Frame) -> np.ndarray:
        """A frame's picture: its own map laid on it, the views drawn (the frame is given up);
        a tub record's steering goes on the HUD beside the model's and into the log."""
        result = self.last_map = self.maps.map_of(frame)
        if self.on_map is not None:
            self.on_map(frame, result)
        self.log.add(frame.number, frame.record, result.steering)
        return self.composer(frame.image, result, frame)

    def finish(self) -> None:
        """The end of a stream (a map flat on every frame is said, however few)."""
        finish = getattr(self.maps, "finish", None)
        if finish is not None:
            finish()


def make_renderer(session: ModelSession, profile: Profile,
                  chart: hud.StripChart | None = None, *, steering: bool = False,
                  scale: int | None = 1, fps: float = 30.0, pilot: Any = "auto") -> Renderer:
    """The Renderer of a model for a profile; the model's steering is computed for the HUD,
    a strip chart, or when asked (a pilot part drives with it). scale: the picture's (None:
    small pictures scaled up to 480 rows); fps: the source's, for the frame times shown;
    pilot: a carvis.pilots.Pilot (a DonkeyCar pilot's --type and --config), "auto" to read
    one from the model's names, or None."""
    times = StageTimes()
    maps = MapMaker(session, profile, steering=steering or profile.hud or chart is not None,
                    times=times, pilot=pilot)
    return Renderer(maps, Composer(profile, chart, times=times, scale=scale, fps=fps))


_END = object()


class _Failed:
    """An exception raised in the reader thread, carried to the rendering thread."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Reader(threading.Thread):
    """Pulls frames from the source (decoding them) into a bounded queue."""

    def __init__(self, frames: Iterable[Frame], size: int, times: StageTimes) -> None:
        super().__init__(name="carvis-render-read", daemon=True)
        self.frames = frames
        self.queue: queue.Queue = queue.Queue(maxsize=size)
        self.times = times
        self.stopping = threading.Event()

    def run(self) -> None:
        item: object = _END
        try:
            # Frames are drawn on in place by the taker: each must be its own array.
            it = handoff.owned(self.frames)
            while not self.stopping.is_set():
                t0 = time.perf_counter()
                frame = next(it, None)
                if frame is None:
                    break
                self.times.add("decode", time.perf_counter() - t0)
                if not self._put(frame):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the rendering thread
            item = _Failed(exc)
        self._put(item)

    def _put(self, item: object) -> bool:
        while not self.stopping.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def stop(self) -> None:
        """Stop after the frame being read; drop what is queued."""
        self.stopping.set()
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break


def render(frames: Iterable[Frame], renderer: Renderer, sink: Sink,
           progress: Callable[[int], None] | None = None, *, queue_size: int = 3) -> int:
    """Every frame in, one picture out, in order; returns the number written."""
    # Three stages overlap: a reader thread pulls frames from the source (it decodes), this
    # thread renders each (its map, then the picture drawn on the frame), a writer thread feeds
    # the sink (JPEG/H.264 encode + write). Queues hold at most queue_size frames each, so
    # memory stays flat; FIFO queues keep the order. Pictures reach the writer through the
    # Outbox, sealed (carvis.handoff). On an error or Ctrl-C, frames already rendered are still
    # written before the exception propagates, so the sink is complete up to there.
    times = renderer.times
    # The stages are the parallelism: OpenCV's own worker pool on top of them only adds
    # hand-offs, and a stripe stuck behind a busy core stalls the whole call.
    cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    writer = SinkWorker(sink, "write", policy="block", maxsize=queue_size, drain_on_close=True)

    def written(seconds: float) -> None:
        times.add("write", seconds)
        if progress is not None:
            progress(1)

    writer.on_write = written
    outbox = handoff.Outbox([writer])
    reader = _Reader(frames, queue_size, times)
    reader.start()
    try:
        while True:
            t0 = time.perf_counter()
            item = reader.queue.get()
            times.add("wait_read", time.perf_counter() - t0)
            if item is _END:
                break
            if isinstance(item, _Failed):
                raise item.exc
            picture = renderer.render(item)
            t0 = time.perf_counter()
            outbox.send(Frame(picture, item.index, item.timestamp, item.name, item.record))
            times.add("wait_write", time.perf_counter() - t0)
            if writer.error is not None:
                raise writer.error
        renderer.finish()
    finally:
        reader.stop()
        writer.close()  # drains what was queued, then closes the sink
        reader.join()
        cv2.setNumThreads(cv_threads)
    if writer.error is not None:
        raise writer.error
    return writer.written
