"""A map that is flat on the first frames says so, once, with the numbers seen.

A flat (constant, often all-zero) map lights up nothing at any threshold. The usual cause is
an input scale the model was not trained on (Axionaut takes raw 0..255 pixels; the generic
profile feeds 0..1), or a layer whose units are all dead for this input.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger("carvis")

#: Frames looked at before deciding; a map that varies on any of them is fine.
FRAMES = 8


class FlatMapWatch:
    """Looks at the first frames' raw maps and model inputs; warns once if all were flat."""

    def __init__(self, frames: int = FRAMES) -> None:
        self.frames = frames
        self.reset()

    def reset(self, what: str = "") -> None:
        """Start over (a new layer, channel or mode), naming what the map is of."""
        self.what = what
        self.seen = 0
        self.done = False
        self.lo = self.hi = None
        self.in_lo = self.in_hi = None

    def __call__(self, amap: np.ndarray, batch: np.ndarray, scale: float, offset: float
                 ) -> None:
        """Note one frame's map and input (cheap: two reductions each, first frames only)."""
        if self.done:
            return
        lo, hi = float(amap.min()), float(amap.max())
        if hi - lo > 1e-6 * max(1.0, abs(hi)):
            self.done = True  # it varies: nothing to say
            return
        self.scaling = (scale, offset)
        b_lo, b_hi = float(batch.min()), float(batch.max())
        self.lo = lo if self.lo is None else min(self.lo, lo)
        self.hi = hi if self.hi is None else max(self.hi, hi)
        self.in_lo = b_lo if self.in_lo is None else min(self.in_lo, b_lo)
        self.in_hi = b_hi if self.in_hi is None else max(self.in_hi, b_hi)
        self.seen += 1
        if self.seen >= self.frames:
            self._say(f"the first {self.seen} frames")

    def finish(self) -> None:
        """At the end of a stream: say it if every frame was flat (fewer than the watch)."""
        if not self.done and self.seen:
            self._say("the only frame" if self.seen == 1 else f"all {self.seen} frames")

    def _say(self, frames: str) -> None:
        self.done = True
        log.warning("the map%s is flat on %s (every value %.3g) with model input in "
                    "%.3g..%.3g (preprocess scale %g, offset %g): nothing will light up. The "
                    "model may expect another input scale (a model trained on raw 0..255 "
                    "pixels wants scale: 1.0 in its profile), or try another layer (carvis "
                    "layers MODEL)", f" of {self.what}" if self.what else "", frames, self.hi,
                    self.in_lo, self.in_hi, *self.scaling)
