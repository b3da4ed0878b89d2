"""#20.4 and #20.5: nothing a user has is overwritten — an output that is an input is refused
before anything opens (one source or a batch), and a recording takes a new name."""

from __future__ import annotations

import logging
from pathlib import Path

from conftest import REPO

from carvis import cli
from carvis.live.recording import Recorder

MODEL = ["--model", str(REPO / "models" / "default.tflite"), "--profile",
         str(REPO / "models" / "default.yaml")]


def _clip(path: Path, frames: int = 5) -> bytes:
    assert cli.main(["render", f"synthetic:frames={frames}", "-o", str(path), "-q", *MODEL]) == 0
    return path.read_bytes()


def test_20_4_render_into_its_own_input_is_refused_and_the_source_kept(tmp_path, capsys):
    clip = tmp_path / "a.mp4"
    before = _clip(clip)
    hard = tmp_path / "hard.mp4"
    hard.hardlink_to(clip)
    for out in (clip, hard):
        capsys.readouterr()
        code = cli.main(["render", str(clip), "-o", str(out), "-q", *MODEL])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "writing it would destroy the source" in err[0]
    assert clip.read_bytes() == before


def test_20_4_a_batch_into_the_sources_own_folder_is_refused_before_anything(tmp_path,
                                                                             capsys):
    sources = [tmp_path / "a.mp4", tmp_path / "b.mp4"]
    kept = [_clip(p) for p in sources]
    capsys.readouterr()
    code = cli.main(["render", *map(str, sources), "-o", str(tmp_path), "--jobs", "1", "-q",
                     *MODEL])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [(f"carvis: error: output '{sources[0]}' is the input "
                                 f"'{sources[0]}': writing it would destroy the source; give "
                                 "another output name")]
    assert [p.read_bytes() for p in sources] == kept


def test_20_5_a_recording_never_overwrites_an_earlier_one(tmp_path, caplog):
    first = tmp_path / "race.mkv"
    older = {first: b"an earlier race", tmp_path / "race-2.mkv": b"the one before"}
    for path, data in older.items():
        path.write_bytes(data)
    said: list[str] = []
    recorder = Recorder(30.0, lambda level, text: said.append(text), first=str(first))
    names = []
    for _ in range(3):  # --record, then two toggles from the page
        recorder.start()
        names.append(Path(recorder.paths[-1]).name)
        recorder.stop(announce=False)
    recorder.finish(deadline=0.0)
    assert names == ["race-3.mkv", "race-4.mkv", "race-5.mkv"]
    assert {p: p.read_bytes() for p in older} == older
    assert said[:2] == [(f"{first} exists: recording to {tmp_path / 'race-3.mkv'} instead "
                        "(carvis never overwrites a recording)"),
                        "recording to " + str(tmp_path / "race-3.mkv")]


def test_20_5_stamped_recordings_never_overwrite_either(tmp_path, monkeypatch):
    monkeypatch.setattr("time.strftime", lambda fmt: "20261203-120000")
    taken = tmp_path / "carvis-20261203-120000.mkv"
    taken.write_bytes(b"x")
    recorder = Recorder(30.0, lambda *a: None, folder=str(tmp_path))
    recorder.start()
    recorder.stop(announce=False)
    recorder.finish(deadline=0.0)
    assert Path(recorder.paths[0]).name == "carvis-20261203-120000-2.mkv"
    assert taken.read_bytes() == b"x"
    logging.getLogger("carvis").handlers.clear()
