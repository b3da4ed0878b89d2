"""H.264 video files (.mp4, .mkv) through PyAV, playable even when the render is interrupted."""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from carvis.errors import CarvisError
from carvis.sinks import Sink
from carvis.sinks.checks import check_writable_file, write_failed

log = logging.getLogger("carvis")

DEFAULT_CRF = 23
KEYFRAME_SECONDS = 1.0  # what a killed render can lose at most, with the encoder's lookahead

# Suffix → (FFmpeg muxer, muxer options). A fragmented MP4 writes its index up front
# (empty_moov) and each GOP as a self-contained fragment, so a file cut off by Ctrl-C or a
# kill plays up to its last whole fragment; Matroska writes clusters as it goes, and a short
# cluster time limit keeps what a kill loses to about a second. flush_packets hands each
# finished fragment or cluster to the file at once rather than keeping it in FFmpeg's buffer.
CONTAINERS: dict[str, tuple[str, dict[str, str]]] = {
    ".mp4": ("mp4", {"movflags": "frag_keyframe+empty_moov+default_base_moof",
             "flush_packets": "1"}),
    ".mkv": ("matroska", {"cluster_time_limit": "1000", "flush_packets": "1"}),
}

PYAV_HELP = "install it with: pip install av"


def import_av(what: str) -> Any:
    """PyAV, imported only when H.264 is written (it carries its own FFmpeg)."""
    try:
        import av
    except ImportError as exc:
        raise CarvisError(f"{what} needs PyAV ({exc}); {PYAV_HELP}") from None
    return av


def check_fps(fps: float | None, where: str) -> float:
    """The frame rate as a float, or a one-line error naming where it is wrong."""
    if not fps or not 0 < float(fps) <= 1000:
        raise CarvisError(f"{where}: frame rate {fps} is not valid; allowed 0 < fps <= 1000")
    return float(fps)


def even_size(image: np.ndarray) -> np.ndarray:
    """The image padded by one replicated row/column where its height/width is odd (yuv420p)."""
    h, w = image.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return image
    return cv2.copyMakeBorder(image, 0, h % 2, 0, w % 2, cv2.BORDER_REPLICATE)


def frame_rate(fps: float) -> Fraction:
    """The stream's rate as a fraction: 29.97 → 30000/1001 (NTSC rates exactly), else fps."""
    ntsc = round(fps * 1.001)
    if abs(fps - round(fps)) > 0.005 and abs(fps - ntsc / 1.001) < 0.005:
        return Fraction(ntsc * 1000, 1001)
    return Fraction(fps).limit_denominator(1001)


def keyframe_interval(fps: float, seconds: float = KEYFRAME_SECONDS) -> int:
    """Frames between two keyframes: one every `seconds` at this rate (at least every frame)."""
    return max(1, round(float(fps) * seconds))


class H264Encoder:
    """libx264 (yuv420p) on a new stream of a container; frames fitted to its size."""

    def __init__(self, av: Any, container: Any, size: tuple[int, int], fps: float,
                 options: dict[str, str], *, time_base: Fraction | None = None,
                 name: str = "video", gop: int | None = None) -> None:
        rate = frame_rate(fps)
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        # pts are counted in this time base: frames (1/rate) or, live, capture-time ms.
        self.time_base = time_base or 1 / rate
        stream.time_base = stream.codec_context.time_base = self.time_base
        stream.options = {"g": str(gop or keyframe_interval(fps)), **options}
        self._av, self.stream, self.size, self.name = av, stream, size, name
        self._resized = False

    def encode(self, image: np.ndarray, pts: int, keyframe: bool = False) -> list:
        """The packets the encoder gives back for this frame at pts (in the stream's time base);
        keyframe: make this frame a keyframe (an IDR with forced-idr)."""
        frame = self._av.VideoFrame.from_ndarray(self._fitted(even_size(image)), format="bgr24")
        frame.pts, frame.time_base = pts, self.time_base
        if keyframe:
            frame.pict_type = self._av.video.frame.PictureType.I
        return self.stream.encode(frame)

    def flush(self) -> list:
        """The packets still in the encoder's lookahead."""
        return self.stream.encode(None)

    def _fitted(self, image: np.ndarray) -> np.ndarray:
        """The frame at the stream's size: a view change mid-stream is resized, not lost."""
        size = (image.shape[1], image.shape[0])
        if size == self.size:
            return np.ascontiguousarray(image)
        if not self._resized:
            self._resized = True
            log.warning("%s: frame size %dx%d differs from the stream's %dx%d; frames are "
                        "resized to fit", self.name, *size, *self.size)
        return cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)


class VideoSink(Sink):
    """H.264 (libx264, yuv420p) in .mp4 (fragmented) or .mkv at the source's fps and a CRF."""

    def __init__(self, path: str | Path, fps: float, crf: int = DEFAULT_CRF,
                 preset: str = "medium", threads: int | None = None) -> None:
        self.path = Path(path)
        self.suffix = self.path.suffix.lower()
        if self.suffix not in CONTAINERS:
            raise CarvisError(f"output {str(self.path)!r}: {self.suffix or 'no extension'} is "
                              f"not a video this sink writes; use {', '.join(CONTAINERS)}")
        if not 0 <= int(crf) <= 51:
            raise CarvisError(f"video quality (CRF) {crf} is not valid; allowed 0..51 "
                              f"(lower is better and larger; default {DEFAULT_CRF})")
        self.fps = check_fps(fps, f"output {str(self.path)!r}")
        self.crf = int(crf)
        self.preset = preset
        self.threads = threads  # the encoder's threads (None: libx264 picks, ~1.5 per core)
        self.frames = 0
        check_writable_file(self.path)
        self._av = import_av("writing .mp4/.mkv")
        self._container: Any = None
        self._encoder: H264Encoder | None = None

    def _open(self, size: tuple[int, int]) -> None:
        muxer, options = CONTAINERS[self.suffix]
        try:
            container = self._av.open(str(self.path), mode="w", format=muxer, options=options)
        except (OSError, self._av.FFmpegError) as exc:
            raise write_failed(self.path, exc, self.frames) from None
        options = {"crf": str(self.crf), "preset": self.preset}
        if self.threads:
            options["threads"] = str(self.threads)
        self._encoder = H264Encoder(self._av, container, size, self.fps, options,
                                    name=self.path.name)
        self._container = container

    def write(self, image: np.ndarray) -> None:
        if self._container is None:
            self._open(even_size(image).shape[1::-1])
        self._mux(self._encoder.encode(image, self.frames))
        self.frames += 1

    def _mux(self, packets: list) -> None:
        try:
            self._container.mux(packets)
        except (OSError, self._av.FFmpegError) as exc:
            raise write_failed(self.path, exc, self.frames) from None

    def close(self) -> None:
        container = self._container
        if container is None:
            return
        try:
            self._mux(self._encoder.flush())  # the frames still in the encoder's lookahead
        finally:
            self._container = None
            try:
                container.close()
            except (OSError, self._av.FFmpegError) as exc:
                raise write_failed(self.path, exc, self.frames) from None
