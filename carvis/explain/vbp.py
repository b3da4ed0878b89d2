"""VisualBackProp (Bojarski et al., arXiv 1611.05418), forward-only.

The channel mean of every conv layer's post-ReLU output; from the deepest, scaled up by a
transposed convolution with an all-ones kernel of that layer's kernel size and stride (pooling
layers: the pool's size and stride; 'valid' padding's lost rows stay zero), multiplied pointwise
with the next shallower mean, down to the input. :class:`VBPPlan` holds the precomputed
transposed convolutions and back-projects layer outputs from any backend (LiteRT too).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from carvis.errors import CarvisError
from carvis.explain.base import Explainer
from carvis.explain.facts import ModelFacts
from carvis.explain.geometry import (
    ACTIVATION_LAYERS,
    ELEMENTWISE,
    VBP_CONV_TYPES,
    AxisOp,
    layer_record,
    record_geometry,
    step_adjoint,
)
from carvis.explain.graph import SteeringHead, spatial, spatial_chain, steering_head


@dataclasses.dataclass
class VBPPlan:
    """VisualBackProp's back-projection, precomputed: per segment between two conv taps, the
    all-ones transposed convolutions of its layers composed into one matrix per axis."""

    input_hw: tuple[int, int]
    taps: tuple[str, ...]                          # conv layers' post-ReLU outputs, shallow first
    tap_hw: tuple[tuple[int, int], ...]
    steps: tuple[tuple[tuple[AxisOp, AxisOp], ...], ...]  # steps[j]: layers into tap j

    def __post_init__(self) -> None:
        prev = self.input_hw
        for j, segment in enumerate(self.steps):
            hw = prev
            for r, c in segment:
                if (r.n_in, c.n_in) != hw:
                    raise CarvisError(f"vbp plan: a step into {self.taps[j]!r} reads "
                                      f"{r.n_in}x{c.n_in}, but gets {hw[0]}x{hw[1]}")
                hw = (r.n_out, c.n_out)
            if hw != tuple(self.tap_hw[j]):
                raise CarvisError(f"vbp plan: segment into {self.taps[j]!r} gives "
                                  f"{hw[0]}x{hw[1]}, expected "
                                  f"{self.tap_hw[j][0]}x{self.tap_hw[j][1]}")
            prev = tuple(self.tap_hw[j])

    def backproject(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """VisualBackProp map at the input size (raw float32) from the taps' activations."""
        x: np.ndarray | None = None
        for j in range(len(self.taps) - 1, -1, -1):
            act = np.asarray(outputs[self.taps[j]])
            if act.ndim == 4:
                act = act[0]
            mean = act.mean(axis=-1, dtype=np.float32)
            x = mean if x is None else np.multiply(self.upsample(j + 1, x), mean)
        return self.upsample(0, x)

    def upsample(self, j: int, x: np.ndarray) -> np.ndarray:
        """Segment j's transposed convolutions: tap j's map → the previous tap's (or the
        input's) size."""
        for rows, cols in reversed(self.steps[j]):
            x = step_adjoint(rows, cols, np.ascontiguousarray(x, np.float32))
        return np.ascontiguousarray(x)

    def to_json(self) -> str:
        """The plan as JSON (e.g. to ship with a .tflite)."""
        return json.dumps({"input_hw": self.input_hw, "taps": self.taps, "tap_hw": self.tap_hw,
                           "steps": [[[dataclasses.asdict(r), dataclasses.asdict(c)]
                                      for r, c in seg] for seg in self.steps]})

    @classmethod
    def from_json(cls, text: str) -> VBPPlan:
        """Read a plan written by to_json."""
        raw = json.loads(text)
        steps = tuple(tuple((AxisOp(**r), AxisOp(**c)) for r, c in seg) for seg in raw["steps"])
        return cls(tuple(raw["input_hw"]), tuple(raw["taps"]),
                   tuple(tuple(hw) for hw in raw["tap_hw"]), steps)


