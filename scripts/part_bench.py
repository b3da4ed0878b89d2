"""The DonkeyCar part's cost: CPU per vehicle-loop iteration of carvis' PilotOverlayPart against
DonkeyCar's own TfLite pilot alone, on the same tub images, in a real donkeycar Vehicle loop,
pinned to one core (a Pi 4 core stands for it), rounds alternating; medians and the ratio.

    .venv/bin/python scripts/part_bench.py PILOT.tflite TUB [--rounds 5] [--loops 400]
(needs donkeycar installed --no-deps, as ./scripts/test.sh installs it; tests/donkey_pilots.py
builds DonkeyCar's own pilots and a tub)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

os.environ.setdefault("LOGLEVEL", "WARNING")


def frames(tub: Path, n: int) -> list[np.ndarray]:
    """n RGB images from the tub, as DonkeyCar's camera part gives them (cycled)."""
    from carvis.sources.tub import TubSource

    images = [cv2.cvtColor(f.image, cv2.COLOR_BGR2RGB) for f in TubSource(tub)]
    return [images[k % len(images)] for k in range(n)]


def loop_cpu(part: object, images: list[np.ndarray], outputs: list[str]) -> float:
    """CPU seconds per iteration of a Vehicle loop: a camera part, then the part."""
    from donkeycar import vehicle

    class Camera:
        def __init__(self) -> None:
            self.n = 0

        def run(self) -> np.ndarray:
            self.n += 1
            return images[(self.n - 1) % len(images)]

    car = vehicle.Vehicle()
    car.add(Camera(), outputs=["cam/image_array"])
    car.add(part, inputs=["cam/image_array"], outputs=outputs)
    t = os.times()
    car.start(rate_hz=1000, max_loop_count=len(images))
    used = os.times()
    return ((used.user + used.system) - (t.user + t.system)) / len(images)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pilot")
    ap.add_argument("tub")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--loops", type=int, default=400)
    ap.add_argument("--hud", action="store_true", help="the part draws its steering panel")
    args = ap.parse_args()
    os.sched_setaffinity(0, {0})
    from donkeycar.parts.interpreter import TfLite
    from donkeycar.parts.keras import KerasCategorical, KerasLinear

    from carvis.donkey import PilotOverlayPart

    images = frames(Path(args.tub), args.loops)
    categorical = "categorical" in Path(args.pilot).name

    def donkey() -> object:
        """DonkeyCar's own pilot part on its TfLite interpreter, as complete.py makes it."""
        cls = KerasCategorical if categorical else KerasLinear
        own = cls(interpreter=TfLite(), input_shape=(120, 160, 3))
        own.load(args.pilot)
        return own

    def ours() -> object:
        part = PilotOverlayPart(args.pilot, hud=args.hud)
        part.run(images[0])  # warm: buffers, the first invoke
        return part

    results: dict[str, list[float]] = {"donkeycar": [], "carvis": []}
    for r in range(args.rounds):  # new parts each round: the loop shuts its parts down
        order = [("donkeycar", donkey, ["pilot/angle", "pilot/throttle"]),
                 ("carvis", ours, ["cam/overlay", "pilot/angle", "pilot/throttle"])]
        for name, make, outputs in (order if r % 2 == 0 else order[::-1]):
            results[name].append(loop_cpu(make(), images, outputs))
        time.sleep(0.1)
    own_ms = statistics.median(results["donkeycar"]) * 1e3
    ours_ms = statistics.median(results["carvis"]) * 1e3
    ratios = [c / d for c, d in zip(results["carvis"], results["donkeycar"], strict=True)]
    print(f"{Path(args.pilot).name}, {len(images)} loops x {args.rounds} rounds, one core: "
          f"DonkeyCar's TfLite pilot {own_ms:.2f} ms CPU per loop, carvis' part (overlay"
          f"{' + HUD' if args.hud else ''} and the pilot's values) {ours_ms:.2f} ms; "
          f"ratio {statistics.median(ratios):.2f} (rounds: "
          + ", ".join(f"{x:.2f}" for x in ratios) + ")")


if __name__ == "__main__":
    main()
