"""Which DonkeyCar pilot a model is, read from its inputs and outputs; what feeds it; what it says.

DonkeyCar 5.3 (``donkeycar/parts/keras.py``) trains ten pilot types. Each has its input and
output layers named by its builder, and DonkeyCar's ``.tflite`` export keeps those names in its
signature, so the names (and, where they are lost, the shapes) say the type:

=========== ================= ============================ ==================================
type        class             inputs                       outputs
=========== ================= ============================ ==================================
linear      KerasLinear       img_in                       n_outputs0 (angle), n_outputs1
categorical KerasCategorical  img_in                       angle_out (15 bins), throttle_out
                                                           (20 bins over MODEL_CATEGORICAL_
                                                           MAX_THROTTLE_RANGE)
inferred    KerasInferred     img_in                       n_outputs0 (angle; the throttle is
                                                           DonkeyCar's utils.throttle(angle))
memory      KerasMemory       img_in, mem_in (its own      n_outputs0, n_outputs1
                              previous (angle, throttle)
                              × mem_length, oldest first)
imu         KerasIMU          img_in, imu_in (imu/acl_x …  out_0 (angle), out_1 (throttle)
                              imu/gyr_z)
behavior    KerasBehavioral   img_in, xbehavior_in         angle_out, throttle_out (bins)
                              (behavior/one_hot_state_
                              array)
localizer   KerasLocalizer    img_in                       angle, throttle, zloc (location:
                                                           its argmax)
rnn         KerasLSTM         img_in (the last seq_length  model_outputs (angle, throttle)
                              frames)
3d          Keras3D_CNN       img_in (the last seq_length  outputs (angle, throttle)
                              frames)
latent      KerasLatent       img_in                       img_out (an image), n_outputs0,
                                                           n_outputs1
=========== ================= ============================ ==================================

The names ``--type`` takes are DonkeyCar's (``get_model_by_type``, makemovie's ``--type``), with
its ``tflite_`` / ``tensorrt_`` prefixes allowed. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from carvis import pilot
from carvis.backends.tflite import schema
from carvis.errors import CarvisError

Shape = tuple[int | None, ...]  # without the batch axis
Tensor = tuple[str, Shape]  # (name, shape)

IMAGE_KEY = "cam/image_array"
IMU_KEYS = tuple(f"imu/{f}_{x}" for f in ("acl", "gyr") for x in "xyz")
BEHAVIOR_KEY = "behavior/one_hot_state_array"


@dataclass(frozen=True)
class Feed:
    """One model input and what fills it: the camera image, record keys, or the pilot's own
    previous outputs (memory)."""

    input: str
    shape: Shape
    source: str  # "image", "record" or "memory"
    keys: tuple[str, ...] = ()  # tub record keys, in the order they fill the input
    vehicle: str = ""  # the vehicle-loop key templates/complete.py hands the pilot
    length: int = 0  # image: frames in the sequence (0: one frame); memory: mem_length


@dataclass(frozen=True)
class Head:
    """One model output and what it means: angle, throttle, angle_bins, throttle_bins,
    location (softmax; its argmax), angle_throttle (a vector of both) or image."""

    output: str
    meaning: str
    size: int


@dataclass(frozen=True)
class Kind:
    """What DonkeyCar's builder makes for one type: its class, heads, extra input."""

    pilot_class: str
    heads: tuple[tuple[str, str], ...]  # (output name, meaning), in the Keras model's order
    extra: str = ""  # the extra input's name
    sequence: bool = False


_LINEAR = (("n_outputs0", "angle"), ("n_outputs1", "throttle"))
_BINS = (("angle_out", "angle_bins"), ("throttle_out", "throttle_bins"))

