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

from carvis.errors import CarvisError

#: Where the project's own default model and profiles live (a fresh clone runs from here).
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
DEFAULT_PROFILE = MODELS_DIR / "default.yaml"

INTERPOLATIONS = ("nearest", "linear", "cubic", "area", "lanczos")
COLORS = ("bgr", "rgb")
OUTPUTS = ("roi", "frame")
NORMALIZATIONS = ("minmax", "fixed", "running")

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
}

VIEWS = ("overlay", "grid")


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

    def replace(self, **changes: Any) -> Profile:
        """A copy with some values changed, validated like the file's."""
        data = self.to_dict()
        for key, value in changes.items():
            if value is None:
                continue
            if key in data["preprocess"]:
                data["preprocess"][key] = value
            else:
                data[key] = value
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
        }


def _fail(source: str, key: str, value: Any, allowed: str) -> CarvisError:
    return CarvisError(f"{source}: {key} = {value!r} is not valid; {allowed}")


def _merge(base: dict[str, Any], override: dict[str, Any], source: str, prefix: str = ""
           ) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if key not in base:
            allowed = ", ".join(base)
            raise CarvisError(f"{source}: unknown key {prefix}{key!r}; allowed keys: {allowed}")
        if isinstance(base[key], dict) and key != "crop":
            if not isinstance(value, dict):
                raise _fail(source, prefix + key, value, "expected a mapping")
            out[key] = _merge(base[key], value, source, prefix + key + ".")
        else:
            out[key] = value
    return out


def _number(source: str, key: str, value: Any, lo: float | None = None, hi: float | None = None,
            integer: bool = False) -> float:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise _fail(source, key, value, f"expected {'an integer' if integer else 'a number'}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise _fail(source, key, value, f"allowed range {lo}..{hi}")
    return value


def _choice(source: str, key: str, value: Any, choices: tuple[str, ...]) -> str:
    v = str(value).lower() if isinstance(value, str) else value
    if v not in choices:
        raise _fail(source, key, value, f"choose one of: {', '.join(choices)}")
    return v


def _size(source: str, key: str, value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 16384
                       for v in value)):
        raise _fail(source, key, value, "expected [width, height] in pixels, 1..16384")
    return int(value[0]), int(value[1])


def _crop(source: str, value: Any) -> Crop | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)) and len(value) == 4:
        value = dict(zip(("top", "bottom", "left", "right"), value))
    if not isinstance(value, dict):
        raise _fail(source, "preprocess.crop", value,
                    "expected {top, bottom, left, right} (pixels, or fractions 0..1)")
    crop = Crop()
    for key, v in value.items():
        if key not in ("top", "bottom", "left", "right"):
            raise CarvisError(f"{source}: unknown key 'preprocess.crop.{key}'; "
                              "allowed keys: top, bottom, left, right")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (
                isinstance(v, float) and v > 1):
            raise _fail(source, f"preprocess.crop.{key}", v,
                        "expected pixels (an integer >= 0) or a fraction 0.0..1.0")
        setattr(crop, key, v)
    return crop


def parse_layer(value: Any) -> str | int:
    """A layer spec: a name, an integer index, or 'conv:N'."""
    if isinstance(value, bool):
        raise CarvisError(f"layer {value!r} is not valid; give a name, an index or conv:N")
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    if text.lower().startswith("conv:"):
        n = text[5:]
        if not n.isdigit() or int(n) < 1:
            raise CarvisError(f"layer {text!r} is not valid; conv:N counts conv layers from 1")
        return f"conv:{int(n)}"
    if not text:
        raise CarvisError("layer is empty; give a name, an index or conv:N")
    return text


def parse_channel(value: Any) -> int | str:
    """A channel spec: an integer index, 'mean' or 'max'."""
    if isinstance(value, bool):
        raise CarvisError(f"channel {value!r} is not valid; give an index, 'mean' or 'max'")
    if isinstance(value, int):
        return value
    text = str(value).strip().lower()
    if text in ("mean", "max"):
        return text
    if text.lstrip("-").isdigit():
        return int(text)
    raise CarvisError(f"channel {value!r} is not valid; give an index, 'mean' or 'max'")


