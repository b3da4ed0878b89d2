"""A video's region cut as it is decoded (carvis.sources.region) gives OpenCV's pixels to the
bit, frame by frame, or is not used: the picture of a render is the same either way."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from carvis.cli import main
from carvis.sources import VideoFileSource
from carvis.sources.region import RegionDecoder

pytest.importorskip("av", reason="PyAV is a dependency of carvis: pip install av")
FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="needs the ffmpeg command to make clips")

#: Encodings a car's or a laptop's video comes in: the decoded pixel format and its colour tags.
ENCODINGS = {
    "h264 yuv420p": ["-c:v", "libx264", "-pix_fmt", "yuv420p"],
    "h264 bt709": ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-colorspace", "bt709",
                   "-color_primaries", "bt709", "-color_trc", "bt709"],
    "h264 full range": ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-color_range", "pc"],
    "h264 yuv422p": ["-c:v", "libx264", "-pix_fmt", "yuv422p"],
    "h264 yuv444p": ["-c:v", "libx264", "-pix_fmt", "yuv444p"],
    "h264 10 bit": ["-c:v", "libx264", "-pix_fmt", "yuv420p10le"],
    "mjpeg avi": ["-c:v", "mjpeg", "-q:v", "3"],
}
BOXES = [(100, 300, 40, 600), (0, 360, 0, 640), (101, 300, 40, 600), (100, 301, 41, 601)]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory, race_clip: Path) -> dict[str, Path]:
    """12 frames of the real race clip at 640x360 in each encoding."""
    if FFMPEG is None:
        pytest.skip("needs the ffmpeg command to make clips")
    if not race_clip.is_file():
        pytest.skip(f"needs the Axionaut race clip ({race_clip})")
    work = tmp_path_factory.mktemp("encodings")
    made = {}
    for name, args in ENCODINGS.items():
        out = work / (name.replace(" ", "_") + (".avi" if "avi" in name else ".mp4"))
        subprocess.run([FFMPEG, "-v", "error", "-y", "-i", str(race_clip), "-frames:v", "12",
                        "-vf", "scale=640:360", *args, str(out)], check=True)
        made[name] = out
    return made


def whole_frames(path: Path) -> list[np.ndarray]:
    with VideoFileSource(path) as source:
        return [frame.image for frame in source]


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_frames_cut_at_decode_are_opencvs_pixels_or_the_cut_is_not_made(clips, encoding):
    path = clips[encoding]
    whole = whole_frames(path)
    assert len(whole) == 12
    made = []
    for box in BOXES:
        top, bottom, left, right = box
        with VideoFileSource(path) as source:
            cut = source.crop_at_decode(box)
            got = [frame.image for frame in source]
        made.append(cut)
        assert len(got) == len(whole), (encoding, box)
        for i, (image, full) in enumerate(zip(got, whole, strict=True)):
            expected = full[top:bottom, left:right] if cut else full
            np.testing.assert_array_equal(image, expected, err_msg=f"{encoding} {box} frame {i}")
    # 8-bit YUV cut at even rows and columns: cut; odd: never (chroma would be shifted)
    eight_bit = encoding != "h264 10 bit"
    assert made == [eight_bit, eight_bit, False, False]


def test_the_cut_is_not_made_when_pyavs_first_frame_differs(clips, monkeypatch):
    path = clips["h264 yuv420p"]
    real = RegionDecoder.read

    def off_by_one(self: RegionDecoder) -> np.ndarray | None:
        image = real(self)
        if image is not None:
            image[0, 0, 0] ^= 1
        return image

    monkeypatch.setattr(RegionDecoder, "read", off_by_one)
    with VideoFileSource(path) as source:
        assert not source.crop_at_decode((100, 300, 40, 600))
        got = [frame.image for frame in source]
    for image, full in zip(got, whole_frames(path), strict=True):
        np.testing.assert_array_equal(image, full)


def test_when_pyav_fails_mid_video_opencv_goes_on_from_the_same_frame(clips, monkeypatch):
    path = clips["h264 yuv420p"]
    real = RegionDecoder.read
    calls = {"n": 0}

    def fails_at_five(self: RegionDecoder) -> np.ndarray | None:
        calls["n"] += 1
        if calls["n"] == 6:  # the first read is the check; frame 5 is the 6th
            raise ValueError("a damaged packet")
        return real(self)

    monkeypatch.setattr(RegionDecoder, "read", fails_at_five)
    box = (100, 300, 40, 600)
    with VideoFileSource(path) as source:
        assert source.crop_at_decode(box)
        got = [(frame.index, frame.image) for frame in source]
    whole = whole_frames(path)
    assert [i for i, _ in got] == list(range(len(whole)))
    for (i, image), full in zip(got, whole, strict=True):
        np.testing.assert_array_equal(image, full[100:300, 40:600], err_msg=f"frame {i}")


def test_no_cut_once_frames_were_read(clips):
    with VideoFileSource(clips["h264 yuv420p"]) as source:
        source.read()
        assert not source.crop_at_decode((100, 300, 40, 600))


@pytest.mark.parametrize("fail_at", [None, 17])
def test_a_looping_video_cut_at_decode_gives_the_same_frames_every_pass(clips, monkeypatch,
                                                                        fail_at):
    """Live plays a file in a loop: each pass from its first frame, numbered on; PyAV failing in
    the second pass (frame 17 = the 6th of that pass) hands over to OpenCV at that frame."""
    path = clips["h264 yuv420p"]
    whole = [image[100:300, 40:600] for image in whole_frames(path)]
    real = RegionDecoder.read
    calls = {"n": 0}

    def fails(self: RegionDecoder) -> np.ndarray | None:
        calls["n"] += 1
        if fail_at is not None and calls["n"] == fail_at + 2:  # +1: the check, +1: reopened
            raise ValueError("a damaged packet")
        return real(self)

    monkeypatch.setattr(RegionDecoder, "read", fails)
    with VideoFileSource(path, loop=True) as source:
        assert source.crop_at_decode((100, 300, 40, 600))
        got = [source.read() for _ in range(30)]
    assert [f.index for f in got] == list(range(30))
    for f in got:
        np.testing.assert_array_equal(f.image, whole[f.index % len(whole)],
                                      err_msg=f"frame {f.index}")


@pytest.mark.parametrize("view", [["--hud"], ["--plot"], ["--compare"], ["--view", "grid"]])
def test_a_render_of_the_roi_is_the_same_whether_cut_at_decode_or_not(
        tmp_path, race_clip, axionaut_model_path, monkeypatch, view):
    """The real race clip through the Axionaut profile (output: roi, crop 600:1080 x 0:1800),
    in every view: the PNG frames are bit-exact with and without the cut, and the cut is
    made."""
    if not race_clip.is_file() or not axionaut_model_path.is_file():
        pytest.skip("needs the Axionaut data in ../shared/data/axionaut")
    profile = Path(__file__).resolve().parents[1] / "models" / "axionaut.yaml"
    asked: list[tuple[int, int, int, int]] = []
    real = VideoFileSource.crop_at_decode

    def spy(self: VideoFileSource, box: tuple[int, int, int, int]) -> bool:
        asked.append(box)
        cut = real(self, box)
        assert cut, "the race clip's crop was not cut at decode"
        return cut

    outputs = {}
    for name, cut in (("cut", spy), ("whole", lambda self, box: False)):
        monkeypatch.setattr(VideoFileSource, "crop_at_decode", cut)
        out = tmp_path / name
        assert main(["render", str(race_clip), "-o", str(out), "--quiet", "--max-frames", "12",
                     "--model", str(axionaut_model_path), "--profile", str(profile),
                     "--backend", "litert", *view]) == 0
        outputs[name] = sorted(out.glob("*.png"))
    assert asked == [(600, 1080, 0, 1800)]
    assert len(outputs["cut"]) == len(outputs["whole"]) == 12
    for a, b in zip(outputs["cut"], outputs["whole"], strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name


@pytest.mark.fuzz
@pytest.mark.parametrize("encoding", ["h264 yuv420p", "mjpeg avi"])
def test_fuzz_damaged_videos_cut_at_decode_read_or_refuse_in_one_line(clips, tmp_path, encoding):
    """40 byte-level mutations of each clip (seeded): opened, cut at decode and read to the end,
    or refused in one line; every frame is the box, numbered in order, and OpenCV's pixels:
    from a frame FFmpeg flags as damaged, OpenCV decodes (two FFmpeg builds may conceal a
    damaged packet differently). On these seeds every read that was cut is OpenCV's too."""
    import random

    from test_fuzz_files import SEED, mutate_bytes, read_or_refused

    good = clips[encoding].read_bytes()
    rng = random.Random(SEED + 11)
    box = (100, 300, 40, 600)
    counts = {"read": 0, "refused": 0, "cut": 0, "as OpenCV": 0}
    for n in range(40):
        data, what = mutate_bytes(good, rng)
        path = tmp_path / f"m{n}{clips[encoding].suffix}"
        path.write_bytes(data)
        seen: dict[str, Any] = {}

        def read(path: Path = path, seen: dict[str, Any] = seen) -> None:
            with VideoFileSource(path) as source:
                seen["cut"] = source.crop_at_decode(box)
                seen["frames"] = [(f.index, f.image) for f in source]

        outcome = read_or_refused(what, read)
        counts[outcome] += 1
        if outcome == "read":
            frames = seen["frames"]
            assert [i for i, _ in frames] == list(range(len(frames))), what
            counts["cut"] += seen["cut"]
            if seen["cut"]:
                assert all(image.shape == (200, 560, 3) for _, image in frames), what
                whole = whole_frames(path)
                counts["as OpenCV"] += len(whole) == len(frames) and all(
                    np.array_equal(image, full[100:300, 40:600])
                    for (_, image), full in zip(frames, whole, strict=False))
    print(encoding, counts)
    assert counts["cut"] >= 5 and counts["as OpenCV"] == counts["cut"], counts
