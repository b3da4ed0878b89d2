"""`carvis render`: sources → overlay → a file each (several: in parallel)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from carvis.cli.common import (
    add_executor_args,
    add_model_args,
    count,
    resolve_profile,
    stop_signals,
)
from carvis.errors import CarvisError


def add_parser(sub: Any) -> None:
    """The `render` subcommand's flags."""
    r = sub.add_parser("render", help="render a video, folder or synthetic clip with the overlay",
                       description="Every input frame becomes one output frame, in order.")
    r.add_argument("source", nargs="+", help="video file, folder of images, DonkeyCar tub, "
                   "or synthetic[:seed=S,frames=N,size=WxH]; several: each to its own file "
                   "in -o OUTDIR")
    r.add_argument("-o", "--output", required=True,
                   help="OUT.mp4 / .mkv (H.264), OUT.avi (MJPG), or a folder (no suffix) "
                   "for numbered PNGs; at the source's fps")
    add_executor_args(r, "several sources")
    r.add_argument("--format", choices=("mp4", "mkv", "avi", "png"), help="several sources: "
                   "what each output is (default mp4; png: a folder of frames)")
    r.add_argument("--fps", type=float, help="frame rate of a folder source (default 30)")
    r.add_argument("--max-frames", type=int, help="stop after this many frames")
    r.add_argument("--start", help="first frame: an index (120) or a time (12.5s, 1:05)")
    r.add_argument("--end", help="stop before this frame: an index or a time (12.5s)")
    r.add_argument("--where", action="append", metavar="KEY=VALUE", help="a tub's records "
                   "to keep, by a value (repeat to add; KEY!=VALUE leaves out): --where "
                   "user/mode=local keeps those the pilot drove")
    r.add_argument("--plot", action="store_true", help="a strip chart of the recorded and "
                   "predicted angle below the frame (turns the HUD on)")
    r.add_argument("--scale", type=int, metavar="N", help="scale the picture by N before the "
                   "HUD and labels are drawn (makemovie's --scale; default: small frames up to "
                   "at least 480 rows, e.g. x4 for DonkeyCar's 160x120; 1 keeps the size)")
    r.add_argument("--plot-seconds", type=float, default=5.0, metavar="S",
                   help="how many seconds the strip chart shows (default 5)")
    r.add_argument("--save-maps", metavar="TRACK", help="also keep every frame's raw map and "
                   "prediction in TRACK (.h5): re-render later without the model")
    r.add_argument("--maps", metavar="TRACK", help="re-render from a map track, no model: "
                   "threshold, colormap, normalisation and view from the flags / --profile")
    r.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    add_model_args(r, several="several: each source with each model, in OUTDIR/<model>/")


def cmd_render(args: argparse.Namespace) -> int:
    """`carvis render`: one source in this process, several through the batch's workers —
    both through carvis.jobs.render_job, the one render path."""
    if args.max_frames is not None and args.max_frames < 1:
        raise CarvisError(f"--max-frames {args.max_frames} must be at least 1")
    with stop_signals():
        if len(args.source) > 1 or len(args.model or ()) > 1 or args.scheduler or \
                args.jobs is not None or args.format is not None:
            return _render_batch(args)
        return _render_one(args)


def _options(args: argparse.Namespace) -> Any:
    """The RenderOptions the flags ask for (a map track's drawing flags kept apart)."""
    from carvis import jobs
    from carvis import profile as prof

    if args.maps:
        profile = prof.load(args.profile) if args.profile else None
        model = Path(args.model[0]) if args.model else None
        draw = tuple((k, getattr(args, k)) for k in ("threshold", "colormap", "view", "hud",
                                                      "compare")
                     if getattr(args, k, None) is not None)
    else:
        (profile, model), draw = resolve_profile(args), ()
    return jobs.RenderOptions(profile, model, args.backend, args.lambda_policy, args.fps,
                              args.start, args.end, args.max_frames, args.plot,
                              args.plot_seconds, args.hud,
                              save_maps=Path(args.save_maps) if args.save_maps else None,
                              maps=Path(args.maps) if args.maps else None, draw=draw,
                              scale=_scale(args.scale), pilot_type=args.pilot_type,
                              car_config=Path(args.car_config) if args.car_config else None,
                              where=tuple(args.where or ()))


def _scale(value: int | None) -> int | None:
    """--scale N, checked: 1..8 (None: the default, small frames up to 480 rows)."""
    if value is not None and not 1 <= value <= 8:
        raise CarvisError(f"--scale {value} is not valid; give a whole number 1..8 (1 keeps "
                          "the frame's size)")
    return value


