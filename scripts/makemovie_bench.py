#!/usr/bin/env python3
"""carvis against `donkey makemovie --salient`: the whole command, side by side, on the same
tub records and the same DonkeyCar pilot, saliency and HUD on both.

    .venv/bin/python scripts/makemovie_bench.py --donkey-python DKENV/bin/python \
        [--records 300] [--rounds 3] [--type linear]

DKENV is a DonkeyCar env made the way its users make one on a laptop:
`python3.11 -m venv DKENV && DKENV/bin/pip install "donkeycar[pc]==5.3.0" moviepy==1.0.3`
(TensorFlow 2.15, Keras 2; makemovie imports moviepy, which the pc extra lacks).

In a temporary folder, DonkeyCar's own code (in DKENV) builds the pilot
(`get_model_by_type(TYPE, cfg)`, saved as DonkeyCar saves it, `.h5`), the car's config
(its `cfg_complete.py`) and a tub of RECORDS records (its `Tub`), whose pictures are the real
race clip's frames (../shared/data/axionaut/race.mp4) at 160x120, as a car's camera gives them.
Then, each round, in an order that alternates:

- makemovie: `DKENV/bin/donkey makemovie --tub TUB --out A.mp4 --model PILOT.h5 --type TYPE
  --config CAR/config.py --salient` (its default --scale 2, the user's line drawn);
- carvis: `carvis render TUB --model PILOT.h5 --config CAR/config.py --mode saliency --scale 2
  -o B.mp4 -q` (the HUD is on for a tub), from this checkout's .venv.

Wall time of each whole command (start-up included, as a user waits for it); the ratio is
the median of the per-round ratios makemovie / carvis. carvis runs its first, uncounted
round before the rounds: a model's first run on LiteRT converts it once and keeps the
conversion (and the gradient graph) in its cache, which later runs reuse — `--cold` gives
each carvis run an empty cache instead, which measures that first run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RACE = REPO.parent / "shared" / "data" / "axionaut" / "race.mp4"

BUILD = r"""
import json, os, shutil, sys
import cv2, numpy as np
import donkeycar as dk
from donkeycar.parts.tub_v2 import Tub
from donkeycar.utils import get_model_by_type
root, kind, n, race = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
car = os.path.join(root, "car"); os.makedirs(car)
shutil.copy(os.path.join(os.path.dirname(dk.__file__), "templates", "cfg_complete.py"),
            os.path.join(car, "config.py"))
cfg = dk.load_config(os.path.join(car, "config.py"))
pilot = get_model_by_type(kind, cfg)
pilot.interpreter.model.save(os.path.join(root, "pilot.h5"))
tub = Tub(os.path.join(root, "tub"), inputs=["cam/image_array", "user/angle", "user/throttle",
          "user/mode"], types=["image_array", "float", "float", "str"])
cap = cv2.VideoCapture(race)
rng = np.random.default_rng(0)
angle = 0.0
for i in range(n):
    ok, frame = cap.read()
    if not ok:
        cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        ok, frame = cap.read()
    rgb = cv2.cvtColor(cv2.resize(frame, (cfg.IMAGE_W, cfg.IMAGE_H),
                                  interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    angle = float(np.clip(0.9 * angle + rng.normal(0, 0.2), -1, 1))
    tub.write_record({"cam/image_array": rgb, "user/angle": angle, "user/throttle": 0.3,
                      "user/mode": "user"})
tub.close()
print(json.dumps({"records": n, "image": [cfg.IMAGE_W, cfg.IMAGE_H]}))
"""


def run(cmd: list[str], env: dict[str, str] | None = None) -> float:
    """Wall seconds of one whole command; its output kept only if it fails."""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env,
                          cwd=REPO)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"makemovie_bench: {' '.join(cmd[:3])} ... failed ({done.returncode}):\n"
                 f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return seconds


def frames_of(path: Path) -> int:
    """Frames in a video (ffprobe counts them)."""
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
                          "-show_entries", "stream=nb_read_frames,width,height", "-of", "json",
                          str(path)], capture_output=True, text=True, check=True).stdout
    stream = json.loads(out)["streams"][0]
    return int(stream["nb_read_frames"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--donkey-python", required=True, help="python of a donkeycar[pc] env")
    ap.add_argument("--records", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--type", default="linear", choices=["linear", "categorical"],
                    help="the pilot type (makemovie's --salient takes these two)")
    ap.add_argument("--cold", action="store_true",
                    help="every carvis run with an empty conversion cache")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = ap.parse_args()
    if not RACE.is_file():
        sys.exit(f"makemovie_bench: needs the race clip at {RACE}")
    dk_python = Path(args.donkey_python)
    donkey = dk_python.parent / "donkey"

    with tempfile.TemporaryDirectory(prefix="makemovie-bench-") as tmp:
        root = Path(tmp)
        built = subprocess.run([str(dk_python), "-c", BUILD, str(root), args.type,
                                str(args.records), str(RACE)], check=False,
                               capture_output=True, text=True)
        if built.returncode != 0:
            sys.exit(f"makemovie_bench: building the pilot and tub failed:\n{built.stderr[-3000:]}")
        print("tub:", built.stdout.strip().splitlines()[-1])
        cache = root / "cache"
        env = {**os.environ, "CARVIS_CACHE": str(cache)}
        makemovie = [str(donkey), "makemovie", "--tub", str(root / "tub"), "--out",
                     str(root / "a.mp4"), "--model", str(root / "pilot.h5"), "--type", args.type,
                     "--config", str(root / "car" / "config.py"), "--salient"]
        carvis = [str(REPO / ".venv" / "bin" / "carvis"), "render", str(root / "tub"),
                  "--model", str(root / "pilot.h5"), "--config", str(root / "car" / "config.py"),
                  "--mode", "saliency", "--scale", "2", "-o", str(root / "b.mp4"), "-q"]
        if not args.cold:
            first = run(carvis, env)
            print(f"carvis first run (converts once, into its cache): {first:.2f} s")
        rows = []
        for r in range(args.rounds):
            order = ("makemovie", "carvis") if r % 2 == 0 else ("carvis", "makemovie")
            took = {}
            for name in order:
                if name == "carvis" and args.cold:
                    for f in cache.glob("*"):
                        f.unlink()
                took[name] = run(makemovie if name == "makemovie" else carvis, env)
            rows.append(took)
            print(f"round {r + 1}: makemovie {took['makemovie']:.2f} s, carvis "
                  f"{took['carvis']:.2f} s, ratio {took['makemovie'] / took['carvis']:.2f}",
                  flush=True)
        frames = {"makemovie": frames_of(root / "a.mp4"), "carvis": frames_of(root / "b.mp4")}
    ratio = statistics.median(t["makemovie"] / t["carvis"] for t in rows)
    med = {k: statistics.median(t[k] for t in rows) for k in ("makemovie", "carvis")}
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"{args.records} records, type {args.type}, {'cold' if args.cold else 'warm'} cache")
    print(f"frames written: makemovie {frames['makemovie']}, carvis {frames['carvis']}")
    print(f"median wall: makemovie {med['makemovie']:.2f} s, carvis {med['carvis']:.2f} s")
    print(f"carvis is {ratio:.2f}x faster than makemovie --salient (median of per-round "
          "ratios; goal >= 4)")
    if args.json:
        print(json.dumps({"ratio": ratio, "median_s": med, "rounds": rows, "frames": frames}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