#: DonkeyCar's type name -> what its builder makes (donkeycar/parts/keras.py).
KINDS: dict[str, Kind] = {
    "linear": Kind("KerasLinear", _LINEAR),
    "categorical": Kind("KerasCategorical", _BINS),
    "inferred": Kind("KerasInferred", (("n_outputs0", "angle"),)),
    "memory": Kind("KerasMemory", _LINEAR, extra="mem_in"),
    "imu": Kind("KerasIMU", (("out_0", "angle"), ("out_1", "throttle")), extra="imu_in"),
    "behavior": Kind("KerasBehavioral", _BINS, extra="xbehavior_in"),
    "localizer": Kind("KerasLocalizer", (("angle", "angle"), ("throttle", "throttle"),
                                         ("zloc", "location"))),
    "rnn": Kind("KerasLSTM", (("model_outputs", "angle_throttle"),), sequence=True),
    "3d": Kind("Keras3D_CNN", (("outputs", "angle_throttle"),), sequence=True),
    "latent": Kind("KerasLatent", (("img_out", "image"),) + _LINEAR),
}
TYPE_NAMES = tuple(KINDS)
_SIZES = {"angle": 1, "throttle": 1, "angle_bins": 15, "throttle_bins": 20,
          "angle_throttle": 2}


@dataclass(frozen=True)
class PilotType:
    """A model read as a DonkeyCar pilot: what feeds each input, what each output means."""

    kind: str
    pilot_class: str
    image: Feed
    feeds: tuple[Feed, ...]  # the other inputs
    heads: tuple[Head, ...]

    @property
    def sequence(self) -> int:
        """Frames the image input takes (0: one frame)."""
        return self.image.length

    @property
    def part_inputs(self) -> tuple[str, ...]:
        """The vehicle keys templates/complete.py gives this pilot part, in order."""
        return (self.image.vehicle, *(f.vehicle for f in self.feeds if f.vehicle))

    @property
    def part_outputs(self) -> tuple[str, ...]:
        """The vehicle keys its run() values go to (complete.py: pilot/loc for a localizer)."""
        loc = ("pilot/loc",) if any(h.meaning == "location" for h in self.heads) else ()
        return ("pilot/angle", "pilot/throttle", *loc)

    def head(self, meaning: str) -> Head | None:
        """The head with this meaning, if the pilot has one."""
        return next((h for h in self.heads if h.meaning == meaning), None)

    def decode(self, outputs: Mapping[str, Any], throttle_range: float = pilot.THROTTLE_RANGE
               ) -> tuple[float, ...]:
        """What DonkeyCar's pilot.run() returns for these raw outputs (batch axis or not):
        (angle, throttle), and the location for a localizer."""
        value = {h.meaning: np.asarray(outputs[h.output], np.float64).reshape(-1)
                 for h in self.heads}
        if "angle_throttle" in value:
            angle, throttle = float(value["angle_throttle"][0]), \
                float(value["angle_throttle"][1])
        elif "angle_bins" in value:
            angle = pilot.angle_of_bins(value["angle_bins"])
            throttle = pilot.throttle_of_bins(value["throttle_bins"], throttle_range)
        else:
            angle = float(value["angle"][0])
            throttle = float(value["throttle"][0]) if "throttle" in value else \
                inferred_throttle(angle)
        if "location" in value:
            return angle, throttle, float(np.argmax(value["location"]))
        return angle, throttle


def inferred_throttle(angle: float) -> float:
    """DonkeyCar's utils.throttle: KerasInferred's throttle from its angle."""
    magnitude = (min(max(angle, -1.0), 1.0) + 1.0) / 2.0
    return 1.0 / math.exp(magnitude * 0.5) - 0.05 * magnitude


def type_name(name: str) -> str:
    """A --type value as DonkeyCar's type name (its tflite_/tensorrt_ prefixes dropped)."""
    kind = re.sub(r"^(tflite_|tensorrt_)", "", name.strip().lower())
    if kind not in KINDS:
        raise CarvisError(f"--type {name!r} is not a DonkeyCar pilot type; use one of "
                          f"{', '.join(TYPE_NAMES)}")
    return kind


