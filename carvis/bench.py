"""`carvis bench`: carvis against the I/O floor and the seed's method, same frames, same run.

Four ways through the same frames of one source, each writing an MJPG .avi with the same
sink (decoder, JPEG quality and muxer are the same for all but the seed):

- **carvis**: ``pipeline.render`` (decode thread → overlay → encode/write thread).
- **I/O loop**: the I/O-only loop: read a frame, crop it, write it, one after the other.
- **I/O overlapped**: the same threads as carvis (decode ‖ crop ‖ encode/write), no model and
  no overlay. carvis / this is what the overlay itself costs; on a machine whose cores are
  all busy with decoding and encoding it is the CPU share of the overlay.
- **seed**: the seed notebook's per-frame method (mahmud83/FeatureMaps), reimplemented:
  ``predict`` on the model cut at the layer, min–max, a matplotlib canvas per frame for the
  colormap, crop of the canvas, bicubic resize, threshold, AND, add, cv2.VideoWriter.

Each round runs every method once (the seed on fewer frames: it is slow), the first one
changing from round to round, so that load from other programs hits them alike; fps are
medians over the rounds and each ratio is the median of the per-round ratios. Start-up (model
load, conversion, tracing, opening the source) is excluded.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from carvis import handoff, models, pipeline, sources
from carvis.errors import CarvisError
from carvis.frame import Frame
from carvis.maps import StageTimes
from carvis.profile import Profile
from carvis.session import ModelSession
from carvis.sinks.files import AviSink
from carvis.tfquiet import quiet_environment


@dataclasses.dataclass
class RunResult:
    """One timed pass over the frames."""

    method: str
    frames: int
    seconds: float
    stages: dict[str, float]  # median ms per stage
    cpu_seconds: float = 0.0  # user + system time of the whole process during the run

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def _cpu() -> float:
    """CPU seconds (user + system) used by this process so far, all threads."""
    t = os.times()
    return t.user + t.system


class CropOnly:
    """The floor's 'renderer': the profile's ROI (and output size), nothing drawn."""

    def __init__(self, profile: Profile, crop: tuple[int, int, int, int] | None) -> None:
        self.profile = profile
        self.times = StageTimes()
        self._crop = crop

    def render(self, frame: Frame) -> np.ndarray:
        """The region the carvis render would write, untouched."""
        out = frame.image
        if self.profile.output == "roi" and self._crop is not None:
            t, b, lft, r = self._crop
            out = frame.image[t:b, lft:r]
        if self.profile.output_size is not None:
            out = cv2.resize(out, self.profile.output_size, interpolation=cv2.INTER_AREA)
        return out

    def finish(self) -> None:
        """Nothing to say at the end."""


def _frames(spec: str, n: int | None, fps: float | None) -> tuple[Any, Any]:
    source = sources.open_source(spec, fps=fps)
    frames = iter(source)
    if n is not None:
        frames = itertools.islice(frames, n)
    return source, frames


def _timed(frames: Any) -> Any:
    """(frame, seconds its read took) for each frame."""
    it = iter(frames)
    while True:
        t0 = time.perf_counter()
        frame = next(it, None)
        if frame is None:
            return
        yield frame, time.perf_counter() - t0


def _sink_stages(stages: dict[str, float], sink: AviSink) -> dict[str, float]:
    """The stage medians with the sink's own encode/write split added."""
    for name, ring in sink.timings.items():
        if ring:
            stages[name] = float(np.median(list(ring))) * 1e3
    return stages


