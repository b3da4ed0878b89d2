"""The one parser and matcher of a layer spec: a name, an index (3, -1), or conv:N.

Every place that takes a layer (profile, flags, /settings, keys, export, a .tflite's
metadata) parses it here, and every model table (Keras layers, a .tflite's tensors) is
searched here, so "conv:2" means the same thing everywhere: the second conv layer, counting
from 1, where a conv layer is one of :data:`CONV_TYPES`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from typing import Any, Protocol

from carvis.errors import CarvisError, shown

#: Layer classes that count for conv:N (Keras class names; Keras 1's name too). A layer
#: wrapped in TimeDistributed counts as what it wraps ("TimeDistributed(Conv2D)"): DonkeyCar's
#: rnn pilot convolves each frame so; its 3d pilot's Conv3D counts too.
CONV_TYPES = frozenset({"Conv2D", "Convolution2D", "SeparableConv2D", "DepthwiseConv2D",
                        "Conv2DTranspose", "Conv3D"})

#: TFLite ops that count for conv:N in a .tflite read from its ops (a car's own file).
CONV_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D"})

# ASCII digits only, at most 9: '²'.isdigit() is True but int('²') fails.
_INDEX = re.compile(r"[+-]?[0-9]{1,9}", re.ASCII)
_CONV = re.compile(r"conv:(.*)", re.IGNORECASE | re.DOTALL)
_COUNT = re.compile(r"[0-9]{1,9}", re.ASCII)


class Row(Protocol):
    """What a layer table row needs for a lookup."""

    index: int
    name: str
    is_conv: bool


def is_conv_type(class_name: str) -> bool:
    """True for a layer class (or a .tflite row's ops, 'CONV_2D+ELU') that conv:N counts."""
    wrapped = re.fullmatch(r"TimeDistributed\((\w+)\)", class_name)
    if wrapped:
        class_name = wrapped.group(1)
    return class_name in CONV_TYPES or class_name.split("+")[0] in CONV_OPS


def parse(value: Any) -> str | int:
    """A layer spec normalised: an int index, 'conv:N', or a name (checked for shape only)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)) and not hasattr(
            value, "__index__"):
        raise CarvisError(f"layer {shown(value)} is not valid; give a name, an index or "
                          "conv:N")
    if not isinstance(value, str):
        return int(value)
    text = value.strip()
    if _INDEX.fullmatch(text):
        return int(text)
    m = _CONV.fullmatch(text)
    if m:
        n = m.group(1).strip()
        if not _COUNT.fullmatch(n) or int(n) < 1:
            raise CarvisError(f"layer {shown(text)} is not valid; conv:N counts conv layers "
                              "from 1")
        return f"conv:{int(n)}"
    if not text:
        raise CarvisError("layer is empty; give a name, an index or conv:N")
    return text


def find(rows: Sequence[Row], spec: Any, model: str = "the model") -> Row:
    """The row a spec names, or one line that lists what there is."""
    key = parse(spec)
    n = len(rows)
    if isinstance(key, int):
        if not -n <= key < n:
            raise CarvisError(f"layer index {key} is out of range: model {model!r} has {n} "
                              f"layers (0..{n - 1}, or -1..-{n} from the end); "
                              "run `carvis layers MODEL` to see them")
        return rows[key]
    if key.startswith("conv:"):
        convs = [row for row in rows if row.is_conv]
        k = int(key[5:])
        if not convs:
            raise CarvisError(f"layer spec {key!r}: model {model!r} has no conv layers; give "
                              "--layer a name or index (`carvis layers MODEL` lists them)")
        if k > len(convs):
            names = ", ".join(row.name for row in convs) or "none"
            raise CarvisError(f"layer spec {key!r}: model {model!r} has only {len(convs)} conv "
                              f"layers ({names}); use conv:1..conv:{len(convs)}")
        return convs[k - 1]
    for row in rows:
        if row.name == key:
            return row
    close = difflib.get_close_matches(key, [row.name for row in rows], n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise CarvisError(f"no layer named {key!r} in model {model!r}; {hint}{choices(rows)}")


def matches(spec: Any, *, name: str, index: int | None = None, count: int | None = None,
            conv: int | None = None) -> bool:
    """True if spec names the layer called name, at index of count layers, conv:conv."""
    try:
        key = parse(spec)
    except CarvisError:
        return False
    if isinstance(key, int):
        if index is None:
            return False
        return (key + count if key < 0 and count else key) == index
    if key.startswith("conv:"):
        return conv is not None and int(key[5:]) == conv
    return key == name


def conv_number(rows: Sequence[Row], name: str) -> int | None:
    """N such that conv:N names the layer, or None if it is not a conv layer."""
    convs = [row.name for row in rows if row.is_conv]
    return convs.index(name) + 1 if name in convs else None


def choices(rows: Sequence[Any]) -> str:
    """The layers worth naming in an error: all of a small model, else its conv/pool layers."""
    if len(rows) <= 16:
        return "layers: " + ", ".join(row.name for row in rows)
    picks = [row.name for row in rows
             if getattr(row, "is_spatial", True) and (row.is_conv or "Pool" in row.type)]
    shown = ", ".join(picks[:16]) + (", ..." if len(picks) > 16 else "")
    return (f"conv/pool layers: {shown or '(none)'} ({len(rows)} layers in all; "
            "`carvis layers MODEL` lists them)")
