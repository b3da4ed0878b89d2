"""Seeded, bounded fuzzing of every file kind carvis reads (issue #20): DonkeyCar tubs, .tflite
flatbuffers, .keras / HDF5 models, YAML profiles, map tracks, images.

Valid files (written by the real writers: DonkeyCar's Tub, Keras, `carvis render --save-maps`)
are mutated — bytes flipped, cut, inserted; JSON fields swapped for values of other types;
structures dropped, doubled, wrapped — and each is read. In process, a mutation is read or
refused with one CarvisError line, nothing else; through the command line (children that run
`carvis.cli.main` over many files, so a native crash fails the test too) a file is read, or
refused with a non-zero exit and exactly one `carvis: error:` line, never a traceback. The same
seed gives the same files; about 40 s on two cores.
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from carvis import cli, limits
from carvis import profile as prof
from carvis.backends import flatgraph, tflite
from carvis.composer import Composer
from carvis.errors import CarvisError
from carvis.models import config_table, files
from carvis.review import replay
from carvis.sources import TubSource
from carvis.sources import tub as tub_module
from carvis.sources.files import read_image

pytestmark = pytest.mark.fuzz

SEED = 2020
TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
KERAS = REPO / "models" / "default.keras"
TFLITE = REPO / "models" / "default.tflite"
AXIONAUT_H5 = REPO.parent / "shared" / "data" / "axionaut" / "autopilot.hdf5"

# --------------------------------------------------------------------------- mutations

#: What a JSON field is swapped for: other types, the edges of numbers, paths out of a tub.
ODD = [None, True, False, 0, -1, 1.5, 1e308, float("nan"), float("inf"), 10 ** 30, "", "x",
       "²", "../../etc/passwd", "/etc/passwd", [], [1], {}, {"a": 1}, [[[[[]]]]], "conv:²"]


def mutate_bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A byte-level mutation: one or many bit flips, a cut, an insertion, a zeroed run."""
    data = bytearray(data)
    kind = rng.choice(["flip", "flips", "cut", "insert", "zero"])
    i = rng.randrange(len(data))
    if kind == "cut":
        return bytes(data[:i]), f"cut at {i}"
    if kind == "insert":
        junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        return bytes(data[:i] + junk + data[i:]), f"{len(junk)} bytes inserted at {i}"
    if kind == "zero":
        n = rng.randint(1, 64)
        data[i:i + n] = bytes(len(data[i:i + n]))
        return bytes(data), f"{n} bytes zeroed at {i}"
    for _ in range(1 if kind == "flip" else rng.randint(2, 16)):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return bytes(data), kind


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    out, stack = [], [(doc, prefix)]
    while stack:
        node, path = stack.pop()
        out.append(path)
        items = node.items() if isinstance(node, dict) else enumerate(node) \
            if isinstance(node, list) else ()
        stack.extend((value, (*path, key)) for key, value in items)
    return out


def _at(doc: Any, path: tuple) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def mutate_json(doc: Any, rng: random.Random) -> tuple[Any, str]:
    """A field swapped for a value of another type, or a structure dropped/doubled/wrapped."""
    doc = copy.deepcopy(doc)
    path = rng.choice(_paths(doc))
    if rng.random() < 0.6 or not path:
        value = copy.deepcopy(rng.choice(ODD))
        if not path:
            return value, f"document replaced by {value!r}"
        _at(doc, path[:-1])[path[-1]] = value
        return doc, f"{'/'.join(map(str, path))} = {value!r}"
    parent, key = _at(doc, path[:-1]), path[-1]
    op = rng.choice(["drop", "double", "wrap in a list", "wrap in an object"])
    if op == "drop":
        del parent[key]
    elif op == "double" and isinstance(parent, list):
        parent.insert(key, copy.deepcopy(parent[key]))
    elif op == "double":
        parent[f"{key}_2"] = copy.deepcopy(parent[key])
    else:
        parent[key] = [parent[key]] if op == "wrap in a list" else {"x": parent[key]}
    return doc, f"{op} {'/'.join(map(str, path))}"