def detect(inputs: Sequence[Tensor], outputs: Sequence[Tensor], kind: str | None = None,
           source: str = "the model") -> PilotType:
    """The pilot type of a model with these inputs and outputs (names and shapes without the
    batch axis); kind (a --type value) says it instead of the names, and is checked."""
    ins = [(_plain(n), tuple(s)) for n, s in inputs]
    outs = [(_plain(n), tuple(s)) for n, s in outputs]
    original = {_plain(n): str(n) for n, _ in (*inputs, *outputs)}
    images = [t for t in ins if len(t[1]) >= 3]
    if len(images) != 1:
        raise CarvisError(f"{source}: has {len(images)} image inputs ({_text(ins)}); a "
                          "DonkeyCar pilot has one (img_in)")
    if kind is not None:
        kind = type_name(kind)
        problem = _misfit(KINDS[kind], ins, outs)
        if problem:
            raise CarvisError(f"{source}: --type {kind} does not fit the model: {problem} "
                              f"(inputs {_text(ins)}; outputs {_text(outs)})")
    else:
        kind = _guess(ins, outs, source)
    found = _build(kind, images[0], ins, outs, source)
    # the caller's own names: what it feeds and reads by
    return replace(found, image=replace(found.image, input=original[found.image.input]),
                   feeds=tuple(replace(f, input=original[f.input]) for f in found.feeds),
                   heads=tuple(replace(h, output=original[h.output]) for h in found.heads))


def _plain(name: str) -> str:
    """A signature's tensor name as the layer's: 'serving_default_img_in:0' -> 'img_in'."""
    match = re.fullmatch(r"serving_default_(.+?)(:\d+)?", str(name))
    return match.group(1) if match else str(name)


def _text(tensors: Sequence[Tensor]) -> str:
    return ", ".join(f"{n} {tuple(s)}" for n, s in tensors) or "none"


def _misfit(k: Kind, ins: list[Tensor], outs: list[Tensor]) -> str:
    """Why the inputs and outputs are not this kind's ('' if they are)."""
    image = next(s for _, s in ins if len(s) >= 3)
    if k.sequence != (len(image) == 4):
        return ("it takes a sequence of frames (T, H, W, C)" if k.sequence
                else "it takes one frame (H, W, C)")
    extras = [t for t in ins if len(t[1]) < 3]
    if len(extras) != (1 if k.extra else 0):
        return f"it has {'one input' if k.extra else 'no input'} besides the image"
    if len(outs) != len(k.heads):
        return f"it has {len(k.heads)} output(s)"
    names = {n for n, _ in outs}
    if names == {n for n, _ in k.heads}:
        return ""
    wanted = sorted(_SIZES.get(m, 0) for _, m in k.heads if m not in ("image", "location"))
    sizes = sorted(_size(s) for _, s in outs if len(s) == 1)
    if any(m in ("image", "location") for _, m in k.heads):
        return "" if all(w in sizes for w in wanted) else \
            f"its outputs are {', '.join(n for n, _ in k.heads)}"
    return "" if sizes == wanted else f"its outputs are {', '.join(n for n, _ in k.heads)}"


def _size(shape: Shape) -> int:
    """Values in one output (0 when its shape is not known)."""
    return int(np.prod([d or 0 for d in shape])) if shape else 0


def _guess(ins: list[Tensor], outs: list[Tensor], source: str) -> str:
    """The one kind the names say, else the one the shapes allow, else one line."""
    extra = {n for n, s in ins if len(s) < 3}
    names = {n for n, _ in outs}
    fits = [kind for kind, k in KINDS.items() if not _misfit(k, ins, outs)]
    by_name = [kind for kind in fits if names == {n for n, _ in KINDS[kind].heads}
               and extra == ({KINDS[kind].extra} - {""})]
    if len(by_name) == 1:
        return by_name[0]
    if len(fits) == 1:
        return fits[0]
    what = " or ".join(fits) if fits else "none of DonkeyCar's pilot types"
    raise CarvisError(f"{source}: its inputs ({_text(ins)}) and outputs ({_text(outs)}) fit "
                      f"{what}; say which with --type ({', '.join(TYPE_NAMES)})")