def parse(data: dict[str, Any] | None, source: str = "<profile>", base: Path | None = None
          ) -> Profile:
    """Validate plain profile data (as read from YAML) into a Profile."""
    from carvis.overlay import COLORMAPS  # cv2 import kept out of module import time

    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CarvisError(f"{source}: a profile is a mapping of keys, got {type(data).__name__}")
    d = _merge(GENERIC, data, source)
    pre = d["preprocess"]
    model = d["model"]
    if model is not None:
        model = Path(model)
        if base is not None and not model.is_absolute():
            model = base / model
    threshold = _number(source, "threshold", d["threshold"], 0, 255)
    colormap = _choice(source, "colormap", d["colormap"], tuple(sorted(COLORMAPS)))
    rng = d["range"]
    if rng is not None:
        if (not isinstance(rng, (list, tuple)) or len(rng) != 2
                or not all(isinstance(v, (int, float)) for v in rng) or rng[0] >= rng[1]):
            raise _fail(source, "range", rng, "expected [low, high] with low < high")
        rng = (float(rng[0]), float(rng[1]))
    normalize = _choice(source, "normalize", d["normalize"], NORMALIZATIONS)
    if normalize == "fixed" and rng is None:
        raise CarvisError(f"{source}: normalize: fixed needs range: [low, high]")
    cam = d["camera"]
    cam_size = _size(source, "camera.size", cam["size"])
    _number(source, "camera.fps", cam["fps"], 1, 240)
    if cam["rotate"] not in (0, 90, 180, 270):
        raise _fail(source, "camera.rotate", cam["rotate"], "choose one of: 0, 90, 180, 270")
    for flip in ("hflip", "vflip"):
        if not isinstance(cam[flip], bool):
            raise _fail(source, f"camera.{flip}", cam[flip], "expected true or false")
    try:
        layer = parse_layer(d["layer"])
        channel = parse_channel(d["channel"])
    except CarvisError as exc:
        raise CarvisError(f"{source}: {exc}") from None
    explained = _explain_keys(source, d)
    return Profile(
        name=str(d["name"]),
        model=model,
        crop=_crop(source, pre["crop"]),
        input_size=_size(source, "preprocess.input_size", pre["input_size"]),
        interpolation=_choice(source, "preprocess.interpolation", pre["interpolation"],
                              INTERPOLATIONS),
        smooth=int(_number(source, "preprocess.smooth", pre["smooth"], 0, 31, integer=True)),
        color=_choice(source, "preprocess.color", pre["color"], COLORS),
        scale=float(_number(source, "preprocess.scale", pre["scale"])),
        offset=float(_number(source, "preprocess.offset", pre["offset"])),
        layer=layer,
        channel=channel,
        normalize=normalize,
        range=rng,
        decay=float(_number(source, "decay", d["decay"], 0.0, 1.0)),
        ema=float(_number(source, "ema", d["ema"], 0.0, 0.99)),
        threshold=float(threshold),
        colormap=colormap,
        output=_choice(source, "output", d["output"], OUTPUTS),
        output_size=_size(source, "output_size", d["output_size"]),
        camera={**cam, "size": list(cam_size) if cam_size else None},
        source=source,
        **explained,
    )


def parse_smoothgrad(value: Any) -> tuple[int, float] | None:
    """SmoothGrad as (N, SIGMA) from [N, SIGMA] or "N,SIGMA"; None or 0 copies: off."""
    if value is None:
        return None
    raw = value
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",")]
    allowed = ("expected [N, SIGMA] or N,SIGMA: N noisy copies 0..256, SIGMA 0..1 "
               "(a fraction of the input's value range)")
    try:
        n, sigma = value
        n_int, sigma_f = int(n), float(sigma)
        whole = n_int == float(n)
    except (TypeError, ValueError):
        raise CarvisError(f"smoothgrad {raw!r} is not valid; {allowed}") from None
    if isinstance(n, bool) or isinstance(sigma, bool) or not whole or not 0 <= n_int <= 256 \
            or not 0.0 <= sigma_f <= 1.0:
        raise CarvisError(f"smoothgrad {raw!r} is not valid; {allowed}")
    return (n_int, sigma_f) if n_int else None


def _explain_keys(source: str, d: dict[str, Any]) -> dict[str, Any]:
    """mode, target, smoothgrad, view, hud, compare: checked."""
    from carvis.explain import MODES, parse_target

    try:
        target = parse_target(d["target"])
        smoothgrad = parse_smoothgrad(d["smoothgrad"])
    except CarvisError as exc:
        raise CarvisError(f"{source}: {exc}") from None
    for flag in ("hud", "compare"):
        if not isinstance(d[flag], bool):
            raise _fail(source, flag, d[flag], "expected true or false")
    return {"mode": _choice(source, "mode", d["mode"], MODES), "target": target,
            "smoothgrad": smoothgrad, "view": _choice(source, "view", d["view"], VIEWS),
            "hud": d["hud"], "compare": d["compare"]}


def load(path: str | Path) -> Profile:
    """Read and validate a YAML profile file."""
    path = Path(path)
    if not path.is_file():
        raise CarvisError(f"profile {str(path)!r} not found; give the path of a .yaml profile "
                          f"(see {MODELS_DIR / 'axionaut.yaml'})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise CarvisError(f"{path}:{where}: {problem}; fix the YAML syntax") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CarvisError(f"profile {str(path)!r} cannot be read ({exc})") from None
    return parse(data, source=str(path), base=path.parent)


def generic() -> Profile:
    """The profile used for a model given without one."""
    return parse({}, source="<generic profile>")
