"""Issue #20, the file side: each attack case, named after its number, refused in one line (or
made to work) — the gradcam target before its map layer (20.1), memory bombs from small files
(20.9), tub paths leaving the tub (20.10), malformed files of every kind (20.12)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from carvis import cli, limits, settings
from carvis import profile as prof
from carvis.backends import flatgraph, tflite
from carvis.errors import CarvisError
from carvis.models import config_table
from carvis.review.track import Track
from carvis.sources import FolderSource, TubSource
from carvis.sources.files import read_image

REPO = Path(__file__).resolve().parents[1]
KERAS = REPO / "models" / "default.keras"
TFLITE = REPO / "models" / "default.tflite"
GIB50 = 50 * limits.GiB


def one_error_line(stderr: str) -> str:
    """The one `carvis: error:` line of a refusal (and no traceback), or the test fails."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("carvis: error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def carvis(*args: object, timeout: float = 60) -> subprocess.CompletedProcess:
    """The real command line in its own process."""
    return subprocess.run([sys.executable, "-m", "carvis.cli", *map(str, args)],
                          check=False, capture_output=True, text=True, timeout=timeout)


def refusal(call, *args, **kwargs) -> str:
    """The one-line CarvisError a call raises."""
    with pytest.raises(CarvisError) as info:
        call(*args, **kwargs)
    text = str(info.value)
    assert "\n" not in text
    return text


# --------------------------------------------------------------------------- #20.1


@pytest.fixture(scope="module")
def keras_model():
    from carvis import models

    return models.load_model(KERAS)


@pytest.mark.parametrize("mode", ["gradcam", "guided-gradcam"])
def test_20_1_gradcam_target_before_the_map_layer_is_refused_when_built(keras_model, mode):
    from carvis import explain

    text = refusal(explain.make_explainer, mode, keras_model, layer="conv2",
                   target="layer:pool1")
    assert text == ("target 'layer:pool1' does not depend on layer 'conv2' (it comes before "
                    "that layer, or on another branch), so its gradient there is empty; choose "
                    "a target layer after 'conv2' or a map layer (--layer) before the target's")


def test_20_1_a_target_after_the_map_layer_still_makes_a_map(keras_model):
    from carvis import explain

    gradcam = explain.make_explainer("gradcam", keras_model, layer="conv2", target="layer:conv3")
    out = gradcam(np.random.default_rng(0).uniform(0, 1, (1, 70, 250, 3)).astype(np.float32))
    assert out.map.shape == (35, 125) and np.isfinite(out.map).all() and out.map.max() > 0


def test_20_1_render_gradcam_target_before_layer_is_one_line(tmp_path, capfd, keras_model):
    out = tmp_path / "out.mp4"
    code = cli.main(["render", "synthetic:frames=2,size=160x120", "--backend", "tensorflow",
                     "--mode", "gradcam", "--target", "layer:pool1", "--layer", "conv2",
                     "-o", str(out), "-q"])
    assert code == 2
    line = one_error_line(capfd.readouterr().err)
    assert "target 'layer:pool1' does not depend on layer 'conv2'" in line
    assert not out.exists()


def test_20_1_live_change_to_such_a_target_is_refused_and_settings_stay(keras_model):
    from carvis import pipeline
    from carvis.session import ModelSession

    renderer = pipeline.make_renderer(ModelSession(KERAS, backend="tensorflow"),
                                      prof.load(prof.DEFAULT_PROFILE))
    before = renderer.settings()
    # What POST /settings {"mode": "gradcam", "target": "layer:pool1"} builds before applying
    text = refusal(renderer.prepare, {"mode": "gradcam", "target": "layer:pool1"})
    assert "does not depend on layer 'conv2'" in text
    assert renderer.settings() == before
    ready = renderer.prepare({"mode": "gradcam", "target": "layer:conv3"})
    renderer.apply(ready)
    assert renderer.maps(np.zeros((120, 160, 3), np.uint8)) is not None


