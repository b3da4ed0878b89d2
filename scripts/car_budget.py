#!/usr/bin/env python3
"""The car's CPU budget: `carvis run` with stream and recording, pinned to one core, beside the
live floor (the same source -> JPEG -> stream and record, no model, no overlay) in the same run.

    .venv/bin/python scripts/car_budget.py [--rounds 5] [--seconds 10] [--model default]

For each size cars use (160x120 as DonkeyCar, 640x480, 1280x720) and each round, two child
processes run one after the other, the first one changing from round to round:

- **carvis**: `carvis run --source CLIP --loop --model M --profile P --backend litert
  --serve 127.0.0.1:0 --record OUT.avi`, exactly the CLI (`carvis.cli.main`).
- **floor**: the very same command and code path (source, capture thread, LiveRunner, the
  stream's JpegEncoder/MjpegServer, the recorder's AviSink), with the model session and the
  renderer replaced, in the child only, by stand-ins that load no model and hand each frame on
  untouched (cropped only where the profile outputs just the crop, as carvis does). No library
  change: the stand-ins are installed by this script into `carvis.session` / `carvis.pipeline`
  before `carvis.cli.main` runs.

Each child is pinned to one core (os.sched_setaffinity before anything starts, so every
thread, LiteRT's and OpenCV's included, inherits it), standing in for a Pi core; this script
pins itself to another core when there is one. One real client reads the MJPEG stream on
127.0.0.1 (so every frame is JPEG-encoded and sent) and counts the frames it gets. After a
warm-up, CPU is measured over a window: the child's utime+stime (/proc/PID/stat) for the total,
each thread's on-CPU time (/proc/PID/task/TID/schedstat; the children name their threads) for
the split by stage; per frame = divided by the frames the loop processed in the window. The
source is the race clip (or, without it, the synthetic track) resized to the size and stored
as an uncompressed (YUV 4:2:0) AVI, so reading a frame costs about what a CSI camera's
hand-over does; `carvis run` paces it at 30 fps. Medians over the rounds; the ratio is the
median of the per-round ratios carvis / floor. Goal (issue 11): <= 1.3 at every size.

Child mode (used by the script itself): car_budget.py --child carvis|floor --core N -- ARGS.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
AXIONAUT = REPO.parent / "shared" / "data" / "axionaut"
SIZES = ((160, 120), (640, 480), (1280, 720))
GOAL = 1.3
# Thread (OS name) -> stage; the children name their threads after carvis' Python names.
STAGES = (("capture", "capture thread: read the source"),
          ("model", "model thread: preprocess + model (newer runner)"),
          ("loop", "loop: (preprocess + model +) overlay + fan-out"),
          ("sink-mjpeg", "stream JPEG encode"),
          ("mjpeg-pump", "stream send"),
          ("sink-record", "record JPEG encode + AVI write"),
          ("other", "HTTP, stats, others"))


# == child side ===================================================================================
def _name_threads() -> None:
    """Give carvis' threads their Python names at the OS level ("carvis-" dropped, 15 chars),
    so /proc/PID/task/TID/comm tells the stages apart; native threads a thread starts (LiteRT,
    OpenCV, FFmpeg) inherit its name."""
    libc = ctypes.CDLL(None, use_errno=True)
    setname = getattr(libc, "pthread_setname_np", None)
    if setname is None:
        return
    setname.argtypes = (ctypes.c_ulong, ctypes.c_char_p)

    def os_name(name: str) -> bytes:
        name = name.removeprefix("carvis-")
        if "process_request" in name:
            name = "http-request"
        return name.encode()[:15]

    setname(threading.main_thread().ident, b"loop")
    start = threading.Thread.start

    def start_and_name(self: threading.Thread) -> None:
        start(self)
        with contextlib.suppress(Exception):
            setname(self.ident, os_name(self.name))

    threading.Thread.start = start_and_name  # type: ignore[method-assign]


class _NoKind:
    """The floor's model kind: no signature, so no DonkeyCar pilot is looked for."""

    def signature(self) -> Any:
        raise NotImplementedError


class FloorSession:
    """The floor's ModelSession: loads nothing."""

    kind = _NoKind()

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        pass

    def conv_layers(self) -> list[str]:
        return []

    def layer_names(self) -> list[str]:
        return []


