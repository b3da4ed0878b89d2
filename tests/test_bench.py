"""`carvis bench` runs all its methods on the same frames and prints the table and ratios."""

from __future__ import annotations

import pytest
from conftest import REPO

from carvis import cli

PROFILE = REPO / "models" / "axionaut.yaml"


def test_bench_prints_stages_fps_and_ratios(axionaut_frames, axionaut_model_path, capsys,
                                            monkeypatch, tmp_path):
    pytest.importorskip("matplotlib", reason="the seed's method draws with matplotlib")
    monkeypatch.setenv("CARVIS_CACHE", str(tmp_path))
    code = cli.main(["bench", str(axionaut_frames), "--model", str(axionaut_model_path),
                     "--profile", str(PROFILE), "--repeat", "1", "--frames", "3",
                     "--seed-frames", "2"])
    assert code == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines()
            if line.startswith("| ")}
    for stage in ("decode", "preprocess", "model", "overlay", "encode", "write",
                  "**throughput, fps**"):
        assert stage in rows, out
    assert "carvis | I/O loop | I/O overlapped | seed" in out
    for ratio in ("carvis / I/O loop = ", "carvis / I/O overlapped = ", "carvis / seed = "):
        assert ratio in out
    assert "(3 frames)" in out and "first 2 of the same frames" in out


def test_bench_rejects_bad_counts(axionaut_frames, axionaut_model_path, capsys):
    assert cli.main(["bench", str(axionaut_frames), "--model", str(axionaut_model_path),
                     "--profile", str(PROFILE), "--frames", "1"]) == 2
    assert "--frames 1 must be at least 2" in capsys.readouterr().err
