"""Which map to trust: deletion and insertion (Petsiuk, Das & Saenko, "RISE", BMVC 2018) of every
mode's map on the steering output, beside a random map.

For each frame the model's input is ranked by a mode's map (upsampled to the input where the
map is a layer's; ties broken at random). **Deletion**: the top k% of its pixels are replaced by
a blurred copy of the frame, k = 5, 10 … 50, and the score is the mean over k of how far the
target score drops below the whole frame's: a faithful map names the pixels whose loss takes
the target away soonest, so higher is better. **Insertion**: the reverse, from the blurred
frame with the top k% of the real pixels put back; the score is the mean over k of how far the
target score rises above the blurred frame's (higher is better). Both are in the target score's
units, signed as Petsiuk et al.'s class probability is. The target score is the one
the maps explain (``--target``; predicted: the steering value's magnitude, or the predicted
bin's probability), on the steering output the HUD reads. A random map (a new one per frame)
is the floor every mode should beat.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import cv2
import numpy as np

from carvis import explain
from carvis import overlay as ov
from carvis.errors import CarvisError
from carvis.preprocess import Preprocessor
from carvis.profile import Profile
from carvis.session import ModelSession

log = logging.getLogger("carvis")

FRACTIONS = tuple(k / 100 for k in range(5, 55, 5))  # k = 5 … 50 %
BLUR_SIGMA = 0.1  # the blurred frame's Gaussian sigma, as a fraction of the shorter side
RANDOM = "random"
METHOD = ("deletion / insertion (Petsiuk et al., RISE, BMVC 2018) on the steering output's "
          "target score: the top k% of the model input's pixels by the map (k = 5..50 in steps "
          "of 5) replaced by a Gaussian-blurred frame (sigma = 0.1 x the shorter side), or "
          "those pixels put back into the blurred frame; deletion = mean over k of s(frame) - "
          "s(deleted), insertion = mean over k of s(inserted) - s(blurred); higher is more "
          "faithful for both; a random map is the floor")


@dataclasses.dataclass
class ModeScore:
    """One mode's curves summed over frames (deletion and insertion at each k)."""

    deletion: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(len(FRACTIONS)))
    insertion: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(len(FRACTIONS)))
    frames: int = 0
    map_ms: float = 0.0

    def add(self, deletion: np.ndarray, insertion: np.ndarray) -> None:
        self.deletion += deletion
        self.insertion += insertion
        self.frames += 1

    def as_dict(self) -> dict[str, Any]:
        n = max(self.frames, 1)
        return {"deletion": float(self.deletion.mean() / n),
                "insertion": float(self.insertion.mean() / n),
                "deletion_curve": [float(v) for v in self.deletion / n],
                "insertion_curve": [float(v) for v in self.insertion / n],
                "frames": self.frames, "map_ms": round(self.map_ms / n, 3)}


def curves(image: np.ndarray, ranking: np.ndarray, predict: Callable[[np.ndarray], np.ndarray],
           coefficients: np.ndarray, blurred: np.ndarray | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """(deletion, insertion) of one input (H, W, C) at each fraction, for a map given as the
    pixels' order (most important first): deletion s(frame) - s(deleted), insertion
    s(inserted) - s(blurred), s the target score."""
    h, w = image.shape[:2]
    blurred = blur(image) if blurred is None else blurred
    flat, soft = image.reshape(h * w, -1), blurred.reshape(h * w, -1)
    batch = np.empty((2 * len(FRACTIONS) + 2, h * w, flat.shape[1]), np.float32)
    batch[0], batch[1] = flat, soft
    for i, fraction in enumerate(FRACTIONS):
        top = ranking[: round(fraction * h * w)]
        deleted, inserted = batch[2 + 2 * i], batch[3 + 2 * i]
        deleted[:], inserted[:] = flat, soft
        deleted[top], inserted[top] = soft[top], flat[top]
    scores = predict(batch.reshape((-1, h, w, flat.shape[1]))) @ coefficients
    return scores[0] - scores[2::2], scores[3::2] - scores[1]


def blur(image: np.ndarray) -> np.ndarray:
    """The baseline: the input Gaussian-blurred (sigma a tenth of its shorter side)."""
    sigma = BLUR_SIGMA * min(image.shape[:2])
    return cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)


