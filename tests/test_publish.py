"""Publishing through a real relay: Debian's nginx + libnginx-mod-rtmp on loopback, RTMP in, HLS out.

One `carvis run --publish` of the race clip (looped, with the Axionaut overlay and the MJPEG
server beside it) feeds the relay for the whole module; the tests read the HLS back, measure
the relay latency, put 1 then 50 viewers on the relay, and kill and restart the relay.

Latency here is the relay's: from a frame's capture in carvis to the moment the HLS segment
holding it is listed in the playlist (what a viewer could fetch at the earliest). The publisher
reports in /stats the wall time of its stream's time 0 (``stream_start_epoch``) and stream
timestamps are capture times, so a segment's last timestamp says when its last frame was
captured. A player's own buffer (HLS players hold a few segments) comes on top of that.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import AXIONAUT, REPO

pytest.importorskip("av", reason="PyAV is needed for --publish: pip install av")

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
RTMP_MODULE = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")
RACE = AXIONAUT / "race.mp4"
pytestmark = [
    pytest.mark.skipif(not Path(NGINX).is_file(), reason="nginx not installed (scripts/test.sh "
                       "installs nginx libnginx-mod-rtmp)"),
    pytest.mark.skipif(not RTMP_MODULE.is_file(), reason=f"{RTMP_MODULE} missing: apt-get "
                       "install libnginx-mod-rtmp"),
    pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffprobe not installed"),
    pytest.mark.skipif(not RACE.is_file(), reason=f"race clip not found at {RACE} "
                       "(../shared/data beside the checkout)"),
]

CONF = """\
load_module {module};
{user}
worker_processes 1;
error_log logs/error.log warn;
pid logs/nginx.pid;
events {{ worker_connections 512; }}
rtmp {{
    server {{
        listen 127.0.0.1:{rtmp};
        application live {{
            live on;
            record off;
            hls on;
            hls_path {hls};
            hls_fragment 1s;
            hls_playlist_length 6s;
        }}
    }}
}}
http {{
    access_log off;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    types {{ application/vnd.apple.mpegurl m3u8; video/mp2t ts; }}
    server {{
        listen 127.0.0.1:{http};
        location /hls/ {{ alias {hls}/; add_header Cache-Control no-cache; }}
        location /stat {{ rtmp_stat all; }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Relay:
    """nginx with the RTMP module, as a child of the test, everything under one folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.rtmp, self.http = free_port(), free_port()
        self.hls = root / "hls"
        for sub in ("logs", "tmp", "hls"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        # As root, nginx's workers would run as nobody and could not write the tmp folder.
        user = "user root;" if os.geteuid() == 0 else ""
        self.conf = root / "nginx.conf"
        self.conf.write_text(CONF.format(module=RTMP_MODULE, user=user, rtmp=self.rtmp,
                                         http=self.http, hls=self.hls))
        self.proc: subprocess.Popen | None = None
        self.url = f"rtmp://127.0.0.1:{self.rtmp}/live/car"

    def start(self) -> None:
        log = open(self.root / "logs" / "stderr.log", "ab")  # noqa: SIM115 - nginx keeps it
        self.proc = subprocess.Popen([NGINX, "-p", f"{self.root}/", "-c", str(self.conf), "-g",
                                      "daemon off;"], stderr=log, stdout=log,
                                     start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.root / "logs" / "stderr.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", self.rtmp), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("nginx did not start listening")

    def kill(self) -> None:
        """Kill the relay like a crash: its master and worker (its own process group)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def get(self, path: str, timeout: float = 3.0) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}",
                                    timeout=timeout) as r:
            return r.read()

    def playlist(self) -> list[tuple[float, str]]:
        """(duration, name) of the segments the HLS playlist lists now (none yet: [])."""
        try:
            text = self.get("/hls/car.m3u8").decode()
        except OSError:
            return []
        return [(float(d), name) for d, name in re.findall(r"#EXTINF:([\d.]+),\s*(\S+)", text)]

    def bytes_in(self) -> int:
        """Bytes the relay received from publishers (its own count)."""
        return int(re.search(rb"<bytes_in>(\d+)</bytes_in>", self.get("/stat"))[1])


def stats(url: str) -> dict:
    with urllib.request.urlopen(url + "stats", timeout=3) as r:
        return json.load(r)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def packets(path: Path) -> list[tuple[float, bool]]:
    """(pts seconds, keyframe) of every video packet of a file."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                          "packet=pts_time,flags", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    rows = [line.split(",") for line in out.split()]
    return [(float(r[0]), "K" in r[1]) for r in rows if len(r) > 1 and r[0] != "N/A"]


def wait_for(what: str, check, timeout: float, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


class Thumbs(threading.Thread):
    """The race clip's ROI (rows 600:1080, cols 0:1800), un-overlaid, at 1/8 size."""

    SIZE = (225, 60)

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.frames: list[np.ndarray] = []

    def run(self) -> None:
        cap = cv2.VideoCapture(str(RACE))
        while True:
            ok, image = cap.read()
            if not ok:
                break
            self.frames.append(cv2.resize(image[600:1080, :1800], self.SIZE,
                                          interpolation=cv2.INTER_AREA))
        cap.release()


@dataclasses.dataclass
class Live:
    relay: Relay
    proc: subprocess.Popen
    url: str  # carvis' page, for /stats
    thumbs: list[np.ndarray]
    log: Path
    ts_offset: float  # relay's segment timestamps minus the stream's


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("publish")
    thumbs = Thumbs()
    thumbs.start()
    model = root / "axionaut.tflite"
    subprocess.run([sys.executable, "-m", "carvis.cli", "export", str(AXIONAUT /
                    "autopilot.hdf5"), "--profile", str(REPO / "models" / "axionaut.yaml"),
                    "-o", str(model)], check=True, capture_output=True, timeout=180, cwd=REPO)
    relay = Relay(root / "nginx")
    relay.start()
    log_path = root / "carvis.log"
    cmd = [sys.executable, "-m", "carvis.cli", "run", "--source", str(RACE), "--loop",
           "--model", str(model), "--profile", str(REPO / "models" / "axionaut.yaml"),
           "--publish", relay.url, "--bitrate", "2M", "--serve", "127.0.0.1:0"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stderr=log, cwd=root,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        def page() -> str | None:
            assert proc.poll() is None, log_path.read_text()
            found = re.search(r"page (http://\S+/)", log_path.read_text())
            return found[1] if found else None

        url = wait_for("carvis run to start", page, 90)
        wait_for("two HLS segments", lambda: len(relay.playlist()) >= 2, 30)
        # The relay's MPEG-TS timestamps are the RTMP ones plus a constant (nginx-rtmp adds
        # 0.7 s): the first packet of its first segment is the stream's time 0.
        first = fetch_segments(relay, ["car-0.ts"], root)[0]
        offset = packets(first)[0][0]
        thumbs.join(30)
        yield Live(relay, proc, url, thumbs.frames, log_path, offset)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        relay.kill()


def fetch_segments(relay: Relay, names: list[str], folder: Path) -> list[Path]:
    paths = []
    for name in names:
        path = folder / name
        path.write_bytes(relay.get(f"/hls/{name}"))
        paths.append(path)
    return paths


def test_hls_decodes_with_keyframes_every_second_and_the_overlay(live, tmp_path):
    relay, url, thumbs = live.relay, live.url, live.thumbs
    segments = fetch_segments(relay, [n for _, n in relay.playlist()[-3:]], tmp_path)
    keys = sorted(t for p in segments for t, key in packets(p) if key)
    gaps = np.diff(keys)
    print(f"\nkeyframes at {np.round(keys, 2).tolist()}; largest gap {gaps.max():.2f} s")
    assert len(keys) >= 2 and gaps.max() <= 1.05  # a viewer joins within a GOP + a segment

    cap = cv2.VideoCapture(str(segments[-1]))
    decoded = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        decoded.append(image)
    assert len(decoded) >= 15 and decoded[0].shape == (480, 1800, 3)
    # The un-overlaid frame it came from: the nearest of the clip's ROI, compared small.
    small = cv2.resize(decoded[len(decoded) // 2], Thumbs.SIZE, interpolation=cv2.INTER_AREA)
    errors = [np.abs(small.astype(np.int16) - t).mean() for t in thumbs]
    raw = thumbs[int(np.argmin(errors))]
    changed = (np.abs(small.astype(np.int16) - raw).max(axis=2) > 40).mean()
    # The same comparison for two neighbouring clip frames: what motion alone changes.
    motion = np.median([(np.abs(a.astype(np.int16) - b).max(axis=2) > 40).mean()
                        for a, b in zip(thumbs[:-1:20], thumbs[1::20])])
    print(f"overlay changes {changed:.1%} of the pixels of frame {int(np.argmin(errors))} "
          f"(neighbouring raw frames differ in {motion:.1%})")
    assert changed > max(0.02, 3 * motion)
    publish = stats(url)["sinks"]["publish"]
    assert publish["connected"] and publish["reconnects"] == 0 and publish["bytes_sent"] > 0


def test_relay_latency_capture_to_segment_listed(live, tmp_path):
    relay, url = live.relay, live.url
    epoch = stats(url)["sinks"]["publish"]["stream_start_epoch"]
    seen = {n for _, n in relay.playlist()}
    latencies = []
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline and len(latencies) < 4:
        new = [n for _, n in relay.playlist() if n not in seen]
        now = time.time()
        for name in new:
            seen.add(name)
            last = max(t for t, _ in packets(fetch_segments(relay, [name], tmp_path)[0]))
            latencies.append(now - (epoch + last - live.ts_offset))
        time.sleep(0.02)
    print(f"\nrelay latency capture -> segment listed: {[round(x, 3) for x in latencies]} s")
    assert len(latencies) >= 3
    # A segment is listed when the next keyframe reaches the relay: a frame or two later.
    assert 0 < np.median(latencies) < 1.0


class Viewers:
    """n HLS viewers, each a thread that fetches the playlist and every new segment."""

    def __init__(self, relay: Relay, n: int, seconds: float) -> None:
        self.relay, self.stop = relay, threading.Event()
        self.bytes = [0] * n
        self.deadline = time.monotonic() + seconds
        self.threads = [threading.Thread(target=self._view, args=(i,), daemon=True)
                        for i in range(n)]
        for t in self.threads:
            t.start()

    def _view(self, i: int) -> None:
        got: set[str] = set()
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            for _, name in self.relay.playlist()[-2:]:
                if name not in got:
                    got.add(name)
                    try:
                        self.bytes[i] += len(self.relay.get(f"/hls/{name}"))
                    except OSError:
                        pass
            self.stop.wait(0.25)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(5)


def test_carvis_costs_the_same_for_1_and_50_viewers(live):
    relay, proc, url = live.relay, live.proc, live.url
    figures = {}
    for n in (1, 50):
        viewers = Viewers(relay, n, seconds=12)
        try:
            time.sleep(1.0)
            cpu0, sent0, relay0 = cpu_seconds(proc.pid), stats(url), relay.bytes_in()
            t0 = time.monotonic()
            time.sleep(6.0)
            elapsed = time.monotonic() - t0
            cpu1, sent1, relay1 = cpu_seconds(proc.pid), stats(url), relay.bytes_in()
        finally:
            viewers.close()
        up = sent1["sinks"]["publish"]["bytes_sent"] - sent0["sinks"]["publish"]["bytes_sent"]
        figures[n] = {"cpu": (cpu1 - cpu0) / elapsed, "kbit_s": up * 8 / 1e3 / elapsed,
                      "relay_kbit_s": (relay1 - relay0) * 8 / 1e3 / elapsed,
                      "served_kbit_s": sum(viewers.bytes) * 8 / 1e3 / (elapsed + 1),
                      "fps_out": sent1["fps_out"]}
    for n, f in figures.items():
        print(f"\n{n:2d} viewers: carvis {f['cpu']:.0%} of a core, upload {f['kbit_s']:.0f} "
              f"kbit/s (relay counts {f['relay_kbit_s']:.0f}), relay serves "
              f"{f['served_kbit_s']:.0f} kbit/s, {f['fps_out']} fps out", end="")
    one, many = figures[1], figures[50]
    assert many["served_kbit_s"] > 20 * one["served_kbit_s"]  # the fan-out really happened
    assert many["cpu"] < 1.3 * one["cpu"] + 0.05
    # One upload whatever the audience (one per viewer would be 50x). Not a lower bound: on a
    # busy machine the relay's fan-out takes CPU from the encoder, and fewer frames go up.
    assert 0 < many["kbit_s"] < 1.33 * one["kbit_s"]


def test_publish_survives_a_relay_restart(live):
    relay, proc, url, log_path = live.relay, live.proc, live.url, live.log
    before = stats(url)
    relay.kill()
    time.sleep(2.5)
    during = stats(url)
    assert proc.poll() is None
    publish = during["sinks"]["publish"]
    assert not publish["connected"] and publish["last_error"]
    # The other sinks go on: the MJPEG encoder keeps encoding at the camera's rate.
    assert during["frames"]["encoded"] - before["frames"]["encoded"] > 40
    relay.start()
    after = wait_for("the publisher to reconnect", lambda: (s := stats(url))["sinks"][
        "publish"]["reconnects"] == publish["reconnects"] + 1 and s, 20)
    wait_for("a new HLS segment", lambda: len(relay.playlist()) >= 1, 15)
    sent = after["sinks"]["publish"]["bytes_sent"]
    wait_for("bytes sent again", lambda: stats(url)["sinks"]["publish"]["bytes_sent"] > sent, 5)
    print(f"\nrelay restart: {publish['dropped_offline']} frames dropped while away, "
          f"reconnects {after['sinks']['publish']['reconnects']}")
    assert "unreachable" in log_path.read_text() and "back after" in log_path.read_text()
