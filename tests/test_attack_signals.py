"""#20.11: SIGTERM and SIGHUP end a command as Ctrl-C does — the file closed, its frames said,
a non-zero exit — and a batch stops its workers on any of them (none left behind, no
worker's traceback)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import fakes
import pytest
from conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffprobe not installed")
MODEL = ["--model", str(REPO / "models" / "default.tflite"), "--profile",
         str(REPO / "models" / "default.yaml")]


def frames_in(path: Path) -> int:
    r = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
                        "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0", str(path)],
                       check=False, capture_output=True, text=True)
    return int(r.stdout.strip() or 0)


def start(argv: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "carvis.cli", *argv], cwd=cwd, env=env,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_20_11_render_stopped_by_sigterm_or_sighup_closes_the_file_and_says_so(tmp_path, sig):
    out = tmp_path / "long.avi"
    proc = start(["render", "synthetic:frames=100000,size=320x240", "-o", str(out), "-q",
                  *MODEL], tmp_path)
    try:
        fakes.wait_until(lambda: out.exists() and out.stat().st_size > 200_000,
                         timeout=60, what="frames written")
        proc.send_signal(sig)
        code = proc.wait(timeout=20)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    said = re.search(r"carvis: interrupted: (\d+) frames written to .*long\.avi \(the file is "
                     r"complete up to there\)", err)
    assert code == 130 and said and "Traceback" not in err, err
    assert frames_in(out) == int(said[1])


def test_20_11_run_stopped_by_sighup_closes_its_recording(tmp_path):
    out = tmp_path / "car.mkv"
    proc = start(["run", "--source", "synthetic:size=320x240", "--loop", "--record", str(out),
                  "--serve", "127.0.0.1:0", *MODEL], tmp_path)
    try:
        url = fakes.page_url(proc)
        fakes.wait_until(lambda: fakes.http("GET", url + "stats")[1]["map"]["computed"] >= 10,
                         timeout=60, what="10 maps")
        proc.send_signal(signal.SIGHUP)
        code = proc.wait(timeout=20)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    said = re.search(r"recorded (\d+) frames to .*car\.mkv", err)
    assert code == 0 and said and "Traceback" not in err, err
    assert frames_in(out) == int(said[1])


@pytest.mark.parametrize("how", ["ctrl-c to the group", "sigint to the parent",
                                 "sigterm to the parent"])
def test_20_11_a_batch_stops_its_workers_on_any_stop_signal(tmp_path, how):
    outdir = tmp_path / "out"
    proc = start(["render", "synthetic:frames=100000,size=320x240",
                  "synthetic:frames=100000,size=320x240,seed=2", "-o", str(outdir), "--jobs",
                  "2", "--format", "avi", "-q", *MODEL], tmp_path)
    outputs = [outdir / "synthetic_frames_100000_size_320x240.avi",
               outdir / "synthetic_frames_100000_size_320x240_seed_2.avi"]
    try:
        fakes.wait_until(lambda: all(p.exists() and p.stat().st_size > 100_000
                                     for p in outputs), timeout=90, what="both workers writing")
        if how == "ctrl-c to the group":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT if how == "sigint to the parent" else signal.SIGTERM)
        code = proc.wait(timeout=30)
        err = proc.stderr.read()
        fakes.wait_until(lambda: group_gone(proc.pid), timeout=10, what="no worker left")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if not group_gone(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 130 and "Traceback" not in err, err
    said = re.findall(r"(\S+\.avi) stopped after (\d+) frames \(playable\)", err)
    assert len(said) == 2, err
    for name, count in said:
        assert frames_in(Path(name)) == int(count)
