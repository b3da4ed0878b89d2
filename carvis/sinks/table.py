"""Which sink an output asks for: one table from suffix or URL scheme to sink, used by render,
batch, live recording and publishing; and the one check that an output never overwrites an
input.

| output | sink |
|---|---|
| ``NAME.avi`` | Motion-JPEG in AVI (``files.AviSink``) |
| ``NAME.mp4`` / ``NAME.mkv`` | H.264 through PyAV, playable when interrupted (``video.VideoSink``) |
| a name with no suffix | a folder of numbered PNG frames (``files.PngDirSink``) |
| ``rtmp://`` ``rtmps://`` ``rtsp://`` ``srt://`` | H.264 to a relay (``publish.Publisher``) |
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import urlsplit

from carvis.errors import CarvisError
from carvis.sinks import Sink
from carvis.sinks.files import AviSink, PngDirSink
from carvis.sinks.publish import DEFAULT_BITRATE, SCHEMES, Publisher
from carvis.sinks.video import DEFAULT_CRF, VideoSink

#: Suffixes people give for video that carvis does not write (refused, never a PNG folder).
OTHER_VIDEO = (".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".gif", ".h264")


@dataclasses.dataclass(frozen=True)
class SinkOptions:
    """What a sink is opened with; each kind takes the fields it knows."""

    fps: float
    crf: int = DEFAULT_CRF  # H.264 quality
    preset: str = "medium"  # x264 speed ("ultrafast" for a live recording)
    threads: int | None = None  # x264 threads (None: libx264 picks)
    bitrate: int = DEFAULT_BITRATE  # a relay's
    quality: int = 95  # an .avi's JPEG quality


def _h264(target: str, o: SinkOptions) -> Sink:
    return VideoSink(target, o.fps, crf=o.crf, preset=o.preset, threads=o.threads)


#: Suffix (a file) or scheme (a URL) → the sink; "" is a folder of PNG frames.
SINKS: dict[str, Callable[[str, SinkOptions], Sink]] = {
    ".avi": lambda target, o: AviSink(target, o.fps, o.quality),
    ".mp4": _h264,
    ".mkv": _h264,
    "": lambda target, o: PngDirSink(target),
    **{f"{scheme}://": (lambda target, o: Publisher(target, o.fps, o.bitrate))
       for scheme in SCHEMES},
}
FILE_SUFFIXES = tuple(k for k in SINKS if k.startswith("."))


def sink_key(target: str | Path) -> str:
    """The table's key for an output: its URL scheme, its suffix, or "" (a PNG folder)."""
    text = str(target)
    scheme = urlsplit(text).scheme.lower()
    if "://" in text and scheme:
        return f"{scheme}://"
    return Path(text).suffix.lower()


def open_sink(target: str | Path, options: SinkOptions, *, inputs: Iterable[str | Path] = (),
              allowed: Iterable[str] | None = None) -> Sink:
    """The sink an output asks for, refused in one line if it is not one carvis writes (or
    not one of ``allowed`` keys) or if it is, or holds, one of ``inputs``."""
    key = sink_key(target)
    keys = tuple(SINKS if allowed is None else allowed)
    if key not in keys:
        known = ", ".join(k for k in keys if k) + (" or a folder name (no suffix) for numbered "
                                                   "PNG frames" if "" in keys else "")
        if key.endswith("://"):
            what = f"{key} is not a stream carvis sends"
        else:
            what = f"{key} is " + ("a video format carvis does not write" if key in OTHER_VIDEO
                                   else "not an output carvis writes here")
        raise CarvisError(f"output {str(target)!r}: {what}; give {known}")
    if not key.endswith("://"):
        path = Path(target)
        if key and path.is_dir():
            raise CarvisError(f"output {str(target)!r} is a folder; give a new file name "
                              f"ending in {key}, or a name without a suffix for numbered PNG "
                              "frames")
        check_not_input(path, inputs)
    return SINKS[key](str(target), options)


def check_not_input(output: Path, inputs: Iterable[str | Path]) -> None:
    """Refuse, before anything is opened, an output that is an input (the same file, a link
    to it, or the folder a folder source reads) — writing it would destroy the source."""
    for given in inputs:
        source = Path(str(given))
        if not source.exists() or "://" in str(given):
            continue
        if output.exists() and os.path.samefile(output, source):
            same = True
        else:
            same = output.resolve() == source.resolve()
        if same:
            raise CarvisError(f"output {str(output)!r} is the input {str(given)!r}: writing it "
                              "would destroy the source; give another output name")