def _floor_renderer(session: Any, profile: Any, chart: Any = None, **_: Any) -> Any:
    """The floor's Renderer: no model, no overlay; the frame handed on as carvis would output
    it (the crop when the profile outputs the crop, resized if it sets a size)."""
    import cv2

    from carvis.composer import Composer
    from carvis.maps import StageTimes
    from carvis.pipeline import Renderer

    class FloorMaps:
        def __init__(self) -> None:
            self.session, self.times, self.channels = session, StageTimes(), 1
            self.layer_name = str(profile.layer)
            self._values = {"layer": self.layer_name, "channel": profile.channel,
                            "mode": profile.mode, "target": profile.target,
                            "smoothgrad": profile.smoothgrad}

        def settings(self) -> dict[str, Any]:
            return dict(self._values)

        def prepare(self, values: dict[str, Any]) -> dict[str, Any]:
            return dict(values)

        def apply(self, values: dict[str, Any]) -> None:
            self._values.update({k: v for k, v in values.items() if k in self._values})

        def __call__(self, _image: Any) -> None:
            return None  # no map

        def map_of(self, frame: Any) -> None:
            return None

    class FloorComposer(Composer):
        def __call__(self, image: Any, _result: Any = None, _recorded: Any = None,
                     _seconds: Any = None) -> Any:
            out = self.roi(image) if self.profile.output == "roi" else image
            if self.profile.output_size is not None:
                out = cv2.resize(out, self.profile.output_size, interpolation=cv2.INTER_AREA)
            return out

    return Renderer(FloorMaps(), FloorComposer(profile))


def child(kind: str, core: int, argv: list[str]) -> int:
    """Run `carvis run` (kind carvis) or the floor (same command, stand-ins) on one core."""
    os.sched_setaffinity(0, {core})
    _name_threads()
    if kind == "floor":
        import carvis.pipeline
        import carvis.session

        carvis.session.ModelSession = FloorSession  # type: ignore[misc,assignment]
        carvis.pipeline.make_renderer = _floor_renderer  # type: ignore[assignment]
        with contextlib.suppress(ImportError):
            # A runner with a model thread copies each frame it hands over; the floor has no
            # model, so it hands nothing over (and copies nothing).
            from carvis.live.inference import MapThread

            MapThread.offer = lambda self, seq, frame: False  # type: ignore[method-assign]
    from carvis import cli

    return cli.main(argv)


# == parent side: the source clips ================================================================
def clip_frames(source: str, count: int) -> tuple[list[Any], str]:
    """count frames of the source clip (BGR arrays at its own size) and what they are."""
    import cv2

    if source != "synthetic" and Path(source).is_file():
        cap = cv2.VideoCapture(source)
        frames = []
        while len(frames) < count:
            ok, image = cap.read()
            if not ok:
                break
            frames.append(image)
        cap.release()
        if frames:
            return frames, f"{Path(source).name} (first {len(frames)} frames)"
    from carvis import sources

    # The synthetic track cannot render 1280x720 (cv2.remap asserts on its texture size),
    # so it renders at 640x480 and is resized like the clip.
    synth = sources.open_source(f"synthetic:size=640x480,frames={count}")
    with synth:
        frames = [f.image for f in synth]
    return frames, f"synthetic track ({len(frames)} frames at 640x480)"


