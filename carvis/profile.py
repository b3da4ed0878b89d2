"""YAML profiles: how a model sees the world, written once per car and validated up front.

Every bad value is rejected before any frame is read, in one line that names the key, the bad
value and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import yaml

from carvis import limits, settings
from carvis.errors import CarvisError, first_line

#: Where the project's own default model and profiles live (a fresh clone runs from here).
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
DEFAULT_PROFILE = MODELS_DIR / "default.yaml"


# The profile applied when a model is given without a profile: whole frame, the model's own
# input size, RGB scaled to 0..1 (the DonkeyCar convention), the second conv layer.
GENERIC: dict[str, Any] = {
    "name": "generic",
    "model": None,
    "preprocess": {
        "crop": None,
        "input_size": None,
        "interpolation": "area",
        "smooth": 0,
        "color": "rgb",
        "scale": 1.0 / 255.0,
        "offset": 0.0,
    },
    "layer": "conv:2",
    "channel": "mean",
    "normalize": "minmax",
    "range": None,
    "decay": 0.98,
    "ema": 0.0,
    "threshold": 80,
    "colormap": "inferno",
    "output": "frame",
    "output_size": None,
    "camera": {"size": [1280, 720], "fps": 30, "hflip": False, "vflip": False, "rotate": 0},
    # What the map shows (carvis.explain): the mode, its steering target, SmoothGrad [N, SIGMA]
    # for saliency/guided; the view (overlay or a grid of the layer's channels); the model's
    # steering drawn on the frame; the raw frame side by side with the result.
    "mode": "activation",
    "target": "predicted",
    "smoothgrad": None,
    "view": "overlay",
    "hud": False,
    "compare": False,
    # occlusion and rise (forward-only causal modes): the patch and its stride in model-input
    # pixels (null: a fifth of the input's shorter side, half that); rise's masks and cells.
    "occlusion": {"patch": None, "stride": None},
    "rise": {"masks": None, "cells": None},
}

@dataclasses.dataclass
class Crop:
    """A region of the frame: ints are pixels, floats in [0, 1] are fractions of the frame."""

    top: float = 0.0
    bottom: float = 1.0
    left: float = 0.0
    right: float = 1.0

    def pixels(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) in pixels for a frame of this size; errors if outside."""

        def px(v: float, size: int) -> int:
            return round(v * size) if isinstance(v, float) else int(v)

        t, b = px(self.top, height), px(self.bottom, height)
        lft, r = px(self.left, width), px(self.right, width)
        if not (0 <= t < b <= height and 0 <= lft < r <= width):
            raise CarvisError(
                f"profile crop rows {t}:{b}, cols {lft}:{r} does not fit a {width}x{height} "
                f"frame; change preprocess.crop (fractions such as 0.5 adapt to any size)"
            )
        return t, b, lft, r


@dataclasses.dataclass
class Profile:
    """A validated profile; see models/axionaut.yaml for the annotated format."""

    name: str
    model: Path | None
    crop: Crop | None
    input_size: tuple[int, int] | None
    interpolation: str
    smooth: int
    color: str
    scale: float
    offset: float
    layer: str | int
    channel: int | str
    normalize: str
    range: tuple[float, float] | None
    decay: float
    ema: float
    threshold: float
    colormap: str
    output: str
    output_size: tuple[int, int] | None
    camera: dict[str, Any]
    source: str = "<built-in>"
    mode: str = "activation"
    target: str = "predicted"
    smoothgrad: tuple[int, float] | None = None
    view: str = "overlay"
    hud: bool = False
    compare: bool = False
    occlusion: dict[str, Any] = dataclasses.field(default_factory=dict)
    rise: dict[str, Any] = dataclasses.field(default_factory=dict)

    def replace(self, **changes: Any) -> Profile:
        """A copy with some values changed, validated like the file's."""
        # What is changed here comes from the command line: a bad value is the flag's.
        data = self.to_dict()
        for key, value in changes.items():
            if value is None:
                continue
            if key == "crop":
                data["preprocess"]["crop"] = value  # parse() checks it below
            elif key in data["preprocess"]:
                data["preprocess"][key] = settings.check(f"preprocess.{key}", value,
                                                         settings.FLAGS)
            else:
                data[key] = settings.check(key, value, settings.FLAGS)
        return parse(data, source=self.source, base=None)

    def to_dict(self) -> dict[str, Any]:
        """The profile as plain data, in the YAML layout."""
        crop = dataclasses.asdict(self.crop) if self.crop else None
        return {
            "name": self.name,
            "model": str(self.model) if self.model else None,
            "preprocess": {
                "crop": crop,
                "input_size": list(self.input_size) if self.input_size else None,
                "interpolation": self.interpolation,
                "smooth": self.smooth,
                "color": self.color,
                "scale": self.scale,
                "offset": self.offset,
            },
            "layer": self.layer,
            "channel": self.channel,
            "normalize": self.normalize,
            "range": list(self.range) if self.range else None,
            "decay": self.decay,
            "ema": self.ema,
            "threshold": self.threshold,
            "colormap": self.colormap,
            "output": self.output,
            "output_size": list(self.output_size) if self.output_size else None,
            "camera": dict(self.camera),
            "mode": self.mode,
            "target": self.target,
            "smoothgrad": list(self.smoothgrad) if self.smoothgrad else None,
            "view": self.view,
            "hud": self.hud,
            "compare": self.compare,
            "occlusion": dict(self.occlusion),
            "rise": dict(self.rise),
        }


