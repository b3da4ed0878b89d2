"""A season at once: many sources (× models), each rendered to its own file, in parallel.

Each job is one source (and model) → one output (its stem + the format's suffix) in one output
folder, done by one work function (:func:`render_work`: :func:`carvis.jobs.render_job`, the
one render path) in one of two executors: :func:`run` here, worker processes on this machine
(spawned, so nothing of the parent's threads or model is copied), or
:func:`carvis.cluster.run`, the workers of a Dask cluster. Each worker loads a model once and
does one job after another; a failing job is an outcome with its one-line error, and the others
go on; on a cluster, where a job whose worker died runs again, each output is written under a
temporary name and renamed when whole. Progress comes back as events: ("start", {"frames", "describe"}), ("frames", n), and from a cluster ("again",
{"frames", "total"}) when a job whose worker died starts over.

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
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from carvis.errors import CarvisError
from carvis.jobs import Job, Outcome, RenderOptions, job_options, open_session, render_job
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


def plan(sources_: Sequence[str], outdir: str | Path, fmt: str = "mp4",
         models: Sequence[str | Path] = ()) -> list[Job]:
    """One job per source (per source and model when several models are given: each model's
    outputs in OUTDIR/<model name>/), each to <stem><suffix>; refused in one line before
    anything is written when two jobs share an output or an output would be a source."""
    if fmt not in FORMATS:
        raise CarvisError(f"--format {fmt!r} is not one carvis writes; use "
                          f"{', '.join(FORMATS)}")
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise CarvisError(f"-o {str(out)!r} is a file; several sources need a folder "
                          "(it is created if missing)")
    folders: dict[Path | None, Path] = {None: out}
    if len(models) > 1:
        folders = {}
        for model in map(Path, models):
            folder = out / output_name(str(model))
            if folder in folders.values():
                raise CarvisError(f"two --model files are named {model.stem!r}; their outputs "
                                  f"would share {str(folder)!r}: rename one")
            folders[model] = folder
    jobs: list[Job] = []
    taken: dict[Path, str] = {}
    for source in sources_:
        for model, folder in folders.items():
            target = folder / (output_name(source) + FORMATS[fmt])
            if target in taken:
                raise CarvisError(f"{taken[target]!r} and {source!r} would both be written to "
                                  f"{str(target)!r}; rename one or render them in two batches")
            check_not_input(target, sources_)
            taken[target] = source
            jobs.append(Job(str(source), target, model))
    return jobs


# -- the work of one job, in whichever worker runs it ------------------------------------------
#: A job's work in a worker: (number, job, options, report) -> Outcome. A module-level
#: function (it goes to the workers by name); report(kind, value) is a job's Progress.
Work = Callable[[int, Any, Any, Callable[[str, Any], None]], Outcome]

_opened = threading.local()  # this worker's (this thread's) model sessions, by model


def render_work(number: int, job: Job, options: RenderOptions,
                report: Callable[[str, Any], None] | None) -> Outcome:
    """One render job: the model's session opened once per worker, then carvis.jobs'
    render_job — the same in this process, a process of the pool or a Dask worker."""
    try:
        session = job_session(job, options)
    except KeyboardInterrupt:  # stopped while the model loaded
        return Outcome(job, interrupted=True)
    return render_job(job, job_options(job, options), session, report)


def job_session(job: Job, options: RenderOptions) -> Any:
    """The session a job needs, opened once per worker (per thread) and kept."""
    options = job_options(job, options)
    sessions = _opened.__dict__.setdefault("sessions", {})
    key = (options.model, options.backend, options.lambda_policy, options.maps)
    if key not in sessions:
        sessions[key] = open_session(options)
    return sessions[key]


_worker: dict[str, Any] = {}  # this pool process' work, options and event queue


def _init_worker(work: Work, options: Any, events: Any) -> None:
    import cv2

    cv2.setNumThreads(1)
    _worker.update(work=work, options=options, events=events, busy=False)
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
    if _worker.get("stopping"):
        return Outcome(job, interrupted=True)
    _worker["busy"] = True
    events = _worker["events"]
    try:
        return _worker["work"](number, job, _worker["options"],
                               lambda kind, value: events.put((number, kind, value)))
    except KeyboardInterrupt:
        return Outcome(job, interrupted=True)
    finally:
        _worker["busy"] = False


def make_folders(jobs: Sequence[Job]) -> None:
    """-o OUTDIR (and a model's folder in it) is made if missing."""
    for folder in {job.output.parent for job in jobs}:
        folder.mkdir(parents=True, exist_ok=True)


def one_thread_encoders(options: Any) -> Any:
    """Options whose x264 keeps to one thread (when several jobs run at a time)."""
    if getattr(options, "encoder_threads", 0) is None:
        return dataclasses.replace(options, encoder_threads=1)
    return options


def run(jobs: Sequence[Job], options: Any, workers: int = 1,
        progress: Progress | None = None, done: Callable[[Outcome], None] | None = None,
        work: Work = render_work) -> list[Outcome]:
    """Do every job, `workers` at a time in processes (1: in this one); outcomes in order.
    carvis.cluster.run does the same jobs with the same work on a Dask cluster."""
    if workers < 1:
        raise CarvisError(f"--jobs {workers} must be at least 1")
    workers = min(workers, len(jobs)) or 1
    make_folders(jobs)
    if workers > 1:
        options = one_thread_encoders(options)
    if workers == 1:
        try:
            return _run_here(jobs, options, progress, done, work)
        finally:
            _opened.__dict__.pop("sessions", None)  # this process' models go with the batch
    return _run_pool(jobs, options, workers, progress, done, work)


def _run_here(jobs: Sequence[Job], options: Any, progress: Progress | None,
              done: Callable[[Outcome], None] | None, work: Work) -> list[Outcome]:
    """The jobs one after another in this process."""
    if work is render_work:  # a model that does not load is one line, before any job
        for job in jobs:
            job_session(job, options)
    outcomes = []
    for number, job in enumerate(jobs):
        report = (lambda kind, value, n=number: progress(n, kind, value)) if progress \
            else None
        outcomes.append(work(number, job, options, report))
        if done is not None:
            done(outcomes[-1])
        if outcomes[-1].interrupted:
            raise KeyboardInterrupt
    return outcomes


def _run_pool(jobs: Sequence[Job], options: Any, workers: int, progress: Progress | None,
              done: Callable[[Outcome], None] | None, work: Work) -> list[Outcome]:
    context = multiprocessing.get_context("spawn")
    events = context.Queue()
    outcomes: list[Outcome | None] = [None] * len(jobs)
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context,
                                                initializer=_init_worker,
                                                initargs=(work, options, events)) as pool:
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
                    except CarvisError as exc:  # e.g. the model did not load in the worker
                        outcomes[i] = Outcome(jobs[i], error=str(exc))
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
