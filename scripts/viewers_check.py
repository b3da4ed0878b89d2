#!/usr/bin/env python3
"""Serve the real race clip with the Axionaut overlay to 20 reading viewers and one that reads
nothing, and print what frame rate each reading viewer really gets.

    .venv/bin/python scripts/viewers_check.py [--seconds 20] [--viewers 20] [--port 0]

Goal: every reading viewer gets >= 90 % of the clip's 30 fps while the 21st viewer stalls.
The viewers share one thread (a selector loop) so the check itself costs little CPU.
Exit status 0 if the goal is met, 1 if not.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AXIONAUT = REPO.parent / "shared" / "data" / "axionaut"


class Viewer:
    """One MJPEG client on a non-blocking socket; counts complete JPEG parts."""

    def __init__(self, host: str, port: int, stall: bool = False) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if stall:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect((host, port))
        self.sock.sendall(f"GET /stream.mjpg HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        self.sock.setblocking(False)
        self.buf = bytearray()
        self.headers_done = False
        self.frames = 0
        self.bytes = 0
        self.closed = False

    def on_readable(self) -> None:
        try:
            chunk = self.sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.closed = True
            return
        self.bytes += len(chunk)
        buf = self.buf
        buf += chunk
        if not self.headers_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            del buf[: end + 4]
            self.headers_done = True
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            i = head.find(b"content-length:")
            length = int(head[i + 15:].split(b"\r\n", 1)[0])
            total = end + 4 + length + 2
            if len(buf) < total:
                return
            del buf[:total]
            self.frames += 1


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def page_of(server: subprocess.Popen, log: Path, timeout: float = 120.0) -> str | None:
    """The page address a starting server prints on stderr ("page http://HOST:PORT/"), or None
    if it exits or says nothing within the timeout."""
    deadline = time.monotonic() + timeout
    while server.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
        found = re.search(r"page (http://\S+/)", log.read_text())
        if found:
            return found[1]
    return None


class Audience:
    """Viewers of one stream read by one selector (this thread)."""

    def __init__(self, url: str, n: int) -> None:
        host, port = re.match(r"http://([^:/]+):(\d+)/", url).groups()
        self.sel = selectors.DefaultSelector()
        self.viewers = [Viewer(host, int(port)) for _ in range(n)]
        for v in self.viewers:
            self.sel.register(v.sock, selectors.EVENT_READ, v)

    def pump(self, seconds: float) -> None:
        """Read whatever arrives for this long."""
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0:
            for key, _ in self.sel.select(min(left, 0.2)):
                key.data.on_readable()

    def frames(self) -> list[int]:
        """Frames each viewer has had so far."""
        return [v.frames for v in self.viewers]

    def close(self) -> None:
        for v in self.viewers:
            v.sock.close()


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.load(resp)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="measurement time")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    ap.add_argument("--viewers", type=int, default=20, help="reading viewers")
    ap.add_argument("--port", type=int, default=0, help="server port (0: any free one)")
    ap.add_argument("--fps", type=float, default=30.0, help="the clip's frame rate")
    ap.add_argument("--goal", type=float, default=0.9, help="share of --fps each must get")
    ap.add_argument("--source", default=str(AXIONAUT / "race.mp4"))
    ap.add_argument("--model", default=str(AXIONAUT / "autopilot.hdf5"))
    ap.add_argument("--profile", default=str(REPO / "models" / "axionaut.yaml"))
    ap.add_argument("extra", nargs="*", help="more `carvis run` flags (after --)")
    args = ap.parse_args()

    cmd = [sys.executable, "-m", "carvis.cli", "run", "--source", args.source, "--loop",
           "--model", args.model, "--profile", args.profile,
           "--serve", f"127.0.0.1:{args.port}", *args.extra]
    print("$", " ".join(cmd), flush=True)
    log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - kept for the user to read
        "w+", prefix="viewers_check-", suffix=".log", delete=False)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(cmd, cwd=REPO, stderr=log, env=env)
    audience: Audience | None = None
    stalled = None
    try:
        url = page_of(server, Path(log.name))
        if url is None:
            log.seek(0)
            print(log.read(), file=sys.stderr)
            print("viewers_check: carvis run did not start", file=sys.stderr)
            return 2
        print(f"server at {url}", flush=True)
        host, port = re.match(r"http://([^:/]+):(\d+)/", url).groups()
        stalled = Viewer(host, int(port), stall=True)
        audience = Audience(url, args.viewers)

        audience.pump(args.warmup)
        before = get_json(url + "stats")
        start_counts = audience.frames()
        cpu0, own0 = cpu_seconds(server.pid), time.process_time()
        t0 = time.monotonic()
        audience.pump(args.seconds)
        elapsed = time.monotonic() - t0
        cpu = cpu_seconds(server.pid) - cpu0
        own = time.process_time() - own0
        counts = [n - c for n, c in zip(audience.frames(), start_counts)]
        after = get_json(url + "stats")
    finally:
        if audience is not None:
            audience.close()
        if stalled is not None:
            stalled.sock.close()
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()

    frames = after["frames"]
    processed = frames["processed"] - before["frames"]["processed"]
    encoded = frames["encoded"] - before["frames"]["encoded"]
    print(f"\n{args.viewers} reading viewers + 1 stalled, {elapsed:.1f} s measured")
    print(f"pipeline: {processed / elapsed:.1f} fps processed, {encoded / elapsed:.1f} fps "
          f"encoded; stages ms {after['stages_ms']}; loop {after['loop_ms']} ms")
    print(f"CPU: server {cpu / elapsed:.0%} of a core ({cpu / max(processed, 1) * 1e3:.1f} ms "
          f"per frame), these viewers {own / elapsed:.0%}; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"latency capture->encoded: p50 {after['latency_ms']['p50']} ms, "
          f"p99 {after['latency_ms']['p99']} ms; drops {after['drops']}; viewers "
          f"{after['viewers']} (dropped {after['viewers_dropped']}), frames skipped by "
          f"viewers {after['viewer_frames_skipped']}")
    print(f"\n{'viewer':>6} {'frames':>7} {'fps':>6} {'of ' + format(args.fps, 'g'):>7}")
    ratios = [n / elapsed / args.fps for n in counts]
    for i, (n, ratio) in enumerate(zip(counts, ratios), 1):
        print(f"{i:>6} {n:>7} {n / elapsed:6.1f} {ratio:7.1%}")
    if not ratios:
        return 0
    worst = min(ratios)
    ok = worst >= args.goal
    print(f"\nworst viewer: {worst:.1%} of {args.fps:g} fps -> "
          f"{'OK' if ok else 'BELOW'} the {args.goal:.0%} goal (server log: {log.name})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
