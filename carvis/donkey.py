"""carvis as DonkeyCar parts: what the network looks at, in the car's own vehicle loop.

A part is added after the camera, and its image goes where any image goes: the web
controller, the tub writer, a carvis stream::

    from carvis.donkey import OverlayPart, PilotOverlayPart
    V.add(OverlayPart("models/pilot.h5", layer="conv2d_3"),
          inputs=["cam/image_array"], outputs=["cam/overlay"])
    # or, where the model is the car's pilot: one invoke, the overlay and the pilot's values
    V.add(PilotOverlayPart("models/pilot.tflite"), inputs=["cam/image_array"],
          outputs=["cam/overlay", "pilot/angle", "pilot/throttle"])

DonkeyCar's images are RGB (its camera parts convert to RGB); carvis works in OpenCV's BGR.
``run`` takes and returns RGB and converts at the boundary; the camera's array is not drawn on.
A .tflite runs on LiteRT (ai-edge-litert, or tflite-runtime's identical Interpreter) with the
cv2 the car has; TensorFlow is imported only to convert a Keras model (once, then cached).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from carvis import donkeyconfig, pilots, pipeline
from carvis import profile as prof
from carvis.donkeytype import IMAGE_KEY
from carvis.errors import CarvisError
from carvis.pilot import Steering
from carvis.session import ModelSession

log = logging.getLogger("carvis")


def part_profile(model: str | Path | None, profile: str | Path | prof.Profile | None,
                 **changes: Any) -> tuple[prof.Profile, Path]:
    """The profile and model path for a part: a Profile or YAML, else generic for a model
    (DonkeyCar's RGB / 255 on the whole frame), else the project's default; changes on top."""
    if isinstance(profile, prof.Profile):
        chosen = profile
    elif profile is not None:
        chosen = prof.load(profile)
    else:
        chosen = prof.generic() if model is not None else prof.load(prof.DEFAULT_PROFILE)
    path = Path(model) if model is not None else chosen.model
    if path is None:
        raise CarvisError(f"profile {chosen.source!r} names no model; give the part a model "
                          "path: OverlayPart('models/pilot.h5')")
    return chosen.replace(**changes), path


class OverlayPart:
    """A vehicle part: ``run(image, *extras) -> image``, the camera's RGB frame with the
    overlay. A DonkeyCar pilot with other inputs takes them as templates/complete.py wires
    them: ``part.inputs`` lists the vehicle keys (``cam/image_array``, then ``imu_array`` or
    ``behavior/one_hot_state_array``; memory feeds itself)."""

    def __init__(self, model: str | Path | None = None,
                 profile: str | Path | prof.Profile | None = None, *,
                 layer: str | int | None = None, mode: str | None = None,
                 channel: int | str | None = None, hud: bool | None = None,
                 backend: str = "auto", num_threads: int = 1, steering: bool = False,
                 type: str | None = None, config: str | Path | None = None) -> None:
        chosen, path = part_profile(model, profile, layer=layer, mode=mode, channel=channel,
                                    hud=hud)
        self.session = ModelSession(path, backend=backend, num_threads=num_threads)
        car = donkeyconfig.read(config) if config is not None else None
        self.pilot = pilots.find(self.session, type, car)
        self.inputs = self.pilot.type.part_inputs if self.pilot is not None else (IMAGE_KEY,)
        self.renderer = pipeline.make_renderer(self.session, chosen, steering=steering,
                                               pilot=self.pilot)
        self.steering: Steering | None = None  # the model's, on the last frame
        self.frames = 0
        log.info("carvis part: %s, layer %s, mode %s, on %s", path.name,
                 self.renderer.layer_name, self.renderer.maps.state.mode,
                 self.session.backend_name)

    def overlay(self, image: np.ndarray | None, *extras: Any) -> np.ndarray | None:
        """The overlay of one RGB frame, as RGB (None while the camera has no frame yet)."""
        if image is None:
            return None
        bgr = cv2.cvtColor(np.asarray(image, np.uint8), cv2.COLOR_RGB2BGR)  # a new array
        result = self.renderer.maps(bgr, self._record(extras))
        self.steering = result.steering
        out = self.renderer.composer(bgr, result)
        self.frames += 1
        return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)

    def _record(self, extras: tuple[Any, ...]) -> dict[str, Any] | None:
        """The vehicle's other values as the tub record keys the pilot's inputs read."""
        if self.pilot is None or not extras:
            return None
        record: dict[str, Any] = {}
        wired = [f for f in self.pilot.type.feeds if f.vehicle]
        for feed, value in zip(wired, extras, strict=False):
            if value is None:
                continue
            if len(feed.keys) == 1:
                record[feed.keys[0]] = value
            else:  # complete.py's imu_array: the six imu/... values in one vector
                record.update(zip(feed.keys, np.asarray(value, np.float64).reshape(-1),
                                  strict=False))
        return record

    def run(self, image: np.ndarray | None, *extras: Any) -> np.ndarray | None:
        """The camera's RGB frame with the overlay (RGB)."""
        return self.overlay(image, *extras)

    def shutdown(self) -> None:
        """Let go of the model; the vehicle calls this when the loop stops."""
        log.info("carvis part: %d frames", self.frames)
        self.renderer = None
        self.session = None


class PilotOverlayPart(OverlayPart):
    """The car's pilot and its overlay from one invoke:
    ``run(image) -> (image, angle, throttle)``, throttle None for an angle-only model. It
    stands in for the car's pilot, so it spends the car's CPU sparingly: the overlay alone by
    default (1.16x DonkeyCar's own TfLite pilot a loop, scripts/part_bench.py); ``hud=True``
    adds the steering panel below the frame (a taller image; +0.1 ms a loop for a linear
    pilot, +0.45 ms for a categorical one's 35 bins on one x86 core)."""

    def __init__(self, model: str | Path | None = None,
                 profile: str | Path | prof.Profile | None = None, *,
                 hud: bool = False, **options: Any) -> None:
        # The model runs to its outputs either way; hud only says whether they are drawn.
        super().__init__(model, profile, hud=hud, steering=True, **options)

    @property
    def outputs(self) -> tuple[str, ...]:
        """The vehicle keys run() gives: the image, then complete.py's pilot keys."""
        keys = self.pilot.type.part_outputs if self.pilot is not None else \
            ("pilot/angle", "pilot/throttle")
        return ("cam/overlay", *keys)

    def run(self, image: np.ndarray | None, *extras: Any) -> tuple[Any, ...]:
        """The overlay (RGB) and the pilot's angle and throttle (and a localizer's location),
        from one model run for a single-input pilot."""
        out = self.overlay(image, *extras)
        steering = self.steering if out is not None else None
        values: tuple[Any, ...] = (None, None) if steering is None else \
            (steering.angle, steering.throttle)
        if "pilot/loc" in self.outputs:
            values += (None if steering is None else steering.location,)
        return (out, *values)
