"""Every frame true, live: each view option with every live output at once (a recording and an
MJPEG viewer), MJPG .avi with a map on every frame and H.264 .mkv with --map-fps 10. The
live twin of test_combinations.py (~6 s a case).

Live, the loop draws each picture and hands it, sealed, to the recorder and the stream encoder,
which work on in their own threads while the loop draws the next. The --plot bug (a reused
buffer drawn on while a writer still encoded it) showed another frame's picture, or a mixture;
here every picture the recording and a viewer hold must be one the loop drew: its nearest
drawn picture within JPEG/H.264 loss (PSNR >= 28 dB against it, 26 for H.264, and 3 dB nearer
it than any picture of another frame), in the order drawn (a recording on the wall clock may hold a picture twice, never go
back).
"""

from __future__ import annotations

import threading
import time

import cv2
import fakes
import numpy as np
import pytest

from carvis import live, pipeline
from carvis.frame import Frame
from carvis.sources.base import Source
from carvis.synthetic import SyntheticTrack

pytestmark = pytest.mark.slow

FRAMES = 45
VIEWS = {"overlay": {}, "hud": {"hud": True}, "compare": {"compare": True},
         "grid": {"view": "grid"}, "hud+compare": {"hud": True, "compare": True}}


class Moving(Source):
    """A live camera on the synthetic track: FRAMES distinct pictures at 30 fps, then the last
    one held (a parked car) until the run is stopped."""

    live = True
    fps = 30.0
    name = "moving"

    def __init__(self) -> None:
        track = SyntheticTrack(width=320, height=240, seed=3)
        self.images = [track.frame(6 * k) for k in range(FRAMES)]
        self.index = 0
        self.done = threading.Event()
        self._closed = threading.Event()

    def read(self) -> Frame | None:
        if self._closed.wait(1 / self.fps):
            return None
        k = min(self.index, FRAMES - 1)
        if self.index >= FRAMES:
            self.done.set()
        frame = Frame(self.images[k].copy(), self.index, time.monotonic(), self.name)
        self.index += 1
        return frame

    def close(self) -> None:
        self._closed.set()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def matches(pictures: list[np.ndarray], drawn: list[tuple[np.ndarray, int]], what: str,
            floor: float) -> list[int]:
    """For each picture, the source image of the drawn picture it is (asserted: within the
    codec's loss of it, `floor` dB, and 3 dB nearer it than any other drawn picture that
    shows another source image and looks different)."""
    found = []
    for k, picture in enumerate(pictures):
        scores = [psnr(picture, d) if d.shape == picture.shape else 0.0 for d, _ in drawn]
        best = int(np.argmax(scores))
        image, shown = drawn[best]
        assert scores[best] >= floor, f"{what} picture {k}: nearest drawn one at " \
                                      f"{scores[best]:.1f} dB (a torn or foreign picture)"
        others = [scores[i] for i, (d, source) in enumerate(drawn)
                  if source != shown and (d.shape != image.shape or psnr(d, image) < 40)]
        if others:
            assert scores[best] > max(others) + 3, \
                f"{what} picture {k}: as near another frame's picture as its own"
        found.append(shown)
    return found


def read_video(path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        frames.append(image)
    cap.release()
    return frames


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return fakes.session_and_profile(tmp_path_factory.mktemp("model"))


@pytest.mark.parametrize("container, map_fps", [(".avi", None), (".mkv", 10.0)])
@pytest.mark.parametrize("view", list(VIEWS))
def test_every_recorded_and_streamed_picture_is_one_the_loop_drew(model, tmp_path, view,
                                                                   container, map_fps):
    session, profile = model
    profile = profile.replace(**VIEWS[view])
    out = tmp_path / f"live{container}"
    source = Moving()
    drawn: list[tuple[np.ndarray, int]] = []  # (picture, the source image it shows)
    runner = live.build(source, pipeline.make_renderer(session, profile),
                        live.LiveOptions(serve=("127.0.0.1", 0), record=str(out),
                                         map_fps=map_fps),
                        on_frame=lambda f: drawn.append((np.array(f.image),
                                                         min(f.index, FRAMES - 1))))
    runner.start()
    viewer = fakes.Viewer("127.0.0.1", runner.server.port)
    try:
        fakes.wait_until(source.done.is_set, what="the source's frames")
        fakes.wait_until(lambda: viewer.frames >= 5, what="the stream")
        streamed = [fakes.decode(j) for j in list(viewer.jpegs)]
    finally:
        viewer.close()
        runner.stop()
        source.close()
        runner.join(10)
    recorded = read_video(out)
    assert len(recorded) >= FRAMES // 2, len(recorded)
    # the live recording's H.264 (.mkv) is lossier than MJPG (.avi) on this busy scene
    at = matches(recorded, drawn, f"{view} {container} recording",
                 floor=28.0 if container == ".avi" else 26.0)
    assert at == sorted(at), at  # never back in time
    # the scene moves in the recording (a grid shows only the maps: 10 a second with map_fps)
    assert len(set(at)) >= (FRAMES // 6 if view == "grid" and map_fps else FRAMES // 2), at
    seen = matches(streamed, drawn, f"{view} stream", floor=28.0)
    assert seen == sorted(seen), seen  # the held last picture repeats