def read_or_refused(what: str, read: Callable[[], Any]) -> str:
    """'read' or 'refused' (one CarvisError line); anything else fails, naming the mutation."""
    try:
        read()
    except CarvisError as exc:
        assert "\n" not in str(exc), f"{what}: a refusal of several lines: {exc}"
        return "refused"
    except Exception as exc:
        raise AssertionError(f"{what}: {type(exc).__name__} instead of one line") from exc
    return "read"


# --------------------------------------------------------------------------- the CLI, in a child

CHILD = textwrap.dedent("""
    import contextlib, io, json, sys, traceback
    sys.path.insert(0, {tests!r})
    cases = json.load(sys.stdin)
    from carvis import cli, limits
    limits.HDF5_PROBE_SECONDS = 5  # a file the HDF5 library loops on costs 5 s, not 30
    if cases and cases[0] == "keras":
        import test_fuzz_files
        cases = test_fuzz_files.keras_cases(*cases[1:])
    results = []
    for what, argv in cases:
        print("case:", what, argv, file=sys.__stderr__, flush=True)  # the last, if it dies
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                code = cli.main(argv)
        except BaseException:
            code = None
            err.write(traceback.format_exc())
        results.append({{"what": what, "code": code, "stderr": err.getvalue()}})
    print(json.dumps(results))
""").format(tests=str(TESTS))


