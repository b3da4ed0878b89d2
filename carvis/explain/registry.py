"""The modes by name: one entry per explainer class."""

from __future__ import annotations

from typing import Any

from carvis import settings
from carvis.explain.activation import ActivationExplainer
from carvis.explain.base import Explainer
from carvis.explain.cam import CAM
from carvis.explain.gradcam import GradCAM, GuidedGradCAM
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
}


def parse_mode(mode: Any) -> str:
    """A mode name, checked (the one checker: carvis.settings)."""
    return settings.check("mode", mode)


def make_explainer(mode: str, model: Any, **kwargs: Any) -> Explainer:
    """The explainer for a mode, built once (layer, channel, target, smoothgrad, forward)."""
    return EXPLAINERS[parse_mode(mode)](model, **kwargs)
