"""A DonkeyCar car's config: its ``config.py`` with ``myconfig.py`` beside it on top, as
``dk.load_config`` reads them, without running them.

DonkeyCar ``exec``s both files (``donkeycar/config.py``): ``config.py`` in one module namespace,
``myconfig.py`` in a fresh one (so myconfig cannot use config.py's names), then takes every
UPPERCASE name, myconfig's over config's. carvis parses both with :mod:`ast` and evaluates only
top-level assignments (``X = ...``, ``A = B = ...``, ``X += ...``, ``D["k"] = ...``) whose values
are literals, names the same file assigned before, arithmetic, comparisons, indexing and a few pure
builtins (int, float, str, bool, round, min, max, abs, len, tuple, list). Nothing else runs: no
import, call of anything else, loop or ``if``; a key that depends on one is *unread*, with the
file, line and reason, and asking for it is one line, never a silent default. A key neither file
sets has DonkeyCar 5.3's ``cfg_complete.py`` value (:data:`DEFAULTS`).
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carvis.errors import CarvisError

#: DonkeyCar 5.3's templates/cfg_complete.py for the keys carvis uses (MEM_DEPTH: the default
#: get_model_by_type takes, as cfg_complete has none).
DEFAULTS: dict[str, Any] = {
    "IMAGE_W": 160, "IMAGE_H": 120, "IMAGE_DEPTH": 3, "DRIVE_LOOP_HZ": 20,
    "DEFAULT_MODEL_TYPE": "linear", "MODEL_CATEGORICAL_MAX_THROTTLE_RANGE": 0.8,
    "SEQUENCE_LENGTH": 3, "MEM_DEPTH": 0, "HAVE_IMU": False, "TRAIN_BEHAVIORS": False,
    "BEHAVIOR_LIST": ["Left_Lane", "Right_Lane"], "TRAIN_LOCALIZER": False, "NUM_LOCATIONS": 10,
    "TRANSFORMATIONS": [], "POST_TRANSFORMATIONS": [],
    "ROI_CROP_TOP": 45, "ROI_CROP_BOTTOM": 0, "ROI_CROP_RIGHT": 0, "ROI_CROP_LEFT": 0,
    "ROI_TRAPEZE_LL": 0, "ROI_TRAPEZE_LR": 160, "ROI_TRAPEZE_UL": 20, "ROI_TRAPEZE_UR": 140,
    "ROI_TRAPEZE_MIN_Y": 60, "ROI_TRAPEZE_MAX_Y": 120,
    "CANNY_LOW_THRESHOLD": 60, "CANNY_HIGH_THRESHOLD": 110, "CANNY_APERTURE": 3,
    "BLUR_KERNEL": 5, "BLUR_KERNEL_Y": None, "BLUR_GAUSSIAN": True,
    "RESIZE_WIDTH": 160, "RESIZE_HEIGHT": 120, "SCALE_WIDTH": 1.0, "SCALE_HEIGHT": None,
}
DEFAULTS_FROM = "DonkeyCar 5.3's cfg_complete.py"

_TRAPEZE = ("ROI_TRAPEZE_UL", "ROI_TRAPEZE_UR", "ROI_TRAPEZE_LL", "ROI_TRAPEZE_LR",
            "ROI_TRAPEZE_MIN_Y", "ROI_TRAPEZE_MAX_Y")
#: DonkeyCar's image transformations (parts/image_transformations.py) -> the keys each reads.
TRANSFORMATION_KEYS: dict[str, tuple[str, ...]] = {
    "CROP": ("ROI_CROP_LEFT", "ROI_CROP_TOP", "ROI_CROP_RIGHT", "ROI_CROP_BOTTOM"),
    "TRAPEZE": _TRAPEZE, "TRAPEZE_EDGE": _TRAPEZE,
    "CANNY": ("CANNY_LOW_THRESHOLD", "CANNY_HIGH_THRESHOLD", "CANNY_APERTURE"),
    "BLUR": ("BLUR_GAUSSIAN", "BLUR_KERNEL", "BLUR_KERNEL_Y"),
    "RESIZE": ("RESIZE_WIDTH", "RESIZE_HEIGHT"), "SCALE": ("SCALE_WIDTH", "SCALE_HEIGHT"),
    **dict.fromkeys(("RGB2BGR", "BGR2RGB", "RGB2HSV", "HSV2RGB", "BGR2HSV", "HSV2BGR",
                     "RGB2GRAY", "BGR2GRAY", "HSV2GRAY", "GRAY2RGB", "GRAY2BGR"), ()),
}

_MAX_SIZE = 100_000  # items a str, list or tuple built by + or * may have
_MAX_BYTES = 1 << 20  # a config file carvis reads


class _Unread(Exception):
    """Why a value is not evaluated (becomes the key's entry in CarConfig.unread)."""


@dataclass
class CarConfig:
    """The car's config keys as DonkeyCar would have them, and those carvis could not read."""

    path: Path
    myconfig: Path | None
    values: dict[str, Any] = field(default_factory=dict)
    unread: dict[str, str] = field(default_factory=dict)  # key -> "myconfig.py line 3: why"
    origin: dict[str, str] = field(default_factory=dict)  # key -> the file that set it

    def get(self, key: str) -> Any:
        """A key's value (DonkeyCar's default if neither file sets it), or one line."""
        if key in self.unread:
            raise CarvisError(f"{key} in the car's config is not read: {self.unread[key]}; "
                              "write the value there as a literal")
        if key in self.values:
            return self.values[key]
        if key in DEFAULTS:
            return DEFAULTS[key]
        raise CarvisError(f"{key} is set in neither {self.path} nor its myconfig.py, and "
                          f"{DEFAULTS_FROM} has no default for it")

    def where(self, key: str) -> str:
        """Which file the key's value came from."""
        return self.origin.get(key, DEFAULTS_FROM if key in DEFAULTS else "nowhere")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(IMAGE_H, IMAGE_W, IMAGE_DEPTH): what the camera gives and the pilot takes."""
        h, w, depth = (int(self.get(k)) for k in ("IMAGE_H", "IMAGE_W", "IMAGE_DEPTH"))
        return h, w, depth

    @property
    def throttle_range(self) -> float:
        """MODEL_CATEGORICAL_MAX_THROTTLE_RANGE: the top of a categorical pilot's throttle."""
        return float(self.get("MODEL_CATEGORICAL_MAX_THROTTLE_RANGE"))

    def transformations(self) -> list[tuple[str, dict[str, Any]]]:
        """TRANSFORMATIONS then POST_TRANSFORMATIONS, as the car applies them before its pilot
        (complete.py), each with the keys it reads; a CUSTOM or unknown one is one line."""
        chain = []
        for key in ("TRANSFORMATIONS", "POST_TRANSFORMATIONS"):
            for name in list(self.get(key) or []):
                if str(name).startswith("CUSTOM"):
                    raise CarvisError(f"{key} has {name!r}, a transformation the car runs from "
                                      f"its own code ({name}_MODULE); carvis does not run it")
                if name not in TRANSFORMATION_KEYS:
                    raise CarvisError(f"{key} has {name!r}, which is not one of DonkeyCar's "
                                      f"transformations ({', '.join(TRANSFORMATION_KEYS)})")
                chain.append((str(name), {k: self.get(k) for k in TRANSFORMATION_KEYS[name]}))
        return chain


def read(path: str | Path) -> CarConfig:
    """The car's config.py (or the car folder holding it) with myconfig.py applied on top."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.py"
    if not p.is_file():
        raise CarvisError(f"{p}: no such config file; give the car's config.py or its folder "
                          "(--config ~/mycar/config.py)")
    # DonkeyCar's own rule: the path with "config.py" replaced by "myconfig.py"
    mine = Path(str(p).replace("config.py", "myconfig.py"))
    myconfig = mine if mine != p and mine.is_file() else None
    config = CarConfig(p, myconfig)
    for source in (p, myconfig):
        if source is None:
            continue
        values, unread = read_file(source)
        for key in list(values) + list(unread):
            config.values.pop(key, None)
            config.unread.pop(key, None)
            config.origin[key] = source.name
        config.values.update(values)
        config.unread.update(unread)
    return config


def read_file(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """One file's UPPERCASE keys: (values, {key: why it is not read})."""
    if path.stat().st_size > _MAX_BYTES:
        raise CarvisError(f"{path}: {path.stat().st_size} bytes is too big for a car's config "
                          f"(at most {_MAX_BYTES}); give the car's config.py")
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as exc:
        raise CarvisError(f"{path} line {exc.lineno}: not valid Python ({exc.msg}); DonkeyCar "
                          "cannot read it either") from None
    names: dict[str, Any] = {}
    unread: dict[str, str] = {}
    for statement in tree.body:
        _run(statement, names, unread, path.name)
    return ({k: v for k, v in names.items() if k.isupper()},
            {k: v for k, v in unread.items() if k.isupper()})


def _run(statement: ast.stmt, names: dict[str, Any], unread: dict[str, str], file: str) -> None:
    """One top-level statement: an assignment evaluated into names, anything else not run."""
    where = f"{file} line {statement.lineno}"
    if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
        return  # a docstring
    if isinstance(statement, (ast.Import, ast.ImportFrom)):
        for alias in statement.names:
            _forget((alias.asname or alias.name).split(".")[0], names, unread,
                    f"{where}: an import carvis does not run")
        return
    targets, value = _assignment(statement)
    if targets is None:
        kind = type(statement).__name__.lower()
        for name in _assigned_in(statement):
            _forget(name, names, unread, f"{where}: inside a {kind} statement carvis does not "
                                         "run (it evaluates assignments only)")
        return
    try:
        result = _eval(value, names, unread)
        if isinstance(statement, ast.AugAssign):
            result = _binary(statement.op, _name(statement.target, names, unread), result)
        for target in targets:
            _store(target, result, names, unread)
    except _Unread as why:
        for target in targets:
            for root in _roots(target):
                _forget(root, names, unread, f"{where}: {why}")


def _assignment(statement: ast.stmt) -> tuple[list[ast.expr] | None, Any]:
    if isinstance(statement, ast.Assign):
        return statement.targets, statement.value
    if isinstance(statement, ast.AnnAssign) and statement.value is not None:
        return [statement.target], statement.value
    if isinstance(statement, ast.AugAssign):
        return [statement.target], statement.value
    return None, None


def _assigned_in(statement: ast.stmt) -> set[str]:
    """Names a compound statement (if, for, def, class, with, try) would bind."""
    found = set()
    for node in ast.walk(statement):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            found.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.add(node.name)
    return found


def _forget(name: str, names: dict[str, Any], unread: dict[str, str], why: str) -> None:
    names.pop(name, None)
    unread[name] = why


def _roots(target: ast.expr) -> list[str]:
    """The names an assignment target binds or changes: X, (A, B), D["k"] -> D."""
    if isinstance(target, (ast.Tuple, ast.List)):
        return [name for item in target.elts for name in _roots(item)]
    if isinstance(target, ast.Starred):
        return _roots(target.value)
    while isinstance(target, (ast.Subscript, ast.Attribute)):
        target = target.value
    return [target.id] if isinstance(target, ast.Name) else []


def _store(target: ast.expr, value: Any, names: dict[str, Any], unread: dict[str, str]) -> None:
    if isinstance(target, ast.Name):
        names[target.id] = value
        unread.pop(target.id, None)
    elif isinstance(target, (ast.Tuple, ast.List)) and not any(
            isinstance(t, ast.Starred) for t in target.elts):
        if not isinstance(value, (tuple, list)) or len(value) != len(target.elts):
            raise _Unread(f"{ast.unparse(target)} = a value that does not unpack into them")
        for item, part in zip(target.elts, value, strict=True):
            _store(item, part, names, unread)
    elif isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name):
        container = _name(target.value, names, unread)
        if not isinstance(container, (dict, list)):
            raise _Unread(f"item assignment on a {type(container).__name__}")
        container[_eval(target.slice, names, unread)] = value
    else:
        raise _Unread(f"an assignment to {ast.unparse(target)}, which carvis does not run")


