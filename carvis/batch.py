"""A season at once: many sources, each rendered to its own file, in parallel processes.

Each job is one source → one output (its stem + the format's suffix) in one output folder. The
jobs run in worker processes (spawned, so nothing of the parent's threads or model is copied),
each loading the model once and rendering one file after another; a failing source is an
outcome with its one-line error, and the others go on. Progress comes back as events.

How many workers: one per usable core (``os.sched_getaffinity``). Each job's thread pools are
pinned so they do not multiply with the workers: OpenCV at one thread (``render()`` does it),
LiteRT at one thread (the session's default), and, when more than one job runs at a time,
libx264 at one thread (alone it would start ~1.5 per core). What is left per job is its three
pipeline threads (decode, model and overlay, encode and write), which wait on each other.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import logging
import multiprocessing
import os
import queue
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from carvis import hud, pipeline, sources
from carvis.errors import CarvisError
from carvis.profile import Profile
from carvis.session import ModelSession
from carvis.sinks import Sink
from carvis.sinks.outputs import open_file_sink
from carvis.sinks.video import VideoSink

log = logging.getLogger("carvis")

#: --format → the output's suffix ("" is a folder of numbered PNG frames).
FORMATS = {"mp4": ".mp4", "mkv": ".mkv", "avi": ".avi", "png": ""}
PROGRESS_EVERY = 0.25  # seconds between two progress events of one job


@dataclasses.dataclass(frozen=True)
class Job:
    """One source and the file (or PNG folder) it is rendered to."""

    source: str
    output: Path


@dataclasses.dataclass(frozen=True)
class BatchOptions:
    """What every job of a batch is rendered with (picklable: it goes to the workers)."""

    profile: Profile
    model: Path
    backend: str = "auto"
    lambda_policy: str = "error"
    fps: float | None = None
    start: str | None = None
    end: str | None = None
    max_frames: int | None = None
    plot: bool = False
    plot_seconds: float = 5.0
    hud: bool | None = None
    encoder_threads: int | None = None


@dataclasses.dataclass
class Outcome:
    """How one job went: frames written, seconds, and its error (None if it finished)."""

    job: Job
    frames: int = 0
    seconds: float = 0.0
    error: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)


#: A job's progress: (job number, "start" with its expected frame count or None, or "frames"
#: with frames written since the last event).
Progress = Callable[[int, str, int | None], None]


def default_jobs() -> int:
    """One worker per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def output_name(source: str) -> str:
    """The output's stem for a source: its file or folder name ('synthetic:seed=3' made safe)."""
    name = Path(str(source).rstrip("/\\")).name
    stem = Path(name).stem if Path(name).suffix else name
    return re.sub(r"[^\w.-]+", "_", stem).strip("_") or "output"


def plan(sources_: Sequence[str], outdir: str | Path, fmt: str = "mp4") -> list[Job]:
    """One job per source, each to OUTDIR/<stem><suffix>; two sources on one name: an error."""
    if fmt not in FORMATS:
        raise CarvisError(f"--format {fmt!r} is not one carvis writes; use "
                          f"{', '.join(FORMATS)}")
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise CarvisError(f"-o {str(out)!r} is a file; several sources need a folder "
                          "(it is created if missing)")
    jobs: list[Job] = []
    taken: dict[Path, str] = {}
    for source in sources_:
        target = out / (output_name(source) + FORMATS[fmt])
        if target in taken:
            raise CarvisError(f"{taken[target]!r} and {source!r} would both be written to "
                              f"{str(target)!r}; rename one or render them in two batches")
        taken[target] = source
        jobs.append(Job(str(source), target))
    return jobs


def steering_renderer(session: ModelSession, profile: Profile, source: Any, *,
                      plot: bool = False, plot_seconds: float = 5.0,
                      hud_on: bool | None = None) -> pipeline.Renderer:
    """The Renderer; on a tub (or with --plot) its HUD shows the recorded steering beside the
    model's unless the HUD is turned off, and --plot charts both."""
    if plot and hud_on is False:
        raise CarvisError("--plot charts the HUD's steering; drop --no-hud")
    chart = hud.StripChart(plot_seconds, source.fps) if plot else None
    tub = hud_on is None and bool(plot or getattr(source, "records", None))
    try:
        return pipeline.Renderer(session, profile.replace(hud=True) if tub else profile,
                                 chart=chart)
    except CarvisError as exc:  # a tub, and a model without a steering output for the HUD
        if not tub or plot:
            raise
        log.info("note: no steering HUD (%s)", exc)
        return pipeline.Renderer(session, profile, chart=chart)


def expected_frames(count: int | None, start: int, end: int | None,
                    max_frames: int | None) -> int | None:
    """How many frames a render of [start, end) of `count` frames, at most max_frames, writes."""
    if count is not None:
        count = max(0, min(count, end if end is not None else count) - start)
    if max_frames is not None:
        count = min(count, max_frames) if count else max_frames
    return count


def _open_sink(path: Path, fps: float, threads: int | None) -> Sink:
    if threads and path.suffix.lower() in (".mp4", ".mkv"):
        return VideoSink(path, fps, threads=threads)
    return open_file_sink(path, fps)


