"""Wires source → model → overlay → sink: the Renderer (one frame) and render() (a stream)."""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import cv2
import numpy as np

from carvis import explain, hud, pilot, views
from carvis import overlay as ov
from carvis.errors import CarvisError
from carvis.flatmap import FlatMapWatch
from carvis.frame import Frame
from carvis.preprocess import Preprocessor
from carvis.profile import Profile
from carvis.session import ModelSession
from carvis.sinks import Sink

STAGES = ("preprocess", "model", "overlay")


@dataclasses.dataclass
class StageTimes:
    """Per-stage wall times of the last frames, in seconds (bounded ring)."""

    size: int = 300
    samples: dict[str, list[float]] = dataclasses.field(default_factory=dict)

    def add(self, stage: str, seconds: float) -> None:
        ring = self.samples.setdefault(stage, [])
        ring.append(seconds)
        if len(ring) > self.size:
            del ring[: len(ring) - self.size]

    def median_ms(self) -> dict[str, float]:
        # A copy of the items: live, the model thread and the output loop add to it.
        return {k: float(np.median(v)) * 1e3 for k, v in list(self.samples.items()) if v}


@dataclasses.dataclass
class MapResult:
    """One frame's map, ready to lay on that frame or a later one (its own arrays)."""

    norm: np.ndarray  # the 2-D map, normalised to 0..255 (float32)
    act: np.ndarray | None  # the layer's activation, kept for the grid view
    prediction: np.ndarray | None  # the model's output, for the steering HUD
    softmax: bool  # whether the prediction is a softmax
    layer: str
    steering: pilot.Steering | None = None  # the prediction as angle (and throttle)


