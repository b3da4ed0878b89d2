"""Wires source → extractor → overlay → sinks; the only module that knows all the stages."""

from __future__ import annotations

import dataclasses
import time
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
        import sys

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
        try:
            export.write_atomic(cached, data)
        except OSError as exc:
            print(f"carvis: warning: cannot cache the converted model in {cached.parent} "
                  f"({exc.strerror or exc}); set CARVIS_CACHE to a writable folder",
                  file=sys.stderr)
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
        t0 = time.perf_counter()
        roi = self.preprocess.roi(image)
        batch = self.preprocess(roi)
        t1 = time.perf_counter()
        act, amap = self._map(roi, image, batch)
        t2 = time.perf_counter()
        if self.enabled and self.view == "overlay":
            norm = self.normalizer(amap)
            self.overlay.apply(roi, norm, out=roi)
        t3 = time.perf_counter()
        self.times.add("preprocess", t1 - t0)
        self.times.add("model", t2 - t1)
        self.times.add("overlay", t3 - t2)
        out = roi if self.profile.output == "roi" else image
        out = self._finish(out, batch, act)
        if self.profile.output_size is not None:
            out = cv2.resize(out, self.profile.output_size, interpolation=cv2.INTER_AREA)
        return out


def render(frames: Iterable[Frame], renderer: Renderer, sink: Sink,
           progress: Callable[[int], None] | None = None) -> int:
    """Every frame in, one overlay frame out, in order; returns the number written."""
    written = 0
    for frame in frames:
        sink.write(renderer.process(frame.image))
        written += 1
        if progress is not None:
            progress(1)
    return written
