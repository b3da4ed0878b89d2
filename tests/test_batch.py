"""A season at once: `carvis render A B … -o OUTDIR`, each source to its own file, in processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from conftest import REPO

from carvis import batch, cli
from carvis import jobs as jobs_module
from carvis import profile as prof
from carvis.errors import CarvisError

MODEL = ["--model", str(REPO / "models" / "default.tflite"), "--profile",
         str(REPO / "models" / "default.yaml")]


def frame_count(path) -> int:
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
                          "-show_entries", "stream=nb_read_frames", "-of", "json", str(path)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return int(json.loads(out)["streams"][0]["nb_read_frames"])


def test_plan_names_each_output_after_its_source(tmp_path):
    jobs = batch.plan(["race/a.mp4", "tubs/tub_3/", "synthetic:seed=2,frames=9"],
                      tmp_path / "out", "mkv")
    assert [j.output.name for j in jobs] == ["a.mkv", "tub_3.mkv", "synthetic_seed_2_frames_9.mkv"]
    png = batch.plan(["clip.mp4"], tmp_path, "png")
    assert png[0].output == tmp_path / "clip"  # no suffix: a folder of numbered PNGs


def test_plan_refuses_two_sources_on_one_name_and_a_file_as_the_folder(tmp_path):
    with pytest.raises(CarvisError, match="would both be written to"):
        batch.plan(["day1/run.mp4", "day2/run.mp4"], tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CarvisError, match="is a file"):
        batch.plan(["a.mp4", "b.mp4"], tmp_path / "file")
    with pytest.raises(CarvisError, match="--format"):
        batch.plan(["a.mp4"], tmp_path, "webm")


def test_default_jobs_is_the_usable_cores():
    assert 1 <= batch.default_jobs() <= (os.cpu_count() or 1)


def test_in_process_batch_reports_progress_and_a_failure_without_stopping(tmp_path):
    profile = prof.load(REPO / "models" / "default.yaml")
    settings = jobs_module.RenderOptions(profile, REPO / "models" / "default.tflite")
    jobs = batch.plan(["synthetic:frames=7", str(tmp_path / "missing.mp4"),
                       "synthetic:frames=5,seed=3"], tmp_path / "out", "avi")
    events: list[tuple[int, str, int | None]] = []
    outcomes = batch.run(jobs, settings, 1, lambda *e: events.append(e))
    assert [o.frames for o in outcomes] == [7, 0, 5]
    assert outcomes[1].error and "missing.mp4" in outcomes[1].error
    assert outcomes[0].error is None and outcomes[2].error is None
    starts = [v for n, k, v in events if k == "start"]
    assert [s["frames"] for s in starts] == [7, 5]
    assert all(s["describe"].startswith("model default.tflite on LiteRT") for s in starts)
    assert sum(v for n, k, v in events if k == "frames" and n == 0) == 7


@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffprobe not installed")
def test_cli_batch_in_two_processes_every_output_complete_exit_counts_failures(tmp_path, capsys):
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    out = tmp_path / "out"
    code = cli.main(["render", "synthetic:frames=12", str(bad), "synthetic:frames=8,seed=2",
                     "-o", str(out), "--jobs", "2", "-q", *MODEL])
    err = capsys.readouterr().err
    assert code == 1
    assert frame_count(out / "synthetic_frames_12.mp4") == 12
    assert frame_count(out / "synthetic_frames_8_seed_2.mp4") == 8
    assert not (out / "corrupt.mp4").exists()
    errors = [line for line in err.splitlines() if line.startswith("carvis: error:")]
    assert len(errors) == 1 and "corrupt.mp4" in errors[0]
    assert "carvis: 2 of 3 rendered to" in err and "1 failed" in err


def test_a_single_source_with_an_output_file_is_rendered_as_before(tmp_path, capsys):
    out = tmp_path / "one.avi"
    assert cli.main(["render", "synthetic:frames=4", "-o", str(out), "-q", *MODEL]) == 0
    assert out.is_file() and "rendered to" not in capsys.readouterr().err
