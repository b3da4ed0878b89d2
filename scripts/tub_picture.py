"""Make docs/tub_hud.jpg: a tub frame with the recorded and predicted steering and the chart.

The tub is written by DonkeyCar's own writer (donkeycar.parts.tub_v2.Tub) from the synthetic
track, paced at DonkeyCar's 20 Hz drive loop so its timestamps say 20 fps; the project's
default model drives the HUD, as `carvis render TUB -o OUT --plot` would draw it.

    .venv/bin/python scripts/tub_picture.py [--frames 170] [-o docs/tub_hud.jpg]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LOGLEVEL", "WARNING")  # donkeycar configures the root logger on import
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from carvis import hud, pipeline
from carvis import profile as prof
from carvis.session import ModelSession
from carvis.sources import TubSource
from carvis.synthetic import SyntheticTrack

SIZE = (160, 120)  # DonkeyCar's default camera: carvis scales it x4 and draws at 640 wide
SEED = 8
HZ = 20.0
MAX_BYTES = 200_000
CHART_SECONDS = 5.0


def write_tub(path: Path, frames: int) -> None:
    """A tub v2 of the synthetic track: the car's RGB frames, its steering, a throttle."""
    from donkeycar.parts.tub_v2 import Tub

    track = SyntheticTrack(width=SIZE[0], height=SIZE[1], fps=HZ, seed=SEED)
    tub = Tub(str(path), inputs=["cam/image_array", "user/angle", "user/throttle", "user/mode"],
              types=["image_array", "float", "float", "str"])
    for n in range(frames):
        t0 = time.monotonic()
        angle = track.steering(n)
        tub.write_record({"cam/image_array": cv2.cvtColor(track.frame(n), cv2.COLOR_BGR2RGB),
                          "user/angle": round(angle, 3),
                          "user/throttle": round(0.5 - 0.2 * abs(angle), 3),
                          "user/mode": "user"})
        time.sleep(max(0.0, 1 / HZ - (time.monotonic() - t0)))
    tub.close()


def picture(tub: Path) -> tuple[object, str]:
    """The tub through the default model, HUD and strip chart on: of the frames with a full
    chart behind them, the one where recorded and predicted differ most."""
    source = TubSource(tub)
    profile = prof.load(prof.DEFAULT_PROFILE).replace(hud=True)
    chart = hud.StripChart(CHART_SECONDS, source.fps)
    renderer = pipeline.make_renderer(ModelSession(profile.model), profile, chart, scale=None,
                                      fps=source.fps)
    best, best_error = None, -1.0
    for frame in source:
        out = renderer.render(frame)
        row = renderer.log.rows[-1]
        if frame.seconds(source.fps) >= CHART_SECONDS and row.error > best_error:
            best, best_error = out.copy(), row.error
    return best, renderer.log.summary()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=170, help="records in the tub")
    parser.add_argument("-o", "--output", default=str(ROOT / "docs" / "tub_hud.jpg"))
    parser.add_argument("--keep-tub", metavar="DIR", help="also keep the tub in DIR (a demo tub "
                        "for `carvis render DIR`)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="carvis-tub-") as tmp:
        tub = Path(args.keep_tub) if args.keep_tub else Path(tmp) / "tub"
        write_tub(tub, args.frames)
        image, summary = picture(tub)
    for quality in (90, 85, 80, 70):
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok and len(data) < MAX_BYTES:
            Path(args.output).write_bytes(data.tobytes())
            print(f"wrote {args.output} ({image.shape[1]}x{image.shape[0]}, {len(data)} bytes, "
                  f"JPEG quality {quality}); {summary}")
            return 0
    print(f"could not get {args.output} under {MAX_BYTES} bytes", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
