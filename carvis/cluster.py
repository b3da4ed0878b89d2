"""A season on a cluster: the batch's jobs on the workers of a Dask cluster.

The same jobs and the same work function as :func:`carvis.batch.run` (a render, a review's
tracks); only the executor differs: a ``dask.distributed`` client sends each job to a worker,
which writes its output to the shared path it names (paths are made absolute first; each job's
output is staged and renamed when whole). A worker that dies mid-job has its job re-run by the
scheduler on another worker (up to distributed's ``allowed-failures``); the new attempt starts
over, and its progress replaces the lost one's ("again"). Progress comes from the workers as
Dask events on a topic of this batch's own.

Dask is an optional extra (``pip install carvis[cluster]``): imported here only, when asked for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import re
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from carvis import batch
from carvis.errors import CarvisError
from carvis.jobs import Job, Outcome

log = logging.getLogger("carvis")

INSTALL = "pip install carvis[cluster]"
POLL = 0.05  # seconds between two looks at the jobs


def import_distributed() -> Any:
    """dask.distributed, or one line saying how to get it."""
    try:
        import distributed
    except ImportError as exc:
        raise CarvisError(f"--scheduler needs Dask's distributed, which is not installed "
                          f"({exc}); {INSTALL}") from None
    return distributed


def connect(address: str, timeout: float | None = None) -> Any:
    """A Dask client of the scheduler at ADDRESS (tcp://host:port, host:port) or of a
    scheduler file; one line if there is none to reach."""
    distributed = import_distributed()
    import dask

    given = str(address)
    path = Path(given)
    kwargs: dict[str, Any] = {}
    if "://" not in given and (path.suffix == ".json" or path.exists() or "/" in given):
        if not path.is_file():
            raise CarvisError(f"--scheduler {given!r}: no scheduler file there; give the file "
                              "`dask scheduler --scheduler-file FILE` wrote, or tcp://HOST:PORT")
        kwargs["scheduler_file"] = str(path)
    elif re.fullmatch(r"(?:[a-z]+://)?[\w.\-\[\]:]+:[0-9]{1,5}", given, re.ASCII):
        kwargs["address"] = given
    else:
        raise CarvisError(f"--scheduler {given!r} is not a scheduler's address; give "
                          "tcp://HOST:PORT (e.g. tcp://lab-server:8786) or a scheduler file")
    seconds = timeout if timeout is not None else dask.utils.parse_timedelta(
        dask.config.get("distributed.comm.timeouts.connect"), default="s")
    try:
        # Its own lines (connection retries) are the client's business, not the user's.
        with _quiet("distributed"):
            return distributed.Client(timeout=seconds, set_as_default=False, **kwargs)
    except (OSError, TimeoutError, ValueError) as exc:
        where = kwargs.get("address") or f"the address in {given}"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CarvisError(f"cannot reach the Dask scheduler at {where} within {seconds:g} s "
                          f"({reason[:160]}); start one (dask scheduler) or check the "
                          "address") from None


@contextlib.contextmanager
def _quiet(name: str) -> Any:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _remote(job: Job) -> Job:
    """The job with absolute paths (a worker's working folder is not this one's), staged: a
    job may run again after its worker died, and the two attempts must never mix."""
    source = job.source
    if Path(source).exists():
        source = str(Path(source).resolve())
    model = Path(job.model).resolve() if job.model is not None else None
    return dataclasses.replace(job, source=source, output=job.output.resolve(), model=model,
                               staged=True)


def _absolute(options: Any) -> Any:
    """Options whose model path is absolute (the others stay as given)."""
    model = getattr(options, "model", None)
    if isinstance(model, Path):
        return dataclasses.replace(options, model=model.resolve())
    return options


def task(work: batch.Work, number: int, job: Job, options: Any, topic: str) -> Outcome:
    """One job on a Dask worker: the batch's work, its progress sent as events."""
    import cv2
    from distributed import get_worker

    cv2.setNumThreads(1)
    worker = get_worker()

    def report(kind: str, value: Any) -> None:
        worker.log_event(topic, [number, kind, value])

    report("begin", None)
    try:
        return work(number, job, options, report)
    except Exception as exc:  # noqa: BLE001 - the job's outcome, as in the local pool
        return Outcome(job, error=str(exc) if isinstance(exc, CarvisError) else
                       f"{type(exc).__name__}: {exc}")


class _Tally:
    """The events of the workers as the batch's progress: a job begun again takes back what
    its lost attempt had counted."""

    def __init__(self, progress: batch.Progress | None) -> None:
        self.progress = progress
        self.events: queue.Queue = queue.Queue()
        self.begun: set[int] = set()
        self.frames: dict[int, int] = {}
        self.total: dict[int, int] = {}
        self.finished: set[int] = set()

    def __call__(self, event: Any) -> None:
        """A Dask event (time, message), handed over from the client's thread."""
        self.events.put(event[1])

    def drain(self) -> None:
        while True:
            try:
                number, kind, value = self.events.get_nowait()
            except queue.Empty:
                return
            if number not in self.finished:
                self._take(number, kind, value)

    def _take(self, number: int, kind: str, value: Any) -> None:
        if kind == "begin":
            if number in self.begun:
                self._say(number, "again", {"frames": self.frames.pop(number, 0),
                                            "total": self.total.pop(number, 0)})
            self.begun.add(number)
            return
        if kind == "start":
            self.total[number] = self.total.get(number, 0) + ((value or {}).get("frames") or 0)
        elif kind == "frames":
            self.frames[number] = self.frames.get(number, 0) + value
        self._say(number, kind, value)

    def finish(self, number: int, outcome: Outcome) -> None:
        """A job's outcome: the frames its events have not told yet are counted now."""
        self.drain()
        missing = outcome.frames - self.frames.get(number, 0)
        if missing > 0 and not outcome.error:
            self._say(number, "frames", missing)
        self.finished.add(number)

    def _say(self, number: int, kind: str, value: Any) -> None:
        if self.progress is not None:
            self.progress(number, kind, value)


def run(jobs: Sequence[Job], options: Any, client: Any, progress: batch.Progress | None = None,
        done: Callable[[Outcome], None] | None = None, work: batch.Work = batch.render_work
        ) -> list[Outcome]:
    """Do every job on the cluster behind client; outcomes in order (Ctrl-C cancels the jobs
    not started and raises KeyboardInterrupt)."""
    batch.make_folders(jobs)
    options = _absolute(batch.one_thread_encoders(options))
    topic = f"carvis-{uuid.uuid4().hex[:12]}"
    tally = _Tally(progress)
    client.subscribe_topic(topic, tally)
    futures = {client.submit(task, work, i, _remote(job), options, topic, pure=False,
                             key=f"{topic}-{i}"): i for i, job in enumerate(jobs)}
    outcomes: list[Outcome | None] = [None] * len(jobs)
    try:
        while futures:
            tally.drain()
            for future in [f for f in futures if f.done()]:
                i = futures.pop(future)
                outcome = _outcome(future, jobs[i])
                outcomes[i] = outcome
                tally.finish(i, outcome)
                if done is not None:
                    done(outcome)
            time.sleep(POLL)
    except BaseException:
        with contextlib.suppress(Exception):
            client.cancel(list(futures))
        raise
    finally:
        with contextlib.suppress(Exception):
            client.unsubscribe_topic(topic)
    return [o for o in outcomes if o is not None]


def _outcome(future: Any, job: Job) -> Outcome:
    """A finished future as the job's outcome, the job as the caller gave it."""
    try:
        outcome = future.result()
    except Exception as exc:  # noqa: BLE001 - KilledWorker, a lost connection, ...
        name = type(exc).__name__
        if name == "KilledWorker":
            return Outcome(job, error="every worker that took it died (Dask's allowed-failures "
                                      "reached); see the workers' logs")
        return Outcome(job, error=f"{name}: {str(exc).splitlines()[0] if str(exc) else ''}")
    return dataclasses.replace(outcome, job=job)
