#!/usr/bin/env python3
"""Issue 24's figures that need only this checkout, each measured side by side in one run:

    .venv/bin/python scripts/speed_check.py [--rounds 5] [--only vbp,offline,layers]

- **vbp**: a whole `carvis render race.mp4 --backend litert` (622 frames of 1920x1080, the
  Axionaut model, MJPG .avi), `--mode vbp` against `--mode activation`; wall time of each
  whole command, the ratio vbp / activation (goal <= 1.25).
- **offline**: the marginal frame rate of the same activation render — frames per second
  between the race clip once and twice over (so start-up cancels) — against a floor that does
  only what any render must: a reader thread decoding with OpenCV, the crop, a writer thread
  encoding MJPG with OpenCV, bounded queues between them (the same .avi). Ratio carvis / floor
  (goal >= 0.95). carvis cuts the crop as it decodes (carvis.sources.region), which that floor
  does not; a second floor that does (PyAV, FFmpeg's crop filter) shows what is left.
- **layers**: `carvis layers autopilot.hdf5` in this venv, where TensorFlow is installed, and
  `python -c "import tensorflow"` beside it (goal <= 0.5 s; it was 4.3 s when it imported
  TensorFlow).

Each command is a child process, timed whole; rounds alternate the order of the commands;
figures are medians, ratios medians of per-round ratios. Warm caches: one uncounted run of
each first (the first LiteRT run of a model converts it once into carvis' cache).
The other figures of issue 24 have scripts of their own: `scripts/live_bench.py` (20 viewers,
against picamera2's server pattern) and `scripts/makemovie_bench.py` (against DonkeyCar's
`makemovie --salient`, in a DonkeyCar env).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AXIONAUT = REPO.parent / "shared" / "data" / "axionaut"
CARVIS = str(REPO / ".venv" / "bin" / "carvis")

FLOOR = r"""
import queue, sys, threading
import cv2
src, out, top, bottom, left, right = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
cv2.setNumThreads(1)
cap = cv2.VideoCapture(src)
fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
frames, crops = queue.Queue(3), queue.Queue(3)
def read():
    while True:
        ok, frame = cap.read()
        frames.put(frame if ok else None)
        if not ok:
            return
def write():
    writer = None
    while (img := crops.get()) is not None:
        if writer is None:
            h, w = img.shape[:2]
            writer = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
        writer.write(img)
    writer.release()
threads = [threading.Thread(target=read), threading.Thread(target=write)]
for t in threads:
    t.start()
while (frame := frames.get()) is not None:
    crops.put(frame[top:bottom, left:right].copy())
crops.put(None)
for t in threads:
    t.join()
"""

# The same floor, but cutting the crop as it decodes, as carvis does since issue 24 (PyAV:
# FFmpeg's crop filter before the BGR conversion): what carvis' own saving is worth.
FLOOR_CUT = FLOOR.replace("""cap = cv2.VideoCapture(src)
fps = cap.get(cv2.CAP_PROP_FPS) or 30.0""", """import av
container = av.open(src)
stream = container.streams.video[0]
stream.codec_context.thread_type = "AUTO"
stream.codec_context.thread_count = 2
fps = float(stream.average_rate or 30)
graph = av.filter.Graph()
nodes = [graph.add_buffer(template=stream),
         graph.add("crop", f"{right - left}:{bottom - top}:{left}:{top}"),
         graph.add("format", "bgr24"), graph.add("buffersink")]
for a, b in zip(nodes, nodes[1:]):
    a.link_to(b)
graph.configure()
decoded = container.decode(stream)
class Cap:
    def read(self):
        frame = next(decoded, None)
        if frame is None:
            return False, None
        graph.push(frame)
        return True, graph.pull().to_ndarray()
