"""The map maker: a frame → preprocess → backend or explainer → its normalised map and steering.

The model half of a frame (the composer, :mod:`carvis.composer`, is the drawing half). One
thread owns a MapMaker: offline the rendering thread, live the model thread. What it returns
owns its arrays (maps are small, at the model's resolution), so a map may be laid on frames in
another thread while the next one is computed.

Settings reach it through :meth:`MapMaker.prepare` (build and check everything a change needs,
outside the loop, in any thread) and :meth:`MapMaker.apply` (switch, all or nothing, in the
owning thread; quick after prepare, which left every part built in the session).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import numpy as np

from carvis import explain, pilot, pilots
from carvis import overlay as ov
from carvis.errors import CarvisError
from carvis.flatmap import FlatMapWatch
from carvis.frame import Frame
from carvis.preprocess import Preprocessor
from carvis.profile import Profile
from carvis.session import ModelSession

#: The settings a map maker owns (the composer owns the drawing ones).
MAP_KEYS = ("layer", "channel", "mode", "target", "smoothgrad", "steering", "grid")


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


@dataclasses.dataclass(frozen=True)
class MapResult:
    """One frame's map, ready to lay on that frame or a later one; it owns its arrays."""

    norm: np.ndarray  # the 2-D map normalised to 0..255 (float32)
    raw: np.ndarray  # the same map before normalisation (float32): what a track keeps
    act: np.ndarray | None  # the layer's activation, for the grid view
    prediction: np.ndarray | None  # the model's steering output (raw), if it was run
    softmax: bool  # whether the prediction is a softmax
    layer: str
    mode: str
    steering: pilot.Steering | None = None  # the prediction as angle (and throttle)


@dataclasses.dataclass(frozen=True)
class _State:
    """What makes the maps: swapped whole by apply(), so a change is all or nothing."""

    backend: Any
    channel: int | str
    mode: str
    target: str
    smoothgrad: tuple[int, float] | None
    steering: bool  # the model's steering output is wanted (HUD, strip chart, a pilot part)
    grid: bool  # the layer's whole activation is wanted (the grid view)
    explainer: explain.Explainer | None


