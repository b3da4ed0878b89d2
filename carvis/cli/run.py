"""`carvis run`: live, at the camera's rate, to a window, a recording, a page, a relay."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from carvis.cli.common import add_model_args, resolve_profile, serve_token
from carvis.errors import CarvisError


def add_parser(sub: Any) -> None:
    """The `run` subcommand's flags."""
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
    add_model_args(ru)


def cmd_run(args: argparse.Namespace) -> int:
    """`carvis run`: check everything, open the source, load the model, run until Ctrl-C."""
    import signal

    from carvis import donkeyconfig, jobs, live, pilots, pipeline, settings, sources
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
    token = serve_token(address, args.token, args.no_token)
    if not 1 <= args.quality <= 100:
        raise CarvisError(f"--quality {args.quality} is not valid; allowed range 1..100")
    if args.display:
        from carvis.sinks.display import check_screen

        check_screen()
    if args.record:
        check_record_path(args.record)  # before the camera opens
    publish = _publish(args)
    if not (args.display or args.record or address or publish):
        raise CarvisError("nowhere to send frames; add --display, --record OUT.mkv, "
                          "--serve [HOST:]PORT and/or --publish URL")
    camera = {"size": _size(args.size), "fps": args.fps, "hflip": args.hflip,
              "vflip": args.vflip, "rotate": args.rotate}
    map_fps = None if args.map_fps is None else settings.check("map_fps", args.map_fps,
                                                               settings.FLAGS)
    options = live.LiveOptions(display=args.display, record=args.record, serve=address,
                               token=token, jpeg_quality=args.quality, map_fps=map_fps,
                               **publish)
    with native_notes(), \
            sources.open_live_source(args.source, profile, loop=args.loop, **camera) as source:
        if not source.live and (args.size or args.fps is not None):
            print(f"carvis: warning: --size/--fps set a camera; {source.name} plays at its own "
                  f"size and {source.fps:g} fps", file=sys.stderr)
        session = ModelSession(model_path, backend=args.backend,
                               lambda_policy=args.lambda_policy)
        car = donkeyconfig.read(args.car_config) if args.car_config else None
        found = pilots.find(session, args.pilot_type, car)
        drawn = jobs.cut_at_decode(source, profile)  # a video file: only the crop decoded
        runner = live.build(source, pipeline.make_renderer(session, drawn, pilot=found),
                            options)
        interrupts = 0

        def on_signal(signum: int, _frame: object) -> None:
            nonlocal interrupts
            interrupts += 1
            runner.stop()
            if interrupts > 1:
                raise KeyboardInterrupt

        # Ctrl-C, SIGTERM and SIGHUP (an SSH drop) all stop the loop, which closes the file.
        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT,
                                                                    signal.SIGTERM,
                                                                    signal.SIGHUP)}
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
        print(f"carvis: stopped: {runner.report.summary()}", file=sys.stderr, flush=True)
        failures = runner.panel.recorder.failures
        for line in failures:  # the run went on; the exit status says it
            print(f"carvis: error: {line}", file=sys.stderr, flush=True)
    return 1 if failures else 0


def _publish(args: argparse.Namespace) -> dict:
    """--publish URL and --bitrate, checked: the LiveOptions they set ({} without --publish)."""
    from carvis.sinks.publish import check_url, parse_bitrate

    if not args.publish:
        return {}
    return {"publish": check_url(args.publish), "bitrate": parse_bitrate(args.bitrate)}


def _size(text: str | None) -> tuple[int, int] | None:
    """--size 'WxH' -> (width, height)."""
    if text is None:
        return None
    w, sep, h = str(text).lower().partition("x")
    digits = all(v.isascii() and v.isdigit() and len(v) <= 5 for v in (w, h))
    if not sep or not digits or not (0 < int(w) and 0 < int(h)):
        raise CarvisError(f"--size {text!r} is not valid; give WIDTHxHEIGHT, e.g. 1280x720")
    return int(w), int(h)