def _name(node: ast.expr, names: dict[str, Any], unread: dict[str, str]) -> Any:
    name = node.id  # type: ignore[attr-defined]
    if name in names:
        return names[name]
    if name in unread:
        raise _Unread(f"uses {name}, which carvis did not read")
    raise _Unread(f"uses {name}, which this file does not set before it (DonkeyCar runs each "
                  "file on its own)")


_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow, ast.BitOr: operator.or_, ast.BitAnd: operator.and_,
    ast.BitXor: operator.xor, ast.LShift: operator.lshift, ast.RShift: operator.rshift,
}
_UNARY: dict[type, Callable[[Any], Any]] = {
    ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_,
    ast.Invert: operator.invert,
}
_COMPARE: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b, ast.Is: operator.is_, ast.IsNot: operator.is_not,
}
_BUILTINS: dict[str, Callable[..., Any]] = {
    "int": int, "float": float, "str": str, "bool": bool, "round": round, "min": min,
    "max": max, "abs": abs, "len": len, "tuple": tuple, "list": list,
}


def _eval(node: ast.expr, names: dict[str, Any], unread: dict[str, str]) -> Any:
    """A value from literals, known names and the operators above; else _Unread."""
    def ev(n: ast.expr) -> Any:
        return _eval(n, names, unread)

    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return _name(node, names, unread)
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        items = [ev(e) for e in node.elts]
        return {ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(node)](items)
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {ev(k): ev(v) for k, v in zip(node.keys, node.values, strict=True) if k}
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](ev(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _binary(node.op, ev(node.left), ev(node.right))
    if isinstance(node, ast.BoolOp):  # Python's: and gives the first false, or the last
        values = [ev(v) for v in node.values]
        wanted = not isinstance(node.op, ast.And)
        return next((v for v in values if bool(v) is wanted), values[-1])
    if isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
        left, result = ev(node.left), True
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = ev(right_node)
            result = result and _COMPARE[type(op)](left, right)
            left = right
        return result
    if isinstance(node, ast.IfExp):
        return ev(node.body) if ev(node.test) else ev(node.orelse)
    if isinstance(node, ast.Subscript):
        container, index = ev(node.value), ev(node.slice)
        try:
            return container[index]
        except (KeyError, IndexError, TypeError) as exc:
            raise _Unread(f"{ast.unparse(node)} fails ({type(exc).__name__})") from None
    if isinstance(node, ast.Slice):
        return slice(*(None if p is None else ev(p) for p in (node.lower, node.upper, node.step)))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
            and node.func.id in _BUILTINS and node.func.id not in names and not node.keywords:
        args = [ev(a) for a in node.args]
        if any(_too_big(a) for a in args):
            raise _Unread(f"{node.func.id}() of a value too big for a config")
        try:
            return _BUILTINS[node.func.id](*args)
        except (TypeError, ValueError) as exc:
            raise _Unread(f"{ast.unparse(node)[:60]} fails ({exc})") from None
    if isinstance(node, ast.Call):
        raise _Unread(f"calls {_callee(node)}, which carvis does not run")
    if isinstance(node, ast.Attribute) and _roots(node):  # os.environ after `import os`
        _name(ast.Name(_roots(node)[0]), names, unread)
    raise _Unread(f"{ast.unparse(node)[:60]} is not a value carvis evaluates")


def _callee(call: ast.Call) -> str:
    """What a call calls, by name: f, os.path.join; open for open(...).write."""
    func = call.func
    while isinstance(func, ast.Attribute) and not isinstance(func.value, ast.Call):
        func = func.value
    if isinstance(func, ast.Attribute):  # a method of a call's result
        return _callee(func.value)  # type: ignore[arg-type]
    return ast.unparse(call.func)[:40] if isinstance(func, ast.Name) else "a function"


def _binary(op: ast.operator, left: Any, right: Any) -> Any:
    """left op right, with sizes checked before anything big is made."""
    if isinstance(op, ast.Pow) and isinstance(right, (int, float)) and abs(right) > 64:
        raise _Unread(f"a power of {right} is more than a config needs")
    if isinstance(op, ast.LShift) and isinstance(right, int) and right > 64:
        raise _Unread(f"a shift by {right} is more than a config needs")
    if isinstance(op, ast.Mult):
        for seq, count in ((left, right), (right, left)):
            if isinstance(seq, (str, list, tuple, bytes)) and isinstance(count, int) \
                    and len(seq) * max(count, 0) > _MAX_SIZE:
                raise _Unread(f"a sequence of {len(seq) * count} items is more than a config "
                              "needs")
    if isinstance(op, ast.Add) and isinstance(left, (str, list, tuple)) \
            and isinstance(right, (str, list, tuple)) and len(left) + len(right) > _MAX_SIZE:
        raise _Unread("a sequence that big is more than a config needs")
    try:
        return _BINARY[type(op)](left, right)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError) as exc:
        raise _Unread(f"{type(exc).__name__}: {exc}") from None


def _too_big(value: Any) -> bool:
    return isinstance(value, (str, list, tuple, bytes)) and len(value) > _MAX_SIZE
