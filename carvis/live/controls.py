"""The live settings shared by keys and HTTP: validated and built where they are asked for,
applied by the threads that own what they change, all or nothing.

Two threads own the live picture: the model thread owns the map maker (layer, channel, mode,
target), the output loop owns the composer (threshold, colormap, views) and the recording. A
change therefore goes in two steps: the model thread takes its part between two maps
(:meth:`Controls.model_step`), then the loop takes the rest between two frames
(:meth:`Controls.loop_step`), publishes the new settings for readers in other threads, and
only then is the change done. A part the model refuses stops the change before the loop's
part, so nothing of it applies.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Callable
from typing import Any, Protocol

from carvis import settings
from carvis.errors import CarvisError

QUEUE = 32  # changes waiting at most


class Busy(CarvisError):
    """The pipeline cannot take a change right now (HTTP 503)."""

    http_status = 503


class Settable(Protocol):
    """What the controls need from the live pipeline (carvis.live.panel.Panel)."""

    @property
    def running(self) -> bool: ...

    def prepare(self, values: dict[str, Any]) -> dict[str, Any]: ...

    def apply_maps(self, values: dict[str, Any]) -> None: ...

    def apply_loop(self, values: dict[str, Any]) -> None: ...

    def current_settings(self) -> dict[str, Any]: ...


@dataclasses.dataclass
class _Change:
    values: dict[str, Any] | None = None  # prepared settings (Settable.prepare's)
    action: Callable[[], None] | None = None  # or a queued action of the loop's (keys)
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    error: CarvisError | None = None


class Controls:
    """The changes waiting for the model thread and the loop, and the settings last published."""

    def __init__(self, pipeline: Settable | None = None, timeout: float = 10.0) -> None:
        self.pipeline = pipeline
        self.timeout = timeout
        self._lock = threading.Lock()
        self._model: collections.deque[_Change] = collections.deque()
        self._loop: collections.deque[_Change] = collections.deque()
        self._state: dict[str, Any] = {}

    def settings(self) -> dict[str, Any]:
        """The settings last published, and their choices."""
        return dict(self._state)

    def submit(self, action: Callable[[], None]) -> _Change:
        """Queue an action for the loop (never blocks); Busy if too many are waiting."""
        return self._queue(_Change(action=action), self._loop)

    def change(self, changes: Any) -> dict[str, Any]:
        """Validate, build beside the loop, apply in the owning threads; the new settings."""
        values = settings.validate(changes)
        if self.pipeline is None or not self.pipeline.running:
            raise Busy("the pipeline is not running")
        # Built here, in the asking thread: a first build takes seconds (a TensorFlow import,
        # a LiteRT conversion, a graph trace); the threads only switch to what is ready.
        change = self.queue(self.pipeline.prepare(values))
        if not change.done.wait(self.timeout):
            raise Busy(f"the change is queued but the pipeline has not reached it within "
                       f"{self.timeout:g} s (the model is slower than that per map?); it will "
                       "still apply — check GET /settings")
        if change.error is not None:
            raise change.error
        return self.settings()

    def queue(self, values: dict[str, Any]) -> _Change:
        """Queue prepared values: to the model thread first if they change the map."""
        change = _Change(values=values)
        return self._queue(change, self._model if values.get("maps") else self._loop)

    def _queue(self, change: _Change, where: collections.deque[_Change]) -> _Change:
        with self._lock:
            if len(self._model) + len(self._loop) >= QUEUE:
                raise Busy("too many settings changes are waiting; try again")
            where.append(change)
        return change

    def model_step(self) -> None:
        """The model thread, between two maps: its part of each waiting change."""
        while True:
            with self._lock:
                if not self._model:
                    return
                change = self._model.popleft()
            try:
                self.pipeline.apply_maps(change.values)
            except CarvisError as exc:
                change.error = exc
                change.done.set()
                continue
            with self._lock:
                self._loop.append(change)

    def loop_step(self) -> None:
        """The output loop, between two frames: the rest of each change, then publish."""
        if not self._loop and self._state:
            return
        changed = False
        while True:
            with self._lock:
                if not self._loop:
                    break
                change = self._loop.popleft()
            try:
                if change.action is not None:
                    change.action()
                else:
                    self.pipeline.apply_loop(change.values)
            except CarvisError as exc:
                change.error = exc
            changed = True
            # Published before done: the answer to a change shows the change.
            self.publish()
            change.done.set()
        if not changed and not self._state:
            self.publish()

    def fail_pending(self, reason: str) -> None:
        """Refuse every waiting change (the pipeline has stopped)."""
        with self._lock:
            waiting = [*self._model, *self._loop]
            self._model.clear()
            self._loop.clear()
        for change in waiting:
            change.error = Busy(reason)
            change.done.set()

    def publish(self) -> None:
        """Take a fresh copy of the settings for readers in other threads (loop thread)."""
        self._state = self.pipeline.current_settings()