def run_pipeline(method: str, spec: str, n: int | None, fps: float | None,
                 processor: Any, out: Path) -> RunResult:
    """One timed pass of pipeline.render with a renderer (carvis) or CropOnly (floor)."""
    source, frames = _frames(spec, n, fps)
    processor.times.samples.clear()  # shared with the renderer's halves: emptied, not replaced
    processor.times.size = 100_000
    with source:
        sink = AviSink(out, source.fps)
        sink.timings = {k: type(v)(maxlen=100_000) for k, v in sink.timings.items()}
        c0, t0 = _cpu(), time.perf_counter()
        with sink:
            written = pipeline.render(frames, processor, sink)
        seconds, cpu = time.perf_counter() - t0, _cpu() - c0
    stages = processor.times.median_ms()
    stages.pop("write", None)  # the sink's own split below is finer
    return RunResult(method, written, seconds, _sink_stages(stages, sink), cpu)


def run_io_loop(spec: str, n: int | None, fps: float | None, processor: CropOnly,
                out: Path) -> RunResult:
    """One timed pass of the plain I/O loop: read, crop, write; one thread."""
    source, frames = _frames(spec, n, fps)
    times = StageTimes(size=100_000)
    with source:
        sink = AviSink(out, source.fps)
        sink.timings = {k: type(v)(maxlen=100_000) for k, v in sink.timings.items()}
        written = 0
        c0, t0 = _cpu(), time.perf_counter()
        with sink:
            for frame, read in _timed(frames):
                times.add("decode", read)
                sink.write(processor.render(frame))
                written += 1
        seconds, cpu = time.perf_counter() - t0, _cpu() - c0
    return RunResult("loop", written, seconds, _sink_stages(times.median_ms(), sink), cpu)


class SeedMethod:
    """The seed notebook's per-frame method, on the Keras model cut at the profile's layer."""

    def __init__(self, model_path: Path, profile: Profile, lambda_policy: str = "error") -> None:
        quiet_environment()
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        self.plt, self.canvas_class = plt, FigureCanvasAgg
        model = models.load_model(model_path, lambda_policy=lambda_policy)
        layer = models.resolve_layer(model, profile.layer)
        # The seed built a K.function per frame; building the cut model once is kinder to it.
        self.model = models.truncated_model(model, layer)
        self.profile = profile
        self.channel = profile.channel if isinstance(profile.channel, int) else 0
        h, w = (int(d) for d in self.model.inputs[0].shape[1:3])
        self.input_size = (w, h)

    def figure(self, target: np.ndarray, dpi: float = 70.0) -> np.ndarray:
        """The seed's get_figure: imshow on a fresh matplotlib canvas, read back as RGB."""
        w, h = self.input_size
        fig = self.plt.figure(figsize=(w / dpi, h / dpi))
        width, height = fig.get_size_inches() * fig.get_dpi()
        canvas = self.canvas_class(fig)
        ax = fig.gca()
        ax.imshow(target, cmap=self.profile.colormap)
        ax.axis("off")
        self.plt.close()
        canvas.draw()
        rgba = np.asarray(canvas.buffer_rgba())  # the seed's tostring_rgb, removed since
        return rgba[:, :, :3].reshape(int(height), int(width), 3).astype("uint8")

    def run(self, spec: str, n: int | None, fps: float | None, out: Path) -> RunResult:
        """One timed pass: read, preprocess, predict, matplotlib, merge, VideoWriter."""
        source, frames = _frames(spec, n, fps)
        times = StageTimes(size=100_000)
        p = self.profile
        kernel = np.ones((2, 2), np.float32) / 4
        writer = None
        written = 0
        with source:
            crop = None
            c0, t0 = _cpu(), time.perf_counter()
            for frame, read in _timed(frames):
                image = frame.image
                if crop is None:
                    crop = (p.crop.pixels(*image.shape[:2]) if p.crop is not None
                            else (0, image.shape[0], 0, image.shape[1]))
                t, b, lft, r = crop
                b_ = time.perf_counter()
                a = b_ - read
                cropped = image[t:b, lft:r]
                dst = cv2.resize(cropped, self.input_size, interpolation=cv2.INTER_LANCZOS4)
                dst = cv2.filter2D(dst, -1, kernel)
                c = time.perf_counter()
                activations = self.model.predict(np.expand_dims(dst, axis=0), verbose=0)
                d = time.perf_counter()
                act = activations[0][:, :, self.channel]
                target = (act - act.min()) / (act.max() - act.min()) * 255
                fig = self.figure(target)
                fig = fig[9:63, 33:232]
                fig = cv2.resize(fig, (cropped.shape[1], cropped.shape[0]),
                                 interpolation=cv2.INTER_CUBIC)
                gray = cv2.cvtColor(fig, cv2.COLOR_BGR2GRAY)
                _, mask = cv2.threshold(gray, p.threshold, 255, cv2.THRESH_BINARY)
                masked = cv2.bitwise_and(fig, fig, mask=mask)
                merged = cv2.add(masked, cropped)
                e = time.perf_counter()
                if writer is None:
                    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"MJPG"),
                                             source.fps, (merged.shape[1], merged.shape[0]))
                writer.write(merged.astype("uint8"))
                f = time.perf_counter()
                written += 1
                for stage, seconds in (("decode", b_ - a), ("preprocess", c - b_),
                                       ("model", d - c), ("overlay", e - d), ("write", f - e)):
                    times.add(stage, seconds)
            if writer is not None:
                writer.release()
            seconds, cpu = time.perf_counter() - t0, _cpu() - c0
        return RunResult("seed", written, seconds, times.median_ms(), cpu)


