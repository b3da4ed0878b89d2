"""Where composed frames go: a sink is write(frame) + close(), and a context manager."""

from __future__ import annotations

from typing import Self

import numpy as np


class Sink:
    """One-method interface: write a composed BGR frame; close() flushes and releases."""

    def write(self, image: np.ndarray) -> None:
        """Take one composed frame."""
        raise NotImplementedError

    def close(self) -> None:
        """Flush and release; safe to call twice."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
