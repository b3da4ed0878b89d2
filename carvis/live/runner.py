"""The live loop: get frame -> newest map -> compose -> fan out, and the threads it owns.

The output loop runs at the camera's rate: it hands the model thread a frame whenever that is
idle, lays the newest map on each frame in place and hands the same array to every sink; a
frame is never written to again once composed, so sinks may read it from their threads while
the loop moves on. While the source is lost the loop sends a "no signal" placeholder instead.
Settings changes are applied by the model thread between two maps; keys, recording and stats
happen beside the loop.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from carvis import settings
from carvis.errors import CarvisError
from carvis.frame import Frame
from carvis.live import keys, metrics, stats
from carvis.live.capture import CaptureThread, NoSignal
from carvis.live.console import NOTES
from carvis.live.controls import Busy, Controls
from carvis.live.inference import Map, MapThread
from carvis.live.recording import Recorder, save_snapshot
from carvis.pipeline import Renderer
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
    """Runs the live loop and owns its threads: capture, sinks, HTTP server."""

    def __init__(self, source: Source, renderer: Renderer, options: LiveOptions | None = None,
                 *, on_frame: Callable[[Frame], None] | None = None) -> None:
        self.source = source
        self.renderer = renderer
        self.options = options or LiveOptions()
        self.on_frame = on_frame
        self.controls = Controls(self)
        self.capture = CaptureThread(source)
        self.model = MapThread(renderer, self.controls.apply_pending)
        self.meter = stats.LoopMeter()
        self.hists = {name: metrics.Histogram() for name in ("map", "compose")}
        self.map_age: tuple[int, float] | None = None  # (frames, seconds) on the newest output
        self.placeholders = 0
        self._seq = 0
        self.last_output: Frame | None = None
        self.running = False
        self.error: BaseException | None = None
        self.messages: list[str] = []
        self.layers = self._layer_choices()
        self.sinks: dict[str, SinkWorker] = {}
        self.recorder = Recorder(source.fps, self._say, first=self.options.record,
                                 folder=self.options.snapshot_dir,
                                 queue_size=self.options.record_queue)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._preparing: threading.Thread | None = None
        self._prepare_lock = threading.Lock()  # one build at a time (HTTP and the 'l' key)
        self.server = None
        self.encoder = None
        self._open_sinks()

    # -- setup ------------------------------------------------------------------------------
    def _layer_choices(self) -> list[str]:
        """The layers keys and the page cycle through: conv layers, plus the profile's own."""
        names = list(self.renderer.session.conv_layers())
        current = self.renderer.layer_name
        if current not in names:
            names.append(current)
            # Layer order from the session: LiteRT knows it from the .tflite's metadata, so
            # this never loads Keras (a Pi may not have TensorFlow at all).
            order = {name: i for i, name in enumerate(self.renderer.session.layer_names())}
            names.sort(key=lambda n: order.get(n, len(order)))
        return names

    def _open_sinks(self) -> None:
        opts = self.options
        try:
            if opts.display:
                from carvis.sinks.display import DisplaySink

                display = DisplaySink("carvis", on_key=self.handle_key, hud=self.hud_text)
                self.sinks["display"] = SinkWorker(display, "display", idle_interval=0.03)
            if opts.serve is not None:
                from carvis.sinks.mjpeg import JpegEncoder, MjpegServer

                host, port = opts.serve
                self.server = MjpegServer(host, port, self.controls, token=opts.token,
                                          send_timeout=opts.send_timeout, stats=self.stats,
                                          metrics=self.metrics)
                self.encoder = JpegEncoder(self.server.broadcast, opts.jpeg_quality)
                self.sinks["mjpeg"] = SinkWorker(self.encoder, "mjpeg")
            if opts.publish:
                from carvis.sinks.publish import Publisher, PublishWorker

                self.sinks["publish"] = PublishWorker(
                    Publisher(opts.publish, self.source.fps, opts.bitrate))
            for name, worker in self.sinks.items():
                worker.on_write = self.hists.setdefault(name, metrics.Histogram()).observe
            if opts.record:
                self.recorder.start()
        except BaseException:
            self.close()
            raise

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        """Capture, overlay and fan out until stop(), the source ends, or an error."""
        self._begin()
        try:
            self.controls.publish()
            while not self._stop.is_set():
                item = self.capture.get(timeout=0.1)
                if item is None:
                    if self.capture.finished:
                        break
                    self._check_sinks()
                    continue
                t0 = time.perf_counter()
                out = self._placeholder(item) if isinstance(item, NoSignal) else \
                    self._compose(item)
                self._fan_out(out)
                self.hists["compose"].observe(time.perf_counter() - t0)
                if self.meter.frame_done(t0):
                    self.meter.stage_ms = self.renderer.times.median_ms()
                    self._check_sinks()
            if self.capture.error is not None:
                raise self.capture.error
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self.running = False
            self.controls.fail_pending("the pipeline has stopped")
            self.close()

    def _begin(self) -> None:
        """Start the clock and the threads that feed and watch the loop."""
        self.running = True
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
        if self.model.error is not None:
            raise self.model.error
        if latest is not None and latest is not self._counted:
            self._counted = latest
            self.hists["map"].observe(latest.compute_s)
        image = self.renderer.compose(frame.image, latest.result if latest else None,
                                      frame.record)
        self.map_age = (self._seq - latest.seq, frame.timestamp - latest.timestamp) \
            if latest else None
        return Frame(image, frame.index, frame.timestamp, frame.name)

    _counted: Map | None = None
    _offered_at: float = float("-inf")  # capture time of the last frame handed to the model

    def _placeholder(self, tick: NoSignal) -> Frame:
        """The "no signal" frame, the size of the outputs, on the recording's timeline."""
        self._seq += 1
        self.placeholders += 1
        self.map_age = None
        last = self.last_output
        shape = last.image.shape if last is not None else \
            (*reversed(getattr(self.source, "size", (640, 480))), 3)
        return Frame(tick.image(shape), last.index if last else 0, tick.timestamp, "no signal")

    def _fan_out(self, out: Frame) -> None:
        """The composed frame to every sink, the recorder and the on_frame hook."""
        self.last_output = out
        for worker in self.sinks.values():
            worker.put(out)
        self.recorder.put(out)
        if self.on_frame is not None:
            self.on_frame(out)

    def _check_sinks(self) -> None:
        """A failed sink stops the run, except the recorder, which just stops recording."""
        if self.model.error is not None:
            raise self.model.error
        for name, worker in self.sinks.items():
            if worker.error is not None:
                raise CarvisError(f"{name} failed: {worker.error}")
        if self.recorder.check():
            self._submit(lambda: None)  # the settings the page shows are published anew

    @property
    def processed(self) -> int:
        """Frames processed so far."""
        return self.meter.processed

    # -- settings (applied by the model thread, between two maps) ---------------------------
    @property
    def recording(self) -> bool:
        """True while frames go to an .avi file."""
        return self.recorder.recording

    def current_settings(self) -> dict[str, Any]:
        """The live settings and their choices (called in the model thread)."""
        values = {**self.renderer.settings(), "recording": self.recording}
        out = {key: values[key] for key in settings.LIVE_KEYS}
        out["record_path"] = self.recorder.paths[-1] if self.recorder.paths else None
        out["record_error"] = self.recorder.failure
        out["choices"] = {"layers": list(self.layers), "channels": self.renderer.channels,
                          "colormaps": sorted(settings.COLORMAPS), "threshold": [0, 255],
                          "modes": list(settings.MODES), "targets": list(settings.TARGETS),
                          "views": list(settings.VIEWS)}
        return out

    def prepare(self, values: dict[str, Any]) -> dict[str, Any]:
        """Build what a change needs beside the loop; the values, the layer resolved."""
        render = {k: v for k, v in values.items() if k != "recording"}
        if not render:
            return values
        with self._prepare_lock:
            return {**values, **self.renderer.prepare(render)}

    def apply_settings(self, values: dict[str, Any]) -> None:
        """Apply prepared values all or nothing (model thread only)."""
        render = {k: v for k, v in values.items() if k != "recording"}
        before = self.renderer.settings()
        if render:
            self.renderer.apply(render)
        if "recording" in values:
            try:
                self.recorder.set(values["recording"])
            except CarvisError:
                if render:
                    self.renderer.apply(before)
                raise
        if self.renderer.layer_name not in self.layers:
            self.layers.append(self.renderer.layer_name)

    # -- keys (display thread): queue what they ask for --------------------------------------
    def handle_key(self, key: int) -> None:
        """A key press in the display window: do or queue what it asks for."""
        keys.handle_key(self, key)

    def change_soon(self, change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        """Queue a change worked out in the loop thread from the settings of the moment."""
        def apply() -> None:
            self.apply_settings(settings.validate(change(self.current_settings())))
        self._submit(apply)

    def snapshot_soon(self) -> None:
        """Queue a snapshot of the next composed frame."""
        self._submit(self.snapshot)

    def next_layer(self) -> None:
        """Prepare the next layer in a helper thread, then switch to it between two frames."""
        if self._preparing is not None and self._preparing.is_alive():
            self._say(logging.WARNING, "still preparing the previous layer")
            return
        i = self.layers.index(self.renderer.layer_name) \
            if self.renderer.layer_name in self.layers else -1
        name = self.layers[(i + 1) % len(self.layers)]

        def work() -> None:
            try:
                values = self.prepare({"layer": name})
                self._submit(lambda: self.apply_settings(values))
            except CarvisError as exc:
                self._say(logging.WARNING, str(exc))

        self._preparing = threading.Thread(target=work, name="carvis-prepare", daemon=True)
        self._preparing.start()

    def _submit(self, fn: Callable[[], None]) -> None:
        """Queue fn for the loop; its refusal (or the queue's) is a message, not an error."""
        def apply() -> None:
            try:
                fn()
            except CarvisError as exc:
                self._say(logging.WARNING, str(exc))
        try:
            self.controls.submit(apply)
        except Busy as exc:
            self._say(logging.WARNING, str(exc))

    def snapshot(self) -> Path | None:
        """Save the newest composed frame as a PNG; its path (None before the first frame)."""
        if self.last_output is None:
            return None
        path = save_snapshot(self.last_output, self.options.snapshot_dir)
        self._say(logging.INFO, f"snapshot saved to {path}")
        return path

    # -- stats and messages (any thread) ----------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counts, rates, per-stage times and latency, JSON-ready (any thread)."""
        sinks = {name: w.stats() for name, w in self.sinks.items()}
        record = self.recorder.stats()
        if record is not None:
            sinks["record"] = record
        out = stats.live_stats(self.meter, self.capture, sinks, source=self.source.name,
                               running=self.running, recording=self.recording,
                               encoded=self.encoder.encodes if self.encoder else 0)
        out.update(map=stats.map_stats(self.map_age, self.model),
                   signal=stats.signal_stats(self.capture), placeholders=self.placeholders,
                   record_error=self.recorder.failure,
                   record_failures=list(self.recorder.failures), notes=NOTES.snapshot())
        return out

    def metrics(self) -> str:
        """The stats in Prometheus' text format (any thread)."""
        full = self.server.stats() if self.server is not None else self.stats()
        return metrics.render(full, self.hists)

    def hud_text(self) -> str:
        """One status line for the display."""
        shown = self.controls.settings() or self.current_settings()
        return stats.hud_text({**shown, "recording": self.recording}, self.meter, self.capture,
                              self.sinks.get("display"), self.map_age)

    def summary(self) -> str:
        """One line on how the run went."""
        return stats.summary(self.meter, self.capture, self.model)

    def _say(self, level: int, text: str) -> None:
        """A note for the page (runner.messages) and the "carvis" logger."""
        self.messages.append(text)
        del self.messages[:-50]
        log.log(level, text)

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
        self.recorder.stop(announce=self.running)
        for worker in self.sinks.values():
            worker.close(timeout=max(0.05, deadline - time.monotonic()))
        self.recorder.finish(deadline)
        self.capture.stop(timeout=max(0.05, deadline - time.monotonic()))
        self.model.stop(timeout=max(0.05, deadline - time.monotonic()))
