"""``activation``: one layer's activation, a channel or the mean / max over channels."""

from __future__ import annotations

import numpy as np

from carvis.errors import CarvisError
from carvis.explain.base import Explainer
from carvis.overlay import select_channel


class ActivationExplainer(Explainer):
    """One layer's activation: a channel, or the mean / max over channels (the seed's map)."""

    mode = "activation"

    def _output_layers(self) -> tuple[str, ...]:
        if self.layer is None:
            raise CarvisError("mode activation needs a layer; pass --layer L")
        return (self.layer,)

    def reduce(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        return select_channel(np.asarray(outputs[self.layer])[0], self.channel)
