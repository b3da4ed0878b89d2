"""The `carvis` command: argparse → the library's calls. The only package that prints.

Each command is a module with its flags (`add_parser`) and its one function; the table below is
the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings
from typing import ClassVar

from carvis import __version__
from carvis.cli import bench, render, review, run, score, tools
from carvis.errors import CarvisError

#: command → (adds its flags, runs it), in the order `carvis --help` lists them.
COMMANDS = {
    "render": (render.add_parser, render.cmd_render),
    "run": (run.add_parser, run.cmd_run),
    "inspect": (tools.add_inspect, tools.cmd_inspect),
    "layers": (tools.add_layers, tools.cmd_layers),
    "export": (tools.add_export, tools.cmd_export),
    "bench": (bench.add_parser, bench.cmd_bench),
    "review": (review.add_parser, review.cmd_review),
    "score": (score.add_parser, score.cmd_score),
}


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = argparse.ArgumentParser(
        prog="carvis", description="Show what a car's ConvNet is looking at, on video.")
    parser.add_argument("--version", action="version", version=f"carvis {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def entry() -> None:
    """The `carvis` command: main(), then out at once once everything is written and closed.

    With TensorFlow imported, the interpreter's own teardown (its atexit hooks and thread
    pools) took 2.5-3 s after `carvis run` had closed its recording and said so (4.7 s on a
    busy 2-core machine: Ctrl-C seemed to hang). Nothing of carvis' is left to do then: the
    files are closed and the lines flushed, so the process leaves without that teardown.
    """
    code = main()
    if "tensorflow" in sys.modules:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)
    sys.exit(code)


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
        return COMMANDS[args.command][1](args)
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
