"""A DonkeyCar pilot inside carvis: its type read from the model, its other inputs fed frame by
frame as the car feeds them, its outputs read as DonkeyCar reads them.

:mod:`carvis.donkeytype` says what a model is (from its inputs' and outputs' names and shapes,
or ``--type``); the car's config (:mod:`carvis.donkeyconfig`, ``--config``) gives the throttle
range of a categorical pilot. A pilot with other inputs (memory, imu, behavior) or a frame
sequence (rnn, 3d) runs whole for its steering — the image, the record's values, its own
previous outputs, the last frames — while the map comes from the image's path alone; a
single-input pilot gives its map and its steering from one run (carvis.maps).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from carvis import donkeyconfig, donkeytransform, donkeytype, pilot
from carvis.errors import CarvisError
from carvis.pilot import Steering

log = logging.getLogger("carvis")


class Pilot:
    """A model read as a DonkeyCar pilot of one type, with the car's throttle range."""

    def __init__(self, pilot_type: donkeytype.PilotType,
                 throttle_range: float = pilot.THROTTLE_RANGE,
                 transform: Any = None) -> None:
        self.type = pilot_type
        self.throttle_range = float(throttle_range)
        self.transform = transform  # the car's image transformations (its --config), or None
        self.feeder = donkeytype.Feeder(pilot_type)

    @property
    def runs_whole(self) -> bool:
        """True when the steering needs more than the image (other inputs, a sequence)."""
        return bool(self.type.feeds) or self.type.sequence > 0

    @property
    def others(self) -> str:
        """What the steering takes besides the image, in words."""
        t = self.type
        return ", ".join([f.input for f in t.feeds] +
                         ([f"the last {t.sequence} frames"] if t.sequence else []))

    def start(self) -> None:
        """A new stream: no frames and no memory kept from the last one."""
        self.feeder = donkeytype.Feeder(self.type)

    def feeds(self, batch: np.ndarray, record: Mapping[str, Any] | None) -> dict[str, Any]:
        """Every input for this frame: the preprocessed image (a window of the last frames
        for a sequence), the record's values, its own previous outputs."""
        # The preprocessor reuses its buffer: a window of frames keeps copies.
        image = batch[0].copy() if self.type.sequence else batch[0]
        return self.feeder.inputs(image, record)

    def steering(self, outputs: Mapping[str, Any]) -> Steering:
        """The outputs read as DonkeyCar's pilot.run() reads them; memory keeps them."""
        values = self.type.decode(outputs, self.throttle_range)
        self.feeder.ran(values)
        bins = {h.meaning: pilot.probabilities(np.asarray(outputs[h.output]).reshape(-1))
                for h in self.type.heads if h.meaning in ("angle_bins", "throttle_bins")}
        location = int(values[2]) if len(values) > 2 else None
        return Steering(float(values[0]), float(values[1]), bins.get("angle_bins"),
                        bins.get("throttle_bins"), location)


def find(session: Any, type_name: str | None = None,
         config: donkeyconfig.CarConfig | None = None) -> Pilot | None:
    """The model as a DonkeyCar pilot: by --type, else by its inputs' and outputs' names
    (DonkeyCar's); None for a model that is not one (its steering head is found by shape)."""
    try:
        inputs, outputs = session.kind.signature()
    except NotImplementedError:
        return None
    source = session.path.name
    if type_name is None and not _donkeycar_names(inputs, outputs):
        if config is not None:
            raise CarvisError(f"--config is a DonkeyCar car's; {source} does not look like a "
                              "DonkeyCar pilot (no img_in input); give --type if it is one")
        return None
    try:
        found = donkeytype.detect(inputs, outputs, type_name, source)
    except CarvisError:
        if type_name is not None or config is not None:
            raise
        return None  # DonkeyCar's input name, but none of its types: read by shape
    throttle = config.throttle_range if config is not None else pilot.THROTTLE_RANGE
    transform = None
    if config is not None:
        check_image(found, config, source)
        transform = donkeytransform.chain(config)
    log.debug("%s: DonkeyCar %s pilot (%s)", source, found.kind, found.pilot_class)
    return Pilot(found, throttle, transform)


def _donkeycar_names(inputs: list, outputs: list) -> bool:
    """True when the inputs carry DonkeyCar's names (img_in, as its builders name it)."""
    names = [str(n).split(":")[0].rsplit("/", 1)[-1].removeprefix("serving_default_")
             for n, _ in inputs]
    return "img_in" in names


def check_image(found: donkeytype.PilotType, config: donkeyconfig.CarConfig, source: str
                ) -> None:
    """One line if the car's images (IMAGE_W/H/DEPTH) are not what the model takes."""
    want = tuple(found.image.shape[-3:])
    have = config.image_shape
    if want != have:
        raise CarvisError(f"{source} takes images of {want[1]}x{want[0]}x{want[2]}, but the "
                          f"car's config makes {have[1]}x{have[0]}x{have[2]} "
                          f"({config.where('IMAGE_W')}); give the config this model was "
                          "trained with")
