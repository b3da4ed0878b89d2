"""`carvis score MODEL SOURCE`: which mode's map to trust (deletion / insertion, carvis.score)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from carvis.cli.common import add_backend_args, resolve_profile, stop_signals
from carvis.errors import CarvisError

DEFAULT_MODES = "activation,vbp,gradcam,saliency,occlusion,rise"


def add_parser(sub: Any) -> None:
    """The `score` subcommand's flags."""
    from carvis.settings import MODES, TARGETS

    s = sub.add_parser("score", help="which map to trust: every mode's deletion and insertion "
                       "scores on some frames, beside a random map",
                       description="Deletion / insertion (Petsiuk et al., RISE, 2018): the top "
                       "k%% of the input's pixels by a mode's map (k = 5..50) replaced by a "
                       "blurred frame, and the reverse; the steering target's mean change. "
                       "Higher is more faithful; a random map is the floor.")
    s.add_argument("model_path", metavar="MODEL", help="the car's model (.h5, .keras, .tflite, "
                   ".onnx)")
    s.add_argument("source", help="video file, folder of images, DonkeyCar tub, or synthetic")
    s.add_argument("--modes", default=None, help=f"comma-separated modes of: {', '.join(MODES)} "
                   f"(default: those of {DEFAULT_MODES} the model runs)")
    s.add_argument("--frames", type=int, default=12, metavar="N",
                   help="frames scored, spread evenly over the range (default 12)")
    s.add_argument("-o", "--output", default="score.json", help="the scores as JSON (default "
                   "score.json); the plot goes beside it as .png")
    s.add_argument("--plot", help="the curves' plot (PNG; default: the output with .png)")
    s.add_argument("--fps", type=float, help="frame rate of a folder source (default 30)")
    s.add_argument("--start", help="first frame: an index (120) or a time (12.5s, 1:05)")
    s.add_argument("--end", help="stop before this frame: an index or a time (12.5s)")
    s.add_argument("--profile", "-p", help="YAML profile (preprocessing, layer, target, and "
                   "occlusion / rise settings)")
    s.add_argument("--layer", "-l", help="layer for activation and gradcam: a name, an index, "
                   "or conv:N")
    s.add_argument("--channel", "-c", help="activation's channel: an index, mean or max")
    s.add_argument("--target", help=f"what the maps explain and the score measures: "
                   f"{', '.join(TARGETS)}, bin:K (default: predicted)")
    s.add_argument("--smoothgrad", metavar="N,SIGMA", help="saliency/guided: SmoothGrad")
    s.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    add_backend_args(s)
    s.set_defaults(threshold=None, colormap=None)


def cmd_score(args: argparse.Namespace) -> int:
    """`carvis score`: the table on stdout, the JSON and the plot written."""
    import cv2

    from carvis import score, settings, sources
    from carvis.session import ModelSession

    if args.frames < 1:
        raise CarvisError(f"--frames {args.frames} must be at least 1")
    output = Path(args.output)
    plot_path = Path(args.plot) if args.plot else output.with_suffix(".png")
    for path in (output, plot_path):
        for given in (args.model_path, args.source):
            if Path(given).exists() and path.exists() and path.resolve() == \
                    Path(given).resolve():
                raise CarvisError(f"{path} is an input ({given}); give another output name")
        if not path.parent.is_dir():
            raise CarvisError(f"{path.parent}: no such folder for {path.name}; make it first")
    args.model = args.model_path
    profile, model = resolve_profile(args)
    session = ModelSession(model, backend=args.backend, lambda_policy=args.lambda_policy)
    modes = _modes(args.modes, session, settings.MODES)
    with stop_signals(), sources.open_source(args.source, fps=args.fps) as source:
        start = sources.frame_position(args.start, "--start")
        end = sources.frame_position(args.end, "--end")
        expected = sources.count_frames(source, start, end)
        every = max(1, (expected or args.frames) // args.frames)
        frames = sources.select_frames(source, source.fps, start, end)
        picked = (f.image for i, f in enumerate(frames) if i % every == 0)
        scorer = score.Scorer(session, profile, modes)
        if not args.quiet:
            print(f"carvis: scoring {', '.join(modes)} on {args.frames} frames of "
                  f"{Path(args.source).name} (every {every}), {session.describe(profile.layer)}",
                  file=sys.stderr, flush=True)

        def progress(n: int) -> None:
            if not args.quiet:
                print(f"\rcarvis: {n}/{args.frames} frames", end="", file=sys.stderr,
                      flush=True)

        report = score.score_frames(scorer, _first(picked, args.frames), progress)
        if not args.quiet:
            print(file=sys.stderr)
    report["parameters"]["source"] = str(args.source)
    output.write_text(json.dumps(report, indent=2) + "\n")
    cv2.imwrite(str(plot_path), score.plot(report))
    print(f"{score.METHOD}\n")
    print(score.table(report))
    best = score.ranked(report)[0][0]
    print(f"\nmost faithful: {best}; written {output} and {plot_path}")
    return 0


def _first(items: Any, n: int) -> Any:
    for i, item in enumerate(items):
        if i >= n:
            return
        yield item


def _modes(text: str | None, session: Any, known: tuple[str, ...]) -> list[str]:
    """The modes asked for (checked), or the default ones this model runs."""
    if text:
        modes = [m.strip().lower() for m in text.split(",") if m.strip()]
        bad = [m for m in modes if m not in known]
        if bad or not modes:
            raise CarvisError(f"--modes {text!r}: {', '.join(bad) or 'none given'} is not a mode; "
                              f"choose from {', '.join(known)}")
        return list(dict.fromkeys(modes))
    forward_only = session.backend_name != "tensorflow" and session.model is None
    return [m for m in DEFAULT_MODES.split(",")
            if not (forward_only and m in ("gradcam", "saliency"))]
