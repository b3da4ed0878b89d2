"""The source interface: an iterator of frames plus close(), usable as a context manager."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Self

from carvis.frame import Frame


class Source:
    """Base class: iterate to get frames; close() releases the device or file."""

    live = False
    fps: float = 30.0
    frame_count: int | None = None
    name = "source"

    def read(self) -> Frame | None:
        """The next frame, or None at the end."""
        raise NotImplementedError

    def crop_at_decode(self, box: tuple[int, int, int, int]) -> bool:
        """Give only the (top, bottom, left, right) box of each frame from the first on, if
        this source can cut it as it decodes with the same pixels; False: frames stay whole."""
        return False

    def __iter__(self) -> Iterator[Frame]:
        while True:
            frame = self.read()
            if frame is None:
                return
            yield frame

    def close(self) -> None:
        """Release whatever the source holds."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
