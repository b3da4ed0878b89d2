"""Live mode: capture thread → latest-frame slot → overlay → sinks, each in its own thread.

Latency beats completeness here. The capture thread keeps only the newest frame (a frame the
loop did not take in time is dropped and counted); a file source is paced at its own fps, as a
camera would deliver it. The processing loop overlays each frame in place and hands the same
array to every sink; a frame is never written to again once processed, so sinks may read it
from their threads while the loop moves on to the next, freshly captured, array.

Settings (threshold, channel, layer, colormap, overlay, recording) are changed from keys and
from HTTP through one :class:`Controls` object: validated where they are asked for, applied
by the loop between two frames, all or nothing.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import queue
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from carvis import explain
from carvis import overlay as ov
from carvis.errors import CarvisError
from carvis.pipeline import Renderer
from carvis.profile import parse_channel, parse_layer
from carvis.sinks.threaded import SinkWorker, percentile_ms
from carvis.sources import Frame, Source

SETTINGS = ("threshold", "channel", "layer", "colormap", "overlay", "recording",
            "mode", "target", "view", "hud", "compare")
THRESHOLD_STEP = 5.0
MAX_LAG = 0.5  # seconds a paced file may fall behind its clock before the clock restarts


class Busy(CarvisError):
    """The pipeline cannot take a change right now (HTTP 503)."""

    http_status = 503


class RateMeter:
    """Events per second over the last few seconds."""

    def __init__(self, window: float = 2.0, size: int = 512) -> None:
        self.window = window
        self._times: collections.deque[float] = collections.deque(maxlen=size)

    def tick(self, t: float | None = None) -> None:
        """Count one event (now, or at monotonic time t)."""
        self._times.append(time.monotonic() if t is None else t)

    def rate(self) -> float:
        """Events per second in the window (0 with fewer than two events)."""
        now = time.monotonic()
        times = [t for t in tuple(self._times) if now - t <= self.window]
        if len(times) < 2 or times[-1] <= times[0]:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])


class CaptureThread:
    """Reads a source as fast as it delivers into a latest-frame slot; drops are counted."""

    def __init__(self, source: Source, *, pace: bool | None = None) -> None:
        self.source = source
        # A file has no clock of its own: in live mode it plays at its native fps.
        self.pace = (not source.live) if pace is None else pace
        self.captured = 0
        self.dropped = 0
        self.error: CarvisError | None = None
        self.done = False
        self.read_times: collections.deque[float] = collections.deque(maxlen=300)
        self.rate = RateMeter()
        self._frame: Frame | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="carvis-capture", daemon=True)

    def start(self) -> CaptureThread:
        """Start capturing."""
        self._thread.start()
        return self

    def _run(self) -> None:
        interval = 1.0 / max(self.source.fps, 1e-3)
        due: float | None = None
        try:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                frame = self.source.read()
                if frame is None:
                    break
                self.read_times.append(time.perf_counter() - t0)
                if self.pace:
                    # Play the file as a camera would film it: frame k is due k/fps after the
                    # start. A frame decoded late is handed on at once (the loop takes the
                    # newest, so the clock is kept and late frames count as drops); after a
                    # long stall (over MAX_LAG) the clock restarts rather than burst.
                    now = time.monotonic()
                    if due is None or now - due > MAX_LAG:
                        due = now
                    elif due > now and self._stop.wait(due - now):
                        break
                    due += interval
                    frame = dataclasses.replace(frame, timestamp=time.monotonic())
                self._publish(frame)
        except CarvisError as exc:
            self.error = exc
        except Exception as exc:  # noqa: BLE001 - a device failing mid-run: one line
            self.error = CarvisError(f"source {self.source.name!r} failed: "
                                     f"{type(exc).__name__}: {exc}")
        finally:
            with self._cond:
                self.done = True
                self._cond.notify_all()

    def _publish(self, frame: Frame) -> None:
        with self._cond:
            if self._frame is not None:
                self.dropped += 1  # the loop did not take the previous one in time
            self._frame = frame
            self.captured += 1
            self._cond.notify()
        self.rate.tick(frame.timestamp)

    def get(self, timeout: float) -> Frame | None:
        """The newest frame not yet taken (each is handed out once), or None on timeout/end."""
        with self._cond:
            if self._frame is None and not self.done:
                self._cond.wait(timeout)
            frame, self._frame = self._frame, None
            return frame

    @property
    def finished(self) -> bool:
        """True once the source has ended (or failed) and its last frame was taken."""
        return self.done and self._frame is None

    def stop(self, timeout: float = 1.0) -> bool:
        """Ask the thread to stop; True if it ended within the timeout."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()