def write_clip(frames: list[Any], size: tuple[int, int], path: Path) -> Path:
    """The frames resized to size as an uncompressed AVI at 30 fps (cheap to read)."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, 0, 30.0, size)
    if not writer.isOpened():
        raise SystemExit(f"car_budget: cannot write the uncompressed clip {path}")
    for image in frames:
        writer.write(cv2.resize(image, size, interpolation=cv2.INTER_AREA))
    writer.release()
    return path


def model_args(name: str, tmp: Path) -> tuple[list[str], str]:
    """The --model/--profile flags for a model choice, and a line saying what it is."""
    if name == "default":
        model = REPO / "models" / "default.tflite"
        return (["--model", str(model), "--profile", str(REPO / "models" / "default.yaml"),
                 "--backend", "litert"], "models/default.tflite (LiteRT), models/default.yaml")
    model = AXIONAUT / "autopilot.hdf5"
    if not model.is_file():
        raise SystemExit(f"car_budget: --model axionaut needs {model}, which is absent")
    # The profile crops in pixels of the 1920x1080 clip; as fractions it fits any size.
    text = (REPO / "models" / "axionaut.yaml").read_text()
    text = re.sub(r"crop: \{[^}]*\}", "crop: {top: 0.5556, bottom: 1.0, left: 0.0, "
                  "right: 0.9375}", text)
    profile = tmp / "axionaut-fractions.yaml"
    profile.write_text(text)
    return (["--model", str(model), "--profile", str(profile), "--backend", "litert"],
            ("Axionaut autopilot.hdf5 converted to LiteRT, models/axionaut.yaml "
             "(crop as fractions)"))


# == parent side: one client, the child's CPU =====================================================
class Viewer(threading.Thread):
    """One MJPEG client reading as fast as it can; counts complete JPEG parts."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(name="viewer", daemon=True)
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.sendall(f"GET /stream.mjpg HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        self.frames = 0
        self.bytes = 0
        self.closed = False
        self.start()

    def run(self) -> None:
        buf = bytearray()
        headers_done = False
        while not self.closed:
            try:
                chunk = self.sock.recv(1 << 20)
            except OSError:
                break
            if not chunk:
                break
            self.bytes += len(chunk)
            buf += chunk
            if not headers_done:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    continue
                del buf[: end + 4]
                headers_done = True
            while True:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    break
                head = bytes(buf[:end]).lower()
                i = head.find(b"content-length:")
                length = int(head[i + 15:].split(b"\r\n", 1)[0])
                total = end + 4 + length + 2
                if len(buf) < total:
                    break
                del buf[:total]
                self.frames += 1
        self.closed = True

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def process_cpu(pid: int) -> float:
    """utime + stime of a process so far, all its threads (seconds)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """tid -> (OS thread name, on-CPU seconds so far) of a process' live threads."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            name = (task / "comm").read_text().strip()
            ns = int((task / "schedstat").read_text().split()[0])
            out[int(task.name)] = (name, ns / 1e9)
    return out


def stage_of(name: str) -> str:
    return name if name in {s for s, _ in STAGES} else "other"


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.load(resp)


def run_one(kind: str, clip: Path, flags: list[str], core: int, warmup: float,
            seconds: float, tmp: Path, quality: int, tree: Path) -> dict[str, Any]:
    """One child run: start, warm up, measure a window, stop; the figures of the window."""
    record = tmp / f"{kind}.avi"
    argv = ["run", "--source", str(clip), "--loop", *flags, "--quality", str(quality),
            "--serve", "127.0.0.1:0", "--record", str(record)]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--core", str(core),
           "--", *argv]
    log_path = tmp / f"{kind}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if tree != REPO:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(tree),
                                                          os.environ.get("PYTHONPATH"))))
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    viewer = None
    try:
        url, deadline = None, time.monotonic() + 180
        while url is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"car_budget: the {kind} child did not start:\n"
                                 + log_path.read_text()[-3000:])
            time.sleep(0.1)
            found = re.search(r"page (http://\S+/)", log_path.read_text())
            url = found[1] if found else None
        allowed = re.search(r"Cpus_allowed_list:\s*(\S+)",
                            Path(f"/proc/{proc.pid}/status").read_text())[1]
        host, port = re.match(r"http://([^:/]+):(\d+)/", url).groups()
        viewer = Viewer(host, int(port))
        time.sleep(warmup)
        s0, cpu0, th0 = get_json(url + "stats"), process_cpu(proc.pid), thread_cpu(proc.pid)
        v0, t0 = viewer.frames, time.monotonic()
        time.sleep(seconds)
        cpu1, th1 = process_cpu(proc.pid), thread_cpu(proc.pid)
        v1, t1 = viewer.frames, time.monotonic()
        s1 = get_json(url + "stats")
    finally:
        if viewer is not None:
            viewer.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        record.unlink(missing_ok=True)
    wall = t1 - t0
    frames = s1["frames"]["processed"] - s0["frames"]["processed"]
    stages = {s: 0.0 for s, _ in STAGES}
    for tid, (name, cpu) in th1.items():
        stages[stage_of(name)] += cpu - th0.get(tid, (name, 0.0))[1]
    cpu = cpu1 - cpu0
    stages["other"] = max(0.0, stages["other"] + cpu - sum(stages.values()))  # exited threads
    maps = None
    if isinstance(s1.get("map"), dict) and isinstance(s0.get("map"), dict):
        maps = (s1["map"]["computed"] - s0["map"]["computed"]) / wall
    rec0 = (s0["sinks"].get("record") or {}).get("written", 0)
    rec1 = (s1["sinks"].get("record") or {}).get("written", 0)
    per = 1e3 / max(frames, 1)
    return {"kind": kind, "cpu_ms": cpu * per, "cores": cpu / wall, "frames": frames,
            "fps_loop": frames / wall, "fps_viewer": (v1 - v0) / wall,
            "fps_record": (rec1 - rec0) / wall, "maps_per_s": maps, "stages_cpu_ms": {k: v * per
                                                                  for k, v in stages.items()},
            "stages_wall_ms": s1["stages_ms"], "record_ms": (s1["sinks"].get("record") or
                                                             {}).get("write_ms"),
            "drops": s1["drops"], "allowed": allowed, "wall": wall}


