"""One pilot of every type DonkeyCar 5.3 trains, built by DonkeyCar's own code, and what
DonkeyCar's own parts say about each on a tub DonkeyCar's own ``Tub`` wrote.

DonkeyCar 5.3 imports ``tensorflow.keras``; its pilots are Keras 2 models (its ``pc`` extra pins
TensorFlow 2.15). With TensorFlow 2.21 that name is Keras 3, on which DonkeyCar's memory, imu and
behavior builders fail, so everything DonkeyCar does here runs in a child process with
``TF_USE_LEGACY_KERAS=1`` (tensorflow.keras = tf_keras, Keras 2.x): there

- ``get_model_by_type(type, cfg)`` builds each pilot, with the car's config being DonkeyCar's
  own ``cfg_complete.py`` read by ``dk.load_config`` (latent is not in that factory:
  ``KerasLatent`` is built directly); weights are the builders' seeded initial ones with the
  biases and BatchNormalization statistics drawn at random too, so a loader that dropped them
  would be caught;
- each is saved as DonkeyCar saves it (``model.save('x.h5')``, Keras 2 HDF5) and converted by
  DonkeyCar's own ``keras_model_to_tflite``;
- a tub with IMU and behaviour fields is written by ``donkeycar.parts.tub_v2.Tub``, with the
  keys and types ``templates/complete.py`` records;
- every pilot, loaded back by DonkeyCar (``KerasInterpreter`` for .h5, ``TfLite`` for .tflite),
  is ``run()`` over the tub's records in order, fed as ``complete.py`` feeds it (images as
  ``load_image`` reads them; the IMU values, the behaviour one-hot; memory and rnn/3d keep
  their own state). What each run returned, and the exact arrays its interpreter was given
  and gave back, are kept as the reference.

The result lands in a folder named by a hash of this file and the library versions, so a test
run builds it once (``CARVIS_PILOT_CACHE`` keeps it across runs).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

#: DonkeyCar's --type names for the pilots it trains, and latent (its class; not in the factory).
KINDS = ("linear", "categorical", "inferred", "memory", "imu", "behavior", "localizer", "rnn",
         "3d", "latent")
FORMATS = ("h5", "tflite")
RECORDS = 8
SEED = 21
IMU_KEYS = [f"imu/{f}_{x}" for f in ("acl", "gyr") for x in "xyz"]
TUB_INPUTS = (["cam/image_array", "user/angle", "user/throttle", "user/mode", "behavior/state",
               "behavior/label", "behavior/one_hot_state_array"] + IMU_KEYS)
TUB_TYPES = ["image_array", "float", "float", "str", "int", "str", "vector"] + ["float"] * 6


@dataclass
class DonkeyPilots:
    """The built pilots, the tub, the car's config and DonkeyCar's reference runs."""

    root: Path
    reference: dict
    arrays: Any  # np.lib.npyio.NpzFile

    @property
    def tub(self) -> Path:
        return self.root / "tub"

    @property
    def car(self) -> Path:
        """The car folder: DonkeyCar's cfg_complete.py as config.py."""
        return self.root / "car"

    def model(self, kind: str, fmt: str) -> Path:
        return self.root / "pilots" / f"{kind}.{fmt}"

    def run(self, kind: str, fmt: str) -> dict:
        """{"runs": [[angle, throttle, ...] per record] or None, "error", "inputs", "outputs"}"""
        return self.reference["types"][kind][fmt]

    def fed(self, kind: str, fmt: str) -> dict[str, np.ndarray]:
        """Input name -> (records, ...) what DonkeyCar's interpreter was given, record by record."""
        return {name: self.arrays[f"{kind}.{fmt}.in.{name}"]
                for name in self.run(kind, fmt)["inputs"]}

    def got(self, kind: str, fmt: str) -> dict[str, np.ndarray]:
        """Output name -> (records, ...) what DonkeyCar's interpreter gave back."""
        return {name: self.arrays[f"{kind}.{fmt}.out.{name}"]
                for name in self.run(kind, fmt)["outputs"]}


