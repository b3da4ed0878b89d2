"""The `carvis` command: argparse front end, no logic of its own."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path
from typing import ClassVar

from carvis import __version__
from carvis.errors import CarvisError


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and overlay (override the profile)")
    g.add_argument("--model", "-m", help="car model: .h5 (Keras 1/2/3), .keras or .tflite "
                   "(default: the project's own models/default.keras)")
    g.add_argument("--profile", "-p", help="YAML profile (default: models/default.yaml, or a "
                   "generic one when --model is given)")
    g.add_argument("--layer", "-l", help="layer: a name, an index, or conv:N (N-th conv layer)")
    g.add_argument("--channel", "-c", help="channel index, or mean / max over channels")
    g.add_argument("--threshold", "-t", type=float, help="mask threshold on the 0..255 map")
    g.add_argument("--colormap", help="OpenCV colormap name (inferno, jet, turbo, ...)")
    g.add_argument("--backend", choices=("auto", "tensorflow", "litert"), default="auto",
                   help="inference backend (default: auto)")
    g.add_argument("--lambda", dest="lambda_policy", choices=("error", "identity"),
                   default="error", help="what to do with a Lambda layer carvis cannot rebuild "
                   "(identity: skip it; do its scaling in the profile)")
    _add_mode_args(p)


def _add_mode_args(p: argparse.ArgumentParser) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="carvis", description="Show what a car's ConvNet is looking at, on video.")
    parser.add_argument("--version", action="version", version=f"carvis {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("render", help="render a video, folder or synthetic clip with the overlay",
                       description="Every input frame becomes one output frame, in order.")
    r.add_argument("source", nargs="+", help="video file, folder of images, DonkeyCar tub, "
                   "or synthetic[:seed=S,frames=N]; several: each to its own file in -o OUTDIR")
    r.add_argument("-o", "--output", required=True,
                   help="OUT.avi (MJPG at the source's fps) or a folder for numbered PNGs")
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
    r.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    _add_model_args(r)

    ru = sub.add_parser("run", help="live: camera/stream/file → overlay → window, .mkv, browser",
                        description="Live overlay at the camera's frame rate; Ctrl-C stops. "
                        "Display keys: q quit, +/- threshold, c next channel, l next conv "
                        "layer, o overlay on/off, r start/stop recording, s snapshot PNG.")
    ru.add_argument("--source", "-s", help="picamera[:N], a camera index (0), a URL "
                    "(rtsp://, http://), a video file, a folder or synthetic (default: "
                    "picamera on a Raspberry Pi, else camera 0)")
    ru.add_argument("--loop", action="store_true", help="repeat a file source forever")
    ru.add_argument("--display", action="store_true", help="show an OpenCV window")
    ru.add_argument("--record", metavar="OUT.mkv", help="record the overlay at wall-clock "
                    "speed: .mkv or .mp4 (H.264, playable after a power cut) or .avi (MJPG)")
    ru.add_argument("--serve", metavar="[HOST:]PORT", help="MJPEG stream + control page "
                    "(host defaults to 127.0.0.1; give 0.0.0.0:PORT to serve the car's Wi-Fi)")
    ru.add_argument("--token", help="secret for the page, the stream and every change (off "
                    "loopback one is made up unless given)")
    ru.add_argument("--no-token", action="store_true", help="serve off loopback without a "
                    "token (anyone on the network may watch and change settings)")
    ru.add_argument("--quality", type=int, default=80, help="JPEG quality of the stream "
                    "(default 80)")
    ru.add_argument("--map-fps", type=float, metavar="N", help="at most N maps a second, the "
                    "newest laid on every frame (spares the car's CPU; default: as fast as the "
                    "model goes)")
    ru.add_argument("--publish", metavar="URL", help="send the overlay as H.264 to a relay "
                    "that serves the viewers: rtmp://HOST/APP/KEY, rtsp://HOST/PATH, srt://…")
    ru.add_argument("--bitrate", default="2M", help="of --publish, bits/s (default 2M)")
    cam = ru.add_argument_group("camera (override the profile's camera: section)")
    cam.add_argument("--size", metavar="WxH", help="capture size, e.g. 1280x720")
    cam.add_argument("--fps", type=float, help="capture frame rate")
    cam.add_argument("--hflip", action="store_true", default=None, help="mirror left-right")
    cam.add_argument("--vflip", action="store_true", default=None, help="flip upside down")
    cam.add_argument("--rotate", type=int, choices=(0, 90, 180, 270),
                     help="rotate clockwise by degrees")
    _add_model_args(ru)

    ins = sub.add_parser("inspect", help="one frame: a layer's channels as a grid + the first "
                         "layer's filters, as a PNG",
                         description="All channels of a layer for one frame, tiled with labels, "
                         "and the first conv layer's filters as images below.")
    ins.add_argument("model", help="model file (.h5, .keras, or a .tflite: its one layer)")
    ins.add_argument("frame", help="an image file (JPEG, PNG) from the car's camera, or a "
                     "video, tub or folder with --frame N")
    ins.add_argument("--frame", dest="position", metavar="N", help="which frame of a video, "
                     "tub or folder: an index (120) or a time (12.5s)")
    ins.add_argument("-o", "--output", required=True, help="OUT.png (or .jpg)")
    ins.add_argument("--profile", "-p", help="YAML profile for the preprocessing and the layer "
                     "(default: a generic one)")
    ins.add_argument("--layer", "-l", help="layer: a name, an index, or conv:N")
    ins.add_argument("--colormap", help="OpenCV colormap name (default: the profile's)")
    ins.add_argument("--backend", choices=("auto", "tensorflow", "litert"), default="auto")
    ins.add_argument("--lambda", dest="lambda_policy", choices=("error", "identity"),
                     default="error")

    la = sub.add_parser("layers", help="list a model's layers (conv layers marked)")
    la.add_argument("model", help="model file (.h5, .keras, or a .tflite: carvis' export or "
                    "a car's own model file)")
    la.add_argument("--lambda", dest="lambda_policy", choices=("error", "identity"),
                    default="error")

    ex = sub.add_parser("export", help="write what the car needs as one .tflite (LiteRT)",
                        description="Layers, and what the HUD, vbp and cam need, in one .tflite "
                        "that carvis runs on LiteRT without TensorFlow (gradient modes: no).")
    ex.add_argument("model", help="model file (.h5 from Keras 1/2/3, .keras)")
    ex.add_argument("-o", "--output", required=True, help="OUT.tflite")
    ex.add_argument("--profile", "-p", help="take the layer from this YAML profile")
    ex.add_argument("--layer", "-l", help="layer: a name, an index, or conv:N (wins over the "
                    "profile's)")
    ex.add_argument("--layers", help="more layers, comma-separated: conv:1,conv:2,pool_2")
    ex.add_argument("--all-conv", action="store_true", help="every spatial conv layer")
    ex.add_argument("--with", dest="modes", metavar="hud,vbp,cam", help="what these need: the "
                    "steering output, VisualBackProp's path, CAM's Dense weights")
    ex.add_argument("--car", action="store_true", help="every conv layer, hud, vbp, and cam "
                    "if the head allows")
    ex.add_argument("--lambda", dest="lambda_policy", choices=("error", "identity"),
                    default="error")

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
    _add_model_args(be)

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
    rv.add_argument("--token", help="secret needed to change settings off loopback")
    rv.add_argument("--backend", choices=("auto", "tensorflow", "litert"), default="auto")
    rv.add_argument("--fps", type=float, help="frame rate of a folder source (default 30)")
    return parser


def resolve_profile(args: argparse.Namespace):
    """The profile and model path the flags ask for, with CLI overrides applied."""
    from carvis import profile as prof

    if args.profile:
        p = prof.load(args.profile)
    elif args.model:
        p = prof.generic()
    else:
        p = prof.load(prof.DEFAULT_PROFILE)
    changes = {"layer": args.layer, "channel": args.channel, "threshold": args.threshold,
               "colormap": args.colormap}
    changes.update({key: getattr(args, key, None) for key in
                    ("mode", "target", "smoothgrad", "view", "hud", "compare")})
    p = p.replace(**{k: v for k, v in changes.items() if v is not None})  # flags first: cheap
    model = Path(args.model) if args.model else p.model
    if model is None:
        raise CarvisError(f"profile {p.source!r} names no model; pass --model PATH")
    if not args.model and not args.profile and not _have_tensorflow():
        # A car without TensorFlow (a Pi with LiteRT only) runs the default model's .tflite,
        # exported at the default profile's layer and committed beside it.
        model = model.with_suffix(".tflite")
    return p, model


def _have_tensorflow() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):
        return False


def cmd_render(args: argparse.Namespace) -> int:
    from carvis import pipeline, sources
    from carvis.session import ModelSession
    from carvis.sinks.outputs import open_file_sink

    if len(args.source) > 1 or args.jobs is not None or args.format is not None:
        return _render_batch(args)
    args.source = args.source[0]
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
            with sink:
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
            print(f"carvis: warning: skipped {_count(len(skipped), 'unreadable image')} "
                  f"({names}{', ...' if len(skipped) > 5 else ''}); the output has one frame "
                  "per image read, numbered in order without them", file=sys.stderr)
        if not args.quiet:
            print(f"carvis: {_count(written, 'frame')} written to {args.output}",
                  file=sys.stderr)
        if renderer.log.rows:
            print(f"carvis: {renderer.log.summary()}", file=sys.stderr)
    return 0


def _count(n: int, noun: str) -> str:
    """'1 frame', '2 frames'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


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
    settings = batch.RenderSettings(profile, model_path, args.backend, args.lambda_policy,
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


def cmd_run(args: argparse.Namespace) -> int:
    """`carvis run`: check everything, open the source, load the model, run until Ctrl-C."""
    import signal

    from carvis import live, pipeline, settings, sources
    from carvis.live.console import native_notes
    from carvis.live.recording import check_record_path
    from carvis.session import ModelSession
    from carvis.sinks.mjpeg import parse_address

    profile, model_path = resolve_profile(args)
    # Everything that can be wrong with the flags fails here, before the slow model load.
    address = parse_address(args.serve) if args.serve else None
    if (args.token or args.no_token) and address is None:
        raise CarvisError("--token/--no-token are for --serve; add --serve [HOST:]PORT")
    if args.token and args.no_token:
        raise CarvisError("--token and --no-token contradict each other; give one")
    token = _run_token(address, args.token, args.no_token)
    if not 1 <= args.quality <= 100:
        raise CarvisError(f"--quality {args.quality} is not valid; allowed range 1..100")
    if args.display:
        from carvis.sinks.display import check_screen

        check_screen()
    if args.record:
        check_record_path(args.record)  # before the camera opens
    publish = _run_publish(args)
    if not (args.display or args.record or address or publish):
        raise CarvisError("nowhere to send frames; add --display, --record OUT.mkv, "
                          "--serve [HOST:]PORT and/or --publish URL")
    camera = {"size": _run_size(args.size), "fps": args.fps, "hflip": args.hflip,
              "vflip": args.vflip, "rotate": args.rotate}
    map_fps = None if args.map_fps is None else settings.check("map_fps", args.map_fps,
                                                               settings.FLAGS)
    options = live.LiveOptions(display=args.display, record=args.record, serve=address,
                               token=token, jpeg_quality=args.quality, map_fps=map_fps,
                               **publish)
    with native_notes(), \
            sources.open_live_source(args.source, profile, loop=args.loop, **camera) as source:
        session = ModelSession(model_path, backend=args.backend,
                               lambda_policy=args.lambda_policy)
        runner = live.LiveRunner(source, pipeline.Renderer(session, profile), options)
        interrupts = 0

        def on_signal(signum: int, _frame: object) -> None:
            nonlocal interrupts
            interrupts += 1
            runner.stop()
            if interrupts > 1:
                raise KeyboardInterrupt

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT,
                                                                    signal.SIGTERM)}
        where = [f"{source.name} ({'live' if source.live else f'{source.fps:g} fps'})"]
        if runner.server is not None:
            where.append(f"page {' or '.join(runner.server.urls())}")
        if args.display:
            where.append("window")
        if "publish" in runner.sinks:
            where.append(f"publish {runner.sinks['publish'].sink.name}")
        print(f"carvis: running {' -> '.join(where[:1])} -> {', '.join(where[1:]) or 'record'}"
              " (Ctrl-C stops)", file=sys.stderr, flush=True)
        try:
            runner.run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        print(f"carvis: stopped: {runner.summary()}", file=sys.stderr, flush=True)
        for line in runner.recorder.failures:  # the run went on; the exit status says it
            print(f"carvis: error: {line}", file=sys.stderr, flush=True)
    return 1 if runner.recorder.failures else 0


