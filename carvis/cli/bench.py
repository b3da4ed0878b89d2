"""`carvis bench`: carvis against the I/O floor and the seed's method, side by side."""

from __future__ import annotations

import argparse
from typing import Any

from carvis.cli.common import add_model_args, resolve_profile
from carvis.errors import CarvisError


def add_parser(sub: Any) -> None:
    """The `bench` subcommand's flags."""
    be = sub.add_parser("bench", help="time carvis against the I/O floor and the seed's method",
                        description="Same frames, same run: carvis' render, the I/O floor "
                        "(decode, crop, write; no overlay) and the seed's per-frame method "
                        "(matplotlib canvas + predict). Prints per-stage medians and ratios.")
    be.add_argument("source", help="video file, folder of images, or synthetic[:...]")
    be.add_argument("--frames", type=int, help="frames per run (default: all)")
    be.add_argument("--repeat", type=int, default=3,
                    help="rounds; each runs every method once, in a rotating order (default 3)")
    be.add_argument("--seed-frames", type=int, default=40,
                    help="frames per round for the (slow) seed method; 0 skips it (default 40)")
    be.add_argument("--fps", type=float, help="frame rate of a folder source (default 30)")
    be.add_argument("--tensorflow", action="store_true",
                    help="also time carvis on the TensorFlow backend in each round")
    add_model_args(be)


def cmd_bench(args: argparse.Namespace) -> int:
    from carvis import bench

    profile, model_path = resolve_profile(args)
    if args.frames is not None and args.frames < 2:
        raise CarvisError(f"--frames {args.frames} must be at least 2")
    print(bench.bench(args.source, model_path, profile, backend=args.backend,
                      lambda_policy=args.lambda_policy, frames=args.frames,
                      repeat=args.repeat, seed_frames=args.seed_frames, fps=args.fps,
                      tensorflow=args.tensorflow))
    return 0
