"""Wires source → extractor → overlay → sinks; the only module that knows all the stages."""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable

import cv2
import numpy as np

from carvis import explain, export, views
from carvis import overlay as ov
from carvis.errors import CarvisError
from carvis.extractor import ModelSession, Preprocessor
from carvis.profile import Profile, parse_channel
from carvis.sinks import Sink
from carvis.sources import Frame

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
        return {k: float(np.median(v)) * 1e3 for k, v in self.samples.items() if v}


class Renderer:
    """Turns one frame into its overlay according to a profile; reusable buffers, no predict."""

    def __init__(self, session: ModelSession, profile: Profile) -> None:
        self.session = session
        self.profile = profile
        self.overlay = ov.Overlay(profile.threshold, profile.colormap)
        self.normalizer = ov.MapNormalizer(profile.normalize, profile.range, profile.decay,
                                           profile.ema)
        self.enabled = True
        self.times = StageTimes()
        self._lut_key: tuple[float, str] | None = None
        self._lut = np.empty((256, 1, 3), np.uint8)
        self._colored = np.empty((0, 0, 3), np.uint8)
        self.channel: int | str = profile.channel
        self.set_layer(profile.layer)
        self.set_channel(profile.channel)
        self._init_mode()

    # -- settings ---------------------------------------------------------------------------
    def set_layer(self, spec: str | int) -> None:
        """Switch to another layer (its backend is built once and kept)."""
        backend = self.session.backend(spec)
        if len(backend.output_shape) != 3:
            raise CarvisError(f"layer {backend.layer_name!r} has output shape "
                              f"{backend.output_shape}, not a spatial map; pick a conv layer "
                              f"({', '.join(self.session.conv_layers())})")
        h, w, c = backend.input_shape
        size = self.profile.input_size or (w, h)
        if size != (w, h):
            raise CarvisError(f"profile input_size {list(size)} does not match the model's "
                              f"input {w}x{h}; fix preprocess.input_size")
        self.backend = backend
        self.preprocess = Preprocessor(self.profile, (w, h), c)
        self.normalizer.reset()
        if isinstance(self.channel, int) and self.channel >= backend.output_shape[-1]:
            self.channel = 0
        if getattr(self, "_explainers", None) is not None:  # the mode may read this layer
            self.explainer = self.prepare_explainer()

    def set_channel(self, channel: int | str) -> None:
        """Pick a channel index, or 'mean' / 'max' over channels; checked against the layer."""
        channel = parse_channel(channel)
        n = self.backend.output_shape[-1]
        if isinstance(channel, int) and not -n <= channel < n:
            raise CarvisError(f"channel {channel} is out of range: layer "
                              f"{self.backend.layer_name!r} has {n} channels "
                              f"(use 0..{n - 1}, 'mean' or 'max')")
        self.channel = channel
        self.normalizer.reset()

    @property
    def channels(self) -> int:
        return int(self.backend.output_shape[-1])

    # -- modes (carvis.explain), views -----------------------------------------------------
    def _init_mode(self) -> None:
        """Mode, target, view, HUD and compare from the profile (the layer is set)."""
        p = self.profile
        self.view, self.hud, self.compare, self.smoothgrad = p.view, p.hud, p.compare, \
            p.smoothgrad
        self.prediction: np.ndarray | None = None
        self.explanation: explain.Explanation | None = None
        self.explainer: explain.Explainer | None = None
        self._explainers: dict[tuple, explain.Explainer | None] = {}
        self._raw = np.empty((0, 0, 3), np.uint8)
        self.mode, self.target = "activation", p.target
        self.set_mode(p.mode, p.target)

    def set_mode(self, mode: str, target: str | None = None) -> None:
        """Switch what the map shows: activation, vbp, gradcam, saliency, guided, ..."""
        mode = explain.parse_mode(mode)
        target = explain.parse_target(self.target if target is None else target)
        self.explainer = self.prepare_explainer(mode, target)
        self.mode, self.target = mode, target
        self.normalizer.reset()

    def set_hud(self, on: bool) -> None:
        """Draw the model's steering on the frame (activation mode then runs the whole net)."""
        self.hud = bool(on)
        self.explainer = self.prepare_explainer()

    def prepare_explainer(self, mode: str | None = None, target: str | None = None,
                          layer: str | int | None = None, hud: bool | None = None
                          ) -> explain.Explainer | None:
        """The explainer for a mode, target and layer, built once and kept (None: the layer's
        backend alone gives the map). Safe to call beside the loop, to build ahead."""
        mode = explain.parse_mode(mode or self.mode)
        target = explain.parse_target(self.target if target is None else target)
        name = self.backend.layer_name if layer is None else self.session.backend(layer).layer_name
        if mode == "activation" and not (self.hud if hud is None else hud):
            return None
        smooth = self.smoothgrad if mode in ("saliency", "guided") else None
        uses_layer = mode in ("activation", "gradcam", "guided-gradcam") or target == "layer"
        key = (mode, target, name if uses_layer else None, smooth)
        if key not in self._explainers:
            self._explainers[key] = self._build_explainer(mode, target, name, smooth)
        return self._explainers[key]

    def _build_explainer(self, mode: str, target: str, layer: str,
                         smooth: tuple[int, float] | None) -> explain.Explainer:
        import sys

        session = self.session
        if session.is_tflite:
            what = "the HUD" if mode == "activation" else f"mode {mode!r}"
            raise CarvisError(f"{what} needs the Keras model (.h5/.keras): {session.path.name} "
                              "holds one layer; give that model with --model, or use mode "
                              "activation without the HUD")
        kwargs = {"layer": layer, "channel": self.channel, "target": target,
                  "smoothgrad": smooth}
        if mode in explain.GRADIENT_MODES:
            explain.require_tensorflow(mode, "litert" if session.requested == "litert"
                                       else "tensorflow")
        elif self.backend.name == "litert":
            try:
                return explain.make_explainer(mode, session.model, **kwargs,
                                              forward_factory=self._litert_forward)
            except export.ConversionError as exc:
                if session.requested != "auto":
                    raise
                print(f"carvis: note: {exc}; running mode {mode} on TensorFlow instead",
                      file=sys.stderr)
        return explain.make_explainer(mode, session.model, **kwargs)

    def _litert_forward(self, names: tuple[str, ...], steering: str) -> explain.LiteRTForward:
        """A several-output .tflite of the layers (cached like the one-layer files)."""

        session = self.session
        outputs = [*names, steering]
        cached = export.outputs_cache_path(export.file_sha256(session.path), outputs,
                                           session.lambda_policy)
        data = None
        if cached.is_file():
            try:
                data = cached.read_bytes()
                return explain.LiteRTForward(data, {steering: explain.PREDICTION},
                                             session.path.name, session.num_threads)
            except (OSError, CarvisError):
                data = None  # unreadable: convert again below
        data = export.convert_outputs(session.model, outputs)
        export.write_cached(cached, data)
        return explain.LiteRTForward(data, {steering: explain.PREDICTION}, session.path.name,
                                     session.num_threads)

    def _map(self, roi: np.ndarray, image: np.ndarray, batch: np.ndarray
             ) -> tuple[np.ndarray | None, np.ndarray]:
        """(the layer's activation, or None, and the 2-D float map) of a frame; keeps a copy of
        the output region first when compare is on (the overlay then draws over it)."""
        if self.compare:
            src = roi if self.profile.output == "roi" else image
            if self._raw.shape != src.shape:
                self._raw = np.empty_like(src)
            np.copyto(self._raw, src)
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

    def _finish(self, out: np.ndarray, batch: np.ndarray, act: np.ndarray | None
                ) -> np.ndarray:
        """The view on the overlaid output: feature grid, steering HUD, side by side."""
        t0 = time.perf_counter()
        if self.view == "grid":
            act = self.backend(batch) if act is None else act
            shape = ", ".join(str(d) for d in act.shape)
            out = views.feature_grid(act, self.overlay.colormap,
                                     title=f"{self.backend.layer_name} ({shape})")
        elif self.hud and self.prediction is not None:
            views.draw_hud(out, self.prediction, self.explainer.head.softmax)
        if self.compare:
            label = "grid" if self.view == "grid" else self.mode
            out = views.side_by_side(self._raw, out, labels=("frame", label))
        if self.view == "grid" or self.hud or self.compare:
            self.times.add("views", time.perf_counter() - t0)
        return out

    # -- per frame --------------------------------------------------------------------------
    def activation(self, image: np.ndarray) -> np.ndarray:
        """The raw float activation map (h, w) of the chosen layer and channel."""
        batch = self.preprocess(self.preprocess.roi(image))
        return ov.select_channel(self.backend(batch), self.channel)

    def process(self, image: np.ndarray) -> np.ndarray:
        """Overlay in place on the frame's ROI; returns the ROI or the whole frame (a view)."""
        # The frame is drawn on and the result is a view of it (a new array when the profile
        # sets output_size): the caller hands the frame over and must not reuse its buffer
        # while the result is in use.
        t0 = time.perf_counter()
        roi = self.preprocess.roi(image)
        batch = self.preprocess(roi)
        t1 = time.perf_counter()
        act, amap = self._map(roi, image, batch)
        t2 = time.perf_counter()
        if self.enabled and self.view == "overlay":
            norm = self.normalizer(amap)
            self._compose(roi, norm)
        t3 = time.perf_counter()
        self.times.add("preprocess", t1 - t0)
        self.times.add("model", t2 - t1)
        self.times.add("overlay", t3 - t2)
        out = roi if self.profile.output == "roi" else image
        out = self._finish(out, batch, act)
        if self.profile.output_size is not None:
            out = cv2.resize(out, self.profile.output_size, interpolation=cv2.INTER_AREA)
        return out

    def _compose(self, roi: np.ndarray, norm: np.ndarray) -> None:
        """overlay.apply(roi, norm, out=roi) without IPP: same pixels, two full passes fewer."""
        # Threshold and colormap fold into one 256-entry LUT that is black at and below the
        # threshold: AND-ing the colour with the mask and adding it is then a plain add.
        h, w = roi.shape[:2]
        # OpenCV's own bicubic upsample is 8x faster than Intel IPP's here (0.4 vs 3.2 ms at
        # 1800x480) and is what ARM builds (the Pi) always run; the two differ by float
        # rounding (one grey level on 1e-5 of the pixels). The IPP switch is per thread.
        ipp = cv2.ipp.useIPP()
        cv2.ipp.setUseIPP(False)
        try:
            map8 = self.overlay.map8(norm, (w, h))
        finally:
            cv2.ipp.setUseIPP(ipp)
        if self._colored.shape[:2] != (h, w):
            self._colored = np.empty((h, w, 3), np.uint8)
        cv2.applyColorMap(map8, self._masked_lut(), dst=self._colored)
        cv2.add(roi, self._colored, dst=roi)

    def _masked_lut(self) -> np.ndarray:
        """The colormap LUT with the entries the threshold masks out set to black (cached)."""
        key = (self.overlay.threshold, self.overlay.colormap)
        if key != self._lut_key:
            ramp = np.arange(256, dtype=np.uint8).reshape(256, 1)
            keep = ov.threshold_mask(ramp, self.overlay.threshold)
            lut = ov.colormap_lut(self.overlay.colormap)
            self._lut = cv2.bitwise_and(lut, lut, mask=keep)
            self._lut_key = key
        return self._lut


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
            out = renderer.process(item.image)
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
