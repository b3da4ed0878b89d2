#!/usr/bin/env python3
"""Soak the live pipeline: N minutes with viewer churn, a camera that drops out every minute and
settings changes; RSS, open file descriptors and threads sampled, and their slopes printed.

    .venv/bin/python scripts/soak.py [--minutes 2] [--viewers 1000] [--json]

Viewers (all on 127.0.0.1) come and go throughout: a quarter read a few frames and leave, a
quarter hang up mid-frame with a TCP reset, a quarter ask for the stream and never read (the
server cuts them off), a quarter fetch the page, /stats, /metrics or a snapshot. The camera is
gone for 2 s every minute (the loop sends placeholders and reopens it). Exit status 0 when RSS,
fds and threads are flat (slopes under the limits, after a warm-up) and every outage was
survived.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import struct
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from carvis import live, pipeline
from carvis import profile as prof
from carvis.frame import Frame
from carvis.session import ModelSession
from carvis.sources.base import Source
from carvis.synthetic import SyntheticTrack

LIMITS = {"rss_mb": 4.0, "fds": 6.0, "threads": 3.0}  # slope per minute after the warm-up
#: What may stay open once the churn is over, against the start (the pump's viewers gone).
SETTLED = {"fds": 2, "threads": 2}


class FlakyCamera(Source):
    """A live 30 fps camera that is gone for `outage` seconds every `every` seconds."""

    live = True
    name = "flaky camera"

    def __init__(self, fps: float = 30.0, every: float = 60.0, outage: float = 2.0) -> None:
        self.fps, self.every, self.outage = fps, every, outage
        self.size = (320, 240)
        self.track = SyntheticTrack(width=320, height=240, seed=1)
        self.frames = [self.track.frame(i) for i in range(30)]
        self.start = time.monotonic()
        self.index = 0
        self.outages = 0

    def _gone(self) -> bool:
        t = (time.monotonic() - self.start + self.every / 2) % self.every
        return t < self.outage

    def read(self) -> Frame | None:
        time.sleep(1 / self.fps)
        if self._gone():
            self.outages += 1
            raise OSError("VIDIOC_DQBUF: No such device")
        self.index += 1
        return Frame(self.frames[self.index % 30].copy(), self.index, time.monotonic(),
                     self.name)

    def reopen(self) -> None:
        if self._gone():
            raise OSError("no such device")


def sample() -> dict[str, float]:
    """RSS (MB), open fds and threads of this process now."""
    with open("/proc/self/status") as fh:
        rss = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
    return {"rss_mb": rss / 1024, "fds": len(os.listdir("/proc/self/fd")),
            "threads": threading.active_count()}


def slope(times: list[float], values: list[float]) -> float:
    """Least-squares slope of values over times, per minute."""
    if len(times) < 3:
        return 0.0
    return float(np.polyfit(np.array(times) / 60, np.array(values), 1)[0])


def _viewer(port: int, kind: int, rng: random.Random) -> None:
    """One visitor of one of the four kinds."""
    try:
        if kind == 3:
            path = rng.choice(["/", "/stats", "/metrics", "/snapshot.jpg", "/settings"])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                r.read()
            return
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if kind == 2:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(f"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        if kind == 0:
            got = 0
            while got < 60_000:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                got += len(chunk)
            sock.close()
        elif kind == 1:
            sock.recv(rng.randint(100, 3000))  # mid-frame, then a reset
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        else:
            time.sleep(5.0)  # never reads; the server drops it once its buffers are full
            sock.close()
    except OSError:
        pass


def churn(port: int, viewers: int, seconds: float, stop: threading.Event) -> int:
    """Start `viewers` visitors spread over `seconds`; how many were started."""
    rng = random.Random(13)
    started = 0
    gap = seconds / max(viewers, 1)
    while started < viewers and not stop.wait(gap):
        threading.Thread(target=_viewer, args=(port, started % 4, rng), daemon=True).start()
        started += 1
    return started


def tweak(runner: live.LiveRunner, stop: threading.Event) -> int:
    """Change settings every few seconds, as a teammate does; how many changes went in."""
    rng = random.Random(7)
    changes = 0
    while not stop.wait(3.0):
        change = rng.choice([{"threshold": rng.randint(0, 255)}, {"overlay": rng.random() > .3},
                             {"colormap": rng.choice(["jet", "inferno", "turbo"])},
                             {"channel": rng.choice(["mean", "max", 0])}])
        try:
            runner.controls.change(change)
            changes += 1
        except Exception:  # noqa: BLE001, S112 - busy during an outage: the next one
            continue
    return changes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--viewers", type=int, default=1000)
    ap.add_argument("--every", type=float, default=2.0, help="seconds between samples")
    ap.add_argument("--outage-every", type=float, default=60.0)
    ap.add_argument("--json", action="store_true", help="print one JSON line at the end")
    args = ap.parse_args(argv)
    seconds = args.minutes * 60
    p = prof.load(prof.DEFAULT_PROFILE)
    session = ModelSession(p.model)
    camera = FlakyCamera(every=args.outage_every)
    runner = live.build(camera, pipeline.make_renderer(session, p),
                             live.LiveOptions(serve=("127.0.0.1", 0), send_timeout=1.0))
    runner.start()
    port = runner.server.port
    time.sleep(2.0)
    baseline = sample()
    stop = threading.Event()
    result: dict[str, int] = {}
    workers = [threading.Thread(target=lambda: result.update(
                   viewers=churn(port, args.viewers, seconds * 0.95, stop)), daemon=True),
               threading.Thread(target=lambda: result.update(changes=tweak(runner, stop)),
                                daemon=True)]
    for w in workers:
        w.start()
    t0 = time.monotonic()
    times, samples = [], []
    while time.monotonic() - t0 < seconds and runner.error is None:
        time.sleep(args.every)
        times.append(time.monotonic() - t0)
        samples.append(sample())
        if not args.json:
            s = samples[-1]
            print(f"{times[-1]:7.0f} s  rss {s['rss_mb']:7.1f} MB  fds {s['fds']:4d}  threads "
                  f"{s['threads']:3d}  out {runner.processed}", flush=True)
    stop.set()
    for w in workers:
        w.join(10)
    time.sleep(6.0)  # stalled viewers leave, threads of the last requests end
    settled = sample()
    stats = runner.server.stats()
    runner.stop()
    camera.close()
    runner.join(10)
    churning = seconds * 0.95
    warm = [i for i, t in enumerate(times) if min(30.0, seconds * 0.25) <= t < churning]
    slopes = {k: round(slope([times[i] for i in warm], [samples[i][k] for i in warm]), 3)
              for k in LIMITS}
    summary = {"minutes": args.minutes, "frames_out": stats["frames"]["processed"],
               "fps_out": round(stats["frames"]["processed"] / max(times[-1], 1), 1),
               "viewers_started": result.get("viewers", 0),
               "viewers_total": stats["viewers_total"],
               "viewers_dropped": stats["viewers_dropped"], "http": stats["http"],
               "settings_changes": result.get("changes", 0),
               "source_losses": stats["signal"]["losses"],
               "reconnects": stats["signal"]["reconnects"], "slopes_per_min": slopes,
               "baseline": baseline, "settled": settled,
               "peak": {k: max(s[k] for s in samples) for k in LIMITS}}
    ok = (runner.error is None and all(abs(slopes[k]) <= v for k, v in LIMITS.items())
          and all(settled[k] <= baseline[k] + v for k, v in SETTLED.items())
          and stats["signal"]["losses"] >= int(seconds // args.outage_every)
          and stats["signal"]["reconnects"] == stats["signal"]["losses"])
    summary["ok"] = ok
    if args.json:
        print(json.dumps(summary))
    else:
        print(json.dumps(summary, indent=1))
        print("slopes per minute after warm-up: " + ", ".join(f"{k} {v:+.3f}"
                                                                for k, v in slopes.items()))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
