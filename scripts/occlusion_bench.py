#!/usr/bin/env python3
"""What occlusion and rise cost, beside activation and vbp, in one run, on one core.

    .venv/bin/python scripts/occlusion_bench.py [--frames 20] [--live-seconds 10]

1. **Per frame** (the map maker's model time: preprocess excluded), pinned to one core
   (os.sched_setaffinity, standing in for a Pi core), modes round-robin per frame so a busy
   machine slows them alike; medians and the ratio to activation on the same frames:
   the Axionaut model (Keras 1 .h5, converted to LiteRT) on the race clip; DonkeyCar's
   categorical pilot (scripts/make_onnx_pilots.py's seeded twin, converted to LiteRT) and its
   tf2onnx conversion (tests/data/donkey_categorical.onnx, onnxruntime, batched) on the race
   clip resized to 160x120.
2. **Growth**: occlusion on the Axionaut model (LiteRT) at several patch / stride settings:
   ms per frame against the number of patches (one invoke each on LiteRT).
3. **Live**: `carvis run --source race.mp4 --loop` with the Axionaut model on LiteRT, pinned
   to one core, for activation, occlusion and rise: the loop's output frame rate and the map
   rate, read from its /metrics over a window after a warm-up.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
AXIONAUT = REPO.parent / "shared" / "data" / "axionaut"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
MODES = ("activation", "vbp", "occlusion", "rise")


def _frames(n: int, size: tuple[int, int] | None = None) -> list[np.ndarray]:
    import cv2

    from carvis import sources

    with sources.open_source(str(AXIONAUT / "race.mp4")) as source:
        every = max(1, 600 // n)
        out = [f.image for i, f in enumerate(source) if i % every == 0][:n]
    return [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in out] if size else out


def _per_frame(model: Path, profile, frames: list[np.ndarray], backend: str = "auto"
               ) -> dict[str, float]:
    """Median ms of the map maker per mode (round-robin per frame; occlusion and rise with
    their defaults, the ones render and run use)."""
    from carvis.maps import MapMaker
    from carvis.session import ModelSession

    session = ModelSession(model, backend=backend)
    makers = {m: MapMaker(session, profile.replace(mode=m, hud=True)) for m in MODES}
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for image in frames[:2]:
        for maker in makers.values():
            maker(image)
    for image in frames:
        for mode, maker in makers.items():
            t0 = time.perf_counter()
            maker(image)
            times[mode].append(time.perf_counter() - t0)
    return {m: statistics.median(v) * 1e3 for m, v in times.items()}


def _growth(model: Path, profile, frames: list[np.ndarray]) -> list[tuple[int, int, int, float]]:
    from carvis.session import ModelSession

    session = ModelSession(model)
    h, w, _ = session.input_shape()
    from carvis.preprocess import Preprocessor

    pre = Preprocessor(profile, (w, h), 3)
    batches = [pre(pre.roi(f)) for f in frames]
    rows = []
    for patch, stride in ((35, 35), (28, 14), (14, 14), (14, 7), (10, 5), (7, 4)):
        e = session.explainer("occlusion", "predicted", None, (patch, stride))
        e(batches[0])
        e.invokes = 0
        times = []
        for x in batches:
            t0 = time.perf_counter()
            e(x)
            times.append(time.perf_counter() - t0)
        rows.append((patch, stride, e.invokes // len(batches), statistics.median(times) * 1e3))
    return rows


def _live(mode: str, seconds: float, core: int) -> tuple[float, float]:
    """(output fps, maps per second) of carvis run with a mode, pinned to one core."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "carvis.cli", "run", "--source", str(AXIONAUT / "race.mp4"),
           "--loop", "--model", str(AXIONAUT / "autopilot.hdf5"), "--profile",
           str(REPO / "models" / "axionaut.yaml"), "--backend", "litert", "--mode", mode,
           "--hud", "--serve", f"127.0.0.1:{port}"]
    child = subprocess.Popen(["taskset", "-c", str(core), *cmd], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL,
                             env={**os.environ, "PYTHONPATH": str(REPO)})

    def metrics() -> dict[str, float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        return {m.group(1): float(m.group(2)) for m in re.finditer(
            r"^(carvis_frames_out_total|carvis_maps_total) ([0-9.e+]+)$", text.decode(), re.MULTILINE)}

    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                metrics()
                break
            except OSError:
                if time.monotonic() > deadline or child.poll() is not None:
                    raise RuntimeError(f"carvis run --mode {mode} did not serve") from None
                time.sleep(0.5)
        time.sleep(5)  # warm-up
        a, t0 = metrics(), time.monotonic()
        time.sleep(seconds)
        b, t1 = metrics(), time.monotonic()
    finally:
        child.terminate()
        child.wait(timeout=30)
    dt = t1 - t0
    return ((b["carvis_frames_out_total"] - a["carvis_frames_out_total"]) / dt,
            (b["carvis_maps_total"] - a["carvis_maps_total"]) / dt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--live-seconds", type=float, default=10.0)
    parser.add_argument("--skip-live", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("CARVIS_CACHE", tempfile.mkdtemp(prefix="carvis-bench-cache-"))
    cores = sorted(os.sched_getaffinity(0))
    core = cores[-1]
    os.sched_setaffinity(0, {core})
    import make_onnx_pilots

    from carvis import profile as prof

    axionaut = prof.load(REPO / "models" / "axionaut.yaml")
    frames = _frames(args.frames)
    small = _frames(args.frames, (160, 120))
    donkey_h5 = make_onnx_pilots.keras_pilot("donkey_categorical", Path(tempfile.mkdtemp()))
    generic = prof.generic()
    runs = {"Axionaut, LiteRT": _per_frame(AXIONAUT / "autopilot.hdf5", axionaut, frames,
                                           "litert"),
            "DonkeyCar categorical, LiteRT": _per_frame(donkey_h5, generic, small, "litert"),
            "DonkeyCar categorical, ONNX": _per_frame(
                REPO / "tests" / "data" / "donkey_categorical.onnx", generic, small)}
    print(f"one core (cpu {core}), {args.frames} frames, medians of the model half (ms):\n")
    print("| model, backend | " + " | ".join(MODES) + " | occlusion / activation | "
          "rise / activation |")
    print("|---|" + "---:|" * (len(MODES) + 2))
    for name, ms in runs.items():
        print(f"| {name} | " + " | ".join(f"{ms[m]:.2f}" for m in MODES)
              + f" | {ms['occlusion'] / ms['activation']:.0f} | "
              f"{ms['rise'] / ms['activation']:.0f} |")
    print("\nocclusion on the Axionaut model (LiteRT, 70x250 input): cost against patches\n")
    print("| patch | stride | patches (invokes) | ms per frame | ms per patch |")
    print("|---:|---:|---:|---:|---:|")
    for patch, stride, n, ms in _growth(AXIONAUT / "autopilot.hdf5", axionaut, frames[:8]):
        print(f"| {patch} | {stride} | {n} | {ms:.1f} | {ms / n:.3f} |")
    if args.skip_live:
        return
    print("\nlive: carvis run on the race clip (30 fps), Axionaut on LiteRT, one core\n")
    print("| mode | output fps | maps per second |")
    print("|---|---:|---:|")
    for mode in ("activation", "occlusion", "rise"):
        fps, maps = _live(mode, args.live_seconds, core)
        print(f"| {mode} | {fps:.1f} | {maps:.1f} |")


if __name__ == "__main__":
    main()
