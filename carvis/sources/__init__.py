"""Frames in: video files, folders of images, the synthetic track, cameras and streams.

A source is an iterator of :class:`~carvis.frame.Frame` plus ``close()``; it is also a context
manager. File and folder sources never drop a frame; live sources (camera, URL) are read through
a capture thread that keeps only the latest frame. This module opens a source from its spec.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

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
    "IMAGE_SUFFIXES",
    "PICAMERA_HELP",
    "URL_SCHEMES",
    "CameraSettings",
    "CameraSource",
    "FolderSource",
    "PiCameraSource",
    "Position",
    "Source",
    "SyntheticSource",
    "TubSource",
    "VideoFileSource",
    "count_frames",
    "default_live_spec",
    "frame_at",
    "frame_position",
    "open_live_source",
    "open_source",
    "orient",
    "parse_synthetic",
    "parse_where",
    "running_on_pi",
    "select_frames",
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


@dataclasses.dataclass(frozen=True)
class Position:
    """A place in a source: a frame number (a tub's record index) or seconds into it."""

    value: float
    seconds: bool = False

    def reached(self, frame: Frame, fps: float) -> bool:
        """True for this frame and the ones after it."""
        if self.seconds:  # the frame nearest the time is the first one at it
            return frame.seconds(fps) >= self.value - 0.5 / fps
        return frame.number >= self.value


def frame_position(text: str | int | None, flag: str = "--start") -> Position | None:
    """A position from '120' (frame 120; on a tub, record 120), '12.5s' or '1:05' (a time: on a
    tub by its own timestamps)."""
    if text is None:
        return None
    value = str(text).strip().lower()
    match = _TIME.match(value)
    if _NUMBER.fullmatch(value):
        return Position(int(value))
    if match is None or not (value.endswith("s") or match.group(1) is not None):
        raise CarvisError(f"{flag} {str(text)!r} is not a frame number or a time; give a "
                          "frame (120; on a tub, its record index), seconds (12.5s) or "
                          "minutes:seconds (1:05)")
    return Position(int(match.group(1) or 0) * 60 + float(match.group(2)), seconds=True)


def select_frames(frames: Iterable[Frame], fps: float, start: Position | None = None,
                  end: Position | None = None) -> Iterator[Frame]:
    """The frames from start up to (not including) end; the ones before are read, dropped."""
    if start is not None and end is not None and start.seconds == end.seconds \
            and end.value <= start.value:
        raise CarvisError(f"--end ({_said(end)}) must come after --start ({_said(start)}); "
                          "give a later --end or an earlier --start")
    for frame in frames:
        if end is not None and end.reached(frame, fps):
            return
        if start is None or start.reached(frame, fps):
            yield frame


def count_frames(source: Source, start: Position | None, end: Position | None,
                 keep: Callable[[Frame], bool] | None = None) -> int | None:
    """How many frames select_frames gives of a source, those keep() keeps (None when the
    source cannot say)."""
    records = getattr(source, "records", None)
    if records is not None:
        first = records[0].get("_timestamp_ms") if records else None
        fps = source.fps
        n = 0
        for position, record in enumerate(records):
            stamp = record.get("_timestamp_ms")
            seconds = (stamp - first) / 1000 if isinstance(stamp, int | float) and \
                isinstance(first, int | float) else None
            frame = Frame(_NO_IMAGE, position, 0.0, record=record, time=seconds)
            if (start is None or start.reached(frame, fps)) and \
                    (end is None or not end.reached(frame, fps)) and (keep is None or keep(frame)):
                n += 1
        return n
    count = source.frame_count
    if count is None or keep is not None:
        return None
    fps = source.fps

    def index(p: Position | None, default: int) -> int:
        if p is None:
            return default
        return min(count, max(0, math.ceil(p.value * fps - 0.5) if p.seconds
                              else math.ceil(p.value)))

    return max(0, index(end, count) - index(start, 0))


_NO_IMAGE = np.zeros((1, 1, 3), np.uint8)


def parse_where(texts: Iterable[str] | None) -> Callable[[Frame], bool] | None:
    """--where KEY=VALUE / KEY!=VALUE (repeatable, all must hold) as a test of a frame's tub
    record: `--where user/mode=local` keeps the records the pilot drove."""
    tests = []
    for text in texts or ():
        key, sep, value = str(text).partition("!=")
        if not sep:
            key, sep, value = str(text).partition("=")
        if not sep or not key.strip() or not value.strip():
            raise CarvisError(f"--where {text!r} is not KEY=VALUE or KEY!=VALUE; e.g. "
                              "--where user/mode=local (the records the pilot drove)")
        tests.append((key.strip(), value.strip(), sep == "="))
    if not tests:
        return None

    def keep(frame: Frame) -> bool:
        record = frame.record or {}
        return all((str(record.get(key)) == value) == equal for key, value, equal in tests)

    return keep


def _said(position: Position) -> str:
    return f"{position.value:g} s" if position.seconds else f"frame {position.value:g}"


def frame_at(spec: str, position: str | int, fps: float | None = None) -> Frame:
    """One frame of a video, tub or folder, by number (a tub's record index) or time."""
    with open_source(spec, fps=fps) as source:
        where = frame_position(position, "--frame")
        frame = next(select_frames(source, source.fps, where), None)
        if frame is None or (not where.seconds and frame.number != where.value):
            numbers = [r.get("_index") for r in getattr(source, "records", [])]
            what = (f"records {numbers[0]}..{numbers[-1]}" if numbers else
                    f"frames 0..{max((source.frame_count or 1) - 1, 0)}")
            raise CarvisError(f"--frame {position}: {source.name} has no such frame; give one "
                              f"of its {what}")
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
