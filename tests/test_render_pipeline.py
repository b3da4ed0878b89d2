"""The overlapped render: every frame, in order, same pixels as one thread; errors; memory."""

from __future__ import annotations

import itertools
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Iterator

import cv2
import numpy as np
import pytest
from conftest import REPO, render_image

from carvis import handoff, pipeline
from carvis import overlay as ov
from carvis import profile as prof
from carvis.frame import Frame
from carvis.maps import StageTimes
from carvis.session import ModelSession
from carvis.sinks import Sink
from carvis.sinks.files import AviSink
from carvis.sources import VideoFileSource

PROFILE = REPO / "models" / "axionaut.yaml"


class ListSink(Sink):
    """Keeps a copy of every frame written."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.images: list[np.ndarray] = []
        self.frames = 0
        self.fail_at = fail_at

    def write(self, image: np.ndarray) -> None:
        if self.fail_at is not None and self.frames == self.fail_at:
            raise OSError(28, "No space left on device")
        self.images.append(image.copy())
        self.frames += 1


class Stamp:
    """A stand-in renderer: writes the frame's number into its ROI, in place, with jitter."""

    def __init__(self, raise_at: int | None = None, exc: type[BaseException] = RuntimeError):
        self.times = StageTimes()
        self.seen = 0
        self.raise_at = raise_at
        self.exc = exc
        self.rng = np.random.default_rng(7)

    def render(self, frame: Frame) -> np.ndarray:
        if self.raise_at is not None and self.seen == self.raise_at:
            raise self.exc("boom")
        self.seen += 1
        time.sleep(float(self.rng.uniform(0, 0.002)))
        roi = frame.image[8:40, 16:80]
        roi += 1  # in place: what the real renderer does to the frame
        return roi

    def finish(self) -> None:
        pass


class KeptCanvas(Stamp):
    """The --plot bug's shape: the picture drawn into one buffer kept between frames."""

    def __init__(self) -> None:
        super().__init__()
        self.canvas: np.ndarray | None = None

    def render(self, frame: Frame) -> np.ndarray:
        roi = super().render(frame)
        if self.canvas is None:
            self.canvas = np.empty_like(roi)
        self.canvas[:] = roi  # the second frame writes into the first one's picture
        return self.canvas


def pattern(i: int, size: tuple[int, int] = (96, 64)) -> np.ndarray:
    """Frame i's pixels: smooth ramps shifted by i (distinct per frame, JPEG-friendly)."""
    w, h = size
    x = np.arange(w)[None, :]
    y = np.arange(h)[:, None]
    image = np.empty((h, w, 3), np.uint8)
    image[..., 0] = (x + 3 * i) % 200
    image[..., 1] = (2 * y + 5 * i) % 200
    image[..., 2] = (x + y + 7 * i) % 200
    return image


def numbered(n: int, size: tuple[int, int] = (96, 64), fail_at: int | None = None,
             reuse: bool = False) -> Iterator[Frame]:
    """Frames 0..n-1 (pattern(i)); reuse=True fills one buffer again and again."""
    w, h = size
    shared = np.empty((h, w, 3), np.uint8)
    for i in range(n):
        if fail_at is not None and i == fail_at:
            raise ValueError(f"corrupt frame {i}")
        image = shared if reuse else np.empty((h, w, 3), np.uint8)
        image[:] = pattern(i, size)
        yield Frame(image, i, time.monotonic(), f"{i}")


def expected_roi(i: int, size: tuple[int, int] = (96, 64)) -> np.ndarray:
    return pattern(i, size)[8:40, 16:80] + 1


