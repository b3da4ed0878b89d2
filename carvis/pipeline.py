"""Wires source → extractor → overlay → sinks; the only module that knows all the stages."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable

import cv2
import numpy as np

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
        act = self.backend(batch)
        t2 = time.perf_counter()
        if self.enabled:
            norm = self.normalizer(ov.select_channel(act, self.channel))
            self.overlay.apply(roi, norm, out=roi)
        t3 = time.perf_counter()
        self.times.add("preprocess", t1 - t0)
        self.times.add("model", t2 - t1)
        self.times.add("overlay", t3 - t2)
        out = roi if self.profile.output == "roi" else image
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
