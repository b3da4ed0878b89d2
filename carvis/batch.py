"""A season at once: many sources, each rendered to its own file, in parallel processes.

Each job is one source → one output (its stem + the format's suffix) in one output folder,
rendered by :func:`carvis.jobs.render_job` — the one render path. The jobs run in worker
processes (spawned, so nothing of the parent's threads or model is copied), each loading the
model once and rendering one file after another; a failing source is an outcome with its
one-line error, and the others go on. Progress comes back as events.

How many workers: one per usable core (``os.sched_getaffinity``). Each job's thread pools are
pinned so they do not multiply with the workers: OpenCV at one thread (``render()`` does it),
LiteRT at one thread (the session's default), and, when more than one job runs at a time,
libx264 at one thread (alone it would start ~1.5 per core). What is left per job is its three
pipeline threads (decode, model and overlay, encode and write), which wait on each other.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import queue
import re
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from carvis.errors import CarvisError
from carvis.jobs import Job, Outcome, RenderOptions, open_session, render_job
from carvis.sinks.table import check_not_input

log = logging.getLogger("carvis")

#: --format → the output's suffix ("" is a folder of numbered PNG frames).
FORMATS = {"mp4": ".mp4", "mkv": ".mkv", "avi": ".avi", "png": ""}

STOP_SECONDS = 10.0  # how long stopped workers get to close their files

#: A job's progress: (job number, kind, value) as carvis.jobs.Progress has them.
Progress = Callable[[int, str, Any], None]


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
    """One job per source, each to OUTDIR/<stem><suffix>; refused in one line before anything
    is written when two sources share a name or an output would be one of the sources."""
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
        check_not_input(target, sources_)
        taken[target] = source
        jobs.append(Job(str(source), target))
    return jobs


# -- the worker processes ---------------------------------------------------------------------
_worker: dict[str, Any] = {}  # this worker process' options, session and event queue


def _init_worker(options: RenderOptions, events: Any) -> None:
    import cv2

    cv2.setNumThreads(1)
    _worker.update(options=options, events=events, session=None, opened=False, busy=False)
    # Ctrl-C in a terminal reaches every process of the group: the parent alone decides, and
    # stops the workers with SIGTERM; a worker in a job closes its output first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_stop)


def _worker_stop(_signum: int, _frame: object) -> None:
    if _worker.get("busy"):
        _worker["stopping"] = True
        raise KeyboardInterrupt  # render_job closes the file and says how many frames
    os._exit(0)  # between jobs: nothing open


def _run_in_worker(number: int, job: Job) -> Outcome:
    options: RenderOptions = _worker["options"]
    if _worker.get("stopping"):
        return Outcome(job, interrupted=True)
    _worker["busy"] = True
    try:
        if not _worker["opened"]:
            _worker["session"], _worker["opened"] = open_session(options), True
        events = _worker["events"]
        return render_job(job, options, _worker["session"],
                          lambda kind, value: events.put((number, kind, value)))
    except KeyboardInterrupt:  # stopped while the model loaded
        return Outcome(job, interrupted=True)
    finally:
        _worker["busy"] = False


def run(jobs: Sequence[Job], options: RenderOptions, workers: int = 1,
        progress: Progress | None = None,
        done: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Render every job, `workers` at a time in processes (1: in this one); outcomes in order."""
    if workers < 1:
        raise CarvisError(f"--jobs {workers} must be at least 1")
    workers = min(workers, len(jobs)) or 1
    for folder in {job.output.parent for job in jobs}:  # -o OUTDIR is made if missing
        folder.mkdir(parents=True, exist_ok=True)
    if workers > 1 and options.encoder_threads is None:
        options = dataclasses.replace(options, encoder_threads=1)
    if workers == 1:
        session = open_session(options)
        outcomes = []
        for number, job in enumerate(jobs):
            report = (lambda kind, value, n=number: progress(n, kind, value)) if progress \
                else None
            outcomes.append(render_job(job, options, session, report))
            if done is not None:
                done(outcomes[-1])
            if outcomes[-1].interrupted:
                raise KeyboardInterrupt
        return outcomes
    return _run_pool(jobs, options, workers, progress, done)


def _run_pool(jobs: Sequence[Job], options: RenderOptions, workers: int,
              progress: Progress | None, done: Callable[[Outcome], None] | None
              ) -> list[Outcome]:
    context = multiprocessing.get_context("spawn")
    events = context.Queue()
    outcomes: list[Outcome | None] = [None] * len(jobs)
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context,
                                                initializer=_init_worker,
                                                initargs=(options, events)) as pool:
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
            _stop_workers(pool, futures, outcomes, jobs, done)
            raise
        _drain(events, progress)
    return [o for o in outcomes if o is not None]


def _stop_workers(pool: concurrent.futures.ProcessPoolExecutor, futures: dict, outcomes: list,
                  jobs: Sequence[Job], done: Callable[[Outcome], None] | None) -> None:
    """Ctrl-C, SIGTERM or SIGHUP to the batch: every worker closes its file and ends; the jobs
    they were in are reported interrupted, the others not started."""
    for future in futures:
        future.cancel()
    for process in list(getattr(pool, "_processes", {}).values()):
        with contextlib.suppress(OSError):
            os.kill(process.pid, signal.SIGTERM)
    finished, _ = concurrent.futures.wait(futures, timeout=STOP_SECONDS)
    for future in finished:
        i = futures[future]
        if outcomes[i] is None and not future.cancelled():
            try:
                outcomes[i] = future.result()
            except Exception:  # noqa: BLE001 - a worker that ended: its job did not finish
                outcomes[i] = Outcome(jobs[i], interrupted=True)
            if done is not None:
                done(outcomes[i])
    pool.shutdown(wait=False, cancel_futures=True)


def _drain(events: Any, progress: Progress | None) -> None:
    """Hand the workers' progress events to the caller."""
    while True:
        try:
            number, kind, value = events.get_nowait()
        except queue.Empty:
            return
        if progress is not None:
            progress(number, kind, value)