# == parent side: rounds and the report ===========================================================
def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine(child_core: int) -> str:
    cpu = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import cv2
    import numpy as np

    return (f"{cpu}, {os.cpu_count()} cores (children pinned to core {child_core}), "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
            f"OpenCV {cv2.__version__}, NumPy {np.__version__}")


def describe_tree(tree: Path) -> str:
    """Which carvis the children run: the tree, and for this repo its commit and state."""
    if tree != REPO:
        return f"the tree at {tree}"
    try:
        head = subprocess.run(["git", "log", "-1", "--format=%h %s"], cwd=REPO, text=True,
                              capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "carvis"], cwd=REPO,
                               text=True, capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return str(REPO)
    return f"{REPO} at {head[:60]}" + (" + uncommitted changes in carvis/" if dirty else "")


def report(results: dict[tuple[int, int], dict[str, list[dict]]],
           ratios: dict[tuple[int, int], list[float]]) -> str:
    lines = [("| size | carvis CPU ms/frame | floor CPU ms/frame | carvis / floor | "
              "cores used (carvis, floor) | fps delivered (carvis, floor) |"),
             "|---|---:|---:|---:|---:|---:|"]
    for size, runs in results.items():
        c, f = runs["carvis"], runs["floor"]
        ratio = med(ratios[size])
        mark = "" if ratio <= GOAL else " ✗"
        lines.append(
            f"| {size[0]}×{size[1]} | {med([r['cpu_ms'] for r in c]):.2f} | "
            f"{med([r['cpu_ms'] for r in f]):.2f} | **{ratio:.2f}**{mark} | "
            f"{med([r['cores'] for r in c]):.2f}, {med([r['cores'] for r in f]):.2f} | "
            f"{med([r['fps_viewer'] for r in c]):.1f}, {med([r['fps_viewer'] for r in f]):.1f} |")
    lines += ["", "CPU ms per frame by stage (thread), medians:", "",
              "| stage | " + " | ".join(f"{w}×{h} carvis | {w}×{h} floor"
                                         for w, h in results) + " |",
              "|---|" + "---:|" * (2 * len(results))]
    for stage, title in STAGES:
        if not any(r["stages_cpu_ms"][stage] for runs in results.values()
                   for rs in runs.values() for r in rs):
            continue
        cells = []
        for runs in results.values():
            for kind in ("carvis", "floor"):
                cells.append(f"{med([r['stages_cpu_ms'][stage] for r in runs[kind]]):.2f}")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    lines += ["", "carvis' loop stages, wall-clock medians from /stats (ms):", ""]
    for size, runs in results.items():
        walls: dict[str, list[float]] = {}
        for r in runs["carvis"]:
            for k, v in r["stages_wall_ms"].items():
                if v is not None:
                    walls.setdefault(k, []).append(v)
        rec = [r["record_ms"] for r in runs["carvis"] if r["record_ms"] is not None]
        if rec:
            walls["record"] = rec
        lines.append(f"- {size[0]}×{size[1]}: " + ", ".join(
            f"{k} {med(v):.2f}" for k, v in walls.items()))
    lines += ["", "ratio per round: " + "; ".join(
        f"{w}×{h}: " + ", ".join(f"{r:.2f}" for r in rs) for (w, h), rs in ratios.items())]
    return "\n".join(lines)