class Renderer:
    """Turns one frame into its overlay according to a profile; reusable buffers, no predict.

    Settings change through one door, :meth:`apply` (all or nothing); :meth:`prepare` builds
    what a change needs beforehand, outside the loop; :meth:`settings` says what is in force.
    """

    def __init__(self, session: ModelSession, profile: Profile,
                 chart: hud.StripChart | None = None) -> None:
        self.session = session
        self.profile = profile
        self.overlay = ov.Overlay(profile.threshold, profile.colormap)
        self.normalizer = ov.MapNormalizer(profile.normalize, profile.range, profile.decay,
                                           profile.ema)
        self.flat = FlatMapWatch()
        self.times = StageTimes()
        self.enabled = True
        self.prediction: np.ndarray | None = None
        self.explanation: explain.Explanation | None = None
        self.steering: pilot.Steering | None = None  # the model's angle/throttle, last frame
        self.steering_hud, self.chart = hud.SteeringHud(), chart
        self.log = pilot.SteeringLog()  # recorded vs predicted angle, frame by frame
        self.view, self.hud, self.compare = profile.view, profile.hud, profile.compare
        self.smoothgrad = profile.smoothgrad
        self.mode, self.target, self.channel = profile.mode, profile.target, profile.channel
        self.backend = self._layer_backend(profile.layer)
        self.preprocess = self._preprocessor(self.backend)
        self.channel = self._checked_channel(profile.channel, self.backend)
        self.explainer = self._explainer(self.mode, self.target, self.backend, self.hud)
        self._preparing = threading.Lock()  # prepare() may be called from several threads
        self._warm = {self.backend.layer_name}
        self._composed: MapResult | None = None  # the map compose() laid last
        self.flat.reset(f"{self.mode} on layer {self.backend.layer_name!r}, channel "
                        f"{self.channel}")

    # -- settings: one way in -------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """The render settings in force (layer by its name)."""
        return {"threshold": self.overlay.threshold, "channel": self.channel,
                "layer": self.backend.layer_name, "colormap": self.overlay.colormap,
                "overlay": self.enabled, "mode": self.mode, "target": self.target,
                "view": self.view, "hud": self.hud, "compare": self.compare,
                "smoothgrad": self.smoothgrad}

    def prepare(self, values: dict[str, Any]) -> dict[str, Any]:
        """Build the layer backend and explainer a change needs (seconds, the first time:
        a conversion, a graph trace); the values with the layer resolved to its name."""
        values = dict(values)
        with self._preparing:
            backend = self._layer_backend(values["layer"]) if "layer" in values else \
                self.backend
            if "layer" in values:
                values["layer"] = backend.layer_name
                if backend.layer_name not in self._warm:  # its first run is slow too
                    backend(np.zeros((1, *backend.input_shape), np.float32))
                    self._warm.add(backend.layer_name)
            return self._prepare_explainer(values, backend)

    def _prepare_explainer(self, values: dict[str, Any], backend: Any) -> dict[str, Any]:
        if {"mode", "target", "layer", "hud", "smoothgrad"} & values.keys():
            self._explainer(values.get("mode", self.mode), values.get("target", self.target),
                            backend, values.get("hud", self.hud),
                            values.get("smoothgrad", self.smoothgrad))
        return values

    def apply(self, values: dict[str, Any]) -> None:
        """Apply checked settings (carvis.settings) all or nothing: a value the model refuses
        (a channel the layer lacks, a mode the backend cannot run) changes nothing."""
        backend = self._layer_backend(values["layer"]) if "layer" in values else self.backend
        channel = values.get("channel", self.channel)
        if "channel" not in values and isinstance(channel, int) \
                and channel >= backend.output_shape[-1]:
            channel = 0  # a new layer with fewer channels
        channel = self._checked_channel(channel, backend)
        mode, target = values.get("mode", self.mode), values.get("target", self.target)
        hud, smoothgrad = values.get("hud", self.hud), values.get("smoothgrad", self.smoothgrad)
        explainer = self._explainer(mode, target, backend, hud, smoothgrad)
        colormap = values.get("colormap", self.overlay.colormap)
        ov.colormap_id(colormap)
        if (backend is not self.backend or channel != self.channel or mode != self.mode
                or target != self.target):
            self.normalizer.reset()
            self.flat.reset(f"{mode} on layer {backend.layer_name!r}, channel {channel}")
        if backend.input_shape != self.backend.input_shape:
            self.preprocess = self._preprocessor(backend)
        self.backend, self.channel, self.explainer = backend, channel, explainer
        self.mode, self.target, self.hud, self.smoothgrad = mode, target, hud, smoothgrad
        self.overlay.threshold = float(values.get("threshold", self.overlay.threshold))
        self.overlay.colormap = colormap
        self.enabled = values.get("overlay", self.enabled)
        self.view = values.get("view", self.view)
        self.compare = values.get("compare", self.compare)

    @property
    def channels(self) -> int:
        """How many channels the current layer has."""
        return int(self.backend.output_shape[-1])

    @property
    def layer_name(self) -> str:
        """The current layer's name."""
        return self.backend.layer_name

    def _layer_backend(self, spec: str | int) -> Any:
        backend = self.session.backend(spec)
        if len(backend.output_shape) != 3:
            raise CarvisError(f"layer {backend.layer_name!r} has output shape "
                              f"{backend.output_shape}, not a spatial map; pick a conv layer "
                              f"({', '.join(self.session.conv_layers())})")
        h, w, _ = backend.input_shape
        size = self.profile.input_size or (w, h)
        if size != (w, h):
            raise CarvisError(f"profile input_size {list(size)} does not match the model's "
                              f"input {w}x{h}; fix preprocess.input_size")
        return backend

    def _preprocessor(self, backend: Any) -> Preprocessor:
        h, w, c = backend.input_shape
        return Preprocessor(self.profile, (w, h), c)

    @staticmethod
    def _checked_channel(channel: int | str, backend: Any) -> int | str:
        n = backend.output_shape[-1]
        if isinstance(channel, int) and not -n <= channel < n:
            raise CarvisError(f"channel {channel} is out of range: layer "
                              f"{backend.layer_name!r} has {n} channels "
                              f"(use 0..{n - 1}, 'mean' or 'max')")
        return channel

    def _explainer(self, mode: str, target: str, backend: Any, hud: bool,
                   smoothgrad: tuple[int, float] | None = None) -> explain.Explainer | None:
        """The session's explainer for a mode (None: the layer's backend alone gives the map)."""
        if mode == "activation" and not hud:
            return None
        smooth = (self.smoothgrad if smoothgrad is None else smoothgrad) \
            if mode in ("saliency", "guided") else None
        uses_layer = mode in ("activation", "gradcam", "guided-gradcam") or target == "layer"
        return self.session.explainer(mode, target, backend.layer_name if uses_layer else None,
                                      smooth)

    # -- per frame ------------------------------------------------------------------------------
    def compute(self, image: np.ndarray, keep: bool = True) -> MapResult:
        """The map of a frame (preprocess → model → normalise); the frame is only read.
        keep=False: the map is laid at once, before the next compute (no copies)."""
        t0 = time.perf_counter()
        batch = self.preprocess(self.preprocess.roi(image))
        t1 = time.perf_counter()
        act, amap = self._map(batch)
        self.flat(amap, batch, self.profile.scale, self.profile.offset)
        if act is None and self.view == "grid":
            act = self.backend(batch)
        norm = self.normalizer(amap)
        t2 = time.perf_counter()
        self.times.add("preprocess", t1 - t0)
        self.times.add("model", t2 - t1)
        # Copies (keep): the normaliser and the backends reuse their buffers, and a live map is
        # laid on later frames while the next one is computed.
        if keep:
            norm, act = norm.copy(), None if act is None else act.copy()
        softmax = self.explainer is not None and self.explainer.head.softmax
        self.steering = None if self.prediction is None else pilot.read_explanation(
            self.explanation, self.explainer.head, getattr(self.explainer, "other_outputs", ()))
        return MapResult(norm, act,
                         None if self.prediction is None else np.array(self.prediction),
                         softmax, self.backend.layer_name, self.steering)

    def compose(self, image: np.ndarray, result: MapResult | None,
                record: dict[str, Any] | None = None) -> np.ndarray:
        """Lay a map on a frame in place (its ROI); the ROI or the frame (a view), with the
        views; None (no map yet) leaves the pixels as they are."""
        # The frame is drawn on and the result is a view of it (a new array when the profile
        # sets output_size): the caller hands the frame over and must not reuse its buffer
        # while the result is in use.
        t0 = time.perf_counter()
        roi = self.preprocess.roi(image)
        out = roi if self.profile.output == "roi" else image
        raw = out.copy() if self.compare else None
        if result is not None and self.enabled and self.view == "overlay":
            self.overlay.draw(roi, result.norm, same_map=result is self._composed)
            self._composed = result
        self.times.add("overlay", time.perf_counter() - t0)
        out = self._finish(out, raw, result, pilot.recorded(record))
        if self.profile.output_size is not None:
            out = cv2.resize(out, self.profile.output_size, interpolation=cv2.INTER_AREA)
        return out

    def process(self, image: np.ndarray, record: dict[str, Any] | None = None) -> np.ndarray:
        """One frame offline: its own map, laid on it (compute, then compose); a tub record's
        steering goes on the HUD beside the model's."""
        return self.compose(image, self.compute(image, keep=False), record)

    def process_frame(self, frame: Frame) -> np.ndarray:
        """process() for a source's frame, its recorded and predicted angle logged."""
        out = self.process(frame.image, frame.record)
        self.log.add(frame.index, frame.record, self.steering)
        return out

    def _map(self, batch: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """(the layer's activation, or None, and the 2-D float map) of a batch."""
        if self.explainer is None:
            act = self.backend(batch)
            self.prediction = None
            return act, ov.select_channel(act, self.channel)
        result = self.explainer(batch)
        self.explanation, self.prediction = result, result.prediction
        if self.mode == "activation":
            act = result.outputs[self.explainer.layer][0]
            return act, ov.select_channel(act, self.channel)
        return None, result.map

    def _finish(self, out: np.ndarray, raw: np.ndarray | None, result: MapResult | None,
                recorded: pilot.Steering | None = None) -> np.ndarray:
        """The view on the overlaid output: feature grid, steering HUD, side by side."""
        t0 = time.perf_counter()
        grid = self.view == "grid" and result is not None and result.act is not None
        if grid:
            shape = ", ".join(str(d) for d in result.act.shape)
            out = views.feature_grid(result.act, self.overlay.colormap,
                                     title=f"{result.layer} ({shape})")
        elif self.hud and result is not None and result.steering is not None:
            self.steering_hud(out, result.steering, recorded)
        if raw is not None:
            out = views.side_by_side(raw, out, labels=("frame", "grid" if grid else self.mode))
        if self.chart is not None and result is not None and result.steering is not None:
            out = self.chart(out, None if recorded is None else recorded.angle,
                             result.steering.angle)
        if grid or self.hud or raw is not None:
            self.times.add("views", time.perf_counter() - t0)
        return out

    def activation(self, image: np.ndarray) -> np.ndarray:
        """The raw float activation map (h, w) of the chosen layer and channel."""
        batch = self.preprocess(self.preprocess.roi(image))
        return ov.select_channel(self.backend(batch), self.channel)


_END = object()


class _Failed:
    """An exception raised in a worker thread, carried to the rendering thread."""

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
        # Frames are drawn on in place and queued. A source that reads each frame into the
        # same buffer would overwrite frames still queued, so until the second frame shows a
        # new array (all carvis sources), each frame is handed over as a copy.
        last: weakref.ref | None = None
        reuses: bool | None = None
        try:
            it = iter(self.frames)
            while not self.stopping.is_set():
                t0 = time.perf_counter()
                frame = next(it, None)
                if frame is None:
                    break
                self.times.add("decode", time.perf_counter() - t0)
                original = frame.image
                if reuses is None and last is not None:
                    previous = last()
                    reuses = previous is not None and np.may_share_memory(previous, original)
                if reuses is not False:
                    frame = dataclasses.replace(frame, image=original.copy())
                last = weakref.ref(original)
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


class _Writer(threading.Thread):
    """Hands processed frames to the sink, in the order queued; keeps the first error."""

    def __init__(self, sink: Sink, size: int, times: StageTimes,
                 progress: Callable[[int], None] | None) -> None:
        super().__init__(name="carvis-render-write", daemon=True)
        self.sink = sink
        self.queue: queue.Queue = queue.Queue(maxsize=size)
        self.times = times
        self.progress = progress
        self.written = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        while True:
            item = self.queue.get()
            if item is _END:
                return
            if self.error is not None:
                continue  # keep draining so the rendering thread never blocks on put
            try:
                t0 = time.perf_counter()
                self.sink.write(item)
                self.times.add("write", time.perf_counter() - t0)
                self.written += 1
                if self.progress is not None:
                    self.progress(1)
            except BaseException as exc:  # noqa: BLE001 - re-raised by the rendering thread
                self.error = exc

    def finish(self) -> None:
        """Write everything queued so far, then stop."""
        self.queue.put(_END)
        self.join()


def render(frames: Iterable[Frame], renderer: Renderer, sink: Sink,
           progress: Callable[[int], None] | None = None, *, queue_size: int = 3) -> int:
    """Every frame in, one overlay frame out, in order; returns the number written."""
    # Three stages overlap: a reader thread pulls frames from the source (it decodes), this
    # thread runs the renderer (in place on each frame's ROI), a writer thread feeds the sink
    # (JPEG encode + write). Queues hold at most queue_size frames each, so memory stays flat;
    # one thread per stage and FIFO queues keep the order. A source that reuses one buffer for
    # every frame has its frames copied (see _Reader). On an error or Ctrl-C, frames already
    # rendered are still written before the exception propagates, so the sink, closed by the
    # caller, is complete up to there.
    times = renderer.times
    # The stages are the parallelism: OpenCV's own worker pool on top of them only adds
    # hand-offs, and a stripe stuck behind a busy core stalls the whole call.
    cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    reader = _Reader(frames, queue_size, times)
    writer = _Writer(sink, queue_size, times, progress)
    writer.start()
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
            if writer.error is not None:
                raise writer.error
            # A tub's frame takes its record to the HUD and the steering log.
            out = renderer.process(item.image) if item.record is None else \
                renderer.process_frame(item)
            t0 = time.perf_counter()
            writer.queue.put(out)
            times.add("wait_write", time.perf_counter() - t0)
    finally:
        reader.stop()
        writer.finish()
        reader.join()
        cv2.setNumThreads(cv_threads)
    if writer.error is not None:
        raise writer.error
    return writer.written