cap = Cap()
top, bottom, left, right = 0, bottom - top, 0, right - left""")
assert FLOOR_CUT != FLOOR


def timed(cmd: list[str]) -> float:
    """Wall seconds of a whole command; its output shown only if it fails."""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"speed_check: {' '.join(cmd[:4])} ... failed ({done.returncode}):\n"
                 f"{done.stderr[-3000:]}")
    return seconds


def rounds(commands: dict[str, list[str]], n: int) -> list[dict[str, float]]:
    """n rounds of every command, the order turned each round; one uncounted warm-up each."""
    for cmd in commands.values():
        timed(cmd)
    names = list(commands)
    out = []
    for r in range(n):
        order = names[r % len(names):] + names[: r % len(names)]
        out.append({name: timed(commands[name]) for name in order})
        print(f"  round {r + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in out[-1].items()),
              flush=True)
    return out


def med(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def render(source: Path, out: Path, mode: str) -> list[str]:
    return [CARVIS, "render", str(source), "--model", str(AXIONAUT / "autopilot.hdf5"),
            "--profile", str(REPO / "models" / "axionaut.yaml"), "--backend", "litert",
            "--mode", mode, "-o", str(out), "-q"]


def check_vbp(tmp: Path, n: int) -> None:
    race = AXIONAUT / "race.mp4"
    rows = rounds({"activation": render(race, tmp / "a.avi", "activation"),
                   "vbp": render(race, tmp / "v.avi", "vbp")}, n)
    ratio = statistics.median(r["vbp"] / r["activation"] for r in rows)
    print(f"vbp: whole render of race.mp4 (622 frames): activation {med(rows, 'activation'):.2f}"
          f" s, vbp {med(rows, 'vbp'):.2f} s; vbp / activation = {ratio:.2f} (goal <= 1.25)")


def check_offline(tmp: Path, n: int) -> None:
    race = AXIONAUT / "race.mp4"
    twice = tmp / "race2.mp4"
    listing = tmp / "list.txt"
    listing.write_text(f"file '{race}'\nfile '{race}'\n")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i",
                    str(listing), "-c", "copy", str(twice)], check=True)
    frames = 622
    crop = ["600", "1080", "0", "1800"]  # the profile's crop
    floor = [sys.executable, "-c", FLOOR]
    cut = [sys.executable, "-c", FLOOR_CUT]
    rows = rounds({"carvis x1": render(race, tmp / "c1.avi", "activation"),
                   "carvis x2": render(twice, tmp / "c2.avi", "activation"),
                   "floor x1": [*floor, str(race), str(tmp / "f1.avi"), *crop],
                   "floor x2": [*floor, str(twice), str(tmp / "f2.avi"), *crop],
                   "floor cut x1": [*cut, str(race), str(tmp / "g1.avi"), *crop],
                   "floor cut x2": [*cut, str(twice), str(tmp / "g2.avi"), *crop]}, n)

    def fps(row: dict[str, float], who: str) -> float:
        return frames / (row[f"{who} x2"] - row[f"{who} x1"])

    def ratios(floor_name: str) -> str:
        each = [fps(r, "carvis") / fps(r, floor_name) for r in rows]
        return f"{statistics.median(each):.2f} (rounds: {' '.join(f'{x:.2f}' for x in each)})"

    print(f"offline: marginal fps (race clip x2 - x1): carvis "
          f"{statistics.median(fps(r, 'carvis') for r in rows):.1f}, floor "
          f"{statistics.median(fps(r, 'floor') for r in rows):.1f}, floor cutting at decode "
          f"{statistics.median(fps(r, 'floor cut') for r in rows):.1f}")
    print(f"offline: carvis / floor = {ratios('floor')} (goal >= 0.95)")
    print(f"offline: carvis / the floor cutting the crop at decode as carvis does = "
          f"{ratios('floor cut')}")


def check_layers(tmp: Path, n: int) -> None:
    rows = rounds({"carvis layers": [CARVIS, "layers", str(AXIONAUT / "autopilot.hdf5")],
                   "import tensorflow": [sys.executable, "-c", "import tensorflow"]}, n)
    print(f"layers: carvis layers autopilot.hdf5 {med(rows, 'carvis layers'):.2f} s with "
          f"TensorFlow installed (goal <= 0.5 s); import tensorflow alone "
          f"{med(rows, 'import tensorflow'):.2f} s")


CHECKS = {"vbp": check_vbp, "offline": check_offline, "layers": check_layers}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", default=",".join(CHECKS), help="which: vbp,offline,layers")
    args = ap.parse_args()
    if not (AXIONAUT / "race.mp4").is_file():
        sys.exit(f"speed_check: needs the Axionaut data in {AXIONAUT}")
    import cv2

    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, OpenCV "
          f"{cv2.__version__}; {args.rounds} rounds", flush=True)
    with tempfile.TemporaryDirectory(prefix="speed-check-") as tmp:
        for name in args.only.split(","):
            print(f"{name}:", flush=True)
            CHECKS[name.strip()](Path(tmp), args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
