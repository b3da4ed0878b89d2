"""The modes by name: one entry per explainer class."""

from __future__ import annotations

from typing import Any

from carvis import settings
from carvis.explain.activation import ActivationExplainer
from carvis.explain.base import Explainer
from carvis.explain.cam import CAM
from carvis.explain.gradcam import GradCAM, GuidedGradCAM
from carvis.explain.occlusion import Occlusion, Perturbation
from carvis.explain.rise import RISE
from carvis.explain.saliency import GuidedBackprop, Saliency
from carvis.explain.vbp import VisualBackProp

EXPLAINERS: dict[str, type[Explainer]] = {
    "activation": ActivationExplainer,
    "vbp": VisualBackProp,
    "gradcam": GradCAM,
    "saliency": Saliency,
    "guided": GuidedBackprop,
    "guided-gradcam": GuidedGradCAM,
    "cam": CAM,
    "occlusion": Occlusion,
    "rise": RISE,
}


def parse_mode(mode: Any) -> str:
    """A mode name, checked (the one checker: carvis.settings)."""
    return settings.check("mode", mode)


def mode_parameters(mode: str, smoothgrad: tuple[int, float] | None, profile: Any
                    ) -> tuple | None:
    """What a mode is built with beyond its target and layer, from the profile: SmoothGrad for
    saliency and guided, (patch, stride) for occlusion, (masks, cells) for rise; hashable, so
    a session keeps one explainer per value (the slot make_explainer's ``smoothgrad`` fills)."""
    if mode in ("saliency", "guided"):
        return smoothgrad
    if mode in ("occlusion", "rise"):
        values = getattr(profile, mode, None) or {}
        keys = ("patch", "stride") if mode == "occlusion" else ("masks", "cells")
        params = tuple(values.get(k) for k in keys)
        return params if any(v is not None for v in params) else None
    return None


def make_explainer(mode: str, model: Any, **kwargs: Any) -> Explainer:
    """The explainer for a mode, built once (layer, channel, target, smoothgrad, forward); for
    occlusion and rise the ``smoothgrad`` slot carries their parameters (mode_parameters)."""
    cls = EXPLAINERS[parse_mode(mode)]
    if issubclass(cls, Perturbation):
        kwargs["params"] = kwargs.pop("smoothgrad", None)
    return cls(model, **kwargs)