class MapMaker:
    """Turns frames into maps for a profile: reused buffers, the model built once."""

    def __init__(self, session: ModelSession, profile: Profile, *, steering: bool = False,
                 grid: bool = False, times: StageTimes | None = None,
                 pilot: pilots.Pilot | None | str = "auto") -> None:
        self.session = session
        self.profile = profile
        # A DonkeyCar pilot is read as DonkeyCar reads it ("auto": when its names say so).
        self.pilot = pilots.find(session) if pilot == "auto" else pilot
        self.sequence = bool(self.pilot is not None and self.pilot.type.sequence)
        self.normalizer = ov.MapNormalizer(profile.normalize, profile.range, profile.decay,
                                           profile.ema)
        self.flat = FlatMapWatch()
        self.times = times if times is not None else StageTimes()
        self._building = threading.Lock()  # prepare() may be called from several threads
        values = {"layer": profile.layer, "channel": profile.channel, "mode": profile.mode,
                  "target": profile.target, "smoothgrad": profile.smoothgrad,
                  "steering": bool(steering or profile.hud),
                  "grid": bool(grid or profile.view == "grid")}
        self.state = self._build(values, None)
        self.preprocess = _preprocessor(profile, self.state.backend, self.pilot)
        self._warm = {self.state.backend.layer_name}
        self.flat.reset(_what(self.state))

    # -- settings -------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """The settings in force (the layer by its name)."""
        s = self.state
        return {"layer": s.backend.layer_name, "channel": s.channel, "mode": s.mode,
                "target": s.target, "smoothgrad": s.smoothgrad, "steering": s.steering,
                "grid": s.grid}

    def prepare(self, values: dict[str, Any]) -> dict[str, Any]:
        """Build and check what a change needs (seconds the first time: a conversion, a graph
        trace), in any thread; the values with the layer resolved to its name. CarvisError if
        the model refuses a value (a channel the layer lacks, a mode the backend cannot run)."""
        values = {k: v for k, v in values.items() if k in MAP_KEYS}
        with self._building:
            state = self._build(values, self.state)
            name = state.backend.layer_name
            if name not in self._warm:  # a layer's first run is slow too
                state.backend(np.zeros((1, *state.backend.input_shape), np.float32))
                self._warm.add(name)
        if "layer" in values:
            values["layer"] = name
        return values

    def apply(self, values: dict[str, Any]) -> None:
        """Switch to new settings on top of the ones in force, all or nothing (owning thread).
        What prepare() built is reused, so this is quick."""
        state = self._build({k: v for k, v in values.items() if k in MAP_KEYS}, self.state)
        old = self.state
        if (state.backend is not old.backend or state.channel != old.channel
                or state.mode != old.mode or state.target != old.target):
            self.normalizer.reset()
            self.flat.reset(_what(state))
        if state.backend.input_shape != old.backend.input_shape:
            self.preprocess = _preprocessor(self.profile, state.backend, self.pilot)
        self.state = state

    @property
    def layer_name(self) -> str:
        """The current layer's name."""
        return self.state.backend.layer_name

    @property
    def channels(self) -> int:
        """How many channels the current layer has."""
        return int(self.state.backend.output_shape[-1])

    # -- per frame ------------------------------------------------------------------------------
    def __call__(self, image: np.ndarray, record: dict[str, Any] | None = None) -> MapResult:
        """The map of a frame (preprocess → model → normalise); the frame is only read. record:
        the frame's tub record (a DonkeyCar pilot's other inputs come from it)."""
        t0 = time.perf_counter()
        batch = self.preprocess(self.preprocess.roi(image))
        t1 = time.perf_counter()
        s = self.state
        if self.pilot is not None and self.pilot.runs_whole:
            act, amap, prediction, steering = self._whole_pilot(s, batch, record)
            softmax = steering is not None and steering.angle_bins is not None
        else:
            act, amap, explanation = self._map(s, batch)
            prediction, steering, softmax = read_steering(self.pilot, s, explanation)
        self.flat(amap, batch, self.profile.scale, self.profile.offset)
        if act is None and s.grid:
            act = s.backend(batch)
        norm = self.normalizer(amap)
        self.times.add("preprocess", t1 - t0)
        self.times.add("model", time.perf_counter() - t1)
        # Copies: the normaliser and the backends reuse their buffers, and the map may be laid
        # on frames in another thread while the next one is computed.
        return MapResult(norm.copy(), np.array(amap, np.float32),
                         None if act is None else np.array(act), prediction, softmax,
                         s.backend.layer_name, s.mode, steering)

    def _whole_pilot(self, s: _State, batch: np.ndarray, record: dict[str, Any] | None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None,
                                pilot.Steering | None]:
        """A pilot with other inputs or a frame sequence: the map from the image's path, the
        steering from the whole model fed as the car feeds it."""
        feeds = self.pilot.feeds(batch, record)
        act = s.backend(feeds)
        if self.sequence:
            act = act[-1]  # the newest frame of the window
        amap = ov.select_channel(act, s.channel)
        if not s.steering:
            return act, amap, None, None
        steering = self.pilot.steering(self.session.kind.whole()(feeds))
        shown = steering.angle_bins if steering.angle_bins is not None else \
            np.array([steering.angle, steering.throttle], np.float32)
        return act, amap, np.array(shown, np.float32), steering

    def map_of(self, frame: Frame) -> MapResult:
        """The map of a source's frame (the verb every map source has)."""
        return self(frame.image, frame.record)

    def activation(self, image: np.ndarray) -> np.ndarray:
        """The raw float activation map (h, w) of the chosen layer and channel."""
        batch = self.preprocess(self.preprocess.roi(image))
        return ov.select_channel(self.state.backend(batch), self.state.channel)

    def finish(self) -> None:
        """The end of a stream: a map flat on every frame seen is said now, however few."""
        self.flat.finish()

    # -- building -------------------------------------------------------------------------------
    def _map(self, s: _State, batch: np.ndarray
             ) -> tuple[np.ndarray | None, np.ndarray, explain.Explanation | None]:
        """(the layer's activation or None, the 2-D float map, the explanation) of a batch."""
        if s.explainer is None:
            act = s.backend(batch)
            return act, ov.select_channel(act, s.channel), None
        result = s.explainer(batch)
        if s.mode == "activation":
            act = result.outputs[s.explainer.layer][0]
            return act, ov.select_channel(act, s.channel), result
        return None, result.map, result

    def _build(self, values: dict[str, Any], old: _State | None) -> _State:
        """The state for these values on top of the old one, every part checked."""
        def get(key: str) -> Any:
            return values[key] if key in values else getattr(old, key)

        if old is None or "layer" in values:
            backend = self._layer_backend(values["layer"])
        else:
            backend = old.backend
        channel = get("channel")
        if "channel" not in values and isinstance(channel, int) \
                and channel >= backend.output_shape[-1]:
            channel = 0  # a new layer with fewer channels
        n = backend.output_shape[-1]
        if isinstance(channel, int) and not -n <= channel < n:
            raise CarvisError(f"channel {channel} is out of range: layer "
                              f"{backend.layer_name!r} has {n} channels "
                              f"(use 0..{n - 1}, 'mean' or 'max')")
        mode, target = get("mode"), get("target")
        smoothgrad, steering = get("smoothgrad"), bool(get("steering"))
        if self.pilot is not None and self.pilot.runs_whole and mode != "activation":
            raise CarvisError(f"mode {mode!r} explains a single-input pilot; this "
                              f"{self.pilot.type.kind} pilot's steering also takes "
                              f"{self.pilot.others}, so carvis maps it in activation mode (the "
                              "layer's own response); use --mode activation")
        return _State(backend, channel, mode, target, smoothgrad, steering, bool(get("grid")),
                      self._explainer(mode, target, backend, steering, smoothgrad))

    def _layer_backend(self, spec: str | int) -> Any:
        backend = self.session.backend(spec)
        if len(_frame_shape(backend.output_shape, self.sequence)) != 3:
            raise CarvisError(f"layer {backend.layer_name!r} has output shape "
                              f"{backend.output_shape}, not a spatial map; pick a conv layer "
                              f"({', '.join(self.session.conv_layers())})")
        h, w, _ = backend.input_shape[-3:]
        size = self.profile.input_size or (w, h)
        if size != (w, h):
            raise CarvisError(f"profile input_size {list(size)} does not match the model's "
                              f"input {w}x{h}; fix preprocess.input_size")
        return backend

    def _explainer(self, mode: str, target: str, backend: Any, steering: bool,
                   smoothgrad: tuple[int, float] | None) -> explain.Explainer | None:
        """The session's explainer for a mode (None: the layer's backend alone gives the map)."""
        if mode == "activation" and (not steering or (self.pilot is not None
                                                      and self.pilot.runs_whole)):
            return None
        smooth = explain.mode_parameters(mode, smoothgrad, self.profile)
        uses_layer = mode in ("activation", "gradcam", "guided-gradcam") or target == "layer"
        return self.session.explainer(mode, target, backend.layer_name if uses_layer else None,
                                      smooth)


