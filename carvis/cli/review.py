"""`carvis review`: a page to scrub a race or a tub, one or two models; a season's index; the
tracks of many runs computed ahead (here or on a Dask cluster)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from carvis.cli.common import (
    add_backend_args,
    add_executor_args,
    add_map_args,
    add_mode_args,
    add_model_arg,
    flag_changes,
    serve_token,
    stop_signals,
)
from carvis.errors import CarvisError


def add_parser(sub: Any) -> None:
    """The `review` subcommand's flags."""
    rv = sub.add_parser("review", help="a page to scrub a video, folder or tub: overlays, a "
                        "timeline, two models side by side; a season's runs in one index",
                        description="Maps are computed once per source and model (a progress "
                        "bar), kept, and re-drawn. A folder of tubs and videos given without "
                        "--model opens the season's index from their kept tracks.")
    rv.add_argument("source", nargs="+", help="video file, folder of images, DonkeyCar tub or "
                    "synthetic; or a season: a folder of tubs and videos (no --model); with "
                    "--prepare: several sources or seasons")
    g = rv.add_argument_group("models and overlay (override the profile)")
    add_model_arg(g, several="give it twice for two models side by side")
    g.add_argument("--profile", "-p", action="append", help="YAML profile: one for all "
                   "models or one per --model (default: a generic one)")
    add_map_args(g)
    add_backend_args(g)
    add_mode_args(rv)
    rv.add_argument("--serve", metavar="[HOST:]PORT", default="8090",
                    help="where the page is (default 127.0.0.1:8090)")
    rv.add_argument("--token", help="secret the page needs off loopback, on every route (made "
                    "up when not given; the address printed carries it)")
    rv.add_argument("--fps", type=float, help="frame rate of a folder source (default 30)")
    p = rv.add_argument_group("a season's tracks ahead of time")
    p.add_argument("--prepare", action="store_true", help="compute and keep every source's "
                   "tracks (and every run of a season folder), then stop: opening them later "
                   "is instant")
    add_executor_args(p, "--prepare")
    p.add_argument("--quiet", "-q", action="store_true", help="--prepare: no progress bar")


def cmd_review(args: argparse.Namespace) -> int:
    """`carvis review`: the maps once (a progress bar per model), then the page until Ctrl-C
    (or SIGTERM / SIGHUP, which stop it the same way); a season's index; or --prepare."""
    with stop_signals():
        if args.prepare:
            return _prepare(args)
        if args.jobs is not None or args.scheduler:
            raise CarvisError("--jobs and --scheduler compute tracks ahead: add --prepare")
        if len(args.source) > 1:
            raise CarvisError(f"the review page shows one source ({len(args.source)} given); "
                              "compute several ahead with --prepare, or give their folder "
                              "for the season's index")
        if not args.model:
            return _season(args)
        return _review(args)


def _profiles(args: argparse.Namespace) -> list:
    """One profile per --model: the --profile given (one for all, or one each) or a generic
    one, with the map flags over it (checked by Profile.replace, as for render)."""
    from carvis import profile as prof

    profiles = [prof.load(p) for p in args.profile or []] or [prof.generic()]
    if len(profiles) not in (1, len(args.model)):
        raise CarvisError(f"give one --profile for all models or one per --model "
                          f"({len(args.model)}), not {len(profiles)}")
    changes = flag_changes(args)
    return [p.replace(**changes) for p in profiles * (len(args.model) // len(profiles))]


def _serve(make: Any, args: argparse.Namespace, what: Any) -> int:
    """Serve a page until Ctrl-C: make(address, token) starts the server."""
    import threading

    from carvis.sinks.mjpeg import parse_address

    address = parse_address(args.serve)
    token = serve_token(address, args.token, False)
    server = make(address, token)
    print(f"carvis: {what(server)} at {server.url} (Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        print("carvis: review stopped", file=sys.stderr)
    finally:
        server.close()
    return 0


def _review(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from carvis.review.app import Review
    from carvis.review.server import ReviewServer

    profiles = _profiles(args)
    bars: list = []

    def progress(what: str, total: int | None):
        bars.append(tqdm(total=total, unit="frame", desc=what, dynamic_ncols=True))
        return bars[-1].update

    try:
        review = Review(args.source[0], list(zip(args.model, profiles, strict=True)),
                        backend=args.backend, lambda_policy=args.lambda_policy, fps=args.fps,
                        progress=progress)
    finally:
        for bar in bars:
            bar.close()
    try:
        return _serve(lambda address, token: ReviewServer(review, *address, token=token).start(),
                      args, lambda s: f"review of {review.name} ({len(review)} frames, "
                      f"{review.model_calls} computed now)")
    finally:
        review.close()


def _season(args: argparse.Namespace) -> int:
    """A season's index from the runs' kept tracks."""
    from carvis.review.prepare import review_cache
    from carvis.review.season import Season, is_season
    from carvis.review.server import SeasonServer

    folder = args.source[0]
    if not is_season(folder):
        raise CarvisError(f"{folder!r} is not a season folder (tubs and videos); give --model "
                          "to review one source")
    season = Season(folder, review_cache())
    try:
        return _serve(lambda address, token: SeasonServer(season, *address, token=token)
                      .start(), args, lambda s: f"season {season.name} ({len(season)} runs)")
    finally:
        season.close()


def _prepare(args: argparse.Namespace) -> int:
    """Every source's tracks computed and kept: here, or on a Dask cluster."""
    from carvis.cli.render import run_jobs
    from carvis.review import prepare
    from carvis.review.season import is_season, runs

    if not args.model:
        raise CarvisError("--prepare computes a model's tracks: give --model M [--model M2]")
    if len(args.model) > 2:
        raise CarvisError(f"review takes one or two models (--model M [--model M2]), got "
                          f"{len(args.model)}")
    sources: list[str] = []
    for given in args.source:
        sources += [str(r) for r in runs(given)] if is_season(given) else [given]
    for model in args.model:
        if not Path(model).is_file():
            raise CarvisError(f"{model}: model file not found; check the path")
    cache = prepare.review_cache().resolve()
    options = prepare.PrepareOptions(
        tuple((Path(m).resolve(), p) for m, p in zip(args.model, _profiles(args), strict=True)),
        cache, args.backend, args.lambda_policy, args.fps)
    jobs = prepare.plan(sources, cache)
    return run_jobs(jobs, options, str(cache), scheduler=args.scheduler, workers=args.jobs,
                    quiet=args.quiet, work=prepare.prepare_work, verb="prepared")