def _run_publish(args: argparse.Namespace) -> dict:
    """--publish URL and --bitrate, checked: the LiveOptions they set ({} without --publish)."""
    from carvis.sinks.publish import check_url, parse_bitrate

    if not args.publish:
        return {}
    return {"publish": check_url(args.publish), "bitrate": parse_bitrate(args.bitrate)}


def _run_token(address: tuple[str, int] | None, token: str | None, no_token: bool
               ) -> str | None:
    """The token for --serve: given, or made up off loopback unless refused (warned)."""
    from carvis.sinks.mjpeg import choose_token

    token, warning = choose_token(address, token, no_token)
    if warning:
        print(f"carvis: warning: {warning}", file=sys.stderr)
    return token


def _run_size(text: str | None) -> tuple[int, int] | None:
    """--size 'WxH' -> (width, height)."""
    if text is None:
        return None
    w, sep, h = str(text).lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit() or not (0 < int(w) and 0 < int(h)):
        raise CarvisError(f"--size {text!r} is not valid; give WIDTHxHEIGHT, e.g. 1280x720")
    return int(w), int(h)


def cmd_layers(args: argparse.Namespace) -> int:
    from carvis import models
    from carvis.backends import litert, tensorflow_available

    if models.is_tflite(args.model):
        print(litert.describe(args.model))
        return 0
    if not tensorflow_available():
        # The file's own config is JSON: h5py alone reads the table (a car without TensorFlow).
        print(models.format_layer_table_from_file(args.model))
        return 0
    model = models.load_model(args.model, lambda_policy=args.lambda_policy)
    print(models.format_layer_table(model))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from carvis import profile as prof
    from carvis.explain.export import export_flags

    layer = args.layer or (prof.load(args.profile).layer if args.profile else None)
    meta, diff = export_flags(args.model, args.output, layer, args.layers, args.modes,
                              args.all_conv, args.car, args.lambda_policy)
    check = f"; max |LiteRT - TensorFlow| = {diff:.1e} on a test input" if diff is not None else ""
    print(f"carvis: wrote {args.output}: {meta.describe()}{check}", file=sys.stderr)
    return 0


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