def main() -> int:
    if "--child" in sys.argv:
        split = sys.argv.index("--")
        ap = argparse.ArgumentParser()
        ap.add_argument("--child", choices=("carvis", "floor"), required=True)
        ap.add_argument("--core", type=int, default=0)
        a = ap.parse_args(sys.argv[1:split])
        return child(a.child, a.core, sys.argv[split + 1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds (each: every size, both)")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured window per run")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds before the window")
    ap.add_argument("--model", choices=("default", "axionaut"), default="default",
                    help="default: models/default.tflite; axionaut: the race clip's own model")
    ap.add_argument("--source", default=str(AXIONAUT / "race.mp4"),
                    help="clip to resize (or 'synthetic'); default: the race clip")
    ap.add_argument("--clip-frames", type=int, default=150, help="frames of it, looped")
    ap.add_argument("--sizes", default=",".join(f"{w}x{h}" for w, h in SIZES))
    ap.add_argument("--core", type=int, default=0, help="the core the children run on")
    ap.add_argument("--quality", type=int, default=80, help="the stream's JPEG quality")
    ap.add_argument("--json", help="also write every run's figures to this file")
    ap.add_argument("--map-fps", type=float, help="pass --map-fps N to carvis run (maps at "
                    "most N a second, the newest on every frame)")
    ap.add_argument("--tree", default=str(REPO), help="the carvis source tree the children "
                    "import (default: this repo; e.g. a `git archive HEAD` export)")
    args = ap.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    started = time.monotonic()
    others = sorted(os.sched_getaffinity(0) - {args.core})
    if others:
        os.sched_setaffinity(0, set(others))  # the client and this script off the child's core
    tmp = Path(tempfile.mkdtemp(prefix="car_budget-"))
    try:
        flags, model_line = model_args(args.model, tmp)
        if args.map_fps:
            flags = [*flags, "--map-fps", str(args.map_fps)]
            model_line += f"; carvis run --map-fps {args.map_fps:g}"
        frames, source_line = clip_frames(args.source, args.clip_frames)
        clips = {size: write_clip(frames, size, tmp / f"clip-{size[0]}x{size[1]}.avi")
                 for size in sizes}
        del frames
        print(f"machine: {machine(args.core)}", flush=True)
        print(f"carvis: {describe_tree(Path(args.tree).resolve())}", flush=True)
        print(f"source: {source_line}, resized, uncompressed AVI, looped, paced at 30 fps; "
              f"model: {model_line}; stream JPEG quality {args.quality}, record MJPG .avi; "
              f"one reading client on 127.0.0.1; {args.rounds} rounds x {args.warmup:g} s "
              f"warm-up + {args.seconds:g} s measured", flush=True)
        results = {size: {"carvis": [], "floor": []} for size in sizes}
        ratios: dict[tuple[int, int], list[float]] = {size: [] for size in sizes}
        runs = []
        for i in range(args.rounds):
            order = ("carvis", "floor") if i % 2 == 0 else ("floor", "carvis")
            for size in sizes:
                got = {}
                for kind in order:
                    r = run_one(kind, clips[size], flags, args.core, args.warmup,
                                args.seconds, tmp, args.quality, Path(args.tree).resolve())
                    r["size"], r["round"] = list(size), i + 1
                    got[kind] = r
                    results[size][kind].append(r)
                    runs.append(r)
                ratios[size].append(got["carvis"]["cpu_ms"] / got["floor"]["cpu_ms"])
                print(f"round {i + 1}/{args.rounds} {size[0]}x{size[1]}: " + "; ".join(
                    f"{k} {got[k]['cpu_ms']:.2f} ms/frame, {got[k]['cores']:.2f} cores, "
                    f"{got[k]['fps_viewer']:.1f} fps"
                    + (f", {got[k]['maps_per_s']:.1f} maps/s" if got[k]['maps_per_s'] else "")
                    + f" (cpus {got[k]['allowed']})"
                    for k in order) + f"; ratio {ratios[size][-1]:.2f}; load "
                    f"{os.getloadavg()[0]:.1f}", flush=True)
        print()
        print(report(results, ratios))
        if args.json:
            Path(args.json).write_text(json.dumps(runs, indent=1))
        worst = max(med(r) for r in ratios.values())
        print(f"\nworst ratio {worst:.2f} -> {'OK' if worst <= GOAL else 'ABOVE'} the "
              f"{GOAL}x goal; took {time.monotonic() - started:.0f} s")
        return 0 if worst <= GOAL else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