def render_job(job: Job, settings: BatchOptions, session: ModelSession,
               progress: Callable[[str, int | None], None] | None = None) -> Outcome:
    """Render one source to its output in this process; errors become the outcome's line."""
    t0 = time.perf_counter()
    outcome = Outcome(job)
    sink: Sink | None = None
    try:
        with sources.open_source(job.source, fps=settings.fps) as source:
            start = sources.frame_position(settings.start, source.fps, "--start") or 0
            end = sources.frame_position(settings.end, source.fps, "--end")
            frames = sources.select_frames(source, start, end)
            if settings.max_frames is not None:
                frames = itertools.islice(frames, settings.max_frames)
            renderer = steering_renderer(session, settings.profile, source, plot=settings.plot,
                                         plot_seconds=settings.plot_seconds, hud_on=settings.hud)
            job.output.parent.mkdir(parents=True, exist_ok=True)
            sink = _open_sink(job.output, source.fps, settings.encoder_threads)
            if progress is not None:
                progress("start", expected_frames(source.frame_count, start, end,
                                                  settings.max_frames))
            throttle = _Throttle(progress) if progress is not None else None
            with sink:
                outcome.frames = pipeline.render(frames, renderer, sink, progress=throttle)
            if throttle is not None:
                throttle.flush()
            skipped = getattr(source, "skipped", [])
            if skipped:
                outcome.notes.append(f"skipped {len(skipped)} unreadable image(s)")
            if renderer.log.rows:
                outcome.notes.append(renderer.log.summary())
    except Exception as exc:  # noqa: BLE001 - one job's failure is its outcome, not the batch's
        outcome.error = str(exc) if isinstance(exc, CarvisError | OSError) else \
            f"{type(exc).__name__}: {exc}"
        outcome.frames = getattr(sink, "frames", 0) if sink is not None else 0
    outcome.seconds = time.perf_counter() - t0
    return outcome


class _Throttle:
    """render()'s per-frame progress as a "frames" event at most every PROGRESS_EVERY s."""

    def __init__(self, progress: Callable[[str, int | None], None]) -> None:
        self.progress, self.pending, self.last = progress, 0, time.monotonic()

    def __call__(self, n: int) -> None:
        self.pending += n
        if time.monotonic() - self.last >= PROGRESS_EVERY:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.progress("frames", self.pending)
        self.pending, self.last = 0, time.monotonic()


# -- the worker processes ---------------------------------------------------------------------
_worker: dict[str, Any] = {}  # this worker process' settings, session and event queue


def _init_worker(settings: BatchOptions, events: Any) -> None:
    import cv2

    cv2.setNumThreads(1)
    _worker.update(settings=settings, events=events, session=None)


def _run_in_worker(number: int, job: Job) -> Outcome:
    settings: BatchOptions = _worker["settings"]
    if _worker["session"] is None:
        _worker["session"] = ModelSession(settings.model, backend=settings.backend,
                                          lambda_policy=settings.lambda_policy)
    events = _worker["events"]
    return render_job(job, settings, _worker["session"],
                      lambda kind, value: events.put((number, kind, value)))


def run(jobs: Sequence[Job], settings: BatchOptions, workers: int = 1,
        progress: Progress | None = None,
        done: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Render every job, `workers` at a time in processes (1: in this one); outcomes in order."""
    if workers < 1:
        raise CarvisError(f"--jobs {workers} must be at least 1")
    workers = min(workers, len(jobs)) or 1
    if workers > 1 and settings.encoder_threads is None:
        settings = dataclasses.replace(settings, encoder_threads=1)
    if workers == 1:
        session = ModelSession(settings.model, backend=settings.backend,
                               lambda_policy=settings.lambda_policy)
        outcomes = []
        for number, job in enumerate(jobs):
            report = (lambda kind, value, n=number: progress(n, kind, value)) if progress \
                else None
            outcomes.append(render_job(job, settings, session, report))
            if done is not None:
                done(outcomes[-1])
        return outcomes
    return _run_pool(jobs, settings, workers, progress, done)


def _run_pool(jobs: Sequence[Job], settings: BatchOptions, workers: int,
              progress: Progress | None, done: Callable[[Outcome], None] | None
              ) -> list[Outcome]:
    context = multiprocessing.get_context("spawn")
    events = context.Queue()
    outcomes: list[Outcome | None] = [None] * len(jobs)
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context,
                                                initializer=_init_worker,
                                                initargs=(settings, events)) as pool:
        futures = {pool.submit(_run_in_worker, i, job): i for i, job in enumerate(jobs)}
        pending = set(futures)
        try:
            while pending:
                finished, pending = concurrent.futures.wait(pending, timeout=0.1)
                _drain(events, progress)
                for future in finished:
                    i = futures[future]
                    try:
                        outcomes[i] = future.result()
                    except Exception as exc:  # noqa: BLE001 - a worker that died
                        outcomes[i] = Outcome(jobs[i], error=f"the worker process died ({exc})")
                    if done is not None:
                        done(outcomes[i])
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        _drain(events, progress)
    return [o for o in outcomes if o is not None]


def _drain(events: Any, progress: Progress | None) -> None:
    """Hand the workers' progress events to the caller."""
    while True:
        try:
            number, kind, value = events.get_nowait()
        except queue.Empty:
            return
        if progress is not None:
            progress(number, kind, value)