def validate_settings(changes: Any) -> dict[str, Any]:
    """Check the shape, types and ranges of a settings change; the normalised values."""
    if not isinstance(changes, dict):
        raise CarvisError(f"settings must be a JSON object such as {{\"threshold\": 120}}, "
                          f"got {type(changes).__name__}")
    out: dict[str, Any] = {}
    for key, value in changes.items():
        if key not in SETTINGS:
            raise CarvisError(f"unknown setting {key!r}; settings: {', '.join(SETTINGS)}")
        if key == "threshold":
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not np.isfinite(value) or not 0 <= value <= 255:
                raise CarvisError(f"threshold {value!r} is not valid; allowed range 0..255")
            out[key] = float(value)
        elif key in ("overlay", "recording", "hud", "compare"):
            if not isinstance(value, bool):
                raise CarvisError(f"{key} {value!r} is not valid; expected true or false")
            out[key] = value
        elif key == "colormap":
            if not isinstance(value, str) or value.strip().lower() not in ov.COLORMAPS:
                raise CarvisError(f"colormap {value!r} is not valid; choose one of: "
                                  f"{', '.join(sorted(ov.COLORMAPS))}")
            out[key] = value.strip().lower()
        elif key == "channel":
            if not isinstance(value, (int, str)):
                raise CarvisError(f"channel {value!r} is not valid; give an index, "
                                  "'mean' or 'max'")
            out[key] = parse_channel(value)
        elif key in ("mode", "target", "view"):
            if not isinstance(value, str):
                raise CarvisError(f"{key} {value!r} is not valid; expected a name")
            if key == "view" and value.strip().lower() not in ("overlay", "grid"):
                raise CarvisError(f"view {value!r} is not valid; choose one of: overlay, grid")
            out[key] = (explain.parse_mode(value) if key == "mode" else
                        explain.parse_target(value) if key == "target" else value.strip().lower())
        else:
            if not isinstance(value, (int, str)):
                raise CarvisError(f"layer {value!r} is not valid; give a name, an index "
                                  "or conv:N")
            out[key] = parse_layer(value)
    return out


@dataclasses.dataclass
class _Change:
    apply: Callable[[], None]
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    error: CarvisError | None = None


