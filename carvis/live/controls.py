"""The live settings shared by keys and HTTP: validated where they are asked for, built beside
the loop, applied by the loop between two frames, all or nothing."""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol

from carvis import settings
from carvis.errors import CarvisError


class Busy(CarvisError):
    """The pipeline cannot take a change right now (HTTP 503)."""

    http_status = 503


class Settable(Protocol):
    """What the controls need from the live pipeline."""

    @property
    def running(self) -> bool: ...

    def prepare(self, values: dict[str, Any]) -> dict[str, Any]: ...

    def apply_settings(self, values: dict[str, Any]) -> None: ...

    def current_settings(self) -> dict[str, Any]: ...


@dataclasses.dataclass
class _Change:
    apply: Callable[[], None]
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    error: CarvisError | None = None


class Controls:
    """The queue of changes the loop applies between frames, all or nothing."""

    def __init__(self, pipeline: Settable, timeout: float = 10.0) -> None:
        self.pipeline = pipeline
        self.timeout = timeout
        self._queue: queue.Queue[_Change] = queue.Queue(maxsize=32)
        self._state: dict[str, Any] = {}

    def settings(self) -> dict[str, Any]:
        """The current settings and their choices."""
        return dict(self._state)

    def submit(self, apply: Callable[[], None]) -> _Change:
        """Queue a change for the loop (never blocks); Busy if too many are waiting."""
        change = _Change(apply)
        try:
            self._queue.put_nowait(change)
        except queue.Full:
            raise Busy("too many settings changes are waiting; try again") from None
        return change

    def change(self, changes: Any) -> dict[str, Any]:
        """Validate, build beside the loop, apply between two frames; the new settings."""
        values = settings.validate(changes)
        if not self.pipeline.running:
            raise Busy("the pipeline is not running")
        # Built here, in the asking thread: a first build takes seconds (a TensorFlow import,
        # a LiteRT conversion, a graph trace); the loop only switches to what is ready.
        values = self.pipeline.prepare(values)
        change = self.submit(lambda: self.pipeline.apply_settings(values))
        if not change.done.wait(self.timeout):
            raise Busy(f"the pipeline did not take the change within {self.timeout:g} s")
        if change.error is not None:
            raise change.error
        return self.settings()

    def apply_pending(self) -> None:
        """Run the queued changes (called by the loop thread only)."""
        changed = False
        while True:
            try:
                change = self._queue.get_nowait()
            except queue.Empty:
                break
            try:
                change.apply()
            except CarvisError as exc:
                change.error = exc
            finally:
                change.done.set()
            changed = True
        if changed or not self._state:
            self.publish()

    def fail_pending(self, reason: str) -> None:
        """Refuse every waiting change (the loop has stopped)."""
        while True:
            try:
                change = self._queue.get_nowait()
            except queue.Empty:
                return
            change.error = Busy(reason)
            change.done.set()

    def publish(self) -> None:
        """Take a fresh copy of the settings for readers in other threads."""
        self._state = self.pipeline.current_settings()
