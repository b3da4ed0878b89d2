"""Re-render from a map track against the model's render, and the review page's scrub latency:
a frame cache against seeking a keyframe index; all in one run, side by side.

    .venv/bin/python scripts/review_bench.py                  # the race clip, Axionaut model
    .venv/bin/python scripts/review_bench.py SOURCE --model M --profile P --frames 300
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from carvis import pipeline, sources
from carvis import profile as prof
from carvis.frame import Frame
from carvis.maps import StageTimes
from carvis.review import frames, replay
from carvis.review import track as tr
from carvis.review.app import Review
from carvis.review.server import ReviewServer
from carvis.session import ModelSession
from carvis.sinks import Sink

DATA = ROOT.parent / "shared" / "data" / "axionaut"


class NullSink(Sink):
    """Takes frames and drops them: the render's own cost, without an encoder."""

    def write(self, image: np.ndarray) -> None:
        pass


def clip(spec: str, n: int | None):
    """The first n frames of the source (all when n is None)."""
    source = sources.open_source(spec)
    return source, sources.select_frames(source, 0, n)


def timed(run) -> float:
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def percentiles(seconds: list[float]) -> str:
    ms = np.asarray(seconds) * 1e3
    return f"p50 {np.percentile(ms, 50):7.1f} ms   p95 {np.percentile(ms, 95):7.1f} ms"


class Floor:
    """The I/O floor: frames through pipeline.render untouched (decode, hand-offs only)."""

    times = StageTimes()

    def render(self, frame: Frame) -> np.ndarray:
        return frame.image

    def finish(self) -> None:
        pass


def render_rates(spec: str, n: int | None, session: ModelSession, profile: prof.Profile,
                 work: Path) -> tuple[int, dict[str, float]]:
    """Frames/s of the model render, with --save-maps, from the track, and the I/O floor."""
    path = work / f"maps-{profile.mode}-{session.backend_name}.h5"
    source, frames_in = clip(spec, 3)  # warm: model load, conversion, first runs
    pipeline.render(frames_in, pipeline.make_renderer(session, profile), NullSink())
    source.close()
    runs = {}

    def run(name: str, renderer: object) -> None:
        src, frames_in = clip(spec, n)
        runs[name] = timed(lambda: pipeline.render(frames_in, renderer, NullSink()))
        src.close()

    saving = pipeline.make_renderer(session, profile)
    writer = tr.TrackWriter(path, tr.track_meta(saving.maps, None))
    saving.on_map = writer.append
    run("save", saving)
    track = tr.Track(writer.close())
    run("model", pipeline.make_renderer(session, profile))
    drawing = replay.drawing_profile(track, None, {"threshold": 120, "colormap": "jet"})
    run("track", pipeline.Renderer(replay.TrackMaps(track, drawing),
                                   pipeline.Composer(drawing)))
    run("floor", Floor())
    return len(track), {k: len(track) / v for k, v in runs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", nargs="?", default=str(DATA / "race.mp4"))
    ap.add_argument("--model", default=str(DATA / "autopilot.hdf5"))
    ap.add_argument("--profile", default=str(ROOT / "models" / "axionaut.yaml"))
    ap.add_argument("--frames", type=int, help="frames of the re-render runs (default: all)")
    ap.add_argument("--explain-frames", type=int, default=150,
                    help="frames of the Grad-CAM runs on TensorFlow (default 150; 0: none)")
    ap.add_argument("--requests", type=int, default=120, help="random frame requests")
    ap.add_argument("--seeks", type=int, default=20, help="random keyframe seeks (slow)")
    args = ap.parse_args()
    profile = prof.load(args.profile)
    work = Path(tempfile.mkdtemp(prefix="carvis-review-bench-"))
    runs = [(ModelSession(args.model), profile, args.frames)]
    if args.explain_frames:
        runs.append((ModelSession(args.model, backend="tensorflow"),
                     profile.replace(mode="gradcam"), args.explain_frames))
    print(f"{Path(args.source).name}, {Path(args.model).name}; frames/s, written nowhere "
          "(the render's own cost), one run")
    print(f"  {'mode (backend)':24} {'frames':>6} {'model':>8} {'+save-maps':>11} "
          f"{'from track':>11} {'I/O floor':>10} {'track/model':>12}")
    for session, p, n in runs:
        count, rate = render_rates(args.source, n, session, p, work)
        print(f"  {p.mode + ' (' + session.backend_name + ')':24} {count:6d} "
              f"{rate['model']:8.1f} {rate['save']:11.1f} {rate['track']:11.1f} "
              f"{rate['floor']:10.1f} {rate['track'] / rate['model']:11.2f}x")

    # Scrubbing: random frames from the page's server, against a keyframe-seeking decoder.
    t0 = time.perf_counter()
    review = Review(args.source, [(args.model, profile)], cache=work / "cache")
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    Review(args.source, [(args.model, profile)], cache=work / "cache").close()
    again = time.perf_counter() - t0
    server = ReviewServer(review).start()
    rng = random.Random(0)
    asked = [rng.randrange(len(review)) for _ in range(args.requests)]
    page = []
    for i in asked:
        t0 = time.perf_counter()
        with urllib.request.urlopen(f"{server.url}frame.jpg?i={i}", timeout=30) as r:
            r.read()
        page.append(time.perf_counter() - t0)
    server.close()
    cache = [timed(lambda i=i: review.frames.get(i)) for i in asked]
    review.close()
    print(f"review of {len(review)} frames: first open {first:.1f} s (maps + frame cache), "
          f"second {again:.2f} s (kept)")
    print(f"  frame request (HTTP, composed, JPEG)  {percentiles(page)}")
    print(f"  frame cache decode alone              {percentiles(cache)}")
    if Path(args.source).is_file():
        seeker = frames.SeekingDecoder(args.source)
        seeks = [timed(lambda i=i: seeker.get(i)) for i in asked[: args.seeks]]
        print(f"  keyframe seek + decode (PyAV)         {percentiles(seeks)}   "
              f"({len(seeker.keyframes)} keyframes in {len(seeker)} frames)")
        seeker.close()


if __name__ == "__main__":
    main()