def ranking(amap: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """The input's pixels ordered by a map (largest first), the map resized to the input;
    equal values in a random order."""
    h, w = shape
    m = np.asarray(amap, np.float32)
    if m.shape != (h, w):
        m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.lexsort((rng.random(h * w), -m.reshape(-1)))


class Scorer:
    """Scores maps of some modes on frames of one model (one explainer per mode, built once)."""

    def __init__(self, session: ModelSession, profile: Profile, modes: Sequence[str],
                 seed: int = 0) -> None:
        self.session, self.profile = session, profile
        h, w, c = session.input_shape()
        self.preprocess = Preprocessor(profile, (w, h), c)
        self.rng = np.random.default_rng(seed)
        layer = session.backend(profile.layer).layer_name
        self.explainers = {}
        for mode in modes:
            uses_layer = mode in ("activation", "gradcam", "guided-gradcam") or \
                profile.target == "layer"
            params = explain.mode_parameters(mode, profile.smoothgrad, profile)
            self.explainers[mode] = session.explainer(mode, profile.target,
                                                      layer if uses_layer else None, params)
        # The perturbed copies run through occlusion's batched forward, whatever the modes.
        self.runner = session.explainer("occlusion", profile.target, None, None)
        self.scores = {mode: ModeScore() for mode in (*modes, RANDOM)}

    def add(self, image: np.ndarray) -> None:
        """Score every mode's map (and a random one) on one frame."""
        import time

        x = self.preprocess(self.preprocess.roi(image))
        frame = x[0]
        prediction = self.runner.predict(x)[0]
        coefficients = self.runner.target.coefficients(prediction).astype(np.float64)
        maps: dict[str, np.ndarray] = {}
        for mode, explainer in self.explainers.items():
            t0 = time.perf_counter()
            result = explainer(x)
            amap = result.map
            if mode == "activation":
                amap = ov.select_channel(np.asarray(result.outputs[explainer.layer])[0],
                                         self.profile.channel)
            self.scores[mode].map_ms += (time.perf_counter() - t0) * 1e3
            maps[mode] = amap
        self.add_maps(frame, maps, coefficients)

    def add_maps(self, frame: np.ndarray, maps: dict[str, np.ndarray],
                 coefficients: np.ndarray) -> None:
        """Score some maps of one model input (H, W, C), and a random map beside them."""
        blurred = blur(frame)
        maps = {**maps, RANDOM: self.rng.random(frame.shape[:2])}
        for mode, amap in maps.items():
            order = ranking(amap, frame.shape[:2], self.rng)
            self.scores.setdefault(mode, ModeScore()).add(*curves(
                frame, order, self.runner.predict, coefficients, blurred))

    def report(self) -> dict[str, Any]:
        """The JSON the command writes: the method, its parameters, every mode's scores."""
        return {"method": METHOD,
                "parameters": {"fractions": list(FRACTIONS), "blur_sigma": BLUR_SIGMA,
                               "target": self.profile.target, "layer": str(self.profile.layer),
                               "model": self.session.path.name,
                               "backend": self.session.backend_name,
                               "occlusion": self.explainers["occlusion"].params
                               if "occlusion" in self.explainers else None,
                               "rise": self.explainers["rise"].params
                               if "rise" in self.explainers else None},
                "modes": {mode: s.as_dict() for mode, s in self.scores.items()}}


def score_frames(scorer: Scorer, frames: Iterable[np.ndarray],
                 progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Feed frames to a scorer; its report."""
    n = 0
    for image in frames:
        scorer.add(image)
        n += 1
        if progress is not None:
            progress(n)
    if n == 0:
        raise CarvisError("no frame to score; check the source and --start/--end")
    return scorer.report()


def ranked(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The modes best first: by deletion, then insertion."""
    return sorted(report["modes"].items(), key=lambda kv: (-kv[1]["deletion"],
                                                           -kv[1]["insertion"]))


def table(report: dict[str, Any]) -> str:
    """The scores as aligned text, best first, with their lead over the random map."""
    modes = report["modes"]
    floor = modes[RANDOM]
    lines = [(f"{'mode':<16}{'deletion':>10}{'- random':>10}{'insertion':>11}{'- random':>10}"
             f"{'map ms':>9}")]
    for mode, s in ranked(report):
        lines.append(f"{mode:<16}{s['deletion']:>10.4f}{s['deletion'] - floor['deletion']:>+10.4f}"
                     f"{s['insertion']:>11.4f}{s['insertion'] - floor['insertion']:>+10.4f}"
                     f"{s['map_ms']:>9.1f}")
    return "\n".join(lines)


def plot(report: dict[str, Any], width: int = 960, height: int = 420) -> np.ndarray:
    """Deletion and insertion curves of every mode, side by side (a BGR picture, cv2 only)."""
    canvas = np.full((height, width, 3), 255, np.uint8)
    modes = ranked(report)
    colors = [tuple(int(c) for c in cv2.applyColorMap(np.uint8([[int(i * 255 / max(
        len(modes) - 1, 1))]]), cv2.COLORMAP_TURBO)[0, 0]) for i in range(len(modes))]
    panel_w, top, bottom, left = width // 2, 40, height - 110, 60
    xs = [100 * f for f in FRACTIONS]
    for p, key in enumerate(("deletion", "insertion")):
        x0 = p * panel_w + left
        x1 = (p + 1) * panel_w - 20
        curves_ = [np.asarray(s[f"{key}_curve"]) for _, s in modes]
        lo = min(0.0, *(float(c.min()) for c in curves_))
        hi = max(*(float(c.max()) for c in curves_), lo + 1e-9)
        cv2.rectangle(canvas, (x0, top), (x1, bottom), (0, 0, 0), 1)
        cv2.putText(canvas, f"{key} (higher: more faithful)", (x0, top - 12),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        for value, y in ((hi, top), (lo, bottom)):
            cv2.putText(canvas, f"{value:.3g}", (x0 - 55, y + 4), cv2.FONT_HERSHEY_SIMPLEX,
                        0.4, (0, 0, 0), 1, cv2.LINE_AA)
        for k in (5, 25, 50):
            x = int(x0 + (k - 5) / 45 * (x1 - x0))
            cv2.putText(canvas, f"{k}%", (x - 10, bottom + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                        (0, 0, 0), 1, cv2.LINE_AA)
        for curve, color in zip(curves_, colors, strict=True):
            pts = [(int(x0 + (x - 5) / 45 * (x1 - x0)),
                    int(bottom - (v - lo) / (hi - lo) * (bottom - top))) for x, v in
                   zip(xs, curve, strict=True)]
            cv2.polylines(canvas, [np.int32(pts)], False, color, 2, cv2.LINE_AA)
    for i, ((mode, s), color) in enumerate(zip(modes, colors, strict=True)):
        x, y = 20 + (i % 4) * (width // 4), bottom + 40 + (i // 4) * 20
        cv2.line(canvas, (x, y - 4), (x + 24, y - 4), color, 3)
        cv2.putText(canvas, f"{mode} {s['deletion']:.3g} / {s['insertion']:.3g}", (x + 30, y),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas
