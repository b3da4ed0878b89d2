"""Resident memory over a long render: is it flat? (The leak check of issue 4.)

Renders N frames (the race clip looped, by default 5,000 frames) through the real pipeline
and sink, samples VmRSS from /proc/self/status every --every frames, and prints the samples
and the growth after the warm-up.

    .venv/bin/python scripts/memcheck.py ../shared/data/axionaut/race.mp4 \
        --model axionaut.tflite --profile models/axionaut.yaml --frames 5000
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from carvis import pipeline, sources
from carvis import profile as prof
from carvis.session import ModelSession
from carvis.sinks import Sink
from carvis.sinks.files import AviSink


def status_kb(key: str) -> int:
    """A field of /proc/self/status in kB (VmRSS, VmHWM)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


class Sampling(Sink):
    """Wraps a sink; records (frames written, VmRSS MB) every `every` frames."""

    def __init__(self, inner: Sink, every: int) -> None:
        self.inner = inner
        self.every = every
        self.frames = 0
        self.samples: list[tuple[int, float]] = []

    def write(self, image) -> None:
        self.inner.write(image)
        self.frames += 1
        if self.frames % self.every == 0:
            self.samples.append((self.frames, status_kb("VmRSS") / 1024))

    def close(self) -> None:
        self.inner.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source")
    ap.add_argument("--model", required=True)
    ap.add_argument("--profile", required=True)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--frames", type=int, default=5000)
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--warmup", type=int, default=1000,
                    help="frames before the reference sample (queues, arenas fill up)")
    args = ap.parse_args(argv)
    profile = prof.load(args.profile)
    session = ModelSession(args.model, backend=args.backend)
    renderer = pipeline.make_renderer(session, profile)
    with sources.open_source(args.source, loop=True) as source, \
            tempfile.TemporaryDirectory(prefix="carvis-memcheck-") as tmp:
        sink = Sampling(AviSink(Path(tmp) / "long.avi", source.fps), args.every)
        with sink:
            n = pipeline.render(itertools.islice(source, args.frames), renderer, sink)
    print(f"frames rendered: {n}; backend {renderer.maps.state.backend.name}")
    print("frames  VmRSS MB")
    for frames, mb in sink.samples:
        print(f"{frames:6d}  {mb:8.1f}")
    ref = [mb for f, mb in sink.samples if f >= args.warmup]
    if len(ref) >= 2:
        print(f"after {args.warmup} frames: first {ref[0]:.1f} MB, last {ref[-1]:.1f} MB, "
              f"min {min(ref):.1f}, max {max(ref):.1f}, growth {ref[-1] - ref[0]:+.1f} MB")
    print(f"peak (VmHWM) {status_kb('VmHWM') / 1024:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
