"""Every frame true, whatever the options: each view × each sink × each source × each backend.

Output frame i of a render must be frame i's own picture: bit-exact against the one-frame
render of source frame i for PNG; for the lossy sinks (.avi, .mp4), closer to frame i's own
picture than to any of frames i-5..i+5. The one-frame render is `--start i --end i+1`; with
--plot, whose strip chart shows the frames before, it is the last frame of `--end i+1` (the
same history, and nothing after frame i that could be drawn into it).

A reused strip-chart buffer handed to the writer thread made a quarter of `--plot` frames show
a later frame; the only --plot test then checked the image's shape. This grid would have seen
it (it runs the command line in-process, so it runs on any version of carvis).
"""

from __future__ import annotations

import os
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
from fakes import REPO

from carvis.cli import main
from carvis.synthetic.track import SyntheticTrack

tub_v2 = pytest.importorskip(
    "donkeycar.parts.tub_v2",
    reason="DonkeyCar's tub writer is needed: pip install --no-deps donkeycar pyfiglet prettytable")

pytestmark = pytest.mark.slow

FRAMES = 7
VIEWS = {"hud": ["--hud"], "plot": ["--plot"], "compare": ["--compare"],
         "grid": ["--view", "grid"]}
SINKS = {"png": "", "avi": ".avi", "mp4": ".mp4"}
MODEL = REPO / "models" / "default.keras"
PROFILE = REPO / "models" / "default.yaml"


def scene_frames(n: int, size: tuple[int, int] = (320, 240)) -> list[np.ndarray]:
    """n frames of carvis' synthetic track, BGR."""
    track = SyntheticTrack(*size, seed=7)
    # every 6th frame of the track: neighbours distinct enough that a lossy sink's frame is
    # still nearest its own picture
    return [track.frame(6 * k) for k in range(n)]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A video file and a DonkeyCar tub (written by DonkeyCar's own Tub) of the same frames."""
    work = tmp_path_factory.mktemp("combinations")
    frames = scene_frames(FRAMES + 1)
    video = work / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (320, 240))
    for image in frames[:FRAMES]:
        writer.write(image)
    writer.release()
    tub_path = work / "tub"
    clock = iter(range(1_700_000_000_000, 1_800_000_000_000, 50))
    old_time = tub_v2.time
    tub_v2.time = types.SimpleNamespace(time=lambda: next(clock) / 1000)
    try:
        tub = tub_v2.Tub(str(tub_path), inputs=["cam/image_array", "user/angle",
                                                "user/throttle", "user/mode"],
                         types=["image_array", "float", "float", "str"])
        for k, image in enumerate(frames):
            tub.write_record({"cam/image_array": cv2.cvtColor(image, cv2.COLOR_BGR2RGB),
                              "user/angle": round(np.sin(k) * 0.8, 3),
                              "user/throttle": 0.2 + 0.05 * k, "user/mode": "user"})
        tub.delete_records([3])  # a deleted record: frame positions and record indexes differ
        tub.close()
    finally:
        tub_v2.time = old_time
    return {"video": video, "tub": tub_path}


def run(source: Path, out: Path, view: str, backend: str, *extra: str) -> None:
    """`carvis render` in this process; it must succeed."""
    code = main(["render", str(source), "-o", str(out), "--model", str(MODEL), "--profile",
                 str(PROFILE), "--backend", backend, "--quiet", *VIEWS[view], *extra])
    assert code == 0, f"render {view} {backend} {out.name} exited {code}"


def read_frames(out: Path) -> list[np.ndarray]:
    """Every frame of a PNG folder or a video file, in order."""
    if out.is_dir():
        return [cv2.imread(str(p)) for p in sorted(out.glob("*.png"))]
    capture = cv2.VideoCapture(str(out))
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            return frames
        frames.append(image)


def positions(source: Path, n: int) -> list[str]:
    """What --start takes for the n frames a render writes: tub record indexes, else 0..n-1."""
    if source.is_dir():
        from carvis.sources.tub import TubSource

        with TubSource(source) as tub:
            return [str(frame.record["_index"]) for frame in tub][:n]
    return [str(i) for i in range(n)]


