"""H.264 .mp4/.mkv through PyAV: what ffprobe says, an interrupted render, size and PSNR vs .avi."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from carvis.errors import CarvisError
from carvis.sinks.files import AviSink
from carvis.sinks.video import VideoSink

pytest.importorskip("av", reason="PyAV is needed for .mp4/.mkv: pip install av")

pytestmark = pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffprobe not installed")
REPO = Path(__file__).resolve().parents[1]


def moving_frame(i: int, size: tuple[int, int] = (320, 240)) -> np.ndarray:
    """A frame with gradients and a box that moves: something for the encoder to do."""
    w, h = size
    image = np.zeros((h, w, 3), np.uint8)
    image[:, :, 0] = (np.arange(w) + 4 * i) % 256
    image[:, :, 1] = ((np.arange(h)[:, None] + 2 * i) % 256).astype(np.uint8)
    x = (3 * i) % max(1, w - 40)
    image[h // 3:h // 3 + 40, x:x + 40] = 255
    return image


def probe(path: Path) -> dict:
    """ffprobe's view of the first video stream, frames counted by decoding them."""
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=codec_name,pix_fmt,width,height,r_frame_rate,nb_read_frames", "-of", "json",
         str(path)], capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["streams"][0]


def decode_all(path: Path) -> list[np.ndarray]:
    """Every frame OpenCV decodes from the file."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        frames.append(image)
    cap.release()
    return frames


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images, in dB."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@pytest.mark.parametrize(("suffix", "fps", "rate"), [
    (".mp4", 30.0, "30/1"), (".mkv", 20.0, "20/1"), (".mp4", 29.97, "30000/1001")])
def test_h264_at_the_source_frame_rate_every_frame(tmp_path, suffix, fps, rate):
    out = tmp_path / f"clip{suffix}"
    with VideoSink(out, fps) as sink:
        for i in range(45):
            sink.write(moving_frame(i, (161, 121)))  # odd sizes: yuv420p needs even ones
    assert sink.frames == 45
    stream = probe(out)
    assert stream["codec_name"] == "h264" and stream["pix_fmt"] == "yuv420p"
    assert (stream["width"], stream["height"]) == (162, 122)
    assert stream["r_frame_rate"] == rate
    assert int(stream["nb_read_frames"]) == 45
    decoded = decode_all(out)
    assert len(decoded) == 45
    assert psnr(decoded[10][:121, :161], moving_frame(10, (161, 121))) > 30


def test_ctrl_c_closes_a_complete_file(tmp_path):
    out = tmp_path / "cut.mp4"
    sink = VideoSink(out, 30)
    with pytest.raises(KeyboardInterrupt), sink:
        for i in range(200):
            if i == 75:
                raise KeyboardInterrupt
            sink.write(moving_frame(i))
    assert int(probe(out)["nb_read_frames"]) == 75


KILLED_RENDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[3])
    from tests.test_video_sink import moving_frame
    from carvis.sinks.video import VideoSink
    sink = VideoSink(sys.argv[1], 30)
    for i in range(int(sys.argv[2])):
        sink.write(moving_frame(i))
    print("written", flush=True)
    time.sleep(120)  # killed here, the file never closed
""")


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_a_render_killed_mid_write_still_plays(tmp_path, suffix):
    out, written = tmp_path / f"killed{suffix}", 300
    render = subprocess.Popen([sys.executable, "-c", KILLED_RENDER, str(out), str(written),
                               str(REPO)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert render.stdout.readline().strip() == "written"
    finally:
        render.send_signal(signal.SIGKILL)
        render.wait(timeout=30)
    assert render.returncode == -signal.SIGKILL
    stream = probe(out)
    assert stream["codec_name"] == "h264"
    decoded = decode_all(out)
    # At most the last keyframe interval (1 s) plus the encoder's lookahead is lost.
    assert int(stream["nb_read_frames"]) == len(decoded) >= written - 90
    assert psnr(decoded[100], moving_frame(100)) > 30


def test_bad_settings_are_refused_in_one_line(tmp_path):
    with pytest.raises(CarvisError, match="CRF.*0..51"):
        VideoSink(tmp_path / "a.mp4", 30, crf=60)
    with pytest.raises(CarvisError, match=r"\.webm is not a video.*\.mp4, \.mkv"):
        VideoSink(tmp_path / "a.webm", 30)
    with pytest.raises(CarvisError, match="frame rate 0"):
        VideoSink(tmp_path / "a.mkv", 0)
    with pytest.raises(CarvisError, match="folder does not exist"):
        VideoSink(tmp_path / "nowhere" / "a.mp4", 30)


def test_missing_pyav_names_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # import av now raises ImportError
    with pytest.raises(CarvisError, match="pip install av") as error:
        VideoSink(tmp_path / "a.mp4", 30)
    assert "\n" not in str(error.value)


def test_mp4_is_much_smaller_than_the_avi_at_high_psnr(tmp_path, race_clip):
    if not race_clip.is_file():
        pytest.skip(f"race clip not found at {race_clip}")
    cap = cv2.VideoCapture(str(race_clip))
    fps = cap.get(cv2.CAP_PROP_FPS)
    frames = [image for ok, image in (cap.read() for _ in range(60)) if ok]
    cap.release()
    assert len(frames) == 60
    avi, mp4 = tmp_path / "race.avi", tmp_path / "race.mp4"
    for sink in (AviSink(avi, fps), VideoSink(mp4, fps)):
        with sink:
            for image in frames:
                sink.write(image)
    ratio = avi.stat().st_size / mp4.stat().st_size
    from_avi, from_mp4 = decode_all(avi), decode_all(mp4)
    assert len(from_avi) == len(from_mp4) == 60
    vs_avi = float(np.mean([psnr(a, b) for a, b in zip(from_avi, from_mp4, strict=True)]))
    vs_source = float(np.mean([psnr(a, b) for a, b in zip(frames, from_mp4, strict=True)]))
    print(f"\nrace clip, first 60 frames {frames[0].shape[1]}x{frames[0].shape[0]}: "
          f"avi {avi.stat().st_size / 1e6:.2f} MB, mp4 (CRF 23) {mp4.stat().st_size / 1e6:.2f} MB"
          f", {ratio:.1f}x smaller; PSNR vs avi {vs_avi:.1f} dB, vs source {vs_source:.1f} dB")
    assert ratio >= 5
    assert vs_avi >= 36


@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffprobe not installed")
def test_published_keyframes_are_a_second_apart_on_the_capture_clock_when_frames_drop(tmp_path):
    from carvis.frame import Frame
    from carvis.sinks.publish import Publisher

    publisher = Publisher("rtmp://127.0.0.1/live/test", fps=30)
    out = tmp_path / "relay.flv"  # what the relay would get, written to a file
    publisher.url, publisher.options, publisher.port = str(out), {}, None
    image = np.zeros((240, 320, 3), np.uint8)
    start = 1000.0
    for k in range(50):  # 5 s of a 30 fps camera, two frames in three dropped under load
        image[:] = (k * 5 % 256, 80, 160)
        publisher.write_frame(Frame(image.copy(), k, start + k / 10))
    publisher.close()
    probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                            "packet=pts_time,flags", "-of", "csv=p=0", str(out)],
                           capture_output=True, text=True, check=True)
    keys = [float(line.split(",")[0]) for line in probe.stdout.split()
            if line.split(",")[1].startswith("K")]
    gaps = np.diff(keys)
    assert len(keys) >= 5 and gaps.max() <= 1.0 + 1e-6, keys  # a frame count would be 3 s
