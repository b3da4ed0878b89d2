"""How a picture should cross to the writer thread: measured side by side in one run.

Three ways to give the writer a picture it owns, at the sizes carvis hands over (the race
clip's 1800x480 ROI with a strip chart below it, and a 1080p frame):

- kept:   one canvas kept between frames (the --plot bug: NOT safe, the floor of the others);
- fresh:  a new canvas per frame, sealed at the hand-off (what carvis does);
- copy:   a kept canvas, copied at the hand-off (one copy at the boundary);
- pool:   a pool of canvases that come back when the writer is done.

Prints the median per-frame cost of each (drawing the chart strip included) and its ratio to
`kept`, over rounds that alternate their order.
    .venv/bin/python scripts/handoff_bench.py [--frames 400] [--rounds 5]
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time

import numpy as np

from carvis import handoff

SHAPES = {"ROI 1800x480 + chart": (600, 1800, 3), "1080p frame": (1080, 1920, 3)}


def draw(canvas: np.ndarray, frame: np.ndarray) -> None:
    """What the strip chart does: the frame on top, the panel below."""
    h = frame.shape[0]
    canvas[:h] = frame
    canvas[h:] = 24


def kept(frames: list[np.ndarray], shape: tuple[int, ...]) -> None:
    canvas = np.empty(shape, np.uint8)
    for frame in frames:
        draw(canvas, frame)


def fresh(frames: list[np.ndarray], shape: tuple[int, ...]) -> None:
    for frame in frames:
        canvas = np.empty(shape, np.uint8)
        draw(canvas, frame)
        handoff.seal(canvas)


def copy(frames: list[np.ndarray], shape: tuple[int, ...]) -> None:
    canvas = np.empty(shape, np.uint8)
    for frame in frames:
        draw(canvas, frame)
        canvas.copy()


def pool(frames: list[np.ndarray], shape: tuple[int, ...], size: int = 4) -> None:
    free = collections.deque(np.empty(shape, np.uint8) for _ in range(size))
    busy: collections.deque = collections.deque()
    for frame in frames:
        if not free:
            free.append(busy.popleft())  # the writer gave the oldest back
        canvas = free.popleft()
        draw(canvas, frame)
        busy.append(canvas)


METHODS = {"kept": kept, "fresh": fresh, "copy": copy, "pool": pool}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    for label, shape in SHAPES.items():
        top = (shape[0] - (120 if shape[0] == 600 else 0), *shape[1:])
        frames = [rng.integers(0, 255, top, np.uint8) for _ in range(4)] * (args.frames // 4)
        times: dict[str, list[float]] = {m: [] for m in METHODS}
        order = list(METHODS)
        for r in range(args.rounds):
            for name in order[r % len(order):] + order[:r % len(order)]:
                t0 = time.perf_counter()
                METHODS[name](frames, shape)
                times[name].append((time.perf_counter() - t0) / len(frames) * 1e3)
        base = statistics.median(times["kept"])
        print(f"{label}: median ms per frame over {args.rounds} rounds of {len(frames)}")
        for name, values in times.items():
            med = statistics.median(values)
            print(f"  {name:6s} {med:7.3f} ms  x{med / base:5.2f} kept")


if __name__ == "__main__":
    main()