_references: dict[tuple[str, str, str], list[np.ndarray]] = {}


def references(kind: str, source: Path, view: str, backend: str, tmp: Path, *mode: str
               ) -> list[np.ndarray]:
    """Each frame's own picture, rendered alone (PNG); mode: more flags (--mode M)."""
    key = (kind, view, backend, *mode)
    if key not in _references:
        pictures = []
        for i, start in enumerate(positions(source, FRAMES)):
            out = tmp / f"ref-{kind}-{view}-{backend}-{'-'.join(mode)}-{i}"
            if view == "plot":  # the chart's history: frames 0..i, and i is the last
                run(source, out, view, backend, *mode, "--end", str(int(start) + 1))
            else:
                run(source, out, view, backend, *mode, "--start", start, "--end",
                    str(int(start) + 1))
            pictures.append(read_frames(out)[-1])
        _references[key] = pictures
    return _references[key]


def closest(picture: np.ndarray, candidates: list[np.ndarray]) -> int:
    """The index of the candidate nearest the picture (mean absolute difference); H.264 pads
    an odd height or width by one row or column, which is left out."""
    def error(c: np.ndarray) -> float:
        h, w = c.shape[:2]
        if picture.shape[0] - h not in (0, 1) or picture.shape[1] - w not in (0, 1):
            return np.inf
        return float(np.abs(picture[:h, :w].astype(np.int16) - c.astype(np.int16)).mean())

    return int(np.argmin([error(c) for c in candidates]))


@pytest.mark.parametrize("backend", ["litert", "tensorflow"])
@pytest.mark.parametrize("kind", ["video", "tub"])
@pytest.mark.parametrize("sink", list(SINKS))
@pytest.mark.parametrize("view", list(VIEWS))
def test_every_output_frame_is_its_own_frame(sources: dict[str, Path], tmp_path: Path,
                                             view: str, sink: str, kind: str,
                                             backend: str) -> None:
    source = sources[kind]
    expected = references(kind, source, view, backend,
                          Path(os.environ.get("CARVIS_COMBO_TMP", tmp_path)))
    out = tmp_path / f"out{SINKS[sink]}"
    run(source, out, view, backend)
    got = read_frames(out)
    assert len(got) == FRAMES, f"{len(got)} frames written, {FRAMES} read"
    if sink == "png":
        wrong = [i for i in range(FRAMES) if not np.array_equal(got[i], expected[i])]
        assert not wrong, f"output frames {wrong} differ from their own one-frame render"
        return
    for i, picture in enumerate(got):
        lo, hi = max(0, i - 5), min(FRAMES, i + 6)
        nearest = lo + closest(picture, expected[lo:hi])
        assert nearest == i, f"output frame {i} looks most like frame {nearest}'s picture"


@pytest.mark.parametrize("mode", ["saliency", "guided", "vbp"])
@pytest.mark.parametrize("view", list(VIEWS))
def test_every_mode_on_litert_gives_each_frame_its_own_picture(sources: dict[str, Path],
                                                              tmp_path: Path, view: str,
                                                              mode: str) -> None:
    """The modes LiteRT runs from cached conversions (a gradient mode's whole graph, vbp's
    outputs) with each view: PNG frame i equals frame i's one-frame render, bit-exact."""
    source = sources["video"]
    flags = ("--mode", mode)
    expected = references("video", source, view, "litert",
                          Path(os.environ.get("CARVIS_COMBO_TMP", tmp_path)), *flags)
    out = tmp_path / "out"
    run(source, out, view, "litert", *flags)
    got = read_frames(out)
    assert len(got) == FRAMES
    wrong = [i for i in range(FRAMES) if not np.array_equal(got[i], expected[i])]
    assert not wrong, f"{mode}: output frames {wrong} differ from their own one-frame render"
    assert any(not np.array_equal(got[0], g) for g in got[1:]), "the frames differ"
