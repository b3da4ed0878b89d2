#!/usr/bin/env python3
"""The live stream with 20 viewers: CPU of `carvis run --serve` against picamera2's MJPEG server
pattern drawing the same overlay, side by side in one run.

    .venv/bin/python scripts/live_bench.py [--rounds 5] [--seconds 15] [--viewers 20]

- **carvis**: `carvis run --source race.mp4 --loop --model autopilot.hdf5 --profile
  models/axionaut.yaml --backend litert --serve 127.0.0.1:0` (the race clip paced at 30 fps).
- **picamera2's pattern** (its `examples/mjpeg_server.py`, with the overlay drawn before the
  encoder as its `pre_callback` examples do): one capture loop that reads the same clip at 30 fps,
  draws the overlay on the frame, JPEG-encodes it once at carvis' stream quality (80) and hands it
  to a `StreamingOutput` (a `threading.Condition`); a `ThreadingHTTPServer` whose handler thread
  per viewer waits on the condition and writes each new frame. This is what a car builder would
  write from the picamera2 manual. Two overlays: carvis' own `Renderer` (LiteRT, a map every
  frame: "picamera2"), and the seed's overlay written with cv2 and LiteRT's `Interpreter` alone
  on the model cut at the profile's layer (`carvis export`: "picamera2, hand").

Twenty viewers read `/stream.mjpg` in this process (one selector thread). After a warm-up, the
server process's CPU (utime + stime of all its threads, /proc/PID/stat) and the frames each
viewer got are measured over the window. Rounds alternate which server goes first; ratios are
medians of per-round ratios: CPU seconds, and CPU per frame delivered (the one that matters if
one server delivers fewer frames). Goal (issue 24): carvis / picamera2 pattern <= 1.15.
"""

from __future__ import annotations

import argparse
import importlib.util
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

_spec = importlib.util.spec_from_file_location("viewers_check", REPO / "scripts" /
                                               "viewers_check.py")
viewers_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(viewers_check)
cpu_seconds = viewers_check.cpu_seconds

PICAMERA2_PATTERN = r'''
import io, logging, socketserver, sys, threading, time
from http import server
from threading import Condition
import cv2
import numpy as np
sys.path.insert(0, sys.argv[1])
from carvis import profile as prof
from carvis.frame import Frame
from carvis.pipeline import make_renderer
from carvis.session import ModelSession

source, model, profile_path, quality = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
hand = sys.argv[6] if len(sys.argv) > 6 else None  # a .tflite cut at the layer: cv2 + LiteRT only


class StreamingOutput(io.BufferedIOBase):
    def __init__(self):
        self.frame = None
        self.condition = Condition()

    def write(self, buf):
        with self.condition:
            self.frame = buf
            self.condition.notify_all()


class StreamingHandler(server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/stream.mjpg":
            self.send_error(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Age", 0)
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Pragma", "no-cache")
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=FRAME")
        self.end_headers()
        try:
            while True:
                with output.condition:
                    output.condition.wait()
                    frame = output.frame
                self.wfile.write(b"--FRAME\r\n")
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", len(frame))
                self.end_headers()
                self.wfile.write(frame)
                self.wfile.write(b"\r\n")
        except Exception as e:
            logging.warning("Removed streaming client %s: %s", self.client_address, str(e))

    def log_message(self, *args):
        pass


class StreamingServer(socketserver.ThreadingMixIn, server.HTTPServer):
    allow_reuse_address = True
    daemon_threads = True


def hand_overlay(tflite):
    """The seed's overlay written with cv2 and LiteRT's Interpreter directly: crop, Lanczos
    resize, 2x2 mean, invoke, channel 1, min-max, bicubic upsample, threshold, inferno, AND, add."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=tflite, num_threads=1)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]["index"]
    out = interp.get_output_details()[0]["index"]
    kernel = np.ones((2, 2), np.float32) / 4

    def draw(image):
        roi = image[600:1080, 0:1800]
        small = cv2.filter2D(cv2.resize(roi, (250, 70), interpolation=cv2.INTER_LANCZOS4), -1,
                             kernel)
        interp.set_tensor(inp, small[None].astype(np.float32))
        interp.invoke()
        act = interp.get_tensor(out)[0][..., 1]
        lo, hi = float(act.min()), float(act.max())
        norm = (act - lo) * (255.0 / (hi - lo) if hi > lo else 0.0)
        up = cv2.resize(norm.astype(np.float32), (1800, 480), interpolation=cv2.INTER_CUBIC)
        map8 = np.rint(np.clip(up, 0, 255)).astype(np.uint8)
        _, mask = cv2.threshold(map8, 80, 255, cv2.THRESH_BINARY)
        colored = cv2.applyColorMap(map8, cv2.COLORMAP_INFERNO)
        colored = cv2.bitwise_and(colored, colored, mask=mask)
        return cv2.add(roi, colored)

    return draw


def capture():
    if hand:
        draw = hand_overlay(hand)
    else:
        renderer = make_renderer(ModelSession(model, backend="litert"), prof.load(profile_path))
    cap = cv2.VideoCapture(source)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    period, due, index = 1 / 30, time.monotonic(), 0
    while True:
        ok, image = cap.read()
        if not ok:
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            continue
        picture = draw(image) if hand else renderer.render(Frame(image, index, time.monotonic()))
        ok, jpeg = cv2.imencode(".jpg", picture, params)
        output.write(jpeg.tobytes())
        index += 1
        due += period
        time.sleep(max(0.0, due - time.monotonic()))


output = StreamingOutput()
threading.Thread(target=capture, daemon=True).start()
httpd = StreamingServer(("127.0.0.1", 0), StreamingHandler)
print(f"page http://127.0.0.1:{httpd.server_address[1]}/", file=sys.stderr, flush=True)
httpd.serve_forever()
'''


