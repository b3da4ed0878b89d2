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

from carvis import pipeline
from carvis import profile as prof
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
    """A vehicle part: ``run(image) -> image``, the camera's RGB frame with the overlay."""

    def __init__(self, model: str | Path | None = None,
                 profile: str | Path | prof.Profile | None = None, *,
                 layer: str | int | None = None, mode: str | None = None,
                 channel: int | str | None = None, hud: bool | None = None,
                 backend: str = "auto", num_threads: int = 1, steering: bool = False) -> None:
        chosen, path = part_profile(model, profile, layer=layer, mode=mode, channel=channel,
                                    hud=hud)
        self.session = ModelSession(path, backend=backend, num_threads=num_threads)
        self.renderer = pipeline.make_renderer(self.session, chosen, steering=steering)
        self.steering: Steering | None = None  # the model's, on the last frame
        self.frames = 0
        log.info("carvis part: %s, layer %s, mode %s, on %s", path.name,
                 self.renderer.layer_name, self.renderer.maps.state.mode,
                 self.session.backend_name)

    def overlay(self, image: np.ndarray | None) -> np.ndarray | None:
        """The overlay of one RGB frame, as RGB (None while the camera has no frame yet)."""
        if image is None:
            return None
        bgr = cv2.cvtColor(np.asarray(image, np.uint8), cv2.COLOR_RGB2BGR)  # a new array
        result = self.renderer.maps(bgr)
        self.steering = result.steering
        out = self.renderer.composer(bgr, result)
        self.frames += 1
        return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)

    def run(self, image: np.ndarray | None) -> np.ndarray | None:
        """The camera's RGB frame with the overlay (RGB)."""
        return self.overlay(image)

    def shutdown(self) -> None:
        """Let go of the model; the vehicle calls this when the loop stops."""
        log.info("carvis part: %d frames", self.frames)
        self.renderer = None
        self.session = None


class PilotOverlayPart(OverlayPart):
    """The car's pilot and its overlay from one invoke:
    ``run(image) -> (image, angle, throttle)``, throttle None for an angle-only model. With
    ``hud`` (the default) the image is the frame with the steering panel below it, so it is
    taller than the camera's; ``hud=False`` keeps the camera's size."""

    def __init__(self, model: str | Path | None = None,
                 profile: str | Path | prof.Profile | None = None, *,
                 hud: bool = True, **options: Any) -> None:
        # The model runs to its outputs either way; hud only says whether they are drawn.
        super().__init__(model, profile, hud=hud, steering=True, **options)

    def run(self, image: np.ndarray | None
            ) -> tuple[np.ndarray | None, float | None, float | None]:
        """The overlay (RGB) and the pilot's angle and throttle, all from one model run."""
        out = self.overlay(image)
        steering = self.steering if out is not None else None
        if steering is None:
            return out, None, None
        return out, steering.angle, steering.throttle