def cache_key() -> str:
    """A hash of this builder and of the versions that shape what it builds."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    for dist in ("donkeycar", "tensorflow", "tf_keras", "numpy", "h5py", "pillow"):
        try:
            h.update(f"{dist}={metadata.version(dist)};".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{dist}=-;".encode())
    h.update(sys.version.encode())
    return h.hexdigest()[:16]


def build(cache_root: Path) -> DonkeyPilots:
    """The pilots under cache_root/<key>, built by a child process unless already there."""
    root = Path(os.environ.get("CARVIS_PILOT_CACHE") or cache_root) / f"donkey-pilots-{cache_key()}"
    if not (root / "reference.json").is_file():
        work = root.with_name(root.name + f".part{os.getpid()}")
        env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "LOGLEVEL": "WARNING",
               "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
        r = subprocess.run([sys.executable, __file__, str(work)], capture_output=True,
                           text=True, env=env, timeout=900, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"building DonkeyCar's pilots failed:\n{r.stderr[-4000:]}")
        if not root.exists():
            work.rename(root)
    reference = json.loads((root / "reference.json").read_text())
    return DonkeyPilots(root, reference, np.load(root / "reference.npz"))


# ------------------------------------------------------------------ the child process


def _frame(n: int, rng: np.random.Generator) -> np.ndarray:
    """An RGB 160x120 frame: a textured floor and a lane line that moves with n."""
    import cv2

    image = (rng.random((120, 160, 3)) * 60 + 40).astype(np.uint8)
    cv2.line(image, (30 + 12 * n, 119), (70 + 3 * n, 30), (250, 250, 240), 6)
    cv2.circle(image, (140 - 9 * n, 40 + 5 * n), 10, (200, 40, 40), -1)
    return image


def _write_tub(path: Path, cfg: Any) -> None:
    """The tub, by DonkeyCar's own Tub, with complete.py's keys for behaviours and an IMU."""
    import types

    from donkeycar.parts import tub_v2

    clock = iter(1_700_000_000.0 + 0.05 * n for n in range(10 * RECORDS))
    tub_v2.time = types.SimpleNamespace(time=lambda: next(clock))  # DonkeyCar's 20 Hz loop
    rng = np.random.default_rng(SEED)
    tub = tub_v2.Tub(str(path), inputs=TUB_INPUTS, types=TUB_TYPES)
    for n in range(RECORDS):
        state = n % 2
        record = {"cam/image_array": _frame(n, rng), "user/angle": round(0.8 * np.sin(n), 3),
                  "user/throttle": round(0.3 + 0.02 * n, 3), "user/mode": "user",
                  "behavior/state": state, "behavior/label": cfg.BEHAVIOR_LIST[state],
                  "behavior/one_hot_state_array": [float(state == k) for k in range(2)]}
        record.update({key: round(float(np.sin(n + k) * (k + 1)), 4)
                       for k, key in enumerate(IMU_KEYS)})
        tub.write_record(record)
    tub.close()


def _pilot(kind: str, fmt: str, cfg: Any) -> Any:
    """DonkeyCar's pilot object for a type, with the interpreter for the format."""
    from donkeycar.parts import interpreter, keras
    from donkeycar.utils import get_model_by_type

    if kind == "latent":  # not in get_model_by_type: its class, as it builds itself
        made = interpreter.TfLite() if fmt == "tflite" else interpreter.KerasInterpreter()
        return keras.KerasLatent(interpreter=made,
                                 input_shape=(cfg.IMAGE_H, cfg.IMAGE_W, cfg.IMAGE_DEPTH))
    return get_model_by_type(kind if fmt == "h5" else f"tflite_{kind}", cfg)


def _randomize(model: Any, rng: np.random.Generator) -> None:
    """Biases and BatchNormalization statistics away from their 0 / 1 initial values."""
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        names = [w.name for w in layer.weights]
        new = []
        for name, w in zip(names, weights, strict=True):
            if "bias" in name or "beta" in name or "moving_mean" in name:
                w = rng.normal(0.0, 0.05, w.shape).astype(w.dtype)
            elif "gamma" in name or "moving_variance" in name:
                w = rng.uniform(0.5, 1.5, w.shape).astype(w.dtype)
            new.append(w)
        layer.set_weights(new)


def _save(kind: str, cfg: Any, folder: Path, rng: np.random.Generator) -> None:
    """The pilot saved as DonkeyCar saves it (.h5) and converted by DonkeyCar (.tflite)."""
    from donkeycar.parts.interpreter import keras_model_to_tflite

    pilot = _pilot(kind, "h5", cfg)
    model = pilot.interpreter.model
    _randomize(model, rng)
    h5 = folder / f"{kind}.h5"
    model.save(str(h5))
    keras_model_to_tflite(str(h5), str(folder / f"{kind}.tflite"))


