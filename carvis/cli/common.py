"""What several commands share: the model, mode and backend flags, the profile they ask for."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from carvis.backends import tensorflow_available
from carvis.errors import CarvisError


def add_backend_args(p: Any, backend: bool = True) -> None:
    """--backend and --lambda, with their help (every command that loads a model)."""
    if backend:
        p.add_argument("--backend", choices=("auto", "tensorflow", "litert"), default="auto",
                       help="inference backend: auto (LiteRT when installed, converting a Keras "
                       "model once and caching it; else TensorFlow), tensorflow or litert")
    p.add_argument("--lambda", dest="lambda_policy", choices=("error", "identity"),
                   default="error", help="a Lambda layer (Python code carvis will not run): "
                   "error (say which), or identity (skip it; do its scaling in the profile)")


def add_model_arg(g: Any, several: str | None = None, required: bool = False) -> None:
    """--model: one model file, or (several: what more than one does) one per --model."""
    what = ("car model: .h5 (Keras 1/2/3), .keras, .tflite or .onnx (default: the project's "
            "own models/default.keras)") if not required else "model file"
    g.add_argument("--model", "-m", action="append" if several else "store", required=required,
                   help=what + (f"; {several}" if several else ""))


def add_map_args(g: Any) -> None:
    """--layer, --channel, --threshold, --colormap: what render, run and review override."""
    g.add_argument("--layer", "-l", help="layer: a name, an index, or conv:N (N-th conv layer)")
    g.add_argument("--channel", "-c", help="channel index, or mean / max over channels")
    g.add_argument("--threshold", "-t", type=float, help="mask threshold on the 0..255 map")
    g.add_argument("--colormap", help="OpenCV colormap name (inferno, jet, turbo, ...)")


def add_executor_args(g: Any, what: str) -> None:
    """--jobs and --scheduler: where a batch's jobs (render, review --prepare) run."""
    g.add_argument("--jobs", "-j", type=int, metavar="N", help=f"{what}: N at a time in "
                   "processes (default: one per core)")
    g.add_argument("--scheduler", metavar="ADDRESS", help=f"{what}: on the workers of a Dask "
                   "cluster instead (tcp://HOST:PORT or a scheduler file; what they write on "
                   "a path they share; needs carvis[cluster])")


def add_model_args(p: argparse.ArgumentParser, several: str | None = None) -> None:
    g = p.add_argument_group("model and overlay (override the profile)")
    add_model_arg(g, several)
    g.add_argument("--profile", "-p", help="YAML profile (default: models/default.yaml, or a "
                   "generic one when --model is given)")
    add_map_args(g)
    add_backend_args(g)
    d = p.add_argument_group("a DonkeyCar pilot (read from the model's names without these)")
    d.add_argument("--type", dest="pilot_type", metavar="TYPE",
                   help="its type, as makemovie's --type: linear, categorical, inferred, memory, "
                   "imu, behavior, localizer, rnn, 3d, latent (tflite_ prefixes allowed)")
    d.add_argument("--config", dest="car_config", metavar="CONFIG.PY", help="the car's "
                   "config.py (myconfig.py beside it applied on top; read, never run): the "
                   "throttle range, the image size, the transformations its pilot sees")
    add_mode_args(p)


def add_mode_args(p: argparse.ArgumentParser) -> None:
    from carvis.settings import MODES, TARGETS

    g = p.add_argument_group("what the map shows (override the profile)")
    g.add_argument("--mode", choices=MODES, help="activation: the layer's channel (default); "
                   "vbp: VisualBackProp; gradcam, saliency, guided, guided-gradcam, cam "
                   "(gradient modes need --backend tensorflow or auto)")
    g.add_argument("--target", help=f"what the map explains: {', '.join(TARGETS)}, bin:K, "
                   "layer (mean of --layer) or layer:L (default: predicted)")
    g.add_argument("--smoothgrad", metavar="N,SIGMA", help="saliency/guided: average N noisy "
                   "copies, noise SIGMA x the input's value range (e.g. 16,0.15)")
    g.add_argument("--view", choices=("overlay", "grid"),
                   help="overlay on the frame, or a grid of all the layer's channels")
    g.add_argument("--hud", action=argparse.BooleanOptionalAction, default=None,
                   help="draw the model's steering on the frame")
    g.add_argument("--compare", action=argparse.BooleanOptionalAction, default=None,
                   help="the raw frame and the result side by side")


#: The profile keys the model and mode flags override.
FLAG_KEYS = ("layer", "channel", "threshold", "colormap", "mode", "target", "smoothgrad", "view",
             "hud", "compare")


def flag_changes(args: argparse.Namespace) -> dict[str, Any]:
    """What the flags given change in a profile (checked by Profile.replace: the one check)."""
    return {key: getattr(args, key, None) for key in FLAG_KEYS
            if getattr(args, key, None) is not None}


def resolve_profile(args: argparse.Namespace):
    """The profile and model path the flags ask for, with CLI overrides applied."""
    from carvis import profile as prof

    given = args.model[0] if isinstance(args.model, list) else args.model
    if args.profile:
        p = prof.load(args.profile)
    elif given:
        p = prof.generic()
    else:
        p = prof.load(prof.DEFAULT_PROFILE)
    p = p.replace(**flag_changes(args))  # flags first: cheap
    model = Path(given) if given else p.model
    if model is None:
        raise CarvisError(f"profile {p.source!r} names no model; pass --model PATH")
    if not given and not args.profile and not tensorflow_available():
        # A car without TensorFlow (a Pi with LiteRT only) runs the default model's .tflite,
        # exported at the default profile's layer and committed beside it.
        model = model.with_suffix(".tflite")
    return p, model


def count(n: int, noun: str) -> str:
    """'1 frame', '2 frames'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def serve_token(address: tuple[str, int] | None, token: str | None, no_token: bool
                ) -> str | None:
    """The token for a served page: given, or made up off loopback unless refused (warned)."""
    from carvis.sinks.httpguard import choose_token

    token, warning = choose_token(address, token, no_token)
    if warning:
        print(f"carvis: warning: {warning}", file=sys.stderr)
    return token


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP (an SSH drop) end the command as Ctrl-C does: the file closed, the
    frames counted, a non-zero exit."""
    def as_ctrl_c(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    wanted = [signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])]
    try:
        previous = {sig: signal.signal(sig, as_ctrl_c) for sig in wanted}
    except ValueError:  # not the main thread (carvis embedded): leave the signals alone
        previous = {}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
