"""Frames in: video files, folders of images, the synthetic track, cameras and streams.

A source is an iterator of :class:`~carvis.frame.Frame` plus ``close()``; it is also a context
manager. File and folder sources never drop a frame; live sources (camera, URL) are read through
a capture thread that keeps only the latest frame. This module opens a source from its spec.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from carvis.errors import CarvisError
from carvis.frame import Frame
from carvis.sources.base import Source
from carvis.sources.camera import (
    PICAMERA_HELP,
    CameraSettings,
    CameraSource,
    PiCameraSource,
    orient,
    running_on_pi,
)
from carvis.sources.files import IMAGE_SUFFIXES, FolderSource, VideoFileSource
from carvis.sources.synthetic import SyntheticSource, parse_synthetic
from carvis.sources.tub import TubSource, is_tub, tub_hint

__all__ = [
    "IMAGE_SUFFIXES", "PICAMERA_HELP", "URL_SCHEMES", "CameraSettings", "CameraSource",
    "FolderSource", "PiCameraSource", "Source", "SyntheticSource", "TubSource",
    "VideoFileSource",
    "default_live_spec", "frame_at", "frame_position", "open_live_source", "open_source",
    "orient", "parse_synthetic", "running_on_pi", "select_frames",
]

URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")


def open_source(spec: str, *, loop: bool = False, fps: float | None = None) -> Source:
    """Open a file source from its spec: a video, an image folder, a DonkeyCar tub or
    'synthetic[...]'."""
    spec = str(spec)
    if spec == "synthetic" or spec.startswith("synthetic:"):
        kwargs = parse_synthetic(spec)
        if fps:
            kwargs["fps"] = fps
        return SyntheticSource(loop=loop, **kwargs)
    path = Path(spec)
    if path.is_dir():
        if is_tub(path):
            return TubSource(path, loop=loop)
        hint = tub_hint(path)
        if hint:
            raise CarvisError(hint)  # a tub's images/ or a folder of tubs: say which to give
        return FolderSource(path, fps=fps or 30.0, loop=loop)
    return VideoFileSource(path, loop=loop)


# ASCII digits only: '²'.isdigit() is True, but int('²') fails.
_TIME = re.compile(r"^(?:([0-9]{1,9}):)?([0-9]{1,12}(?:\.[0-9]*)?)s?$", re.ASCII)
_NUMBER = re.compile(r"[0-9]{1,12}", re.ASCII)


def frame_position(text: str | int | None, fps: float, flag: str = "--start") -> int | None:
    """A frame index from '120' (a frame), '12.5s' or '1:05' (a time at the source's fps)."""
    if text is None:
        return None
    value = str(text).strip().lower()
    match = _TIME.match(value)
    if _NUMBER.fullmatch(value):
        return int(value)
    if match is None or not (value.endswith("s") or match.group(1) is not None):
        raise CarvisError(f"{flag} {str(text)!r} is not a frame number or a time; give a "
                          "frame (120), seconds (12.5s) or minutes:seconds (1:05)")
    seconds = int(match.group(1) or 0) * 60 + float(match.group(2))
    return round(seconds * fps)


def select_frames(frames: Iterable[Frame], start: int | None = None, end: int | None = None
                  ) -> Iterator[Frame]:
    """The frames from index start up to (not including) end; the ones before are read, dropped."""
    start = start or 0
    if end is not None and end <= start:
        raise CarvisError(f"--end (frame {end}) must come after --start (frame {start}); "
                          "give a later --end or an earlier --start")
    return itertools.islice(frames, start, end)


def frame_at(spec: str, position: str | int, fps: float | None = None) -> Frame:
    """One frame of a video, tub or folder, by index or time ('12.5s')."""
    with open_source(spec, fps=fps) as source:
        index = frame_position(position, source.fps, "--frame")
        frame = next(select_frames(source, index, index + 1), None)
        if frame is None:
            count = source.frame_count or index
            raise CarvisError(f"--frame {position}: {source.name} has {count} frames; give "
                              f"--frame 0..{max(count - 1, 0)}")
        return frame


def default_live_spec() -> str:
    """The source `carvis run` uses when none is given: picamera on a Pi, else camera 0."""
    return "picamera" if running_on_pi() else "0"


def open_live_source(spec: str | None, profile: object = None, *, loop: bool = False,
                     **overrides: object) -> Source:
    """Open a source for live mode: picamera, a camera index, a URL, a file or synthetic.

    ``profile`` is a Profile (its ``camera:`` section is used) or that section as a dict;
    ``overrides`` (size, fps, hflip, vflip, rotate) are flags that win over it. File sources
    are returned as they are; the capture thread paces them at their own fps.
    """
    spec = default_live_spec() if spec is None else str(spec).strip()
    camera = profile if isinstance(profile, dict) or profile is None else profile.camera
    settings = CameraSettings.from_profile(camera, **overrides)
    if spec == "picamera" or spec.startswith("picamera:"):
        num = spec.partition(":")[2] or "0"
        if not _NUMBER.fullmatch(num):
            raise CarvisError(f"source {spec!r}: use picamera or picamera:N (camera number)")
        return PiCameraSource(settings, int(num))
    if _NUMBER.fullmatch(spec):
        return CameraSource(int(spec), settings)
    scheme, sep, _ = spec.partition("://")
    if sep:
        if scheme.lower() not in URL_SCHEMES:
            raise CarvisError(f"source {spec!r}: unsupported URL scheme {scheme!r}; use one of "
                              f"{', '.join(URL_SCHEMES)}")
        return CameraSource(spec, settings)
    return open_source(spec, loop=loop)
