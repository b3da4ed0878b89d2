"""A season on a cluster: `carvis render … --scheduler` and `carvis review --prepare …
--scheduler` on a real Dask scheduler and two workers, each its own process on loopback,
started and stopped here: the same outputs as the local run, a worker killed mid-job and its
job run again, an unreachable scheduler in one line, Dask never needed without --scheduler."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from conftest import REPO

from carvis import cli

pytestmark = pytest.mark.slow

DASK = Path(sys.executable).parent / "dask"
MODELS = REPO / "models"
PROFILE = MODELS / "default.yaml"
LOOPBACK = "127.0.0.1"

# Two pilots for the jobs: the project's default and a variant with its kernels' output
# channels reversed, both exported by `carvis export … --with hud` (LiteRT, steering kept).
_MAKE_MODELS = """
import sys, keras
from carvis import cli
src, out = sys.argv[1], sys.argv[2]
m = keras.models.load_model(src, compile=False)
for layer in m.layers:
    w = layer.get_weights()
    if w:
        layer.set_weights([x[..., ::-1].copy() if x.ndim == 4 else x for x in w])
m.save(out + "/v2.keras")
for name, keras_file in (("v1", src), ("v2", out + "/v2.keras")):
    assert cli.main(["export", keras_file, "-o", f"{out}/{name}.tflite", "--profile",
                     sys.argv[3], "--with", "hud"]) == 0
"""


def env() -> dict[str, str]:
    """The environment of every process started here: this checkout first."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


