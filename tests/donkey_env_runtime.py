"""In a DonkeyCar Pi env (tflite-runtime, no ai-edge-litert, no TensorFlow): DonkeyCar's own
TfLite pilots and carvis' wrapper, fed and read by carvis.donkeytype, over the same tub records,
each value each gave (run by tests/test_donkey_env.py; prints one JSON line)."""
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("LOGLEVEL", "WARNING")  # before donkeycar is imported: it reads it then
repo, root = sys.argv[1], sys.argv[2]
sys.path.insert(0, os.path.join(repo, "tests"))

import donkeycar as dk
import numpy as np
from donkey_pilots import _tub_inputs
from donkeycar.parts.tub_v2 import Tub
from donkeycar.utils import get_model_by_type, load_image

from carvis import donkeytype
from carvis.backends import installed, litert_runtime
from carvis.backends.litert import LiteRTModel
from carvis.backends.tflite import read_tflite

cfg = dk.load_config(os.path.join(root, "car", "config.py"))
tub = Tub(os.path.join(root, "tub"), read_only=True)
records = list(tub)
result = {"runtime": litert_runtime(), "tensorflow": installed("tensorflow"),
          "ai_edge_litert": installed("ai_edge_litert"), "numpy": np.__version__, "pilots": {}}
for kind in ("linear", "categorical", "inferred", "memory", "imu", "behavior", "localizer"):
    path = os.path.join(root, "pilots", f"{kind}.tflite")
    theirs = get_model_by_type(f"tflite_{kind}", cfg)  # DonkeyCar's own TfLite part
    theirs.load(path)
    model = LiteRTModel(read_tflite(path), f"{kind}.tflite")
    pilot = donkeytype.detect(*donkeytype.signature_of_litert(model), source=f"{kind}.tflite")
    feeder = donkeytype.Feeder(pilot)
    seen = {"pilot": type(theirs).__name__, "runtime": model.runtime, "type": pilot.kind,
            "carvis": [], "donkeycar": [], "error": None}
    for record in records:
        image = load_image(os.path.join(tub.images_base_path, record["cam/image_array"]), cfg)
        mine = pilot.decode(model(feeder.inputs(image / 255.0, record)),
                            cfg.MODEL_CATEGORICAL_MAX_THROTTLE_RANGE)
        feeder.ran(mine)
        seen["carvis"].append(list(mine))
        try:
            seen["donkeycar"].append([float(v) for v in theirs.run(
                image, *_tub_inputs(kind, record))])
        except Exception as exc:  # noqa: BLE001 - what DonkeyCar itself does there
            seen["error"] = seen["error"] or f"{type(exc).__name__}: {exc}"
    result["pilots"][kind] = seen
tub.close()
out_dir = tempfile.mkdtemp(prefix="carvis-env-")
layers = subprocess.run([sys.executable, "-m", "carvis.cli", "layers",
                         os.path.join(root, "pilots", "imu.tflite")],
                        capture_output=True, text=True, check=False)
result["layers"] = [layers.returncode, [line for line in layers.stdout.splitlines()
                                        if " conv:" in line], layers.stderr.strip()]
# the whole of carvis there: a several-input pilot rendered over the tub, the car's config
render = subprocess.run([sys.executable, "-m", "carvis.cli", "render",
                         os.path.join(root, "tub"), "-o", os.path.join(out_dir, "imu.mp4"),
                         "--model", os.path.join(root, "pilots", "imu.tflite"), "--config",
                         os.path.join(root, "car", "config.py"), "-q"],
                        capture_output=True, text=True, check=False)
result["render"] = [render.returncode, render.stderr.strip().splitlines()]
print(json.dumps(result))