def run_with_timeout(fn, timeout: float = 30.0):
    """Run fn in a thread; fail (instead of hanging the suite) if it does not return."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "render did not return: a stage is stuck"
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.mark.parametrize("queue_size", [1, 3])
def test_every_frame_in_order(queue_size):
    sink = ListSink()
    n = 200
    written = run_with_timeout(lambda: pipeline.render(numbered(n), Stamp(), sink,
                                                       queue_size=queue_size))
    assert written == sink.frames == n
    for i, image in enumerate(sink.images):
        np.testing.assert_array_equal(image, expected_roi(i))


def test_progress_counts_each_written_frame():
    ticks = []
    pipeline.render(numbered(25), Stamp(), ListSink(), progress=ticks.append)
    assert ticks == [1] * 25


def test_a_source_that_reuses_its_buffer_still_renders_every_frame():
    sink = ListSink()
    pipeline.render(numbered(60, reuse=True), Stamp(), sink)
    for i, image in enumerate(sink.images):
        np.testing.assert_array_equal(image, expected_roi(i))


def test_source_error_raises_after_writing_the_frames_before_it():
    sink = ListSink()
    with pytest.raises(ValueError, match="corrupt frame 40"):
        run_with_timeout(lambda: pipeline.render(numbered(100, fail_at=40), Stamp(), sink))
    assert sink.frames == 40
    np.testing.assert_array_equal(sink.images[-1], expected_roi(39))


def test_a_picture_handed_to_the_writer_is_never_drawn_on_again():
    # The sender may not write a buffer it handed over: the Outbox seals it, so a renderer
    # that draws the next frame into the same buffer fails at once instead of changing the
    # picture the writer thread is still encoding.
    sink = ListSink()
    with pytest.raises(ValueError, match="read-only"):
        run_with_timeout(lambda: pipeline.render(numbered(20), KeptCanvas(), sink))
    assert sink.frames <= 1
    np.testing.assert_array_equal(sink.images[0], expected_roi(0))


def test_sealed_pictures_are_read_only_down_to_their_memory():
    frame = np.zeros((8, 8, 3), np.uint8)
    view = frame[2:6]
    handoff.seal(view)
    for array in (view, frame):
        with pytest.raises(ValueError, match="read-only"):
            array[0, 0, 0] = 1
    with pytest.raises(cv2.error):
        cv2.rectangle(frame, (0, 0), (3, 3), (255, 0, 0), -1)


def test_sink_error_is_raised_and_nothing_hangs():
    sink = ListSink(fail_at=10)
    with pytest.raises(OSError, match="No space left"):
        run_with_timeout(lambda: pipeline.render(numbered(500), Stamp(), sink, queue_size=2))
    assert sink.frames == 10


def _ffprobe_frames(path) -> int:
    r = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
                        "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0", str(path)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.strip())


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_interrupt_inside_the_pipeline_leaves_a_playable_avi(tmp_path, exc):
    out = tmp_path / "cut.avi"
    sink = AviSink(out, 30)
    with pytest.raises(exc), sink:
        pipeline.render(numbered(300), Stamp(raise_at=120, exc=exc), sink)
    # everything rendered before the interrupt was written; the file closes cleanly
    assert sink.frames == 120
    assert _ffprobe_frames(out) == 120
    cap = cv2.VideoCapture(str(out))
    ok, last = cap.read()
    assert ok and last.shape == (32, 64, 3)


def test_avi_frames_are_the_rendered_frames(tmp_path):
    out = tmp_path / "n.avi"
    with AviSink(out, 25) as sink:
        pipeline.render(numbered(30, size=(320, 240)), Stamp(), sink)
    cap = cv2.VideoCapture(str(out))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(25)
    refs = [expected_roi(i, (320, 240)).astype(int) for i in range(30)]
    for i in range(30):
        ok, image = cap.read()
        assert ok
        # JPEG is lossy: frame i is the nearest of the rendered frames to what was written
        errors = [np.abs(image.astype(int) - ref).mean() for ref in refs]
        assert int(np.argmin(errors)) == i and errors[i] < 8
    assert not cap.read()[0]


# -- the real renderer ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def renderer_factory(axionaut_model_path, tmp_path_factory):
    """Renderers on the Axionaut model (LiteRT, converted into a private cache)."""
    pytest.importorskip("ai_edge_litert", reason="the LiteRT backend needs ai-edge-litert")
    cache = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("CARVIS_CACHE", str(cache))
    session = ModelSession(axionaut_model_path, backend="litert")
    yield lambda profile=None: pipeline.make_renderer(session, profile or prof.load(PROFILE))
    mp.undo()


@pytest.fixture(scope="module")
def race_frames(race_clip) -> list[np.ndarray]:
    with VideoFileSource(race_clip) as source:
        return [f.image for f in itertools.islice(source, 16)]


def test_overlapped_render_equals_single_threaded_renderer(renderer_factory, race_frames):
    sink = ListSink()
    source = (Frame(img.copy(), i, 0.0) for i, img in enumerate(race_frames))
    assert pipeline.render(source, renderer_factory(), sink) == len(race_frames)
    reference = renderer_factory()
    for i, image in enumerate(race_frames):
        np.testing.assert_array_equal(sink.images[i], render_image(reference, image.copy()),
                                      err_msg=f"frame {i}")


@pytest.mark.parametrize("threshold, colormap", [(80, "inferno"), (0, "jet"), (254.5, "turbo"),
                                                 (127.2, "viridis")])
def test_renderer_overlay_equals_overlay_apply(renderer_factory, race_frames, threshold,
                                               colormap):
    renderer = renderer_factory()
    ipp = cv2.ipp.useIPP()
    for image in race_frames[:6]:
        # settings changed between frames, as the live page does
        renderer.composer.overlay.threshold, renderer.composer.overlay.colormap = threshold, colormap
        norm = renderer.maps.normalizer(renderer.maps.activation(image))
        cv2.ipp.setUseIPP(False)  # the renderer upsamples with OpenCV's own bicubic
        try:
            expected = ov.Overlay(threshold, colormap).apply(renderer.maps.preprocess.roi(image),
                                                             norm)
        finally:
            cv2.ipp.setUseIPP(ipp)
        got = render_image(renderer, image.copy())
        np.testing.assert_array_equal(got, expected)
        assert cv2.ipp.useIPP() == ipp  # the caller's thread is left as it was


def test_renderer_upsample_differs_from_ipp_only_by_rounding(renderer_factory, race_frames):
    renderer = renderer_factory()
    changed = 0
    for image in race_frames:
        norm = renderer.maps.normalizer(renderer.maps.activation(image))
        ipp = cv2.ipp.useIPP()
        cv2.ipp.setUseIPP(True)
        try:
            with_ipp = ov.Overlay(80, "inferno").apply(renderer.maps.preprocess.roi(image), norm)
        finally:
            cv2.ipp.setUseIPP(ipp)  # the thread's IPP switch is left as it was
        got = render_image(renderer, image.copy())
        diff = np.abs(got.astype(int) - with_ipp.astype(int)).max(axis=-1)
        changed += int((diff > 0).sum())
    assert changed / (len(race_frames) * 480 * 1800) < 1e-4


def test_memory_is_flat_over_a_long_render(renderer_factory):
    """1,500 frames through the real renderer and JPEG encoder: no growth after warm-up
    (scripts/memcheck.py does 5,000 full-size race frames)."""
    data = prof.load(PROFILE).to_dict()
    data["preprocess"]["crop"] = None
    data["output"] = "frame"
    renderer = renderer_factory(prof.parse(data))

    class Encode(Sink):
        def __init__(self) -> None:
            self.frames = 0
            self.rss: dict[int, int] = {}
            self.python: dict[int, int] = {}

        def write(self, image: np.ndarray) -> None:
            cv2.imencode(".jpg", image)
            self.frames += 1
            if self.frames % 250 == 0:
                with open("/proc/self/status") as fh:
                    self.rss[self.frames] = int(fh.read().split("VmRSS:")[1].split()[0])
                self.python[self.frames] = tracemalloc.get_traced_memory()[0]

    frames = (Frame(np.full((120, 160, 3), i % 200, np.uint8), i, 0.0) for i in range(1500))
    sink = Encode()
    tracemalloc.start()
    try:
        pipeline.render(frames, renderer, sink)
    finally:
        tracemalloc.stop()
    rss_growth_kb = max(sink.rss[f] for f in sink.rss if f > 500) - sink.rss[500]
    python_growth = sink.python[1500] - sink.python[500]
    assert rss_growth_kb < 4096, sink.rss
    assert python_growth < 32 * 1024, f"Python heap grew {python_growth} bytes in 1000 frames"


def test_one_map_laid_on_later_frames_equals_drawing_it_afresh(renderer_factory, race_frames):
    renderer = renderer_factory()
    result = renderer.maps(race_frames[0])
    for image in race_frames[1:4]:  # live: the newest map on the frames that follow it
        reused = renderer.composer(image.copy(), result)
        fresh = renderer_factory().composer(image.copy(), result)
        np.testing.assert_array_equal(reused, fresh)
    renderer.apply({"threshold": 140.0})  # a change still redraws the kept colour layer
    np.testing.assert_array_equal(renderer.composer(race_frames[5].copy(), result),
                                  renderer_factory(prof.load(PROFILE).replace(threshold=140))
                                  .composer(race_frames[5].copy(), result))