def _preprocessor(profile: Profile, backend: Any, found: pilots.Pilot | None) -> Preprocessor:
    h, w, c = backend.input_shape[-3:]  # a frame sequence's pilot: one frame of the window
    return Preprocessor(profile, (w, h), c, None if found is None else found.transform)


def _frame_shape(shape: tuple[int, ...], sequence: bool) -> tuple[int, ...]:
    """A layer's output for one frame (a sequence pilot's layers have a time axis first)."""
    return tuple(shape[1:]) if sequence and len(shape) == 4 else tuple(shape)


def _what(s: _State) -> str:
    return f"{s.mode} on layer {s.backend.layer_name!r}, channel {s.channel}"


def read_steering(found: pilots.Pilot | None, s: _State, explanation: Any
                  ) -> tuple[np.ndarray | None, pilot.Steering | None, bool]:
    """(raw prediction, steering, softmax) of one run: a DonkeyCar pilot read as DonkeyCar
    reads it, another model's head as carvis.pilot reads it."""
    if explanation is None or explanation.prediction is None:
        return None, None, False
    head = s.explainer.head
    if found is not None:
        named = {**explanation.outputs, head.layer: explanation.outputs[explain.PREDICTION]}
        steering = found.steering(named)
    else:
        steering = pilot.read_explanation(explanation, head,
                                          getattr(s.explainer, "other_outputs", ()))
    return np.array(explanation.prediction), steering, bool(head.softmax)
