"""`carvis render`: sources → overlay → a file each (several: in parallel)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

from carvis.cli.common import add_model_args, count, resolve_profile
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
    r.add_argument("--jobs", "-j", type=int, metavar="N", help="several sources: N at a time "
                   "in processes (default: one per core)")
    r.add_argument("--format", choices=("mp4", "mkv", "avi", "png"), help="several sources: "
                   "what each output is (default mp4; png: a folder of frames)")
    r.add_argument("--fps", type=float, help="frame rate of a folder source (default 30)")
    r.add_argument("--max-frames", type=int, help="stop after this many frames")
    r.add_argument("--start", help="first frame: an index (120) or a time (12.5s, 1:05)")
    r.add_argument("--end", help="stop before this frame: an index or a time (12.5s)")
    r.add_argument("--plot", action="store_true", help="a strip chart of the recorded and "
                   "predicted angle below the frame (turns the HUD on)")
    r.add_argument("--plot-seconds", type=float, default=5.0, metavar="S",
                   help="how many seconds the strip chart shows (default 5)")
    r.add_argument("--save-maps", metavar="TRACK", help="also keep every frame's raw map and "
                   "prediction in TRACK (.h5): re-render later without the model")
    r.add_argument("--maps", metavar="TRACK", help="re-render from a map track, no model: "
                   "threshold, colormap, normalisation and view from the flags / --profile")
    r.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    add_model_args(r)


def cmd_render(args: argparse.Namespace) -> int:
    from carvis import pipeline, sources
    from carvis.session import ModelSession
    from carvis.sinks.outputs import open_file_sink

    if len(args.source) > 1 or args.jobs is not None or args.format is not None:
        return _render_batch(args)
    args.source = args.source[0]
    if args.maps:
        return _render_from_track(args)
    profile, model_path = resolve_profile(args)
    if args.max_frames is not None and args.max_frames < 1:
        raise CarvisError(f"--max-frames {args.max_frames} must be at least 1")
    source = sources.open_source(args.source, fps=args.fps)
    with source:
        start = sources.frame_position(args.start, source.fps, "--start") or 0
        end = sources.frame_position(args.end, source.fps, "--end")
        frames = sources.select_frames(source, start, end)
        sink = open_file_sink(args.output, source.fps)
        session = ModelSession(model_path, backend=args.backend,
                               lambda_policy=args.lambda_policy)
        renderer = _steering_renderer(args, session, profile, source)
        recorder = None
        if args.save_maps:
            from carvis.review.track import Recorder

            recorder = renderer = Recorder(renderer, args.save_maps, source)
        if not args.quiet:
            print(f"carvis: {session.describe(renderer.layer_name)}", file=sys.stderr)
        total = source.frame_count
        if total is not None:
            total = max(0, min(total, end if end is not None else total) - start)
        if args.max_frames is not None:
            import itertools

            frames = itertools.islice(frames, args.max_frames)
            total = min(total, args.max_frames) if total else args.max_frames
        from tqdm import tqdm

        bar = tqdm(total=total, unit="frame", disable=args.quiet, dynamic_ncols=True,
                   desc=Path(args.output).name)
        written = 0
        try:
            with sink, recorder or contextlib.nullcontext():
                written = pipeline.render(frames, renderer, sink, progress=bar.update)
        except KeyboardInterrupt:
            bar.close()
            print(f"carvis: interrupted: {sink.frames} frames written to {args.output} "
                  "(the file is complete up to there)", file=sys.stderr)
            return 130
        finally:
            bar.close()
        skipped = getattr(source, "skipped", [])
        if skipped:
            names = ", ".join(Path(str(p)).name for p in skipped[:5])
            print(f"carvis: warning: skipped {count(len(skipped), 'unreadable image')} "
                  f"({names}{', ...' if len(skipped) > 5 else ''}); the output has one frame "
                  "per image read, numbered in order without them", file=sys.stderr)
        if not args.quiet:
            print(f"carvis: {count(written, 'frame')} written to {args.output}",
                  file=sys.stderr)
        if renderer.log.rows:
            print(f"carvis: {renderer.log.summary()}", file=sys.stderr)
    return 0


def _render_from_track(args: argparse.Namespace) -> int:
    """`carvis render SOURCE --maps TRACK -o OUT`: the track's maps re-drawn, no model."""
    from tqdm import tqdm

    from carvis import profile as prof
    from carvis import sources
    from carvis.review.compose import rerender
    from carvis.sinks.outputs import open_file_sink

    flags = {k: getattr(args, k, None) for k in ("threshold", "colormap", "view", "hud",
                                                   "compare")}
    with sources.open_source(args.source, fps=args.fps) as source, \
            open_file_sink(args.output, source.fps) as sink:
        bar = tqdm(total=source.frame_count, unit="frame", disable=args.quiet,
                   desc=Path(args.output).name)
        try:
            written = rerender(source, args.maps, sink,
                               prof.load(args.profile) if args.profile else None, flags,
                               model=args.model, progress=bar.update)
        finally:
            bar.close()
    print(f"carvis: {count(written, 'frame')} re-drawn from {args.maps} to {args.output} "
          "(no model)", file=sys.stderr)
    return 0


def _steering_renderer(args: argparse.Namespace, session: object, profile: object,
                       source: object) -> object:
    """The Renderer; on a tub (or with --plot) its HUD shows the recorded steering beside the
    model's unless --no-hud, and --plot charts both."""
    from carvis.batch import steering_renderer

    return steering_renderer(session, profile, source, plot=args.plot,
                             plot_seconds=args.plot_seconds, hud_on=args.hud)


def _render_batch(args: argparse.Namespace) -> int:
    """`carvis render A B … -o OUTDIR`: each to its own file; the exit status: how many failed."""
    import time

    from tqdm import tqdm

    from carvis import batch

    profile, model_path = resolve_profile(args)
    jobs = batch.plan(args.source, args.output, args.format or "mp4")
    workers = args.jobs or batch.default_jobs()
    settings = batch.BatchOptions(profile, model_path, args.backend, args.lambda_policy,
                                    args.fps, args.start, args.end, args.max_frames, args.plot,
                                    args.plot_seconds, args.hud)
    bar = tqdm(total=0, unit="frame", disable=args.quiet, dynamic_ncols=True,
               desc=f"0/{len(jobs)} files")
    failed: list[str] = []
    finished: list[batch.Outcome] = []

    def progress(_number: int, kind: str, value: int | None) -> None:
        if kind == "start":
            bar.total += value or 0
            bar.refresh()
        else:
            bar.update(value)

    def done(o: batch.Outcome) -> None:
        finished.append(o)
        bar.set_description(f"{len(finished)}/{len(jobs)} files")
        if o.error:
            failed.append(o.job.source)
            tqdm.write(f"carvis: error: {o.job.source}: {o.error}", file=sys.stderr)
        elif not args.quiet:
            notes = "".join(f"; {n}" for n in o.notes)
            tqdm.write(f"carvis: {o.job.source} -> {o.job.output}: {o.frames} frames in "
                       f"{o.seconds:.1f} s{notes}", file=sys.stderr)

    t0 = time.perf_counter()
    try:
        batch.run(jobs, settings, workers, progress, done)
    finally:
        bar.close()
    gone = f"; {len(failed)} failed: {', '.join(failed)}" if failed else ""
    print(f"carvis: {len(jobs) - len(failed)} of {len(jobs)} rendered to {args.output} in "
          f"{time.perf_counter() - t0:.1f} s, {min(workers, len(jobs))} at a time{gone}",
          file=sys.stderr)
    return min(len(failed), 100)