def _build(kind: str, image: Tensor, ins: list[Tensor], outs: list[Tensor],
           source: str) -> PilotType:
    k = KINDS[kind]
    seq = int(image[1][0] or 0) if k.sequence else 0
    image_feed = Feed(image[0], image[1], "image", (IMAGE_KEY,), IMAGE_KEY, seq)
    feeds = tuple(_extra(kind, name, shape, source) for name, shape in ins if len(shape) < 3)
    return PilotType(kind, k.pilot_class, image_feed, feeds, _heads(k, outs))


def _extra(kind: str, name: str, shape: Shape, source: str) -> Feed:
    size = _size(shape)
    if kind == "memory":
        if size % 2:
            raise CarvisError(f"{source}: memory input {name!r} holds {size} values; "
                              "KerasMemory's holds (angle, throttle) pairs")
        return Feed(name, shape, "memory", length=size // 2)
    if kind == "imu":
        if size != len(IMU_KEYS):
            raise CarvisError(f"{source}: IMU input {name!r} takes {size} values; DonkeyCar's "
                              f"vehicle feeds {len(IMU_KEYS)} ({', '.join(IMU_KEYS)})")
        return Feed(name, shape, "record", IMU_KEYS, "imu_array")
    return Feed(name, shape, "record", (BEHAVIOR_KEY,), BEHAVIOR_KEY)


def _heads(k: Kind, outs: list[Tensor]) -> tuple[Head, ...]:
    """Each output's meaning: by DonkeyCar's names, else by the outputs' order and sizes."""
    by_name = dict(outs)
    if all(name in by_name for name, _ in k.heads):
        return tuple(Head(name, meaning, _size(by_name[name])) for name, meaning in k.heads)
    ordered = sorted(outs, key=lambda t: _order(t[0]))
    heads = []
    for (name, shape), (_, meaning) in zip(_by_size(ordered, k), k.heads, strict=True):
        heads.append(Head(name, meaning, _size(shape)))
    return tuple(heads)


def _order(name: str) -> int:
    """'StatefulPartitionedCall:2' -> 2: TFLite numbers a Keras model's outputs in order."""
    match = re.search(r"[:_](\d+)$", name)
    return int(match.group(1)) if match else 0


def _by_size(outs: list[Tensor], k: Kind) -> list[Tensor]:
    """The outputs in the order of the kind's heads: bins by their count, images by rank."""
    rest = list(outs)
    picked = []
    for _, meaning in k.heads:
        want = _SIZES.get(meaning)
        if meaning == "image":
            match = next(t for t in rest if len(t[1]) >= 3)
        elif meaning == "location":
            match = next((t for t in rest if len(t[1]) == 1 and _size(t[1]) > 1), rest[-1])
        else:
            match = next((t for t in rest if len(t[1]) == 1 and _size(t[1]) == want), rest[0])
        rest.remove(match)
        picked.append(match)
    return picked


class Feeder:
    """A pilot's inputs, frame by frame, as DonkeyCar's pilot part builds them: the image
    (normalised by the caller), the last ``sequence`` frames (the first frame repeated at the
    start), the record's values, and memory's own previous (angle, throttle), 0 at the start."""

    def __init__(self, pilot_type: PilotType, mem_start_throttle: float = 0.0) -> None:
        self.type = pilot_type
        self.frames: deque[np.ndarray] = deque(maxlen=max(pilot_type.sequence, 1))
        memory = next((f for f in pilot_type.feeds if f.source == "memory"), None)
        self.memory: deque[tuple[float, float]] | None = None if memory is None else deque(
            [(0.0, mem_start_throttle)] * memory.length, maxlen=memory.length)

    def inputs(self, image: np.ndarray, record: Mapping[str, Any] | None = None
               ) -> dict[str, np.ndarray]:
        """{input name: a batch of 1, float32} for this frame and record."""
        if self.type.sequence:
            if not self.frames:
                self.frames.extend([image] * self.type.sequence)
            else:
                self.frames.append(image)
            frame = np.stack(self.frames)
        else:
            frame = image
        out = {self.type.image.input: np.asarray(frame, np.float32)[None]}
        for feed in self.type.feeds:
            if feed.source == "memory":
                values = [v for pair in self.memory or () for v in pair]
            else:
                values = _record_values(feed, record)
            out[feed.input] = np.asarray(values, np.float32).reshape((1, *feed.shape))
        return out

    def ran(self, values: Sequence[float]) -> None:
        """What the pilot said for this frame (memory keeps its angle and throttle)."""
        if self.memory is not None:
            self.memory.append((float(values[0]), float(values[1])))


def _record_values(feed: Feed, record: Mapping[str, Any] | None) -> list[float]:
    missing = [key for key in feed.keys if record is None or record.get(key) is None]
    if missing:
        raise CarvisError(f"the pilot's input {feed.input!r} is fed from the record's "
                          f"{', '.join(feed.keys)}, but the record has no {missing[0]!r}; "
                          "record it (complete.py: HAVE_IMU / TRAIN_BEHAVIORS)")
    values: list[float] = []
    for key in feed.keys:
        value = record[key]  # type: ignore[index]
        values.extend(np.asarray(value, np.float64).reshape(-1).tolist())
    return values


def signature_of_keras(model: Any) -> tuple[list[Tensor], list[Tensor]]:
    """(inputs, outputs) of a loaded Keras model: input and output layer names, shapes."""
    ins = [(str(t.name), tuple(t.shape[1:])) for t in model.inputs]
    names = list(getattr(model, "output_names", None) or [t.name for t in model.outputs])
    return ins, [(str(n), tuple(t.shape[1:])) for n, t in zip(names, model.outputs, strict=True)]


def signature_of_tflite(data: bytes) -> tuple[list[Tensor], list[Tensor]]:
    """(inputs, outputs) of a .tflite read from the flatbuffer (its signature's names), without
    an interpreter: also for files a runtime cannot load (DonkeyCar's rnn and 3d)."""
    model = schema().Model.GetRootAs(data, 0)
    graph = model.Subgraphs(0)

    def tensor(index: int, name: str | None = None) -> Tensor:
        t = graph.Tensors(index)
        shape = tuple(int(d) for d in t.ShapeAsNumpy()[1:])
        return (name or t.Name().decode()), shape

    if model.SignatureDefsLength() == 1:
        sig = model.SignatureDefs(0)
        return ([tensor(sig.Inputs(k).TensorIndex(), sig.Inputs(k).Name().decode())
                 for k in range(sig.InputsLength())],
                [tensor(sig.Outputs(k).TensorIndex(), sig.Outputs(k).Name().decode())
                 for k in range(sig.OutputsLength())])
    return ([tensor(int(i)) for i in graph.InputsAsNumpy()],
            [tensor(int(i)) for i in graph.OutputsAsNumpy()])


def signature_of_litert(model: Any) -> tuple[list[Tensor], list[Tensor]]:
    """(inputs, outputs) of a LiteRTModel (the file's signature names)."""
    return ([(n, tuple(model.input_shapes[n])) for n in model.input_names],
            [(n, tuple(model.output_shapes[n])) for n in model.output_names])


def signature_of_h5(path: str | Path) -> tuple[list[Tensor], list[Tensor]]:
    """(inputs, outputs) of a Keras .h5 read from its config alone (h5py; no TensorFlow)."""
    # Keras files only: a .tflite's render never imports h5py (12 MB)
    from carvis.models import files, layer_table_from_file
    from carvis.models.legacy.context import Context
    from carvis.models.legacy.graph import read_graph

    p = Path(path)
    with files.open_h5(p) as h5:
        header = files.read_header(p, h5)
    graph = read_graph(Context(p, header.dialect, header.version, header.backend), header.config)
    shapes = {row.name: row.output_shape for row in layer_table_from_file(p)}
    return ([(name, shapes.get(name, ())) for name in graph.input_names],
            [(name, shapes.get(name, ())) for name, _, _ in graph.output_refs])