class Controls:
    """The live settings shared by keys and HTTP; changes are applied by the loop between
    frames, all or nothing, so a bad value never leaves the pipeline half-changed."""

    def __init__(self, runner: LiveRunner, timeout: float = 10.0) -> None:
        self.runner = runner
        self.timeout = timeout
        self._queue: queue.Queue[_Change] = queue.Queue(maxsize=32)
        self._state: dict[str, Any] = {}

    def settings(self) -> dict[str, Any]:
        """The current settings and their choices."""
        return dict(self._state)

    def submit(self, apply: Callable[[], None]) -> _Change:
        """Queue a change for the loop (never blocks); Busy if too many are waiting."""
        change = _Change(apply)
        try:
            self._queue.put_nowait(change)
        except queue.Full:
            raise Busy("too many settings changes are waiting; try again") from None
        return change

    def change(self, changes: Any) -> dict[str, Any]:
        """Validate, apply between two frames, and return the new settings."""
        values = validate_settings(changes)
        if not self.runner.running:
            raise Busy("the pipeline is not running")
        if "layer" in values:
            # Built here, in the asking thread: the loop only switches to a ready backend.
            values["layer"] = self.runner.prepare_layer(values["layer"])
        if {"mode", "target", "layer", "hud"} & values.keys():
            self.runner.prepare_mode(values)  # a mode's first build can take seconds too
        change = self.submit(lambda: self.runner.apply_settings(values))
        if not change.done.wait(self.timeout):
            raise Busy(f"the pipeline did not take the change within {self.timeout:g} s")
        if change.error is not None:
            raise change.error
        return self.settings()

    def apply_pending(self) -> None:
        """Run the queued changes (called by the loop thread only)."""
        changed = False
        while True:
            try:
                change = self._queue.get_nowait()
            except queue.Empty:
                break
            try:
                change.apply()
            except CarvisError as exc:
                change.error = exc
            finally:
                change.done.set()
            changed = True
        if changed or not self._state:
            self.publish()

    def fail_pending(self, reason: str) -> None:
        """Refuse every waiting change (the loop has stopped)."""
        while True:
            try:
                change = self._queue.get_nowait()
            except queue.Empty:
                return
            change.error = Busy(reason)
            change.done.set()

    def publish(self) -> None:
        """Take a fresh copy of the settings for readers in other threads."""
        self._state = self.runner.current_settings()


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
        self.processed = 0
        self.out_rate = RateMeter()
        self.loop_times: collections.deque[float] = collections.deque(maxlen=300)
        self.stage_ms: dict[str, float] = {}
        self.last_output: Frame | None = None
        self.running = False
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self.messages: list[str] = []
        self.layers = self._layer_choices()
        self.sinks: dict[str, SinkWorker] = {}
        self.recorder: SinkWorker | None = None
        self.record_paths: list[str] = []
        self._closing_recorders: list[SinkWorker] = []
        self._record_names = self._record_name_iter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._prepare_lock = threading.Lock()
        self._preparing: threading.Thread | None = None
        self._warm = {renderer.backend.layer_name}
        self.server = None
        self.encoder = None
        self._open_sinks()

    # -- setup ------------------------------------------------------------------------------
    def _layer_choices(self) -> list[str]:
        """The layers keys and the page cycle through: conv layers, plus the profile's own."""
        names = list(self.renderer.session.conv_layers())
        current = self.renderer.backend.layer_name
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
                                          send_timeout=opts.send_timeout, stats=self.stats)
                self.encoder = JpegEncoder(self.server.broadcast, opts.jpeg_quality)
                self.sinks["mjpeg"] = SinkWorker(self.encoder, "mjpeg")
            if opts.record:
                self._start_recording()
        except BaseException:
            self.close()
            raise

    # -- recording --------------------------------------------------------------------------
    def _record_name_iter(self):
        if self.options.record:
            first = Path(self.options.record)
            yield first
            for n in itertools.count(2):
                yield first.with_name(f"{first.stem}-{n}{first.suffix}")
        while True:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            path = Path(self.options.snapshot_dir) / f"carvis-{stamp}.avi"
            for n in itertools.count(2):
                if not path.exists():
                    break
                path = path.with_name(f"carvis-{stamp}-{n}.avi")
            yield path

    @property
    def recording(self) -> bool:
        """True while frames go to an .avi file."""
        return self.recorder is not None and self.recorder.alive

    def _start_recording(self) -> None:
        from carvis.sinks.files import AviSink

        path = next(self._record_names)
        sink = AviSink(path, self.source.fps)
        self.recorder = SinkWorker(sink, "record", policy="drop-new",
                                   maxsize=self.options.record_queue, drain_on_close=True)
        self.record_paths.append(str(path))
        self._say(f"recording to {path}")

    def _stop_recording(self) -> None:
        recorder, self.recorder = self.recorder, None
        if recorder is not None:
            recorder.close(timeout=0)  # drains and releases the file in its own thread
            self._closing_recorders.append(recorder)
            if self.running:
                self._say(f"recording stopped: {recorder.sink.path}")

    def set_recording(self, on: bool) -> None:
        """Start or stop recording (each start writes a new file)."""
        if on and not self.recording:
            if self.recorder is not None:
                self._stop_recording()
            self._start_recording()
        elif not on and self.recorder is not None:
            self._stop_recording()

    # -- settings ---------------------------------------------------------------------------
    def current_settings(self) -> dict[str, Any]:
        """The live settings and their choices (called in the loop thread)."""
        r = self.renderer
        return {
            "threshold": r.overlay.threshold,
            "channel": r.channel,
            "layer": r.backend.layer_name,
            "colormap": r.overlay.colormap,
            "overlay": r.enabled,
            "recording": self.recording,
            "record_path": self.record_paths[-1] if self.record_paths else None,
            "mode": r.mode,
            "target": r.target,
            "view": r.view,
            "hud": r.hud,
            "compare": r.compare,
            "choices": {"layers": list(self.layers), "channels": r.channels,
                        "colormaps": sorted(ov.COLORMAPS), "threshold": [0, 255],
                        "modes": list(explain.MODES), "targets": list(explain.TARGETS),
                        "views": ["overlay", "grid"]},
        }

    def apply_settings(self, values: dict[str, Any]) -> None:
        """Apply validated values all or nothing (loop thread only)."""
        r = self.renderer
        before = (r.backend.layer_name, r.channel)
        try:
            if "layer" in values:
                r.set_layer(values["layer"])
                name = r.backend.layer_name
                if name not in self.layers:
                    self.layers.append(name)
            if "channel" in values:
                r.set_channel(values["channel"])
            if "mode" in values or "target" in values:
                r.set_mode(values.get("mode", r.mode), values.get("target"))
            if "hud" in values:
                r.set_hud(values["hud"])
            if "recording" in values:
                self.set_recording(values["recording"])
        except CarvisError:
            if (r.backend.layer_name, r.channel) != before:
                r.set_layer(before[0])
                r.set_channel(before[1])
            raise
        if "threshold" in values:
            r.overlay.threshold = values["threshold"]
        if "colormap" in values:
            r.overlay.colormap = values["colormap"]
        if "overlay" in values:
            r.enabled = values["overlay"]
        if "view" in values:
            r.view = values["view"]
        if "compare" in values:
            r.compare = values["compare"]

    def handle_key(self, key: int) -> None:
        """A key press in the display window (display thread): queue what it asks for."""
        ch = chr(key) if 0 <= key < 256 else ""
        r = self.renderer
        if ch in ("q", "Q", "\x1b"):
            self.stop()
            return
        if ch == "l":
            name = r.backend.layer_name
            i = self.layers.index(name) if name in self.layers else -1
            self._switch_layer_soon(self.layers[(i + 1) % len(self.layers)])
            return

        def step(delta: float) -> Callable[[], None]:
            def apply() -> None:
                r.overlay.threshold = float(min(255.0, max(0.0, r.overlay.threshold + delta)))
            return apply

        def next_channel() -> None:
            cycle: list[int | str] = [*range(r.channels), "mean", "max"]
            r.set_channel(cycle[(cycle.index(r.channel) + 1) % len(cycle)]
                          if r.channel in cycle else 0)

        def toggle_overlay() -> None:
            r.enabled = not r.enabled

        def toggle_recording() -> None:
            self.set_recording(not self.recording)

        actions: dict[str, Callable[[], None]] = {
            "+": step(THRESHOLD_STEP), "=": step(THRESHOLD_STEP),
            "-": step(-THRESHOLD_STEP), "_": step(-THRESHOLD_STEP),
            "c": next_channel, "o": toggle_overlay, "r": toggle_recording,
            "s": self.snapshot,
        }
        if ch in actions:
            try:
                self.controls.submit(lambda: self._report(actions[ch]))
            except Busy as exc:
                self._say(str(exc))

    def prepare_layer(self, spec: str | int) -> str:
        """Build (and warm up) the backend for a layer outside the loop; its name.

        A first build can take seconds (a TensorFlow import, a LiteRT conversion); the loop
        keeps running meanwhile and then switches between two frames.
        """
        with self._prepare_lock:
            backend = self.renderer.session.backend(spec)
            if len(backend.output_shape) == 3 and backend.layer_name not in self._warm:
                backend(np.zeros((1, *backend.input_shape), np.float32))
                self._warm.add(backend.layer_name)
            return backend.layer_name

    def prepare_mode(self, values: dict[str, Any]) -> None:
        """Build the explainer a settings change asks for outside the loop (a graph trace or a
        LiteRT conversion takes seconds); the loop then only switches to it."""
        with self._prepare_lock:
            self.renderer.prepare_explainer(values.get("mode"), values.get("target"),
                                            values.get("layer"), values.get("hud"))

    def _switch_layer_soon(self, name: str) -> None:
        """Prepare a layer in a helper thread, then switch to it (for the 'l' key)."""
        if self._preparing is not None and self._preparing.is_alive():
            self._say("still preparing the previous layer")
            return

        def work() -> None:
            try:
                self.prepare_layer(name)
                self.controls.submit(lambda: self._report(self.apply_settings, {"layer": name}))
            except CarvisError as exc:
                self._say(str(exc))

        self._preparing = threading.Thread(target=work, name="carvis-prepare", daemon=True)
        self._preparing.start()

    def _report(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except CarvisError as exc:
            self._say(str(exc))

    def snapshot(self) -> Path | None:
        """Save the newest composed frame as a PNG; its path (None before the first frame)."""
        import cv2

        frame = self.last_output
        if frame is None:
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path(self.options.snapshot_dir) / f"carvis-snapshot-{stamp}-{frame.index}.png"
        if not cv2.imwrite(str(path), frame.image):
            raise CarvisError(f"cannot write snapshot {str(path)!r}; check the folder")
        self._say(f"snapshot saved to {path}")
        return path

    # -- stats ------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counts, rates, per-stage times and latency, JSON-ready (any thread)."""
        cap = self.capture
        stages = {"capture": _median_ms(cap.read_times), **self.stage_ms}
        sinks = {name: w.stats() for name, w in self.sinks.items()}
        if self.recorder is not None:
            sinks["record"] = self.recorder.stats()
        if "mjpeg" in sinks:
            stages["encode"] = sinks["mjpeg"]["write_ms"]
        latency_from = next((n for n in ("mjpeg", "display", "record") if n in sinks), None)
        latency = sinks[latency_from] if latency_from else {}
        return {
            "source": self.source.name,
            "running": self.running,
            "uptime_s": round(time.monotonic() - self.started, 2),
            "fps_in": round(cap.rate.rate(), 2),
            "fps_out": round(self.out_rate.rate(), 2),
            "frames": {"captured": cap.captured, "processed": self.processed,
                       "encoded": self.encoder.encodes if self.encoder else 0},
            "stages_ms": {k: (round(v, 2) if v is not None else None)
                          for k, v in stages.items()},
            "loop_ms": _round(_median_ms(self.loop_times)),
            "latency_ms": {"from": latency_from, "to": latency_from and "written",
                           "p50": latency.get("latency_p50_ms"),
                           "p99": latency.get("latency_p99_ms")},
            "drops": {"capture": cap.dropped,
                      **{name: s["dropped"] for name, s in sinks.items()}},
            "sinks": sinks,
            "recording": self.recording,
        }

    def hud_text(self) -> str:
        """One status line for the display."""
        r = self.renderer
        lat = percentile_ms(self.sinks["display"].latencies, 50) if "display" in self.sinks \
            else None
        rec = "  REC" if self.recording else ""
        over = "" if r.enabled else " (overlay off)"
        return (f"{self.out_rate.rate():4.1f} fps  {lat or 0:4.0f} ms  drops "
                f"{self.capture.dropped}  |  {r.backend.layer_name} ch {r.channel}  "
                f"thr {r.overlay.threshold:g}{over}{rec}")

    def _say(self, text: str) -> None:
        self.messages.append(text)
        del self.messages[:-50]
        print(f"carvis: {text}", file=sys.stderr, flush=True)

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        """Capture, overlay and fan out until stop(), the source ends, or an error."""
        self.running = True
        self.started = time.monotonic()
        self.capture.start()
        if self.server is not None:
            self.server.start()
        next_stats = 0.0
        try:
            self.controls.publish()
            while not self._stop.is_set():
                self.controls.apply_pending()
                frame = self.capture.get(timeout=0.1)
                if frame is None:
                    if self.capture.finished:
                        break
                    self._check_sinks()
                    continue
                t0 = time.perf_counter()
                image = self.renderer.process(frame.image)
                out = Frame(image, frame.index, frame.timestamp, frame.name)
                self.last_output = out
                for worker in self.sinks.values():
                    worker.put(out)
                if self.recorder is not None:
                    self.recorder.put(out)
                if self.on_frame is not None:
                    self.on_frame(out)
                self.processed += 1
                self.out_rate.tick()
                self.loop_times.append(time.perf_counter() - t0)
                if t0 >= next_stats:
                    self.stage_ms = self.renderer.times.median_ms()
                    self._check_sinks()
                    next_stats = t0 + 0.5
            if self.capture.error is not None:
                raise self.capture.error
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self.running = False
            self.controls.fail_pending("the pipeline has stopped")
            self.close()

    def _check_sinks(self) -> None:
        """A failed sink stops the run, except the recorder, which just stops recording."""
        for name, worker in self.sinks.items():
            if worker.error is not None:
                raise CarvisError(f"{name} failed: {worker.error}")
        if self.recorder is not None and self.recorder.error is not None:
            self._say(f"recording stopped: {self.recorder.error}")
            self._stop_recording()

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
        if self.server is not None:
            self.server.close()
        for worker in self.sinks.values():
            worker.close(timeout=0)
        if self.recorder is not None:
            self._stop_recording()
        for worker in [*self.sinks.values(), *self._closing_recorders]:
            worker.close(timeout=max(0.05, deadline - time.monotonic()))
        for worker in self._closing_recorders:
            if worker.error is not None:
                self._say(f"recording to {worker.sink.path} failed: {worker.error}")
            elif not worker.close(timeout=0):
                self._say(f"recording to {worker.sink.path} did not finish in time")
            else:
                self._say(f"recorded {worker.written} frames to {worker.sink.path} "
                          f"({worker.dropped} dropped)")
        self._closing_recorders.clear()
        self.capture.stop(timeout=max(0.05, deadline - time.monotonic()))

    def summary(self) -> str:
        """One line on how the run went."""
        cap = self.capture
        return (f"{self.processed} frames processed of {cap.captured} captured "
                f"({cap.dropped} dropped to stay live)")


def _median_ms(samples: collections.deque) -> float | None:
    return percentile_ms(samples, 50)


def _round(v: float | None) -> float | None:
    return round(v, 2) if v is not None else None


def parse_size(text: str | None) -> tuple[int, int] | None:
    """'WxH' → (width, height)."""
    if text is None:
        return None
    w, sep, h = str(text).lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit() or not (0 < int(w) and 0 < int(h)):
        raise CarvisError(f"--size {text!r} is not valid; give WIDTHxHEIGHT, e.g. 1280x720")
    return int(w), int(h)


def run_command(source_spec: str | None, profile: Any, model_path: Path, *, loop: bool = False,
                display: bool = False, record: str | None = None, serve: str | None = None,
                token: str | None = None, quality: int = 80, camera: dict | None = None,
                backend: str = "auto", lambda_policy: str = "error") -> int:
    """`carvis run`: check everything, open the source, load the model, run until Ctrl-C."""
    import signal

    from carvis import pipeline, sources
    from carvis.extractor import ModelSession
    from carvis.sinks.files import check_writable_dir
    from carvis.sinks.mjpeg import parse_address

    # Everything that can be wrong with the flags fails here, before the slow model load.
    address = parse_address(serve) if serve else None
    if token and address is None:
        raise CarvisError("--token protects the settings of --serve; add --serve [HOST:]PORT")
    if not 1 <= quality <= 100:
        raise CarvisError(f"--quality {quality} is not valid; allowed range 1..100")
    if display:
        from carvis.sinks.display import check_screen

        check_screen()
    if record:
        if not record.lower().endswith(".avi"):
            raise CarvisError(f"--record {record!r}: give a file name ending in .avi")
        check_writable_dir(Path(record).resolve().parent, "--record")
    if not (display or record or address):
        raise CarvisError("nowhere to send frames; add --display, --record OUT.avi and/or "
                          "--serve [HOST:]PORT")
    cam = dict(camera or {})
    cam["size"] = parse_size(cam.get("size"))
    options = LiveOptions(display=display, record=record, serve=address, token=token,
                          jpeg_quality=quality)
    with sources.open_live_source(source_spec, profile, loop=loop, **cam) as source:
        session = ModelSession(model_path, backend=backend, lambda_policy=lambda_policy)
        renderer = pipeline.Renderer(session, profile)
        runner = LiveRunner(source, renderer, options)
        interrupts = 0

        def on_signal(signum: int, _frame: object) -> None:
            nonlocal interrupts
            interrupts += 1
            runner.stop()
            if interrupts > 1:
                raise KeyboardInterrupt

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT,
                                                                    signal.SIGTERM)}
        where = [f"{source.name} ({'live' if source.live else f'{source.fps:g} fps'})"]
        if runner.server is not None:
            where.append(f"page {runner.server.url}")
        if display:
            where.append("window")
        print(f"carvis: running {' -> '.join(where[:1])} -> {', '.join(where[1:]) or 'record'}"
              " (Ctrl-C stops)", file=sys.stderr, flush=True)
        try:
            runner.run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        print(f"carvis: stopped: {runner.summary()}", file=sys.stderr, flush=True)
    return 0
