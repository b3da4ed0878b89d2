"""Decode only a region of a video's frames: FFmpeg's crop before the colour conversion.

OpenCV's VideoCapture turns every decoded frame whole into BGR (swscale), then carvis cuts
its region of interest out. When only the region is shown (a profile's ``output: roi``),
PyAV can crop the decoded YUV picture first (FFmpeg's ``crop`` filter moves the plane
pointers, no copy) and convert only the region: the same swscale conversion on fewer pixels
(the Axionaut race clip, 1800x480 of 1920x1080: 0.85 ms of CPU a frame less, about 5 % of
the whole render's CPU). The pixels must be OpenCV's to the bit, so :meth:`VideoFileSource.crop_at_decode
<carvis.sources.files.VideoFileSource.crop_at_decode>` compares the first frame of both
before it switches, and anything PyAV cannot do falls back to OpenCV.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("carvis")

#: Decoded pixel formats whose region crops exactly (8-bit YUV, cut at even rows and columns,
#: so 4:2:0 and 4:2:2 chroma stays with its pixels; tested against OpenCV in
#: tests/test_decode_region.py).
_FORMATS = frozenset({"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p",
                      "nv12"})


class RegionDecoder:
    """A video's frames in order, each only its (top, bottom, left, right) box, BGR uint8."""

    def __init__(self, path: str | Path, box: tuple[int, int, int, int], threads: int) -> None:
        import av  # PyAV: a dependency of carvis (.avi/.mp4 out); raises if it is missing

        top, bottom, left, right = box
        self._container = av.open(str(path))
        try:
            stream = self._container.streams.video[0]
            context = stream.codec_context
            if context.pix_fmt not in _FORMATS or top % 2 or left % 2:
                raise ValueError(f"{context.pix_fmt} cut at row {top}, column {left}")
            context.thread_type = "AUTO"  # frame threads, as OpenCV's FFmpeg reader
            context.thread_count = max(1, threads)
            graph = av.filter.Graph()
            chain = [graph.add_buffer(template=stream),
                     graph.add("crop", f"{right - left}:{bottom - top}:{left}:{top}:exact=1"),
                     # OpenCV converts with swscale's bicubic flags (no scaling: unused)
                     graph.add("scale", "flags=bicubic"),
                     graph.add("format", "bgr24"), graph.add("buffersink")]
            for a, b in itertools.pairwise(chain):
                a.link_to(b)
            graph.configure()
        except BaseException:
            self._container.close()
            raise
        self._graph = graph
        self._frames = self._container.decode(stream)
        self.shape = (bottom - top, right - left, 3)

    def read(self) -> np.ndarray | None:
        """The next frame's region (a fresh array), or None at the end."""
        frame = next(self._frames, None)
        if frame is None:
            return None
        if getattr(frame, "is_corrupt", False):
            # FFmpeg concealed damage in it: another FFmpeg build (OpenCV's) may guess
            # otherwise, so OpenCV decodes from here, and the pixels stay OpenCV's
            raise ValueError("a damaged frame")
        self._graph.push(frame)
        image = self._graph.pull().to_ndarray()
        if image.shape != self.shape:  # a stream that changes size mid-way
            raise ValueError(f"a frame of {image.shape} in a stream of {self.shape}")
        return image

    def close(self) -> None:
        self._container.close()


def open_region(path: str | Path, box: tuple[int, int, int, int], threads: int
                ) -> RegionDecoder | None:
    """A RegionDecoder, or None (said at debug level) if PyAV cannot give this video's region."""
    try:
        return RegionDecoder(path, box, threads)
    except Exception as exc:  # noqa: BLE001 - any reason means: decode whole frames
        log.debug("%s: frames are decoded whole (%s: %s)", Path(path).name,
                  type(exc).__name__, exc)
        return None

