"""A season's review tracks, computed ahead: each source's tracks and frame cache as a batch job.

`carvis review --prepare SOURCES… --model M [--model M2]` runs :func:`prepare_work` once per
source through the batch's executors (this machine's processes, or a Dask cluster with
--scheduler), so that opening any of them later (`carvis review SOURCE`, the season page) reads
them and loads no model. A worker writes into the review cache the client names (a path the
workers share); each track and the frame cache are written as ``.part`` and renamed when whole,
so a job run again after a worker died replaces what the lost attempt began.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from carvis import profile as prof
from carvis.backends.cache import cache_dir
from carvis.errors import CarvisError
from carvis.jobs import Job, Outcome, Throttle
from carvis.review.app import Review, source_key


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
    """What every source's tracks are made with (picklable: it goes to the workers)."""

    models: tuple[tuple[Path, prof.Profile], ...]
    cache: Path  # the review cache: $CARVIS_CACHE/review, a path the workers share
    backend: str = "auto"
    lambda_policy: str = "error"
    fps: float | None = None


def review_cache(cache: str | Path | None = None) -> Path:
    """Where review tracks and frame caches are kept."""
    return Path(cache) if cache is not None else cache_dir() / "review"


def plan(sources: Sequence[str], cache: Path) -> list[Job]:
    """One job per source, its output the source's folder in the review cache."""
    seen: dict[str, str] = {}
    jobs = []
    for source in sources:
        key = source_key(source)
        if key in seen:
            raise CarvisError(f"{seen[key]!r} is given twice (as {source!r}); give each source "
                              "once")
        seen[key] = source
        jobs.append(Job(str(source), cache / key))
    return jobs


def prepare_work(number: int, job: Job, options: PrepareOptions,
                 report: Callable[[str, Any], None] | None) -> Outcome:
    """One source's tracks (each model) and frame cache, computed and kept: a batch's work."""
    t0 = time.perf_counter()
    outcome = Outcome(job)

    def progress(what: str, total: int | None) -> Callable[[int], None]:
        report("start", {"frames": total, "describe": f"{Path(job.source).name}: {what}"})
        throttle = Throttle(report)
        passes.append(throttle)
        return throttle

    passes: list[Throttle] = []
    try:
        review = Review(job.source, list(options.models), backend=options.backend,
                        lambda_policy=options.lambda_policy, fps=options.fps,
                        progress=progress if report is not None else None,
                        cache=options.cache)
        for throttle in passes:
            throttle.flush()
        outcome.frames = len(review)
        outcome.notes.append(f"{len(review.tracks)} track{'s' * (len(review.tracks) != 1)}, "
                             f"{review.model_calls} frames computed now")
        review.close()
    except KeyboardInterrupt:
        outcome.interrupted = True
    except Exception as exc:  # noqa: BLE001 - one source's failure is its outcome
        outcome.error = str(exc) if isinstance(exc, CarvisError | OSError) else \
            f"{type(exc).__name__}: {exc}"
    outcome.seconds = time.perf_counter() - t0
    return outcome