# --------------------------------------------------------------------------- #20.9


def billion_laughs() -> str:
    text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        text += f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]\n"
    return text + "threshold: *i\n"


def test_20_9_billion_laughs_profile_is_refused_before_expanding(tmp_path):
    path = tmp_path / "lol.yaml"
    path.write_text(billion_laughs())
    assert path.stat().st_size < 1024
    tracemalloc.start()
    try:
        text = refusal(prof.load, path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert text == (f"{path}: line 2: YAML aliases (*a) are not allowed in a profile; write the "
                    "value out")
    assert peak < 2 * limits.MiB


def test_20_9_profile_over_a_mebibyte_is_refused_unread(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("# padding\n" * 200_000)
    assert refusal(prof.load, path) == (
        f"profile {str(path)!r} is 1.91 MiB, more than carvis reads (1 MiB); a profile is a "
        "short YAML file")


def forged_archive(path: Path, declared: int) -> Path:
    """default.keras plus a small stored member whose zip headers declare `declared` bytes."""
    with zipfile.ZipFile(KERAS) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, src.read(item.filename))
        dst.writestr("padding.bin", b"\0" * 1000)
    data = bytearray(path.read_bytes())
    patched = 0
    # (header signature, where its file name starts, where its uncompressed size is)
    for signature, name_at, size_at in ((b"PK\x03\x04", 30, 22), (b"PK\x01\x02", 46, 24)):
        start = 0
        while (start := data.find(signature, start)) >= 0:
            if data[start + name_at:start + name_at + 11] == b"padding.bin":
                data[start + size_at:start + size_at + 4] = struct.pack("<I", declared)
                patched += 1
            start += 4
    assert patched == 2
    path.write_bytes(data)
    return path


def test_20_9_keras_archive_declaring_gigabytes_is_refused_before_unpacking(tmp_path,
                                                                           monkeypatch):
    from carvis import models

    path = forged_archive(tmp_path / "bomb.keras", 0xF000_0000)
    assert path.stat().st_size < 200_000

    def unpacked(*args, **kwargs):
        raise AssertionError("a member was unpacked")
    monkeypatch.setattr(zipfile.ZipFile, "open", unpacked)
    text = refusal(models.load_model, path)
    assert text == (f"{path}: the .keras archive unpacks to 3.75 GiB ('padding.bin' declares "
                    "3.75 GiB), more than carvis loads (1 GiB); a car's model is a few "
                    "megabytes; check the file, or re-save the model")


def add_bomb(h5: h5py.Group, name: str = "bomb") -> None:
    """A gzip-chunked float32 dataset declaring 50 GiB and holding nothing (a few KB on disk)."""
    h5.create_dataset(name, shape=(GIB50 // 4,), dtype="f4", chunks=(1 << 16,),
                      compression="gzip")


def test_20_9_hdf5_model_declaring_50_gib_is_refused_before_reading(tmp_path, keras_model):
    from carvis import models

    path = tmp_path / "model.h5"
    keras_model.save(path)
    with h5py.File(path, "r+") as h5:
        add_bomb(h5["model_weights"])
    assert path.stat().st_size < 2 * limits.MiB
    text = refusal(models.load_model, path)
    assert text == (f"{path}: the HDF5 file declares 50 GiB of weights (up to "
                    "'model_weights/bomb'), more than carvis loads (1 GiB); check the file, or "
                    "re-save the model")


def test_20_9_keras_archive_whose_weights_declare_50_gib_is_refused(tmp_path):
    from carvis import models

    weights = tmp_path / "model.weights.h5"
    with zipfile.ZipFile(KERAS) as src:
        weights.write_bytes(src.read("model.weights.h5"))
        with h5py.File(weights, "r+") as h5:
            add_bomb(h5)
        path = tmp_path / "bomb.keras"
        with zipfile.ZipFile(path, "w") as dst:
            for item in src.infolist():
                data = weights.read_bytes() if item.filename == weights.name else \
                    src.read(item.filename)
                dst.writestr(item, data)
    text = refusal(models.load_model, path)
    assert text.startswith(f"{path} (model.weights.h5): the HDF5 file declares 50 GiB")


def small_image(suffix: str) -> bytes:
    image = np.full((24, 32, 3), 90, np.uint8)
    return cv2.imencode(suffix, image)[1].tobytes()


def claiming(suffix: str, width: int, height: int) -> bytes:
    """A small, otherwise valid JPEG or PNG whose header claims width x height."""
    data = bytearray(small_image(suffix))
    if suffix == ".jpg":
        sof = data.index(b"\xff\xc0")
        data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    else:
        data[16:24] = struct.pack(">II", width, height)
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.mark.parametrize("suffix,name", [(".jpg", "JPEG"), (".png", "PNG")])
def test_20_9_image_header_claiming_30000_squared_is_refused_before_decoding(
        tmp_path, monkeypatch, caplog, suffix, name):
    path = tmp_path / f"bomb{suffix}"
    path.write_bytes(claiming(suffix, 30000, 30000))
    assert path.stat().st_size < 1024
    real, bomb = cv2.imdecode, path.read_bytes()

    def decode(data, flags):
        assert data.tobytes() != bomb, "the bomb reached the decoder"
        return real(data, flags)
    monkeypatch.setattr(cv2, "imdecode", decode)
    image, problem = read_image(path)
    assert image is None
    assert problem == (f"its {name} header declares 30000x30000 pixels, more than carvis "
                       "decodes (40 megapixels)")
    # A folder source skips it like a corrupt image (one warning line), keeping the others.
    (tmp_path / f"ok{suffix}").write_bytes(small_image(suffix))
    with caplog.at_level("WARNING", logger="carvis"):
        frames = list(FolderSource(tmp_path))
    assert [f.name for f in frames] == [f"ok{suffix}"]
    assert f"skipping bomb{suffix}: its {name} header declares 30000x30000" in caplog.text


def test_20_9_inspect_refuses_the_bomb_image_in_one_line(tmp_path):
    path = tmp_path / "bomb.jpg"
    path.write_bytes(claiming(".jpg", 30000, 30000))
    r = carvis("inspect", TFLITE, path, "-o", tmp_path / "grid.png")
    assert r.returncode == 2
    assert one_error_line(r.stderr) == (
        f"carvis: error: {path}: cannot read this image: its JPEG header declares 30000x30000 "
        "pixels, more than carvis decodes (40 megapixels); give a JPEG or PNG")


@pytest.fixture(scope="module")
def track_file(tmp_path_factory) -> Path:
    """A real map track, written by `carvis render --save-maps` (LiteRT: no TensorFlow)."""
    tmp = tmp_path_factory.mktemp("track")
    path = tmp / "maps.h5"
    assert cli.main(["render", "synthetic:frames=3,size=160x120", "--model", str(TFLITE),
                     "--save-maps", str(path), "-o", str(tmp / "out.mp4"), "-q"]) == 0
    return path


def test_20_9_map_track_declaring_50_gib_is_refused_before_reading(tmp_path, track_file):
    path = tmp_path / "bomb.h5"
    shutil.copy(track_file, path)
    with h5py.File(path, "r+") as f:
        meta = json.loads(f.attrs["carvis_track"])
        frames = GIB50 // (2 * math.prod(meta["map_shape"]))
        for name in list(f):
            ds = f[name]
            shape, dtype = (frames, *ds.shape[1:]), ds.dtype
            del f[name]
            f.create_dataset(name, shape=shape, dtype=dtype, chunks=(1, *shape[1:]),
                             compression="gzip")
        f.attrs["carvis_track"] = json.dumps({**meta, "frames": frames})
    assert path.stat().st_size < limits.MiB
    tracemalloc.start()
    try:
        text = refusal(Track, path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert re.fullmatch(rf"'{re.escape(str(path))}' is not a carvis map track \(its datasets "
                        r"declare 5\d\.\d GiB, more than carvis reads into memory \(1 GiB\)\); "
                        r"write one with carvis render SOURCE --save-maps TRACK", text), text
    assert peak < 10 * limits.MiB
    r = carvis("render", "synthetic:frames=3,size=160x120", "--maps", path, "-o",
               tmp_path / "o.mp4")
    assert r.returncode == 2 and "its datasets declare" in one_error_line(r.stderr)


@pytest.mark.parametrize("change,message", [
    (lambda f: f.__setitem__("index", np.arange(2)) if not f.__delitem__("index") else None,
     "dataset 'index' is int64 (2,), not integer (3) for 3 frames of a 35x125 map"),
    (lambda f: f.__setitem__("angle", np.array([b"a"] * 3)) if not f.__delitem__("angle")
     else None, "dataset 'angle' is |S1 (3,), not float (3) for 3 frames of a 35x125 map"),
    (lambda f: f.__setitem__("maps", np.zeros((3, 125, 35), np.float16))
     if not f.__delitem__("maps") else None,
     "dataset 'maps' is float16 (3, 125, 35), not float (3, 35, 125) for 3 frames"),
    (lambda f: f.attrs.__setitem__("carvis_track", "[" * 5000 + "]" * 5000),
     "nested more than 100 levels deep"),
])
def test_20_12_map_track_of_wrong_shapes_or_types_is_one_line(tmp_path, track_file, change,
                                                              message):
    path = tmp_path / "bad.h5"
    shutil.copy(track_file, path)
    with h5py.File(path, "r+") as f:
        change(f)
    assert message in refusal(Track, path)


# --------------------------------------------------------------------------- tubs


@pytest.fixture
def tub(tmp_path) -> Path:
    """A tub v2 of 3 records written by DonkeyCar's own Tub."""
    os.environ.setdefault("LOGLEVEL", "WARNING")
    tub_v2 = pytest.importorskip("donkeycar.parts.tub_v2", reason="DonkeyCar's tub writer")
    path = tmp_path / "tub"
    writer = tub_v2.Tub(str(path), inputs=["cam/image_array", "user/angle", "user/throttle"],
                        types=["image_array", "float", "float"])
    for n in range(3):
        writer.write_record({"cam/image_array": np.full((120, 160, 3), 40 * n, np.uint8),
                             "user/angle": n / 10, "user/throttle": 0.3})
    writer.close()
    return path


def rewrite_record(tub: Path, n: int, edit) -> None:
    """Rewrite record n (a line of catalog_0.catalog) with edit(record) → new value."""
    catalog = tub / "catalog_0.catalog"
    lines = catalog.read_text().splitlines()
    lines[n] = json.dumps(edit(json.loads(lines[n])))
    catalog.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("image", ["/etc/passwd", "../../secret.jpg", "a/../../b.jpg",
                                   "C:\\evil.jpg"])
def test_20_10_tub_image_paths_leaving_the_tub_are_refused(tub, image):
    rewrite_record(tub, 1, lambda r: {**r, "cam/image_array": image})
    text = refusal(TubSource, tub)
    assert text.startswith(f"tub {str(tub)!r}: catalog_0.catalog line 2, record 1: image path "
                           f"{image!r} ")
    assert text.endswith("; images of a tub are read from inside the tub only")


def test_20_10_tub_catalog_path_leaving_the_tub_is_refused(tub):
    manifest = tub / "manifest.json"
    lines = manifest.read_text().splitlines()
    catalogs = json.loads(lines[4])
    lines[4] = json.dumps({**catalogs, "paths": ["../../elsewhere.catalog"]})
    manifest.write_text("\n".join(lines) + "\n")
    assert refusal(TubSource, tub) == (
        f"tub {str(tub)!r}: manifest.json: catalog path '../../elsewhere.catalog' goes up with "
        "'..'; a tub's catalogs are read from inside the tub only")


def test_20_10_tub_v1_record_path_leaving_the_tub_is_refused(tmp_path):
    tub = tmp_path / "tub_v1"
    tub.mkdir()
    (tub / "meta.json").write_text(json.dumps({"inputs": ["cam/image_array"],
                                               "types": ["image_array"]}))
    (tub / "record_1.json").write_text(json.dumps({"cam/image_array": "/tmp/x.jpg"}))
    assert refusal(TubSource, tub) == (
        f"tub {str(tub)!r}: record_1.json, record 'record_1.json': image path '/tmp/x.jpg' is "
        "absolute; images of a tub are read from inside the tub only")


def test_20_10_render_of_such_a_tub_is_one_line(tub, tmp_path):
    rewrite_record(tub, 0, lambda r: {**r, "cam/image_array": "../../../etc/hostname"})
    r = carvis("render", tub, "--model", TFLITE, "-o", tmp_path / "o.mp4")
    assert r.returncode == 2
    assert "image path '../../../etc/hostname' goes up with '..'" in one_error_line(r.stderr)


# --------------------------------------------------------------------------- #20.12


@pytest.mark.parametrize("edit,message", [
    (lambda r: {**r, "_timestamp_ms": "12:00"}, "_timestamp_ms '12:00' is not a time in ms"),
    (lambda r: {**r, "_timestamp_ms": float("nan")}, "_timestamp_ms nan is not a time in ms"),
    (lambda r: {**r, "_timestamp_ms": 1e300}, "_timestamp_ms 1e+300 is not a time in ms"),
    (lambda r: {**r, "_index": [1]}, "_index [1] is not a record number (an integer >= 0)"),
    (lambda r: {**r, "_session_id": {"a": 1}}, "_session_id {'a': 1} is not a session name"),
    (lambda r: {**r, "user/angle": 10 ** 400}, "user/angle 100000000000000000...00000"),
    (lambda r: {**r, "user/angle": "left"}, "user/angle 'left' is not a number"),
    (lambda r: [r], "a record is a JSON object, not [{"),
    (lambda r: 7, "a record is a JSON object, not 7"),
])
def test_20_12_tub_catalog_records_of_wrong_types_are_one_line(tub, edit, message):
    rewrite_record(tub, 1, edit)
    text = refusal(TubSource, tub)
    assert text.startswith(f"tub {str(tub)!r}: catalog_0.catalog line 2")
    assert message.replace("time in ms", "time in milliseconds") in text


@pytest.mark.parametrize("line,value,message", [
    (4, {"paths": ["catalog_0.catalog"], "deleted_indexes": [[1]]},
     "deleted_indexes is a list of record numbers"),
    (4, {"paths": "catalog_0.catalog"}, "its inputs, types and catalog paths are lists"),
    (0, {"cam/image_array": 1}, "its inputs, types and catalog paths are lists"),
    (4, [1, 2], "manifest.json is not a DonkeyCar tub v2 manifest (TypeError"),
])
def test_20_12_tub_manifests_of_wrong_types_are_one_line(tub, line, value, message):
    manifest = tub / "manifest.json"
    lines = manifest.read_text().splitlines()
    lines[line] = json.dumps(value)
    manifest.write_text("\n".join(lines) + "\n")
    assert message in refusal(TubSource, tub)


@pytest.mark.parametrize("name,value,message", [
    ("meta.json", [1, 2], "meta.json: it holds [1, 2], not a JSON object"),
    ("meta.json", {"start": "noon"}, "start 'noon' is not a time in seconds"),
    ("meta.json", {"inputs": "cam"}, "its inputs and types are lists of names"),
    ("exclude.json", {"a": 1}, "exclude.json: it holds {'a': 1}, not a list of record numbers"),
    ("exclude.json", [[1]], "exclude.json: it is a list of record numbers"),
])
def test_20_12_tub_v1_meta_of_wrong_types_is_one_line(tmp_path, name, value, message):
    tub = tmp_path / "tub_v1"
    tub.mkdir()
    (tub / "record_1.json").write_text(json.dumps({"cam/image_array": "1.jpg"}))
    (tub / name).write_text(json.dumps(value))
    assert message in refusal(TubSource, tub)


@pytest.mark.parametrize("cut", [7, 100, 1000, 4000])
def test_20_12_truncated_tflite_is_one_line(tmp_path, cut):
    path = tmp_path / "cut.tflite"
    path.write_bytes(TFLITE.read_bytes()[:cut])
    text = refusal(tflite.read_tflite, path)
    assert text.startswith(f"{path}: not a TFLite model") if cut < 8 else \
        text.startswith("cut.tflite: the .tflite file is damaged or truncated (")


def test_20_12_flipped_tflite_bytes_are_one_line(tmp_path):
    """Every byte of the file's first 256 flipped in turn: read and described, or one line."""
    data = TFLITE.read_bytes()
    refused = 0
    for i in range(8, 256):
        bad = bytearray(data)
        bad[i] ^= 0xFF
        path = tmp_path / "flip.tflite"
        path.write_bytes(bad)
        try:
            flat = tflite.read_tflite(path)
            if tflite.read_meta(flat) is None:
                _, tensors = flatgraph.describe(flat, path.name)
                flatgraph.with_outputs(flat, tensors, path.name)
        except CarvisError as exc:
            assert "\n" not in str(exc)
            refused += 1
    assert refused >= 40  # the header and graph tables: many flips break it


def repacked(path: Path, edit) -> Path:
    """The default .tflite with edit(model, subgraph, a constant tensor) applied, packed again."""
    import flatbuffers

    model = tflite.schema_objects().ModelT.InitFromPackedBuf(bytearray(TFLITE.read_bytes()), 0)
    sub = model.subgraphs[0]
    constant = next(t for t in sub.tensors if t.buffer and model.buffers[t.buffer].data
                    is not None and len(model.buffers[t.buffer].data))
    edit(model, sub, constant)
    builder = flatbuffers.Builder(8192)
    builder.Finish(model.Pack(builder), file_identifier=tflite.TFLITE_MAGIC)
    path.write_bytes(bytes(builder.Output()))
    return path


def _orphan_output(model, sub, constant) -> None:
    orphan = tflite.schema_objects().TensorT()
    orphan.shape, orphan.type, orphan.buffer, orphan.name = np.array([1, 4]), 0, 0, "x"
    sub.tensors.append(orphan)
    sub.outputs = np.array([len(sub.tensors) - 1], np.int32)


@pytest.mark.parametrize("edit,problem", [
    (lambda m, s, c: setattr(c, "shape", np.array([*c.shape[:-1], c.shape[-1] * 2])),
     r"ValueError: tensor \d+ of shape \(.*\) holds \d+ bytes"),
    (lambda m, s, c: setattr(c, "buffer", 0),
     r"ValueError: op \d+ reads tensor \d+, which has no data"),
    (_orphan_output, r"ValueError: graph output \d+ is made by no op"),
    (lambda m, s, c: setattr(s, "inputs", np.array([s.operators[0].outputs[0]], np.int32)),
     r"ValueError: graph input \[\d+\] is an op's output"),
    (lambda m, s, c: setattr(s.operators[0], "opcodeIndex", 99),
     r"ValueError: op 0 has operator code 99"),
])
def test_20_12_a_tflite_lite_rt_would_crash_on_is_refused_before_it_sees_it(tmp_path, edit,
                                                                            problem):
    """What the fuzz suite found LiteRT does not check: its flatbuffer verifier passes these,
    then invoke() raises ("Input tensor 3 lacks data", "Tensor data is null") or a kernel
    reads past a constant's data (a child running mutated files died of a segfault)."""
    path = repacked(tmp_path / "bad.tflite", edit)
    assert re.fullmatch(rf"bad\.tflite: the \.tflite file is damaged or truncated \({problem}\); "
                        "copy or export it again", refusal(tflite.read_tflite, path))


def test_20_12_truncated_tflite_via_the_cli_is_one_line(tmp_path):
    path = tmp_path / "cut.tflite"
    path.write_bytes(TFLITE.read_bytes()[:1500])
    r = carvis("layers", path)
    assert r.returncode == 2
    assert one_error_line(r.stderr).startswith(
        "carvis: error: cut.tflite: the .tflite file is damaged or truncated (")


def test_20_12_deeply_nested_hdf5_config_is_one_line(tmp_path, keras_model):
    from carvis import models

    path = tmp_path / "deep.h5"
    keras_model.save(path)
    with h5py.File(path, "r+") as h5:
        h5.attrs["model_config"] = '{"a": ' + "[" * 50_000 + "]" * 50_000 + "}"
    message = (f"{path}: the model_config in the file is not valid JSON (nested more than 100 "
               "levels deep); re-save the model")
    assert refusal(models.load_model, path) == message
    assert refusal(config_table.layer_table_from_file, path) == message


def test_20_12_an_hdf5_file_the_library_loops_on_is_refused_not_hung(tmp_path, monkeypatch):
    """9 bytes inserted into a Keras 2 .h5's model_config: HDF5 1.14 then spins forever reading
    its attributes, out of Python's reach; the probe child is stopped instead."""
    from test_fuzz_files import tiny_pilot_h5

    from carvis import models

    pytest.importorskip("tf_keras")
    data = tiny_pilot_h5(tmp_path / "pilot.h5").read_bytes()
    path = tmp_path / "loops.h5"
    path.write_bytes(data[:2874] + b"k\xcb\x8f\xae\x16f\x02\xd2\x1c" + data[2874:])
    monkeypatch.setattr(limits, "HDF5_PROBE_SECONDS", 3.0)
    assert refusal(models.load_model, path) == (
        f"model {str(path)!r}: the HDF5 library did not finish reading it in 3 s (it loops on "
        "some damaged files); the file is damaged: copy it again")


def test_20_12_an_hdf5_file_the_library_crashes_on_is_refused(tmp_path, monkeypatch,
                                                              track_file):
    """The probe child dying of a signal (as HDF5 can on a damaged file) is one line; the
    file is never opened in carvis' own process."""
    monkeypatch.setattr(limits, "_PROBE", "import os, signal; os.kill(os.getpid(), "
                                          "signal.SIGSEGV)")
    monkeypatch.setattr(h5py, "File", lambda *a, **k: pytest.fail("opened in process"))
    path = tmp_path / "crash.h5"
    shutil.copy(track_file, path)
    assert refusal(Track, path) == (f"map track {str(path)!r}: the HDF5 library crashed "
                                    "reading it (signal 11); the file is damaged: copy it again")


def test_20_12_deeply_nested_yaml_is_one_line(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("threshold: " + "[" * 50_000 + "]" * 50_000 + "\n")
    assert refusal(prof.load, path).startswith(
        f"{path}: line 1: the YAML nests deeper than 100 levels or holds more than 10000 values")


@pytest.mark.parametrize("yaml_text,message", [
    ("threshold: 1.0e+400\n", "threshold = inf is not valid; expected a finite number"),
    ("threshold: " + "9" * 400 + "\n", ("threshold = 999999999999999999...9999999999999999999 "
                                        "is not valid; expected a finite number")),
    ("preprocess:\n  scale: " + "9" * 400 + "\n", "preprocess.scale = 99999"),
    ("range: [0, 1.0e+400]\n", "range = [0, inf] is not valid; expected [low, high], finite"),
    ("smoothgrad: [1.0e+400, 0.1]\n", "smoothgrad = [inf, 0.1] is not valid"),
    ("channel: '²'\n", "channel = '²' is not valid; give an index, 'mean' or 'max'"),
    ("layer: 'conv:²'\n", "layer = 'conv:²' is not valid; layer 'conv:²' is not valid; conv:N"),
    ("target: 'bin:²'\n", "target = 'bin:²' is not valid; choose one of"),
    ("output_size: [16384, 16384]\n", ("output_size = [16384, 16384] is not valid; expected "
                                       "[width, height] in pixels, each 1..8192, at most "
                                       "35389440 pixels (8192x4320)")),
    ("threshold: " + "9" * 5000 + "\n", "a value cannot be read (Exceeds the limit"),
    ("model: [1, 2]\n", "model = [1, 2] is not valid; expected the model file's path"),
])
def test_20_12_profile_values_that_overflowed_are_one_line(tmp_path, yaml_text, message):
    path = tmp_path / "p.yaml"
    path.write_text(yaml_text)
    text = refusal(prof.load, path)
    assert text.startswith(f"{path}: ") and message in text


def test_20_12_output_size_16384_is_refused_before_the_encoder(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(f"model: {KERAS}\noutput_size: [16384, 16384]\n")
    r = carvis("render", "synthetic:frames=2", "--profile", path, "-o", tmp_path / "o.mp4")
    assert r.returncode == 2
    assert "output_size = [16384, 16384] is not valid" in one_error_line(r.stderr)
    assert not (tmp_path / "o.mp4").exists()


def test_20_12_jpeg_header_claiming_65000_squared_is_one_line(tmp_path):
    path = tmp_path / "huge.jpg"
    path.write_bytes(claiming(".jpg", 65000, 65000))
    assert read_image(path) == (None, ("its JPEG header declares 65000x65000 pixels, more "
                                       "than carvis decodes (40 megapixels)"))


@pytest.fixture
def fifo(tmp_path):
    def make(name: str) -> Path:
        path = tmp_path / name
        os.mkfifo(path)
        return path
    return make


def test_20_12_a_fifo_is_refused_without_blocking(fifo, tmp_path):
    from carvis import inspection, models

    for name, call, what in [
        ("m.h5", models.load_model, "model"),
        ("m.keras", config_table.layer_table_from_file, "model"),
        ("m.tflite", tflite.read_tflite, "model"),
        ("p.yaml", prof.load, "profile"),
        ("t.h5", Track, "map track"),
        ("f.jpg", inspection.read_frame, "frame"),
    ]:
        path = fifo(name)
        assert refusal(call, path) == (f"{what} {str(path)!r} is a FIFO, not a regular file; "
                                       "give a file")
    image, problem = read_image(fifo("g.jpg"))
    assert image is None and problem.endswith("is a FIFO, not a regular file; give a file")


def test_20_12_a_fifo_as_model_via_the_cli_is_one_line(fifo):
    r = carvis("layers", fifo("car.h5"), timeout=30)
    assert r.returncode == 2
    assert one_error_line(r.stderr).endswith("is a FIFO, not a regular file; give a file")


def deep_list(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=10 ** 300)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
    | st.sampled_from(["²", "conv:²", "bin:²", "٣", "conv:٣", "1e400", "-0", " 7 ", "layer:",
                       "layer: x", "mean", "MAX", "conv:0", "16,0.15", "1e400,0.1", "inferno"])
    | st.integers(1, 3000).map(deep_list),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=12)


@pytest.mark.parametrize("key", sorted(settings.CHECKERS))
@hsettings(derandomize=True, max_examples=120, deadline=None, database=None,
           suppress_health_check=[HealthCheck.too_slow])
@given(value=JSON)
def test_20_12_settings_validate_any_json_for_every_key(key, value):
    try:
        out = settings.validate({key: value}, keys=tuple(settings.CHECKERS))
    except CarvisError as exc:
        text = str(exc)
        assert "\n" not in text and len(text) < 400
        return
    assert settings.validate(out, keys=tuple(settings.CHECKERS)) == out  # valid stays valid
