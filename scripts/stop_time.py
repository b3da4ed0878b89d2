"""How long `carvis run` takes to answer the README's settings change and to stop on Ctrl-C,
on a quiet machine and with the cores kept busy — medians over several runs, side by side.

Each run starts `carvis run --source synthetic --loop --serve 127.0.0.1:0 --record x.mkv`
with the project's default model, waits for 15 maps, POSTs {"threshold": 120, "layer":
"conv:3"} (the README's example: a new layer, so a conversion the first time) and times the
answer, then sends SIGINT and times the exit; the recording must be complete.
    .venv/bin/python scripts/stop_time.py [--runs 5] [--load 0,2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def busy(stop: multiprocessing.Event) -> None:
    """Keep one core busy until told to stop."""
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def http(method: str, url: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def one_run(work: Path, cold: bool = False) -> tuple[float, int, float, bool]:
    """(settings answer s, its status, Ctrl-C → exit s, the recording is whole)."""
    out = work / f"x-{time.monotonic_ns()}.mkv"
    cmd = [sys.executable, "-m", "carvis.cli", "run", "--source", "synthetic:size=640x480",
           "--loop", "--serve", "127.0.0.1:0", "--record", str(out)]
    cache = work / (f"cache-{time.monotonic_ns()}" if cold else "cache")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CARVIS_CACHE": str(cache)}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=work, env=env)
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "carvis: running" in line:
                break
        url = re.search(r"page (http://\S+/)", "".join(lines))[1]
        while http("GET", url + "stats")[1]["map"]["computed"] < 15:
            time.sleep(0.1)
        t0 = time.monotonic()
        status, _ = http("POST", url + "settings", {"threshold": 120, "layer": "conv:3"})
        answer = time.monotonic() - t0
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        proc.wait(timeout=60)
        stop = time.monotonic() - t0
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    whole = proc.returncode == 0 and "recorded" in err and out.stat().st_size > 0
    return answer, status, stop, whole


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--load", default="0,2", help="busy processes beside carvis, per series")
    ap.add_argument("--cold", action="store_true", help="an empty conversion cache each run "
                    "(the change converts a layer: TensorFlow imported in the asking thread)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="carvis-stop-") as tmp:
        work = Path(tmp)
        one_run(work)  # warm: the conversions are cached for every later run
        for load in (int(n) for n in args.load.split(",")):
            stop_event = multiprocessing.Event()
            hogs = [multiprocessing.Process(target=busy, args=(stop_event,), daemon=True)
                    for _ in range(load)]
            for hog in hogs:
                hog.start()
            try:
                runs = [one_run(work, args.cold) for _ in range(args.runs)]
            finally:
                stop_event.set()
                for hog in hogs:
                    hog.join()
            answers = [r[0] for r in runs]
            stops = [r[2] for r in runs]
            print(f"{load} busy process(es), {'cold' if args.cold else 'warm'} cache, "
                  f"{args.runs} runs: settings answer median "
                  f"{statistics.median(answers):.2f} s (max {max(answers):.2f}), statuses "
                  f"{sorted({r[1] for r in runs})}; Ctrl-C to exit median "
                  f"{statistics.median(stops):.2f} s (max {max(stops):.2f}); recordings whole: "
                  f"{sum(r[3] for r in runs)}/{args.runs}")


if __name__ == "__main__":
    main()