def machine() -> str:
    """CPU model, cores, OS and library versions in one line."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from importlib.metadata import version

        litert = version("ai-edge-litert")
    except Exception:  # noqa: BLE001 - not installed
        litert = "-"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{cpu}, {cores} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, OpenCV {cv2.__version__}, "
            f"NumPy {np.__version__}, LiteRT {litert}")


STAGE_ORDER = ("decode", "preprocess", "model", "overlay", "encode", "write")


TITLES = {"carvis": "carvis", "tf": "carvis, TensorFlow", "loop": "I/O loop",
          "floor": "I/O overlapped", "seed": "seed"}


def report(results: dict[str, list[RunResult]], ratios: dict[str, list[float]], source: str,
           model: str, backend: str, frames: int, seed_note: str) -> str:
    """The benchmark as a Markdown table."""
    cols = [m for m in TITLES if results.get(m)]
    lines = [f"machine: {machine()}",
             f"source: {source} ({frames} frames); model: {model} (backend {backend})",
             "",
             "| stage, median ms per frame | " + " | ".join(TITLES[m] for m in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for stage in STAGE_ORDER:
        cells = []
        for m in cols:
            vals = [r.stages[stage] for r in results[m] if stage in r.stages]
            cells.append(f"{statistics.median(vals):.2f}" if vals else "–")
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    fps = {m: statistics.median(r.fps for r in results[m]) for m in cols}
    lines.append("| **throughput, fps** | " + " | ".join(f"**{fps[m]:.1f}**" for m in cols)
                 + " |")
    cpu = {m: statistics.median(r.cpu_seconds / r.frames * 1e3 for r in results[m])
           for m in cols}
    lines.append("| CPU ms per frame, all threads | "
                 + " | ".join(f"{cpu[m]:.1f}" for m in cols) + " |")
    runs = {m: len(results[m]) for m in cols}
    lines.append("| runs | " + " | ".join(str(runs[m]) for m in cols) + " |")
    lines.append("")
    for m, values in ratios.items():
        if values:
            name = ("carvis (LiteRT) / carvis (TensorFlow)" if m == "tf"
                    else f"carvis / {TITLES[m]}")
            digits = 1 if m == "seed" else 2
            lines.append(f"{name} = {statistics.median(values):.{digits}f} "
                         f"(median of {len(values)} side-by-side rounds: "
                         + ", ".join(f"{r:.{digits}f}" for r in values) + ")")
    if seed_note:
        lines.append(seed_note)
    return "\n".join(lines)


def bench(source: str, model_path: Path, profile: Profile, *, backend: str = "auto",
          lambda_policy: str = "error", frames: int | None = None, repeat: int = 3,
          seed_frames: int | None = 40, fps: float | None = None, tensorflow: bool = False,
          workdir: Path | None = None, log: Any = None) -> str:
    """Time every method on the same frames, round after round; the report as Markdown."""
    # tensorflow=True also times carvis on the TensorFlow backend in each round, beside LiteRT.
    log = log or logging.getLogger("carvis").info
    if repeat < 1:
        raise CarvisError(f"--repeat {repeat} must be at least 1")
    session = ModelSession(model_path, backend=backend, lambda_policy=lambda_policy)
    renderer = pipeline.make_renderer(session, profile)
    probe_source, probe = _frames(source, 1, fps)
    with probe_source:
        first = next(iter(probe), None)
        total = probe_source.frame_count
    if first is None:
        raise CarvisError(f"source {source!r} gives no frames")
    renderer.render(handoff.copied(first))  # warm-up: tracing, buffers, LUTs
    crop = renderer.maps.preprocess.roi.box(first.image)
    tf_renderer = None
    backend = renderer.maps.state.backend.name
    if tensorflow and backend != "tensorflow" and session.kind.name != "tflite":
        tf_session = ModelSession(model_path, backend="tensorflow", lambda_policy=lambda_policy)
        tf_renderer = pipeline.make_renderer(tf_session, profile)
        tf_renderer.render(handoff.copied(first))
    n = frames or total
    seed, seed_note = None, ""
    if seed_frames == 0:
        seed_note = "seed: not run (--seed-frames 0)"
    elif session.kind.name == "tflite":
        seed_note = "seed: not run (it needs the Keras model, not a .tflite)"
    elif importlib.util.find_spec("matplotlib") is None:
        seed_note = "seed: not run (its method draws with matplotlib: pip install matplotlib)"
    else:
        seed = SeedMethod(model_path, profile, lambda_policy)
        seed.model.predict(np.zeros((1,) + seed.model.inputs[0].shape[1:], np.float32),
                           verbose=0)  # warm-up: predict builds its function on first use
    m_seed = min(n, seed_frames) if n and seed_frames else (n or seed_frames)
    results: dict[str, list[RunResult]] = {m: [] for m in TITLES}
    ratios: dict[str, list[float]] = {"loop": [], "floor": [], "tf": [], "seed": []}
    with tempfile.TemporaryDirectory(prefix="carvis-bench-", dir=workdir) as tmp:
        out = Path(tmp) / "bench.avi"
        runs = {
            "loop": lambda: run_io_loop(source, n, fps, CropOnly(profile, crop), out),
            "floor": lambda: run_pipeline("floor", source, n, fps, CropOnly(profile, crop), out),
            "carvis": lambda: run_pipeline("carvis", source, n, fps, renderer, out),
        }
        if tf_renderer is not None:
            runs["tf"] = lambda: run_pipeline("tf", source, n, fps, tf_renderer, out)
        if seed is not None:
            runs["seed"] = lambda: seed.run(source, m_seed, fps, out)
        order = list(runs)
        for i in range(repeat):
            # A different method goes first each round, so a drift in the machine's load
            # does not always favour the same one.
            k = i % len(order)
            round_ = {m: runs[m]() for m in order[k:] + order[:k]}
            for m, r in round_.items():
                results[m].append(r)
                if m != "carvis":
                    ratios[m].append(round_["carvis"].fps / r.fps if r.fps else 0.0)
            log(f"round {i + 1}/{repeat}: " + ", ".join(
                f"{TITLES[m]} {r.fps:.1f} fps" for m, r in round_.items())
                + f" ({round_['carvis'].frames} frames)")
    if seed is not None:
        seed_note = (f"seed: the first {results['seed'][0].frames} of the same frames per round; "
                     "predict() on the model cut at the layer, built once (the seed rebuilt a "
                     "K.function every frame)")
    count = results["carvis"][0].frames
    return report(results, ratios, source, Path(model_path).name,
                  backend, count, seed_note)