COMMANDS = {"render": cmd_render, "layers": cmd_layers, "run": cmd_run,
            "export": cmd_export, "bench": cmd_bench}


def cmd_inspect(args: argparse.Namespace) -> int:
    from carvis import inspection
    from carvis import profile as prof
    from carvis.session import ModelSession

    p = prof.load(args.profile) if args.profile else prof.generic()
    p = p.replace(layer=args.layer, colormap=args.colormap)
    frame = inspection.load_frame(args.frame, args.position)
    session = ModelSession(args.model, backend=args.backend, lambda_policy=args.lambda_policy)
    image = inspection.inspect_frame(session, frame, p)
    inspection.write_png(args.output, image)
    print(f"carvis: wrote {args.output} ({image.shape[1]}x{image.shape[0]})", file=sys.stderr)
    return 0


COMMANDS["inspect"] = cmd_inspect


def cmd_review(args: argparse.Namespace) -> int:
    """`carvis review`: the maps once (a progress bar per model), then the page until Ctrl-C."""
    import threading

    from tqdm import tqdm

    from carvis import profile as prof
    from carvis.review.app import Review
    from carvis.review.server import ReviewServer
    from carvis.sinks.mjpeg import parse_address

    address = parse_address(args.serve)
    token = _run_token(address, args.token, False)
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


COMMANDS["review"] = cmd_review


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    handler = _OneLineHandler()
    log = logging.getLogger("carvis")
    log.addHandler(handler)
    level, propagate = log.level, log.propagate
    log.setLevel(logging.INFO)
    log.propagate = False  # a library's basicConfig on the root logger would print them twice
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            return _dispatch(args)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate


class _OneLineHandler(logging.Handler):
    """The library's log records as the CLI's one-line messages on stderr."""

    PREFIX: ClassVar[dict[int, str]] = {logging.WARNING: "warning: ", logging.ERROR: "error: ",
                                        logging.CRITICAL: "error: "}

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage().strip().splitlines() or [""]
        print(f"carvis: {self.PREFIX.get(record.levelno, '')}{text[0]}", file=sys.stderr,
              flush=True)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as 'carvis: warning: ...', one line, like the errors."""
    print(f"carvis: warning: {message}", file=file or sys.stderr)


def _dispatch(args: argparse.Namespace) -> int:
    try:
        return COMMANDS[args.command](args)
    except CarvisError as exc:
        print(f"carvis: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("carvis: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"carvis: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
