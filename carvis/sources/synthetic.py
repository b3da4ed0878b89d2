"""The project's own synthetic track as a frame source, and its 'synthetic:...' spec."""

from __future__ import annotations

import time

from carvis.errors import CarvisError
from carvis.frame import Frame
from carvis.sources.base import Source
from carvis.synthetic import SyntheticTrack


class SyntheticSource(Source):
    """The project's own track generator as a frame source (a finite clip by default)."""

    def __init__(self, seed: int = 0, frames: int | None = 300, size: tuple[int, int] = (640, 480),
                 fps: float = 30.0, loop: bool = False) -> None:
        self.name = f"synthetic:{seed}"
        self.fps = fps
        self.frame_count = None if loop else frames
        self.track = SyntheticTrack(width=size[0], height=size[1], fps=fps, seed=seed)
        self._index = 0

    def read(self) -> Frame | None:
        """The next rendered frame, or None after ``frames`` of them (never, when looping)."""
        if self.frame_count is not None and self._index >= self.frame_count:
            return None
        frame = Frame(self.track.frame(self._index), self._index, time.monotonic(), self.name)
        self._index += 1
        return frame


def parse_synthetic(spec: str) -> dict:
    """'synthetic[:seed=S,frames=N,size=WxH]' → keyword arguments."""
    kwargs: dict = {}
    _, _, rest = spec.partition(":")
    for part in filter(None, rest.split(",")):
        key, _, value = part.partition("=")
        try:
            if key == "seed":
                kwargs["seed"] = int(value)
            elif key == "frames":
                kwargs["frames"] = int(value)
            elif key == "size":
                w, h = value.lower().split("x")
                kwargs["size"] = (int(w), int(h))
            else:
                raise ValueError(key)
        except ValueError:
            raise CarvisError(f"source {spec!r}: bad option {part!r}; use "
                              "synthetic:seed=0,frames=300,size=640x480") from None
    return kwargs