def _tub_inputs(kind: str, record: dict) -> list[Any]:
    """The pilot's run() arguments after the image, as templates/complete.py wires them."""
    if kind == "imu":  # its Vectorizer part hands on the six values as one tuple
        return [tuple(record[key] for key in IMU_KEYS)]
    if kind == "behavior":
        return [record["behavior/one_hot_state_array"]]
    return []


def _reference(kind: str, fmt: str, cfg: Any, root: Path, arrays: dict) -> dict:
    """DonkeyCar's run() over the tub for one pilot file, and what its interpreter saw."""
    from donkeycar.parts.tub_v2 import Tub
    from donkeycar.utils import load_image

    pilot = _pilot(kind, fmt, cfg)
    entry: dict[str, Any] = {"runs": None, "error": None, "inputs": [], "outputs": []}
    try:
        pilot.load(str(root / "pilots" / f"{kind}.{fmt}"))
    except Exception as exc:  # noqa: BLE001 - what DonkeyCar itself says is the reference
        entry["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
        return entry
    seen: list[tuple[dict, list]] = []
    interp = pilot.interpreter
    own = interp.predict_from_dict

    def spy(input_dict: dict) -> Any:
        fed = {k: np.asarray(v, np.float32).copy() for k, v in input_dict.items()}
        out = own(input_dict)
        outs = out if isinstance(out, list) else [out]
        seen.append((fed, [np.asarray(o, np.float32).copy() for o in outs]))
        return out

    interp.predict_from_dict = spy
    tub = Tub(str(root / "tub"), read_only=True)
    runs, error = [], None
    for record in tub:
        image = load_image(os.path.join(tub.images_base_path, record["cam/image_array"]), cfg)
        try:
            runs.append([float(v) for v in pilot.run(image, *_tub_inputs(kind, record))])
        except Exception as exc:  # noqa: BLE001 - e.g. KerasLatent's own indexing, Flex ops
            error = error or f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
    tub.close()
    entry["runs"], entry["error"] = (None if error else runs), error
    if seen:
        entry["inputs"] = list(seen[0][0])
        names = list(interp.output_keys or [])
        entry["outputs"] = names if len(names) == len(seen[0][1]) else \
            [f"output_{k}" for k in range(len(seen[0][1]))]
        for name in entry["inputs"]:
            arrays[f"{kind}.{fmt}.in.{name}"] = np.stack([s[0][name] for s in seen])
        for k, name in enumerate(entry["outputs"]):
            arrays[f"{kind}.{fmt}.out.{name}"] = np.stack([s[1][k] for s in seen])
    return entry


def _main(out: Path) -> None:
    import shutil

    start = time.perf_counter()
    import donkeycar as dk
    import tf_keras
    out.mkdir(parents=True, exist_ok=True)
    (out / "car").mkdir(exist_ok=True)
    template = Path(dk.__file__).parent / "templates" / "cfg_complete.py"
    shutil.copyfile(template, out / "car" / "config.py")
    cfg = dk.load_config(str(out / "car" / "config.py"))
    tf_keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(SEED)
    (out / "pilots").mkdir(exist_ok=True)
    for kind in KINDS:
        _save(kind, cfg, out / "pilots", rng)
    built = time.perf_counter() - start
    _write_tub(out / "tub", cfg)
    arrays: dict[str, np.ndarray] = {}
    types = {kind: {fmt: _reference(kind, fmt, cfg, out, arrays) for fmt in FORMATS}
             for kind in KINDS}
    np.savez(out / "reference.npz", **arrays)
    versions = {d: metadata.version(d) for d in ("donkeycar", "tensorflow", "tf_keras")}
    (out / "reference.json").write_text(json.dumps({
        "types": types, "versions": versions, "records": RECORDS,
        "throttle_range": cfg.MODEL_CATEGORICAL_MAX_THROTTLE_RANGE,
        "seconds": {"build": round(built, 1),
                    "total": round(time.perf_counter() - start, 1)}}, indent=1))


if __name__ == "__main__":
    _main(Path(sys.argv[1]))