def serve(cmd: list[str], seconds: float, warmup: float, viewers: int) -> dict[str, float]:
    """Start a server, read its stream with the viewers, and measure its CPU over the window."""
    log = tempfile.NamedTemporaryFile("w+", prefix="live_bench-", suffix=".log")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=REPO, stderr=log, env={**os.environ,
                                                            "PYTHONUNBUFFERED": "1"})
    audience = None
    try:
        url = viewers_check.page_of(proc, Path(log.name))
        if url is None:
            sys.exit(f"live_bench: the server did not start:\n{Path(log.name).read_text()}")
        audience = viewers_check.Audience(url, viewers)
        audience.pump(warmup)
        start = audience.frames()
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        audience.pump(seconds)
        elapsed = time.monotonic() - t0
        cpu = cpu_seconds(proc.pid) - cpu0
        frames = [n - s for n, s in zip(audience.frames(), start, strict=True)]
    finally:
        if audience is not None:
            audience.close()
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    return {"cpu": cpu, "fps": statistics.median(frames) / elapsed,
            "min_fps": min(frames) / elapsed, "frames": sum(frames)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--warmup", type=float, default=4.0)
    ap.add_argument("--viewers", type=int, default=20)
    args = ap.parse_args()
    race, model = AXIONAUT / "race.mp4", AXIONAUT / "autopilot.hdf5"
    profile = REPO / "models" / "axionaut.yaml"
    if not race.is_file():
        sys.exit(f"live_bench: needs the Axionaut data in {AXIONAUT}")
    tmp = tempfile.TemporaryDirectory(prefix="live-bench-")
    cut = Path(tmp.name) / "axionaut.tflite"
    subprocess.run([str(REPO / ".venv" / "bin" / "carvis"), "export", str(model), "--profile",
                    str(profile), "-o", str(cut)], check=True, capture_output=True)
    commands = {
        "carvis": [str(REPO / ".venv" / "bin" / "carvis"), "run", "--source", str(race),
                   "--loop", "--model", str(model), "--profile", str(profile), "--backend",
                   "litert", "--serve", "127.0.0.1:0"],
        "picamera2": [sys.executable, "-c", PICAMERA2_PATTERN, str(REPO), str(race), str(model),
                      str(profile), "80"],
        "picamera2, hand": [sys.executable, "-c", PICAMERA2_PATTERN, str(REPO), str(race),
                            str(model), str(profile), "80", str(cut)],
    }
    import cv2

    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, OpenCV "
          f"{cv2.__version__}; {args.viewers} viewers, {args.seconds:g} s windows, "
          f"{args.rounds} rounds", flush=True)
    rows = []
    for r in range(args.rounds):
        names = list(commands)
        order = names[r % 3:] + names[: r % 3]
        row = {name: serve(commands[name], args.seconds, args.warmup, args.viewers)
               for name in order}
        rows.append(row)
        print(f"round {r + 1}: " + "; ".join(
            f"{n}: CPU {row[n]['cpu'] / args.seconds:.2f} cores, {row[n]['fps']:.1f} fps a "
            f"viewer (slowest {row[n]['min_fps']:.1f})" for n in order), flush=True)

    def ratio(key: str, base: str) -> float:
        return statistics.median(
            key_of(row["carvis"], key) / key_of(row[base], key) for row in rows)

    def key_of(m: dict[str, float], key: str) -> float:
        return m["cpu"] if key == "cpu" else m["cpu"] / m["frames"]

    for base in ("picamera2", "picamera2, hand"):
        print(f"carvis / {base}: CPU {ratio('cpu', base):.2f}, CPU per frame delivered "
              f"{ratio('per_frame', base):.2f} (goal <= 1.15); fps a viewer: carvis "
              f"{statistics.median(r['carvis']['fps'] for r in rows):.1f}, {base} "
              f"{statistics.median(r[base]['fps'] for r in rows):.1f}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
