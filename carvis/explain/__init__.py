"""Explainers: which pixels of a frame a steering ConvNet responds to, as a raw float map.

One base (:mod:`.base`: the one multi-output ``tf.function``, built once), targets in their
own module (:mod:`.targets`), and one small file per method that says only what differs:

``activation``  one layer's activation, a channel or the mean/max over channels (the seed's).
``vbp``         VisualBackProp: conv means multiplied back to the input through all-ones
                transposed convolutions; forward-only, so it runs from LiteRT too.
``gradcam``     Grad-CAM: ReLU(sum_c mean_ij(d score / d A_c) * A_c) on a spatial layer A.
``saliency``    max over colour channels of |d score / d input|; SmoothGrad over a noisy batch.
``guided``      guided backpropagation: saliency through a clone whose ReLUs pass only
                positive gradients through positive activations.
``guided-gradcam``  guided x Grad-CAM (the Grad-CAM map bilinearly resized to the input).
``cam``         class activation mapping, for heads GlobalAveragePooling2D -> Dense.
``occlusion``   the target score's drop as a patch of the mean colour slides over the input;
                forward-only, batched (every backend).
``rise``        RISE: the target score of copies under random smooth masks, summed per pixel.

The names of modes and targets, and their checks, are :mod:`carvis.settings`'.
"""

from __future__ import annotations

from carvis.explain.activation import ActivationExplainer
from carvis.explain.base import (
    INPUT,
    PREDICTION,
    Explainer,
    Explanation,
    Forward,
)
from carvis.explain.cam import CAM, cam_head
from carvis.explain.facts import ModelFacts, facts_from
from carvis.explain.geometry import AxisOp, layer_geometry
from carvis.explain.gradcam import GradCAM, GuidedGradCAM, gradcam_map
from carvis.explain.graph import SteeringHead, steering_head
from carvis.explain.guided import guided_clone
from carvis.explain.occlusion import Occlusion, Perturbation
from carvis.explain.registry import EXPLAINERS, make_explainer, mode_parameters, parse_mode
from carvis.explain.rise import RISE
from carvis.explain.saliency import GuidedBackprop, Saliency, saliency_map
from carvis.explain.targets import (
    SMALL_VALUES_EPS,
    BinsTarget,
    CourseTarget,
    LayerTarget,
    PredictedBin,
    SteerTarget,
    Target,
    make_target,
    parse_target,
    side_bins,
)
from carvis.explain.vbp import VBPPlan, VisualBackProp, vbp_plan
from carvis.settings import FORWARD_MODES, GRADIENT_MODES, MODES, TARGETS

__all__ = [
    "CAM",
    "EXPLAINERS",
    "FORWARD_MODES",
    "GRADIENT_MODES",
    "INPUT",
    "MODES",
    "PREDICTION",
    "RISE",
    "SMALL_VALUES_EPS",
    "TARGETS",
    "ActivationExplainer",
    "AxisOp",
    "BinsTarget",
    "CourseTarget",
    "Explainer",
    "Explanation",
    "Forward",
    "GradCAM",
    "GuidedBackprop",
    "GuidedGradCAM",
    "LayerTarget",
    "ModelFacts",
    "Occlusion",
    "Perturbation",
    "PredictedBin",
    "Saliency",
    "SteerTarget",
    "SteeringHead",
    "Target",
    "VBPPlan",
    "VisualBackProp",
    "cam_head",
    "facts_from",
    "gradcam_map",
    "guided_clone",
    "layer_geometry",
    "make_explainer",
    "make_target",
    "mode_parameters",
    "parse_mode",
    "parse_target",
    "saliency_map",
    "side_bins",
    "steering_head",
    "vbp_plan",
]
