"""`carvis review`: a page to scrub a race or a tub, one or two models."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from carvis.cli.common import add_backend_args, serve_token, stop_signals
from carvis.errors import CarvisError


def add_parser(sub: Any) -> None:
    """The `review` subcommand's flags."""
    rv = sub.add_parser("review", help="a page to scrub a video, folder or tub: overlays, a "
                        "timeline, two models side by side", description="Maps are computed "
                        "once per source and model (a progress bar), kept, and re-drawn.")
    rv.add_argument("source", help="video file, folder of images, DonkeyCar tub or synthetic")
    rv.add_argument("--model", "-m", action="append", required=True,
                    help="model file; give it twice for two models side by side")
    rv.add_argument("--profile", "-p", action="append", help="YAML profile: one for all "
                    "models or one per --model (default: a generic one)")
    rv.add_argument("--serve", metavar="[HOST:]PORT", default="8090",
                    help="where the page is (default 127.0.0.1:8090)")
    rv.add_argument("--token", help="secret the page needs off loopback, on every route (made "
                    "up when not given; the address printed carries it)")
    add_backend_args(rv)
    rv.add_argument("--fps", type=float, help="frame rate of a folder source (default 30)")


def cmd_review(args: argparse.Namespace) -> int:
    """`carvis review`: the maps once (a progress bar per model), then the page until Ctrl-C
    (or SIGTERM / SIGHUP, which stop it the same way)."""
    with stop_signals():
        return _review(args)


def _review(args: argparse.Namespace) -> int:
    import threading

    from tqdm import tqdm

    from carvis import profile as prof
    from carvis.review.app import Review
    from carvis.review.server import ReviewServer
    from carvis.sinks.mjpeg import parse_address

    address = parse_address(args.serve)
    token = serve_token(address, args.token, False)
    profiles = [prof.load(p) for p in args.profile or []] or [prof.generic()]
    if len(profiles) not in (1, len(args.model)):
        raise CarvisError(f"give one --profile for all models or one per --model "
                          f"({len(args.model)}), not {len(profiles)}")
    bars: list = []

    def progress(what: str, total: int | None):
        bars.append(tqdm(total=total, unit="frame", desc=what, dynamic_ncols=True))
        return bars[-1].update

    try:
        review = Review(args.source, list(zip(args.model, profiles * len(args.model))),
                        backend=args.backend, fps=args.fps, progress=progress)
    finally:
        for bar in bars:
            bar.close()
    server = ReviewServer(review, *address, token=token).start()
    print(f"carvis: review of {review.name} ({len(review)} frames, {review.model_calls} "
          f"computed now) at {server.url} (Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        print("carvis: review stopped", file=sys.stderr)
    finally:
        server.close()
        review.close()
    return 0