def _render_one(args: argparse.Namespace) -> int:
    """One source to one output, with a progress bar; Ctrl-C keeps what was written."""
    from tqdm import tqdm

    from carvis import jobs

    options = _options(args)
    job = jobs.Job(args.source[0], Path(args.output))
    session = jobs.open_session(options)
    bars: list[Any] = []  # made when the job starts, after its start-up line

    def progress(kind: str, value: Any) -> None:
        if kind == "start":
            if not args.quiet:
                print(f"carvis: {value['describe']}", file=sys.stderr, flush=True)
            bars.append(tqdm(total=value["frames"], unit="frame", disable=args.quiet,
                             dynamic_ncols=True, desc=job.output.name))
        else:
            bars[0].update(value)

    try:
        outcome = jobs.render_job(job, options, session, progress)
    finally:
        for bar in bars:
            bar.close()
    if outcome.interrupted:
        print(f"carvis: interrupted: {count(outcome.frames, 'frame')} written to {args.output} "
              "(the file is complete up to there)", file=sys.stderr)
        return 130
    if outcome.error:
        raise CarvisError(outcome.error)
    for note in outcome.notes:
        warning = "warning: " if note.startswith("skipped") else ""
        print(f"carvis: {warning}{note}", file=sys.stderr)
    if args.maps:
        print(f"carvis: {count(outcome.frames, 'frame')} re-drawn from {args.maps} to "
              f"{args.output} (no model)", file=sys.stderr)
    elif not args.quiet:
        print(f"carvis: {count(outcome.frames, 'frame')} written to {args.output}",
              file=sys.stderr)
    return 0


def _render_batch(args: argparse.Namespace) -> int:
    """`carvis render A B … -o OUTDIR`: each to its own file; the exit status: how many failed."""
    from carvis import batch

    if args.save_maps or args.maps:
        raise CarvisError("--save-maps/--maps take one source and one track; render the "
                          "sources one at a time for their tracks")
    options = _options(args)
    jobs = batch.plan(args.source, args.output, args.format or "mp4", args.model or ())
    return run_jobs(jobs, options, args.output, scheduler=args.scheduler, workers=args.jobs,
                    quiet=args.quiet)


def run_jobs(jobs: list, options: Any, where_to: str, *, scheduler: str | None = None,
             workers: int | None = None, quiet: bool = False, work: Any = None,
             verb: str = "rendered") -> int:
    """A batch's jobs here (N processes) or on a Dask cluster, with one progress bar and a
    line per job; the exit status: how many failed (render --scheduler, review --prepare)."""
    import time

    from tqdm import tqdm

    from carvis import batch

    if scheduler and workers is not None:
        raise CarvisError("--jobs is for this machine's processes; with --scheduler the "
                          "cluster's workers run the jobs: drop one of them")
    work = work or batch.render_work
    workers = workers or batch.default_jobs()
    bar = tqdm(total=0, unit="frame", disable=quiet, dynamic_ncols=True,
               desc=f"0/{len(jobs)} jobs")
    failed: list[str] = []
    finished: list[batch.Outcome] = []

    def progress(number: int, kind: str, value: Any) -> None:
        if kind == "start":
            bar.total += value["frames"] or 0
            bar.refresh()
        elif kind == "again":  # its worker died: the job starts over elsewhere
            bar.total -= value["total"]
            bar.update(-value["frames"])
            tqdm.write(f"carvis: warning: {jobs[number].source} -> {jobs[number].output}: its "
                       "worker died mid-job; the job runs again from the start",
                       file=sys.stderr)
        else:
            bar.update(value)

    def done(o: Any) -> None:
        finished.append(o)
        if o.interrupted:
            return
        bar.set_description(f"{len(finished)}/{len(jobs)} jobs")
        if o.error:
            failed.append(o.job.source)
            tqdm.write(f"carvis: error: {o.job.source}: {o.error}", file=sys.stderr)
        elif not quiet:
            notes = "".join(f"; {n}" for n in o.notes)
            tqdm.write(f"carvis: {o.job.source} -> {o.job.output}: {o.frames} frames in "
                       f"{o.seconds:.1f} s{notes}", file=sys.stderr)

    t0 = time.perf_counter()
    try:
        if scheduler:
            where = _on_cluster(scheduler, jobs, options, progress, done, work)
        else:
            batch.run(jobs, options, workers, progress, done, work)
            where = f"{min(workers, len(jobs))} at a time"
    except KeyboardInterrupt:
        bar.close()
        cut = [o for o in finished if o.interrupted and o.frames]
        whole = [o for o in finished if not o.interrupted and not o.error]
        print(f"carvis: interrupted: {len(whole)} of {len(jobs)} {verb} to {where_to}"
              + "".join(f"; {o.job.output} stopped after {count(o.frames, 'frame')} (playable)"
                        for o in cut), file=sys.stderr)
        return 130
    finally:
        bar.close()
    gone = f"; {len(failed)} failed: {', '.join(failed)}" if failed else ""
    print(f"carvis: {len(jobs) - len(failed)} of {len(jobs)} {verb} to {where_to} in "
          f"{time.perf_counter() - t0:.1f} s, {where}{gone}", file=sys.stderr)
    return min(len(failed), 100)


def _on_cluster(address: str, jobs: list, options: Any, progress: Any, done: Any,
                work: Any) -> str:
    """The batch on a Dask cluster; where it ran, for the summary line."""
    from carvis import cluster

    client = cluster.connect(address)
    try:
        workers = len(client.scheduler_info().get("workers", {}))
        where = f"on {workers} Dask worker{'s' * (workers != 1)} at {client.scheduler.address}"
        cluster.run(jobs, options, client, progress, done, work)
    finally:
        client.close()
    return where
