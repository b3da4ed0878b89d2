"""The display window's keys: a table from key to action; a new key is one entry.

A key that changes a setting names the change, worked out from the settings of the moment in
the loop thread (two quick presses of ``+`` step twice); the loop applies it like any other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

THRESHOLD_STEP = 5.0

Settings = dict[str, Any]


class KeyTarget(Protocol):
    """What the keys act on: the live runner."""

    def stop(self) -> None: ...

    def next_layer(self) -> None: ...

    def change_soon(self, change: Callable[[Settings], Settings]) -> None: ...

    def snapshot_soon(self) -> None: ...


def step_threshold(delta: float) -> Callable[[Settings], Settings]:
    """The threshold moved by delta, kept in 0..255."""
    return lambda s: {"threshold": float(min(255.0, max(0.0, s["threshold"] + delta)))}


def next_channel(s: Settings) -> Settings:
    """The next channel of the layer, then 'mean' and 'max', then channel 0 again."""
    cycle: list[int | str] = [*range(s["choices"]["channels"]), "mean", "max"]
    channel = s["channel"]
    return {"channel": cycle[(cycle.index(channel) + 1) % len(cycle)]
            if channel in cycle else 0}


def toggle(key: str) -> Callable[[Settings], Settings]:
    """A switch flipped."""
    return lambda s: {key: not s[key]}


def _change(change: Callable[[Settings], Settings]) -> Callable[[KeyTarget], None]:
    return lambda target: target.change_soon(change)


def _stop(target: KeyTarget) -> None:
    target.stop()


#: What each key does.
KEYS: dict[str, Callable[[KeyTarget], None]] = {
    "q": _stop, "Q": _stop, "\x1b": _stop,
    "l": lambda target: target.next_layer(),
    "+": _change(step_threshold(THRESHOLD_STEP)), "=": _change(step_threshold(THRESHOLD_STEP)),
    "-": _change(step_threshold(-THRESHOLD_STEP)), "_": _change(step_threshold(-THRESHOLD_STEP)),
    "c": _change(next_channel),
    "o": _change(toggle("overlay")),
    "r": _change(toggle("recording")),
    "s": lambda target: target.snapshot_soon(),
}


def handle_key(target: KeyTarget, key: int) -> None:
    """Do what a key code (from cv2.waitKey) asks; other keys are ignored."""
    action = KEYS.get(chr(key) if 0 <= key < 256 else "")
    if action is not None:
        action(target)
