"""Which file sink an output path asks for: a table by suffix; no suffix is a PNG folder."""

from __future__ import annotations

from pathlib import Path

from carvis.errors import CarvisError
from carvis.sinks import Sink
from carvis.sinks.files import AviSink, PngDirSink
from carvis.sinks.video import DEFAULT_CRF, VideoSink

#: Video files carvis writes, by suffix; a path without a suffix is a folder of PNG frames.
VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv")
#: Suffixes people give for video that carvis does not write (refused, never a PNG folder).
OTHER_VIDEO = (".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".gif", ".h264")


def open_file_sink(path: str | Path, fps: float, crf: int | None = None) -> Sink:
    """A sink by the output's suffix: .avi (MJPG), .mp4/.mkv (H.264), none: PNG folder."""
    suffix = Path(path).suffix.lower()
    if suffix == ".avi":
        return AviSink(path, fps)
    if suffix in (".mp4", ".mkv"):
        return VideoSink(path, fps, crf=DEFAULT_CRF if crf is None else crf)
    if suffix and not Path(path).is_dir():
        kind = "a video format carvis does not write" if suffix in OTHER_VIDEO else \
            "not an output carvis knows"
        raise CarvisError(f"output {str(path)!r}: {suffix} is {kind}; give a name ending in "
                          f"{', '.join(VIDEO_SUFFIXES)}, or a folder name (no suffix) for "
                          "numbered PNG frames")
    return PngDirSink(path)