def _tap(chain: list[dict], i: int) -> int:
    """A conv's post-ReLU output: the conv itself if it has an activation, else the last
    activation layer in the pixel-wise run right after it (conv → BN → ReLU)."""
    if chain[i]["activation"] not in ("", "linear", "None"):
        return i
    tap, k = i, i + 1
    while k < len(chain) and chain[k]["type"] in ELEMENTWISE:
        if chain[k]["type"] in ACTIVATION_LAYERS:
            tap = k
        k += 1
    return tap


def vbp_chain(model: Any, head: SteeringHead | None = None) -> dict:
    """VisualBackProp's path of a Keras model as records (what a .tflite's metadata keeps)."""
    input_hw = spatial(model.inputs[0].shape)
    if input_hw is None:
        raise CarvisError(f"model {model.name!r} input {tuple(model.inputs[0].shape)} is not "
                          "(H, W, C) with a fixed size")
    chain = spatial_chain(model, head or steering_head(model))
    return {"input_hw": list(input_hw), "chain": [layer_record(lay) for lay in chain]}


def plan_from_chain(path: dict, what: str = "the model") -> VBPPlan:
    """The VisualBackProp plan from a path of layer records (a Keras model's, or a .tflite's
    from its metadata or its ops)."""
    if "chain" not in path:
        raise CarvisError(f"{what}: {path.get('error', 'no vbp path')}")
    chain = path["chain"]
    convs = [i for i, rec in enumerate(chain) if rec["type"] in VBP_CONV_TYPES]
    if not convs:
        raise CarvisError(f"{what} has no conv layer on the path to its steering output; vbp "
                          "needs conv layers")
    taps = [_tap(chain, i) for i in convs]
    input_hw = tuple(path["input_hw"])
    steps: list[tuple[tuple[AxisOp, AxisOp], ...]] = []
    start = 0
    prev_hw = input_hw
    for tap in taps:
        segment = []
        for rec in chain[start: tap + 1]:
            out_hw = tuple(rec["out_hw"])
            try:
                geometry = record_geometry(rec, prev_hw, out_hw)
            except (TypeError, ValueError, IndexError, KeyError, ZeroDivisionError):
                # a window's config that no layer has (a damaged file's metadata)
                raise CarvisError(f"{what}: its vbp path is damaged at layer "
                                  f"{rec['name']!r} ({rec['type']}: {rec['config']})") from None
            if geometry is not None:
                segment.append(geometry)
            prev_hw = out_hw
        steps.append(tuple(segment))
        start = tap + 1
    return VBPPlan(input_hw=input_hw, taps=tuple(chain[t]["name"] for t in taps),
                   tap_hw=tuple(tuple(chain[t]["out_hw"]) for t in taps), steps=tuple(steps))


def vbp_plan(model: Any, head: SteeringHead | None = None) -> VBPPlan:
    """The VisualBackProp plan of a model (Keras, or a .tflite's facts): which conv outputs
    to average, how to scale up."""
    if isinstance(model, ModelFacts):
        return plan_from_chain(model.vbp or {"error": "has no vbp path in its metadata; "
                                             "export one with carvis export MODEL --with vbp"},
                               model.name)
    return plan_from_chain(vbp_chain(model, head), f"model {model.name!r}")


class VisualBackProp(Explainer):
    """VisualBackProp: conv means multiplied back to the input through all-ones deconvs."""

    mode = "vbp"

    def __init__(self, model: Any, *, plan: VBPPlan | None = None, **kwargs: Any) -> None:
        self.plan = plan or vbp_plan(model)
        super().__init__(model, **kwargs)

    def _resolve_layer(self, layer: str | int | None) -> str | None:
        return None  # VisualBackProp uses every conv layer

    def _output_layers(self) -> tuple[str, ...]:
        return self.plan.taps

    def reduce(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.plan.backproject(outputs)