def carvis(*args: str, extra: dict[str, str] | None = None, timeout: float = 300
           ) -> subprocess.CompletedProcess:
    """`carvis ARGS` in its own process."""
    return subprocess.run([sys.executable, "-m", "carvis.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env={**env(), **(extra or {})},
                          cwd=REPO, check=False)


def two_models(root: Path) -> tuple[Path, Path]:
    """v1.tflite (the default model) and v2.tflite (another pilot), made in root."""
    if not (root / "v2.tflite").is_file():
        subprocess.run([sys.executable, "-c", _MAKE_MODELS, str(MODELS / "default.keras"),
                        str(root), str(PROFILE)], env=env(), check=True, capture_output=True,
                       timeout=300)
    return root / "v1.tflite", root / "v2.tflite"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    return two_models(tmp_path_factory.mktemp("models"))


def _start(args: list[str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen([str(DASK), *args], stdout=out, stderr=subprocess.STDOUT,
                                env=env(), start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    """End a process started here and the group it leads (a worker's nanny and its worker)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """`dask scheduler` and two `dask worker`s (one process, one thread each) on loopback."""
    distributed = pytest.importorskip("distributed")
    if not DASK.is_file():
        pytest.skip(f"needs Dask's command line at {DASK} (pip install carvis[cluster])")
    root = tmp_path_factory.mktemp("cluster")
    file = root / "scheduler.json"
    started = [_start(["scheduler", "--host", LOOPBACK, "--port", "0", "--no-dashboard",
                       "--scheduler-file", str(file)], root / "scheduler.log")]
    client = None
    try:
        deadline = time.monotonic() + 60
        while not file.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        for k in range(2):
            started.append(_start(["worker", "--scheduler-file", str(file), "--nworkers", "1",
                                   "--nthreads", "1", "--host", LOOPBACK, "--no-dashboard"],
                                  root / f"worker{k}.log"))
        client = distributed.Client(scheduler_file=str(file), timeout=60)
        client.wait_for_workers(2, timeout=120)
        yield SimpleNamespace(file=file, client=client, root=root)
    finally:
        if client is not None:
            client.close()
        for process in reversed(started):
            _stop(process)


def _pngs(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(folder.glob("*.png"))}


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_sources_by_two_models_on_the_cluster_equal_the_local_run(cluster, models, tmp_path):
    sources = ["synthetic:frames=24,size=320x240", "synthetic:frames=16,seed=2,size=320x240",
               "synthetic:frames=12,seed=4,size=400x300"]
    flags = ["--format", "png", "--profile", str(PROFILE), "--model", str(models[0]),
             "--model", str(models[1])]
    here = carvis("render", *sources, "-o", str(tmp_path / "here"), "--jobs", "2", "-q", *flags)
    there = carvis("render", *sources, "-o", str(tmp_path / "there"), "--scheduler",
                   str(cluster.file), "-q", *flags)
    assert here.returncode == 0, here.stderr
    assert there.returncode == 0, there.stderr
    assert re.search(r"carvis: 6 of 6 rendered to \S+ in [0-9.]+ s, on 2 Dask workers at "
                     r"tcp://127\.0\.0\.1:[0-9]+$", there.stderr.strip().splitlines()[-1])
    assert _tree(tmp_path / "here") == _tree(tmp_path / "there")
    frames = {"synthetic_frames_24_size_320x240": 24, "synthetic_frames_16_seed_2_size_320x240": 16,
              "synthetic_frames_12_seed_4_size_400x300": 12}
    for model in ("v1", "v2"):
        for name, n in frames.items():
            a = _pngs(tmp_path / "here" / model / name)
            b = _pngs(tmp_path / "there" / model / name)
            assert len(a) == len(b) == n
            assert all(np.array_equal(a[k], b[k]) for k in a), f"{model}/{name} differs"
    # Each job ran its own model: the two pilots' pictures differ.
    one = _pngs(tmp_path / "there" / "v1" / "synthetic_frames_24_size_320x240")
    two = _pngs(tmp_path / "there" / "v2" / "synthetic_frames_24_size_320x240")
    assert any(not np.array_equal(one[k], two[k]) for k in one)


def test_a_worker_killed_mid_job_has_its_job_run_again_every_output_complete(cluster, tmp_path):
    client = cluster.client
    frames = 150
    sources = [f"synthetic:frames={frames},seed={k},size=320x240" for k in range(4)]
    out = tmp_path / "out"
    pids = client.run(os.getpid)  # each worker's process, by its address
    run = subprocess.Popen([sys.executable, "-m", "carvis.cli", "render", *sources, "-o",
                            str(out), "--format", "png", "--scheduler", str(cluster.file),
                            "--model", str(MODELS / "default.tflite"), "--profile",
                            str(PROFILE)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=env(), cwd=REPO)
    killed = None
    try:
        deadline = time.monotonic() + 120
        while killed is None and time.monotonic() < deadline and run.poll() is None:
            for address, keys in client.processing().items():
                for key in keys:
                    number = int(str(key).rsplit("-", 1)[1])
                    name = f"synthetic_frames_{frames}_seed_{number}_size_320x240"
                    staged = list(out.glob(f".carvis-part-*-{name}"))
                    written = len(list(staged[0].glob("*.png"))) if staged else 0
                    if 5 <= written <= frames // 2:  # mid-job: killed with most still to do
                        os.kill(pids[address], signal.SIGKILL)
                        killed = number
                        break
                if killed is not None:
                    break
            time.sleep(0.02)
        _, err = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
    assert killed is not None, "no job was seen mid-way to kill its worker"
    assert run.returncode == 0, err
    again = [line for line in err.splitlines() if "its worker died mid-job" in line]
    assert len(again) == 1 and f"seed={killed}," in again[0], err
    assert "carvis: 4 of 4 rendered to" in err
    assert not list(out.glob(".carvis-part-*")), "a lost attempt's partial output was left"
    # Every output whole, and the job run again equals a render of its source on its own.
    for k in range(4):
        assert len(_pngs(out / f"synthetic_frames_{frames}_seed_{k}_size_320x240")) == frames
    alone = tmp_path / "alone"
    assert cli.main(["render", sources[killed], "-o", str(alone), "-q", "--model",
                     str(MODELS / "default.tflite"), "--profile", str(PROFILE)]) == 0
    a = _pngs(alone)
    b = _pngs(out / f"synthetic_frames_{frames}_seed_{killed}_size_320x240")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_review_tracks_prepared_on_the_cluster_equal_the_local_ones(cluster, models, tmp_path):
    from carvis.review.track import Track

    def prepare(cache: Path, *where: str) -> list[Path]:
        done = carvis("review", "--prepare", "synthetic:frames=20,size=320x240",
                      "synthetic:frames=14,seed=3,size=320x240", "--model", str(models[0]),
                      "--model", str(models[1]), "--profile", str(PROFILE), "-q", *where,
                      extra={"CARVIS_CACHE": str(cache)})
        assert done.returncode == 0, done.stderr
        assert "carvis: 2 of 2 prepared to" in done.stderr
        return sorted((cache / "review").rglob("*.h5"))

    here = prepare(tmp_path / "here", "--jobs", "2")
    there = prepare(tmp_path / "there", "--scheduler", str(cluster.file))
    assert [p.relative_to(tmp_path / "here") for p in here] == \
        [p.relative_to(tmp_path / "there") for p in there] and len(here) == 4
    for a, b in zip(here, there, strict=True):
        ta, tb = Track(a), Track(b)
        assert np.array_equal(ta.maps, tb.maps) and np.array_equal(ta.angle, tb.angle)
    assert len(list((tmp_path / "there" / "review").rglob("frames.jpg"))) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def test_an_unreachable_scheduler_is_one_line_and_a_non_zero_exit(tmp_path):
    port = _free_port()  # nothing listens there
    done = carvis("render", "synthetic:frames=3", "synthetic:frames=2,seed=2", "-o",
                  str(tmp_path / "out"), "--scheduler", f"tcp://{LOOPBACK}:{port}", "-q",
                  extra={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"})
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"carvis: error: cannot reach the Dask scheduler at "
                               f"tcp://{LOOPBACK}:{port} within 2 s (")
    missing = carvis("render", "synthetic:frames=3", "synthetic:frames=2,seed=2", "-o",
                     str(tmp_path / "out"), "--scheduler", str(tmp_path / "nope.json"), "-q")
    assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [
        (f"carvis: error: --scheduler {str(tmp_path / 'nope.json')!r}: no scheduler file "
        "there; give the file `dask scheduler --scheduler-file FILE` wrote, or tcp://HOST:PORT")]


def test_without_the_cluster_extra_scheduler_is_one_line_and_nothing_else_needs_dask(
        tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed
    code = cli.main(["render", "synthetic:frames=3", "synthetic:frames=2,seed=2", "-o",
                     str(tmp_path / "out"), "--scheduler", "tcp://127.0.0.1:8786", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].endswith("pip install carvis[cluster]")
    assert not (tmp_path / "out").exists()
    loaded = subprocess.run([sys.executable, "-c", ("import sys, carvis.cli, carvis.batch, "
                             "carvis.cluster, carvis.review.prepare; "
                             "print('dask' in sys.modules or 'distributed' in sys.modules)")],
                            capture_output=True, text=True, env=env(), timeout=120, check=True)
    assert loaded.stdout.strip() == "False"
