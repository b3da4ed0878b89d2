"""The live loop: get frame -> newest map -> compose -> fan out; it is handed everything else.

Like DonkeyCar's vehicle loop, the runner calls what it was given: a capture thread, the model
thread (which owns the map maker), the composer (owned by this loop), the sinks (each a worker
thread with a bounded queue) and the panel (settings, keys, snapshots). It runs at the camera's
rate: it hands the model thread a frame whenever that is idle, lays the newest map on each
frame in place and sends the same picture, sealed, to every sink through the Outbox
(carvis.handoff). While the source is lost the loop sends a "no signal" placeholder instead.
:func:`carvis.live.build.build` wires a runner from `carvis run`'s options.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from carvis import handoff
from carvis.errors import CarvisError
from carvis.frame import Frame
from carvis.live import metrics, stats
from carvis.live.capture import CaptureThread, NoSignal
from carvis.live.inference import Map, MapThread
from carvis.live.panel import Panel
from carvis.sinks.threaded import SinkWorker
from carvis.sources.base import Source

log = logging.getLogger("carvis")


@dataclasses.dataclass
class LiveOptions:
    """What `carvis run` asks for besides the source and the model."""

    display: bool = False
    record: str | None = None
    serve: tuple[str, int] | None = None
    token: str | None = None
    jpeg_quality: int = 80
    send_timeout: float = 5.0
    record_queue: int = 16
    snapshot_dir: str = "."
    publish: str | None = None  # an rtmp://, rtsp:// or srt:// relay for one H.264 stream
    bitrate: int = 2_000_000
    #: Wait for the map of the very frame when the model takes under this share of a frame.
    fast_model: float = 0.5
    #: At most this many maps a second (None: as many as the model gives); the frames between
    #: two maps get the newest one, at the cost of an add (CPU for the autopilot beside it).
    map_fps: float | None = None


class LiveRunner:
    """Runs the live loop over the parts it is handed; owns the capture and model threads."""

    def __init__(self, source: Source, panel: Panel, sinks: Mapping[str, SinkWorker], *,
                 options: LiveOptions | None = None, server: Any = None,
                 on_frame: Callable[[Frame], None] | None = None) -> None:
        self.source = source
        self.panel = panel
        self.renderer = panel.renderer
        self.controls = panel.controls
        self.options = options or LiveOptions()
        self.sinks = dict(sinks)
        self.server = server
        self.on_frame = on_frame
        self.capture = CaptureThread(source)
        self.model = MapThread(self.renderer.maps, self.controls.model_step)
        self.outbox = handoff.Outbox([*self.sinks.values(), panel.recorder])
        self.meter = stats.LoopMeter()
        self.hists = {name: metrics.Histogram() for name in ("map", "compose", *self.sinks)}
        for name, worker in self.sinks.items():
            worker.on_write = self.hists[name].observe
        self.map_age: tuple[int, float] | None = None  # (frames, seconds) on the newest output
        self.laid: Map | None = None  # the map on the newest output
        self.placeholders = 0
        self.error: BaseException | None = None
        self.report = stats.Report(self)
        self._seq = 0
        self._counted: Map | None = None
        self._offered_at = float("-inf")  # capture time of the last frame handed to the model
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        panel.stop = self.stop

    @property
    def running(self) -> bool:
        """True while the loop runs."""
        return self.panel.running

    @property
    def processed(self) -> int:
        """Frames processed so far."""
        return self.meter.processed

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        """Capture, overlay and fan out until stop(), the source ends, or an error."""
        self._begin()
        try:
            while not self._stop.is_set():
                self.controls.loop_step()
                item = self.capture.get(timeout=0.1)
                if item is None:
                    if self.capture.finished:
                        break
                    self._check()
                    continue
                t0 = time.perf_counter()
                out = self._placeholder(item) if isinstance(item, NoSignal) else \
                    self._compose(item)
                self._fan_out(out)
                self.hists["compose"].observe(time.perf_counter() - t0)
                if self.meter.frame_done(t0):
                    self.meter.stage_ms = self.renderer.times.median_ms()
                    self._check()
            if self.capture.error is not None:
                raise self.capture.error
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self.panel.running = False
            self.controls.fail_pending("the pipeline has stopped")
            self.close()

    def _begin(self) -> None:
        """Start the clock and the threads that feed and watch the loop."""
        self.panel.running = True
        self.controls.loop_step()  # the first settings, published before any reader asks
        self.meter.restart()
        self.model.start()
        self.capture.start()
        if self.server is not None:
            self.server.start()

    def _compose(self, frame: Frame) -> Frame:
        """The frame with the newest map laid on it (this frame's own, for a fast model)."""
        self._seq += 1
        latest = self.model.latest
        due = self.options.map_fps is None or \
            frame.timestamp - self._offered_at >= 1.0 / self.options.map_fps
        if due and self.model.offer(self._seq, frame):
            self._offered_at = frame.timestamp
            # A model much faster than the camera: wait for this very frame's map (age 0).
            budget = self.options.fast_model / max(self.source.fps, 1e-3)
            if latest is not None and latest.compute_s < budget:
                latest = self.model.wait_for(self._seq, budget)
        if latest is None:
            latest = self._first_map()
        if self.model.error is not None:
            raise self.model.error
        if latest is not None and latest is not self._counted:
            self._counted = latest
            self.hists["map"].observe(latest.compute_s)
        image = self.renderer.composer(frame.image, latest.result if latest else None, frame)
        self.laid = latest
        self.map_age = (self._seq - latest.seq, frame.timestamp - latest.timestamp) \
            if latest else None
        return Frame(image, frame.index, frame.timestamp, frame.name)

    def _first_map(self) -> Map | None:
        """Wait for the model's first map (one model period, at the start): the recording and
        the stream then open at the size of every picture to come. A first picture without
        its HUD panel or grid fixed the recording's size, and squashed every later frame."""
        while not self._stop.is_set() and self.model.error is None:
            latest = self.model.wait_for(self._seq, 0.1)
            if latest is not None:
                return latest
        return None

    def _placeholder(self, tick: NoSignal) -> Frame:
        """The "no signal" frame, the size of the outputs, on the recording's timeline."""
        self._seq += 1
        self.placeholders += 1
        self.map_age = self.laid = None
        last = self.panel.last_output
        shape = last.image.shape if last is not None else \
            (*reversed(getattr(self.source, "size", (640, 480))), 3)
        return Frame(tick.image(shape), last.index if last else 0, tick.timestamp, "no signal")

    def _fan_out(self, out: Frame) -> None:
        """The composed frame, sealed, to every sink and the recorder; the on_frame hook."""
        self.outbox.send(out)
        self.panel.last_output = out
        if self.on_frame is not None:
            self.on_frame(out)

    def _check(self) -> None:
        """A failed sink stops the run, except the recorder, which just stops recording."""
        if self.model.error is not None:
            raise self.model.error
        for name, worker in self.sinks.items():
            if worker.error is not None:
                raise CarvisError(f"{name} failed: {worker.error}")
        if self.panel.recorder.check():
            self.controls.publish()  # the page shows the recording stopped

    # -- threads ----------------------------------------------------------------------------
    def start(self) -> LiveRunner:
        """Run the loop in a background thread (for tests and embedding)."""
        def target() -> None:
            try:
                self.run()
            except BaseException as exc:  # noqa: BLE001 - re-raised by join()
                self.error = exc

        self._thread = threading.Thread(target=target, name="carvis-live", daemon=True)
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        """Wait for a background run to end; re-raise its error."""
        if self._thread is not None:
            self._thread.join(timeout)
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        """Ask the loop to stop (safe from any thread and from a signal handler)."""
        self._stop.set()

    def close(self, timeout: float = 1.5) -> None:
        """Stop everything: capture, sinks (the recorder drains and closes its file), server."""
        deadline = time.monotonic() + timeout
        self.capture.stop(timeout=0)
        self.model.stop(timeout=0)
        if self.server is not None:
            self.server.close()
        for worker in self.sinks.values():
            worker.close(timeout=0)
        recorder = self.panel.recorder
        recorder.stop(announce=self.panel.running)
        for worker in self.sinks.values():
            worker.close(timeout=max(0.05, deadline - time.monotonic()))
        recorder.finish(deadline)
        self.capture.stop(timeout=max(0.05, deadline - time.monotonic()))
        self.model.stop(timeout=max(0.05, deadline - time.monotonic()))