def run_cli(cases: list | tuple, timeout: float = 240) -> list[dict]:
    """[(what, argv)] through carvis.cli.main in one child process; its results."""
    proc = subprocess.run([sys.executable, "-c", CHILD], input=json.dumps(cases), text=True,
                          capture_output=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"the child died ({proc.returncode}): {proc.stderr[-3000:]}"
    return json.loads(proc.stdout.splitlines()[-1])


def check_cli(results: list[dict]) -> dict[str, int]:
    """Each run read its file (exit 0) or refused it in one error line; the counts."""
    counts = {"read": 0, "refused": 0}
    for r in results:
        assert "Traceback" not in r["stderr"] and r["code"] is not None, \
            f"{r['what']}: {r['stderr'][-2000:]}"
        errors = [line for line in r["stderr"].splitlines() if line.startswith("carvis: error:")]
        if r["code"] == 0:
            assert not errors, f"{r['what']}: exit 0 with {errors}"
            counts["read"] += 1
        else:
            assert len(errors) == 1, f"{r['what']}: exit {r['code']}, stderr {r['stderr']!r}"
            counts["refused"] += 1
    return counts


# --------------------------------------------------------------------------- tubs


@pytest.fixture(scope="module")
def tub(tmp_path_factory) -> Path:
    """A tub v2 of 4 records, written by DonkeyCar's own Tub."""
    os.environ.setdefault("LOGLEVEL", "WARNING")
    tub_v2 = pytest.importorskip("donkeycar.parts.tub_v2", reason="DonkeyCar's tub writer")
    path = tmp_path_factory.mktemp("tub") / "tub"
    writer = tub_v2.Tub(str(path), inputs=["cam/image_array", "user/angle", "user/throttle",
                                           "user/mode"],
                        types=["image_array", "float", "float", "str"])
    for n in range(4):
        writer.write_record({"cam/image_array": np.full((60, 80, 3), 50 * n, np.uint8),
                             "user/angle": n / 10, "user/throttle": 0.3, "user/mode": "user"})
    writer.delete_records([2])
    writer.close()
    return path


@pytest.fixture(scope="module")
def tub_v1(tmp_path_factory) -> Path:
    """A tub v1 of 4 records as donkeycar/parts/datastore.py lays one out."""
    path = tmp_path_factory.mktemp("tub_v1") / "tub_v1"
    path.mkdir()
    (path / "meta.json").write_text(json.dumps({"inputs": ["cam/image_array", "user/angle"],
                                                "types": ["image_array", "float"],
                                                "start": 1_600_000_000.0}))
    for n in range(1, 5):
        cv2.imwrite(str(path / f"{n}_cam-image_array_.jpg"), np.full((60, 80, 3), 40 * n,
                                                                    np.uint8))
        (path / f"record_{n}.json").write_text(json.dumps(
            {"cam/image_array": f"{n}_cam-image_array_.jpg", "user/angle": n / 10,
             "milliseconds": 50 * n}))
    (path / "exclude.json").write_text("[2]")
    return path


def mutate_tub(path: Path, rng: random.Random) -> str:
    """One mutation, in place, of a tub's JSON files (manifest, catalog; meta, record,
    exclude) — bytes, a line's fields or its structure — or of an image."""
    texts = sorted(p for p in path.iterdir() if p.suffix in (".json", ".catalog"))
    if rng.random() < 0.2:
        image = rng.choice(sorted(path.rglob("*.jpg")))
        data, what = mutate_bytes(image.read_bytes(), rng)
        image.write_bytes(data)
        return f"{image.name}: {what}"
    target = rng.choice(texts)
    name, lines = target.name, target.read_text().splitlines()
    if rng.random() < 0.3:
        data, what = mutate_bytes(target.read_bytes(), rng)
        target.write_bytes(data)
        return f"{name}: {what}"
    k = rng.randrange(len(lines))
    if rng.random() < 0.2:
        op = rng.choice(["drop", "double", "swap", "non-object"])
        if op == "drop":
            del lines[k]
        elif op == "double":
            lines.insert(k, lines[k])
        elif op == "swap":
            j = rng.randrange(len(lines))
            lines[k], lines[j] = lines[j], lines[k]
        else:
            lines[k] = json.dumps(rng.choice(ODD[:-1]))
        what = f"line {k + 1}: {op}"
    else:
        doc, what = mutate_json(json.loads(lines[k]), rng)
        lines[k] = json.dumps(doc)
        what = f"line {k + 1}: {what}"
    target.write_text("\n".join(lines) + "\n")
    return f"{name} {what}"


@pytest.mark.parametrize("version", ["tub", "tub_v1"])
def test_fuzz_tubs_read_or_refuse_in_one_line(request, tmp_path, monkeypatch, version):
    tub = request.getfixturevalue(version)
    rng = random.Random(SEED)
    counts = {"read": 0, "refused": 0}
    opened: list[Path] = []
    real = tub_module.read_image
    monkeypatch.setattr(tub_module, "read_image", lambda p: opened.append(p) or real(p))
    for n in range(120):
        case = tmp_path / f"tub{n}"
        shutil.copytree(tub, case)
        what = mutate_tub(case, rng)

        def read(case: Path = case) -> None:
            with TubSource(case) as source:
                for frame in source:
                    assert frame.image.ndim == 3
        counts[read_or_refused(f"{version} {what}", read)] += 1
        outside = [p for p in opened if not p.resolve().is_relative_to(case.resolve())]
        assert not outside, f"{what}: read outside the tub: {outside}"
        opened.clear()
        shutil.rmtree(case)
    assert min(counts.values()) > 15, counts  # both outcomes well exercised


def test_fuzz_tubs_through_the_cli(tub, tmp_path):
    rng = random.Random(SEED + 1)
    cases = []
    for n in range(8):
        case = tmp_path / f"tub{n}"
        shutil.copytree(tub, case)
        what = mutate_tub(case, rng)
        cases.append((what, ["render", str(case), "--model", str(TFLITE), "-o",
                             str(tmp_path / f"out{n}.mp4"), "-q"]))
    counts = check_cli(run_cli(cases))
    assert sum(counts.values()) == 8


# --------------------------------------------------------------------------- .tflite


def car_tflite(tmp: Path) -> Path:
    """The default .tflite without carvis' metadata: a car's own file, read from its ops."""
    import flatbuffers

    model = tflite.schema_objects().ModelT.InitFromPackedBuf(bytearray(TFLITE.read_bytes()), 0)
    model.metadata = [m for m in model.metadata or [] if m.name not in ("carvis", b"carvis")]
    builder = flatbuffers.Builder(8192)
    builder.Finish(model.Pack(builder), file_identifier=tflite.TFLITE_MAGIC)
    path = tmp / "car.tflite"
    path.write_bytes(bytes(builder.Output()))
    return path


def mutate_flatbuffer(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A field of the graph set to another value (shape, type, buffer, op, indices), or the
    carvis metadata's JSON mutated; then packed again."""
    import flatbuffers

    s = tflite.schema_objects()
    model = s.ModelT.InitFromPackedBuf(bytearray(data), 0)
    sub = model.subgraphs[0]
    tensor = rng.choice(sub.tensors)
    op = rng.choice(sub.operators)
    odd = rng.choice([-1, 0, 1, 7, 255, 1 << 20, (1 << 31) - 1])
    field = rng.choice(["shape", "type", "buffer", "opcode", "op inputs", "graph inputs",
                        "graph outputs", "meta"])
    if field == "shape":
        tensor.shape = np.array([rng.choice([1, 3, 35, odd]) for _ in range(rng.randint(0, 5))])
    elif field == "type":
        tensor.type = rng.randrange(0, 30)
    elif field == "buffer":
        tensor.buffer = odd & 0xFFFFFFFF  # unsigned fields: -1 is their largest value
    elif field == "opcode":
        op.opcodeIndex = odd & 0xFFFFFFFF
    elif field == "op inputs":
        op.inputs = np.array([odd] + list(op.inputs)[1:], np.int32)
    elif field in ("graph inputs", "graph outputs"):
        setattr(sub, field.split()[1], np.array([odd], np.int32))
    else:
        meta = tflite.read_meta(data)
        if meta is None:
            return mutate_bytes(data, rng)
        doc, what = mutate_json(json.loads(meta.to_json()), rng)
        return tflite.with_metadata(data, _RawMeta(json.dumps(doc).encode())), f"meta {what}"
    builder = flatbuffers.Builder(len(data) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=tflite.TFLITE_MAGIC)
    return bytes(builder.Output()), f"{field} = {odd}"


class _RawMeta:
    """Stands in for LayerMeta in with_metadata: any bytes as the metadata."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def to_json(self) -> bytes:
        return self.data


def tflite_mutations(tmp: Path, n: int, seed: int) -> list[tuple[str, Path]]:
    rng = random.Random(seed)
    sources = [TFLITE.read_bytes(), car_tflite(tmp).read_bytes()]
    out = []
    for k in range(n):
        data = rng.choice(sources)
        data, what = mutate_bytes(data, rng) if rng.random() < 0.6 else \
            mutate_flatbuffer(data, rng)
        path = tmp / f"m{k}.tflite"
        path.write_bytes(data)
        out.append((what, path))
    return out


def test_fuzz_tflite_files_read_or_refuse_in_one_line(tmp_path):
    counts = {"read": 0, "refused": 0}
    for what, path in tflite_mutations(tmp_path, 400, SEED):
        def read(path: Path = path) -> None:
            data = tflite.read_tflite(path)
            if tflite.read_meta(data) is None:
                _, tensors = flatgraph.describe(data, path.name)
                flatgraph.with_outputs(data, tensors, path.name)
        counts[read_or_refused(f".tflite {what}", read)] += 1
    assert min(counts.values()) > 50, counts


def test_fuzz_tflite_files_on_litert_through_the_cli(tmp_path):
    """Listed (LiteRT loads and allocates the graph) or rendered (runs it on a frame)."""
    pytest.importorskip("ai_edge_litert")
    cases = [(what, ["layers", str(path)] if k % 2 else
              ["render", "synthetic:frames=1,size=160x120", "--model", str(path), "-o",
               str(tmp_path / f"o{k}.mp4"), "-q"])
             for k, (what, path) in enumerate(tflite_mutations(tmp_path, 100, SEED + 1))]
    counts = check_cli(run_cli(cases))
    assert min(counts.values()) > 5, counts


# --------------------------------------------------------------------------- .keras / HDF5


def keras_mutations(tmp: Path, n: int, seed: int, h5_models: list[Path],
                    whole: bool = False) -> list[tuple]:
    """Mutated .keras archives (config, members, bytes) and HDF5 models (model_config, a
    weight's shape or type, bytes): [(what, path)]; whole: no byte mutations of the files
    themselves (each is a whole zip and a whole HDF5 file)."""
    rng = random.Random(seed)
    with zipfile.ZipFile(KERAS) as z:
        members = {i.filename: z.read(i.filename) for i in z.infolist()}
    out = []
    for k in range(n):
        kind = rng.choice(["keras config", "keras member"] + ["keras bytes"] * (not whole) +
                          (["h5 config", "h5 weight"] + ["h5 bytes"] * (not whole)) *
                          bool(h5_models))
        if kind.startswith("keras"):
            path = tmp / f"k{k}.keras"
            if kind == "keras bytes":
                data, what = mutate_bytes(KERAS.read_bytes(), rng)
                path.write_bytes(data)
            else:
                parts = dict(members)
                if kind == "keras config":
                    doc, what = mutate_json(json.loads(parts["config.json"]), rng)
                    parts["config.json"] = json.dumps(doc).encode()
                else:
                    name = rng.choice(sorted(parts))
                    parts[name], what = mutate_bytes(parts[name], rng)
                    what = f"{name}: {what}"
                with zipfile.ZipFile(path, "w") as z:
                    for name, data in parts.items():
                        z.writestr(name, data)
        else:
            source = rng.choice(h5_models)
            path = tmp / f"h{k}{source.suffix}"
            if kind == "h5 bytes":
                data, what = mutate_bytes(source.read_bytes(), rng)
                path.write_bytes(data)
            else:
                shutil.copy(source, path)
                with h5py.File(path, "r+") as h5:
                    what = _mutate_h5_model(h5, kind, rng)
        out.append((f"{kind} {what}", path))
    return out


def _mutate_h5_model(h5: h5py.File, kind: str, rng: random.Random) -> str:
    if kind == "h5 config":
        doc, what = mutate_json(json.loads(files.attr_text(h5.attrs["model_config"])), rng)
        h5.attrs["model_config"] = json.dumps(doc)
        return what
    weights = []
    h5.visititems(lambda name, obj: weights.append(name)
                  if isinstance(obj, h5py.Dataset) else None)
    name = rng.choice(weights)
    shape = h5[name].shape
    del h5[name]
    change = rng.choice(["transposed", "a row short", "int8", "strings", "50 GiB"])
    if change == "50 GiB":
        h5.create_dataset(name, shape=(50 << 28,), dtype="f4", chunks=(1 << 16,),
                          compression="gzip")
    elif change == "strings":
        h5[name] = np.array([b"w"] * 3)
    else:
        new = shape[::-1] if change == "transposed" else \
            (max(shape[0] - 1, 0), *shape[1:]) if shape else ()
        h5[name] = np.zeros(new, np.int8 if change == "int8" else np.float32)
    return f"{name}: {change}"


def tiny_pilot_h5(path: Path) -> Path:
    """A small Keras 2 pilot (two convs, a Dense angle) saved as .h5 by tf_keras itself."""
    import tf_keras as k2

    x = k2.Input((24, 32, 3), name="img_in")
    y = k2.layers.Conv2D(4, 3, strides=2, activation="relu", name="conv2d_1")(x)
    y = k2.layers.Conv2D(4, 3, strides=2, activation="relu", name="conv2d_2")(y)
    y = k2.layers.Dense(1, name="angle_out")(k2.layers.Flatten()(y))
    k2.Model(x, y).save(path)
    return path


def keras_cases(tmp: str, n: int, seed: int) -> list[tuple[str, list[str]]]:
    """In the TensorFlow child: a small Keras 2 pilot saved as .h5 by tf_keras (and the
    Axionaut Keras 1 file), their mutations and default.keras's, as `carvis layers` runs."""
    tmp_path = Path(tmp)
    models = [tiny_pilot_h5(tmp_path / "pilot.h5")] + [AXIONAUT_H5] * AXIONAUT_H5.is_file()
    return [(what, ["layers", str(path)]) for what, path in
            keras_mutations(tmp_path, n, seed, models)]


def skip_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """No HDF5 probe child for files h5py itself wrote whole (the library cannot loop on
    them); byte-mutated files go through the command line children, probe on."""
    monkeypatch.setattr(limits, "probe_hdf5", lambda *args, **kwargs: None)


def test_fuzz_keras_and_hdf5_configs_read_or_refuse_without_tensorflow(tmp_path, monkeypatch):
    skip_probe(monkeypatch)
    h5_models = [AXIONAUT_H5] if AXIONAUT_H5.is_file() else []
    counts = {"read": 0, "refused": 0}
    for what, path in keras_mutations(tmp_path, 200, SEED, h5_models, whole=True):
        counts[read_or_refused(what, lambda path=path:
                               config_table.layer_table_from_file(path))] += 1
    assert min(counts.values()) > 20, counts


def test_fuzz_keras_and_hdf5_models_load_or_refuse_through_the_cli(tmp_path):
    pytest.importorskip("tf_keras")
    counts = check_cli(run_cli(["keras", str(tmp_path), 40, SEED + 2]))
    assert min(counts.values()) > 3, counts


# --------------------------------------------------------------------------- YAML profiles

PROFILE_KEYS = [k for k in prof.GENERIC if k not in ("preprocess", "camera")]
NESTED = {"preprocess": list(prof.GENERIC["preprocess"]), "camera": list(prof.GENERIC["camera"])}
LEAF = (st.none() | st.booleans() | st.integers() | st.integers(min_value=10 ** 300)
        | st.floats() | st.text(max_size=10)
        | st.sampled_from(["²", "conv:²", "bin:²", "1e400", "conv:2", "mean", "inferno",
                           "gradcam", "layer:pool1", "[1, 2]", "!!python/object:os.system"]))
VALUE = st.recursive(LEAF, lambda c: st.lists(c, max_size=4) |
                     st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=10)
PROFILE = st.dictionaries(st.sampled_from(PROFILE_KEYS + ["bogus"]), VALUE, max_size=5).flatmap(
    lambda top: st.fixed_dictionaries({}, optional={
        section: st.dictionaries(st.sampled_from(keys + ["bogus"]), VALUE, max_size=3) | VALUE
        for section, keys in NESTED.items()}).map(lambda nested: {**top, **nested}))


@hsettings(derandomize=True, max_examples=250, deadline=None, database=None,
           suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=PROFILE)
def test_fuzz_profiles_of_any_values_load_or_refuse_in_one_line(tmp_path, data):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    read_or_refused(f"profile {data!r}"[:300], lambda: prof.load(path))


def test_fuzz_profile_files_mutated_load_or_refuse_in_one_line(tmp_path):
    rng = random.Random(SEED)
    sources = [p.read_bytes() for p in sorted((REPO / "models").glob("*.yaml"))]
    snippets = [b"&a [1, 2]", b"*a", b"!!python/object/apply:os.system ['true']", b"[" * 200,
                b"{a: {b: {c: ", b"\t", b"\xff\xfe", b": : :", b"<<: *a"]
    counts = {"read": 0, "refused": 0}
    for k in range(300):
        data = rng.choice(sources)
        if rng.random() < 0.5:
            data, what = mutate_bytes(data, rng)
        else:
            i, snippet = rng.randrange(len(data)), rng.choice(snippets)
            data, what = data[:i] + snippet + data[i:], f"{snippet!r} at {i}"
        path = tmp_path / f"p{k}.yaml"
        path.write_bytes(data)
        counts[read_or_refused(f"profile {what}", lambda path=path: prof.load(path))] += 1
    assert min(counts.values()) > 30, counts
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(sources[0][:40] + b"\n  - &a [1]\n  - *a\n")
    good = tmp_path / "good.yaml"
    good.write_bytes((REPO / "models" / "default.yaml").read_bytes())
    cases = [(f"profile {p.name}", ["render", "synthetic:frames=1,size=160x120", "--profile",
                                    str(p), "--model", str(TFLITE), "-o",
                                    str(tmp_path / f"{p.stem}.mp4"), "-q"])
             for p in (good, bad, tmp_path / "p0.yaml", tmp_path / "p1.yaml")]
    counts = check_cli(run_cli(cases))
    assert counts["read"] >= 1 and counts["refused"] >= 1, counts


# --------------------------------------------------------------------------- map tracks


@pytest.fixture(scope="module")
def track(tmp_path_factory) -> Path:
    """A map track of 3 frames by `carvis render --save-maps` (LiteRT: no TensorFlow)."""
    tmp = tmp_path_factory.mktemp("track")
    path = tmp / "maps.h5"
    assert cli.main(["render", "synthetic:frames=3,size=160x120", "--model", str(TFLITE),
                     "--save-maps", str(path), "-o", str(tmp / "out.mp4"), "-q"]) == 0
    return path


def mutate_track(path: Path, rng: random.Random) -> str:
    """Its metadata's JSON mutated, or one dataset of another type, shape, size or storage."""
    with h5py.File(path, "r+") as f:
        if rng.random() < 0.4:
            doc, what = mutate_json(json.loads(f.attrs["carvis_track"]), rng)
            f.attrs["carvis_track"] = json.dumps(doc)
            return f"meta {what}"
        name = rng.choice(sorted(f))
        shape, dtype = f[name].shape, f[name].dtype
        del f[name]
        change = rng.choice(["gone", "a group", "int32", "strings", "a row more", "transposed",
                             "an axis more", "50 GiB", "external"])
        if change == "a group":
            f.create_group(name)
        elif change == "strings":
            f[name] = np.array([b"s"] * shape[0])
        elif change == "50 GiB":
            f.create_dataset(name, shape=(50 << 29, *shape[1:]), dtype=dtype,
                             chunks=(1, *shape[1:]), compression="gzip")
        elif change == "external":
            f.create_dataset(name, shape=shape, dtype=dtype,
                             external=[("/dev/zero", 0, 1 << 20)])
        elif change != "gone":
            new = {"int32": shape, "a row more": (shape[0] + 1, *shape[1:]),
                   "transposed": shape[::-1], "an axis more": (*shape, 2)}[change]
            f[name] = np.ones(new, np.int32 if change == "int32" else dtype)
        return f"{name}: {change}"


def test_fuzz_map_tracks_read_or_refuse_and_redraw(track, tmp_path, monkeypatch):
    skip_probe(monkeypatch)
    rng = random.Random(SEED)
    frame = np.full((120, 160, 3), 80, np.uint8)
    counts = {"read": 0, "refused": 0}
    for k in range(120):
        path = tmp_path / f"t{k}.h5"
        shutil.copy(track, path)
        what = mutate_track(path, rng)

        def redraw(path: Path = path) -> None:
            maps = replay.TrackMaps(replay.open_track(path))
            composer = Composer(maps.profile)
            for row in range(len(maps.track)):
                composer(frame.copy(), maps.at(row))
        counts[read_or_refused(f"track {what}", redraw)] += 1
        path.unlink()
    assert min(counts.values()) > 10, counts


def test_fuzz_map_track_bytes_through_the_cli(track, tmp_path):
    rng = random.Random(SEED + 3)
    cases = []
    for k in range(24):
        data, what = mutate_bytes(track.read_bytes(), rng)
        path = tmp_path / f"t{k}.h5"
        path.write_bytes(data)
        cases.append((f"track {what}", ["render", "synthetic:frames=3,size=160x120", "--maps",
                                        str(path), "-o", str(tmp_path / f"o{k}.mp4"), "-q"]))
    assert sum(check_cli(run_cli(cases)).values()) == 24


# --------------------------------------------------------------------------- images


def test_fuzz_images_decode_or_are_skipped_with_a_reason(tmp_path):
    rng = random.Random(SEED)
    image = np.random.default_rng(SEED).integers(0, 255, (48, 64, 3), np.uint8)
    image[:24] //= 4
    seeds = {suffix: cv2.imencode(suffix, image)[1].tobytes()
             for suffix in (".jpg", ".png", ".bmp", ".tif", ".webp")}
    decoded = skipped = 0
    for k in range(500):
        suffix = rng.choice(sorted(seeds))
        data, what = mutate_bytes(seeds[suffix], rng)
        path = tmp_path / f"i{k}{suffix}"
        path.write_bytes(data)
        try:
            out, problem = read_image(path)
        except Exception as exc:
            raise AssertionError(f"{suffix} {what}: {type(exc).__name__}") from exc
        if out is None:
            assert problem and "\n" not in problem, what
            skipped += 1
        else:
            assert out.ndim == 3 and out.shape[2] == 3 and out.size <= 3 * 40_000_000
            decoded += 1
    assert min(decoded, skipped) > 50, (decoded, skipped)
    cases = [(f"inspect i{k}", ["inspect", str(TFLITE), str(tmp_path / f"i{k}.jpg"), "-o",
                                str(tmp_path / f"g{k}.png")])
             for k in range(500) if (tmp_path / f"i{k}.jpg").exists()][:6]
    check_cli(run_cli(cases))


def test_the_mutations_are_the_same_for_the_same_seed(tmp_path):
    runs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        runs.append([(what, path.read_bytes()) for what, path in
                     tflite_mutations(tmp_path / name, 20, SEED)])
    assert runs[0] == runs[1] and len({what for what, _ in runs[0]}) > 5


# --------------------------------------------------------------------------- a kept description

def test_fuzz_a_kept_model_description_is_used_or_made_again(tmp_path, monkeypatch):
    """The facts carvis keeps of a Keras model in its cache (layer table, steering head, vbp
    path) are a file it parses on every run: damaged, it is described again from the model (the
    same map), or the run is refused in one line — never a traceback."""
    pytest.importorskip("ai_edge_litert", reason="the LiteRT backend needs ai-edge-litert")
    from carvis.session import ModelSession

    model = Path(__file__).resolve().parents[1] / "models" / "default.keras"
    monkeypatch.setenv("CARVIS_CACHE", str(tmp_path))
    x = np.random.default_rng(0).uniform(0, 1, (1, *ModelSession(model).input_shape()))
    x = x.astype(np.float32)
    reference = ModelSession(model, backend="litert").explainer("vbp", "predicted", None,
                                                               None)(x).map
    (kept,) = tmp_path.glob("*_facts*.json")
    good = kept.read_bytes()
    rng = random.Random(SEED + 5)
    outcomes = {"read": 0, "refused": 0, "described again": 0}
    def vbp_map() -> np.ndarray:
        return ModelSession(model, backend="litert").explainer("vbp", "predicted", None,
                                                               None)(x).map

    for n in range(40):
        if n % 2:
            data, what = mutate_bytes(good, rng)
        else:
            doc, what = mutate_json(json.loads(good), rng)
            data = json.dumps(doc).encode()
        kept.write_bytes(data)
        outcome = read_or_refused(what, vbp_map)
        if outcome == "read" and kept.read_bytes() == good:
            outcome = "described again"
            np.testing.assert_array_equal(vbp_map(), reference, err_msg=what)
        outcomes[outcome] += 1
    assert outcomes["described again"] >= 10, outcomes