def _merge(base: dict[str, Any], override: dict[str, Any], source: str, prefix: str = ""
           ) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if key not in base:
            allowed = ", ".join(base)
            raise CarvisError(f"{source}: unknown key {prefix}{key!r}; allowed keys: {allowed}")
        if isinstance(base[key], dict) and key != "crop":
            if not isinstance(value, dict):
                raise settings.ProfileOrigin(source).fail(prefix + key, value,
                                                          "expected a mapping")
            out[key] = _merge(base[key], value, source, prefix + key + ".")
        else:
            out[key] = value
    return out


def _crop(origin: settings.Origin, value: Any) -> Crop | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)) and len(value) == 4:
        value = dict(zip(("top", "bottom", "left", "right"), value))
    if not isinstance(value, dict):
        raise origin.fail("preprocess.crop", value,
                          "expected {top, bottom, left, right} (pixels, or fractions 0..1)")
    crop = Crop()
    for key, v in value.items():
        if key not in ("top", "bottom", "left", "right"):
            raise CarvisError(f"{getattr(origin, 'source', 'profile')}: unknown key "
                              f"'preprocess.crop.{key}'; allowed keys: top, bottom, left, right")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (
                isinstance(v, float) and v > 1):
            raise origin.fail(f"preprocess.crop.{key}", v,
                              "expected pixels (an integer >= 0) or a fraction 0.0..1.0")
        setattr(crop, key, v)
    return crop


#: Profile keys checked by carvis.settings, by their dotted path.
_CHECKED = ("threshold", "colormap", "layer", "channel", "normalize", "range", "decay", "ema",
            "output", "output_size", "mode", "target", "smoothgrad", "view", "hud", "compare")
_PREPROCESS = ("input_size", "interpolation", "smooth", "color", "scale", "offset")


def parse(data: dict[str, Any] | None, source: str = "<profile>", base: Path | None = None
          ) -> Profile:
    """Validate plain profile data (as read from YAML) into a Profile."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CarvisError(f"{source}: a profile is a mapping of keys, got {type(data).__name__}")
    origin = settings.ProfileOrigin(source)
    d = _merge(GENERIC, data, source)
    model = d["model"]
    if model is not None and not isinstance(model, str):
        raise origin.fail("model", model, "expected the model file's path")
    if model is not None:
        model = Path(model)
        if base is not None and not model.is_absolute():
            model = base / model
    values = {key: settings.check(key, d[key], origin) for key in _CHECKED}
    pre = {key: settings.check(f"preprocess.{key}", d["preprocess"][key], origin)
           for key in _PREPROCESS}
    if values["normalize"] == "fixed" and values["range"] is None:
        raise CarvisError(f"{source}: normalize: fixed needs range: [low, high]")
    cam = settings.camera(d["camera"], origin)
    causal = {mode: {key: settings.check(f"{mode}.{key}", value, origin)
                     for key, value in d[mode].items()} for mode in ("occlusion", "rise")}
    return Profile(
        name=str(d["name"]),
        model=model,
        crop=_crop(origin, d["preprocess"]["crop"]),
        **pre,
        camera={**cam, "size": list(cam["size"]) if cam["size"] else None},
        source=source,
        **causal,
        **values,
    )


def _check_events(text: str, path: Path) -> None:
    """Refuse, before any node is built, what a profile never needs and a YAML bomb does:
    aliases (a 1 KB "billion laughs" expands to gigabytes), nesting deeper than
    limits.MAX_DEPTH (the composer recurses), more than limits.MAX_YAML_NODES nodes."""
    level = nodes = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            line = event.start_mark.line + 1
            raise CarvisError(f"{path}: line {line}: YAML aliases (*{event.anchor}) are not "
                              "allowed in a profile; write the value out")
        if isinstance(event, (yaml.ScalarEvent, yaml.CollectionStartEvent)):
            nodes += 1
        if isinstance(event, yaml.CollectionStartEvent):
            level += 1
        elif isinstance(event, yaml.CollectionEndEvent):
            level -= 1
        if level > limits.MAX_DEPTH or nodes > limits.MAX_YAML_NODES:
            raise CarvisError(f"{path}: line {event.start_mark.line + 1}: the YAML nests "
                              f"deeper than {limits.MAX_DEPTH} levels or holds more than "
                              f"{limits.MAX_YAML_NODES} values; a profile is a short mapping "
                              f"(see {MODELS_DIR / 'axionaut.yaml'})")


def load(path: str | Path) -> Profile:
    """Read and validate a YAML profile file."""
    path = Path(path)
    limits.check_regular(path, "profile")
    if not path.is_file():
        raise CarvisError(f"profile {str(path)!r} not found; give the path of a .yaml profile "
                          f"(see {MODELS_DIR / 'axionaut.yaml'})")
    try:
        text = limits.read_text(path, "profile", limits.MAX_PROFILE_BYTES,
                                "a profile is a short YAML file")
        _check_events(text, path)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise CarvisError(f"{path}:{where}: {problem}; fix the YAML syntax") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CarvisError(f"profile {str(path)!r} cannot be read ({exc})") from None
    except (ValueError, OverflowError) as exc:  # a value YAML's constructors refuse
        raise CarvisError(f"{path}: a value cannot be read ({first_line(exc)}); fix it"
                          ) from None
    return parse(data, source=str(path), base=path.parent)


def generic() -> Profile:
    """The profile used for a model given without one."""
    return parse({}, source="<generic profile>")
