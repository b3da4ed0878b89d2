"""What keys and the page act on while live: the settings, the recording, snapshots, layers.

The panel splits every change by owner (carvis.live.controls): the map maker's part is applied
by the model thread, the composer's and the recording's by the output loop. Keys queue their
actions for the loop, worked out from the settings of that moment.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from carvis import settings
from carvis.errors import CarvisError
from carvis.frame import Frame
from carvis.live import keys
from carvis.live.controls import Busy, Controls
from carvis.live.recording import Recorder, save_snapshot
from carvis.pipeline import Renderer

log = logging.getLogger("carvis")


class Panel:
    """The live settings behind keys and HTTP, applied by the threads that own them."""

    def __init__(self, renderer: Renderer, recorder: Recorder, snapshot_dir: str = ".") -> None:
        self.renderer = renderer
        self.recorder = recorder
        self.snapshot_dir = snapshot_dir
        self.controls = Controls(self)
        self.running = False
        self.stop: Callable[[], None] = lambda: None  # the loop's, for the quit keys
        self.last_output: Frame | None = None  # the newest composed frame (snapshots)
        self.messages: list[str] = []
        self.layers = self._layer_choices()
        self._preparing: threading.Thread | None = None
        self._prepare_lock = threading.Lock()  # one build at a time (HTTP and the 'l' key)

    def _layer_choices(self) -> list[str]:
        """The layers keys and the page cycle through: conv layers, plus the profile's own."""
        session = self.renderer.maps.session
        names = list(session.conv_layers())
        current = self.renderer.layer_name
        if current not in names:
            names.append(current)
            # Layer order from the session: LiteRT knows it from the .tflite's metadata, so
            # this never loads Keras (a Pi may not have TensorFlow at all).
            order = {name: i for i, name in enumerate(session.layer_names())}
            names.sort(key=lambda n: order.get(n, len(order)))
        return names

    # -- settings ---------------------------------------------------------------------------
    def current_settings(self) -> dict[str, Any]:
        """The live settings and their choices (the loop thread publishes them)."""
        values = {**self.renderer.settings(), "recording": self.recorder.recording}
        out = {key: values[key] for key in settings.LIVE_KEYS}
        out["record_path"] = self.recorder.paths[-1] if self.recorder.paths else None
        out["record_error"] = self.recorder.failure
        out["choices"] = {"layers": list(self.layers), "channels": self.renderer.maps.channels,
                          "colormaps": sorted(settings.COLORMAPS), "threshold": [0, 255],
                          "modes": list(settings.MODES), "targets": list(settings.TARGETS),
                          "views": list(settings.VIEWS)}
        return out

    def prepare(self, values: dict[str, Any]) -> dict[str, Any]:
        """Build and check a change beside the loop (any thread): its parts by owner."""
        render = {k: v for k, v in values.items() if k != "recording"}
        with self._prepare_lock:
            change = self.renderer.prepare(render) if render else {"draw": {}}
        if "recording" in values:
            change["recording"] = values["recording"]
        return change

    def apply_maps(self, change: dict[str, Any]) -> None:
        """The map maker's part (model thread, between two maps)."""
        self.renderer.maps.apply(change["maps"])
        if self.renderer.layer_name not in self.layers:
            self.layers.append(self.renderer.layer_name)

    def apply_loop(self, change: dict[str, Any]) -> None:
        """The recording's and the composer's part (output loop, between two frames)."""
        if "recording" in change:
            self.recorder.set(change["recording"])
        self.renderer.composer.apply(change.get("draw", {}))

    # -- keys (display thread): queue what they ask for --------------------------------------
    def handle_key(self, key: int) -> None:
        """A key press in the display window: do or queue what it asks for."""
        keys.handle_key(self, key)

    def change_soon(self, change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        """Queue a change worked out in the loop thread from the settings of the moment."""
        def work() -> None:
            values = settings.validate(change(self.controls.settings() or
                                              self.current_settings()))
            self.controls.queue(self.prepare(values))
        self._submit(work)

    def snapshot_soon(self) -> None:
        """Queue a snapshot of the next composed frame."""
        self._submit(self.snapshot)

    def next_layer(self) -> None:
        """Prepare the next layer in a helper thread, then switch to it between two maps."""
        if self._preparing is not None and self._preparing.is_alive():
            self.say(logging.WARNING, "still preparing the previous layer")
            return
        current = self.renderer.layer_name
        i = self.layers.index(current) if current in self.layers else -1
        name = self.layers[(i + 1) % len(self.layers)]

        def work() -> None:
            try:
                self.controls.queue(self.prepare({"layer": name}))
            except CarvisError as exc:
                self.say(logging.WARNING, str(exc))

        self._preparing = threading.Thread(target=work, name="carvis-prepare", daemon=True)
        self._preparing.start()

    def _submit(self, fn: Callable[[], None]) -> None:
        """Queue fn for the loop; its refusal (or the queue's) is a message, not an error."""
        def apply() -> None:
            try:
                fn()
            except CarvisError as exc:
                self.say(logging.WARNING, str(exc))
        try:
            self.controls.submit(apply)
        except Busy as exc:
            self.say(logging.WARNING, str(exc))

    def snapshot(self) -> Path | None:
        """Save the newest composed frame as a PNG; its path (None before the first frame)."""
        if self.last_output is None:
            return None
        path = save_snapshot(self.last_output, self.snapshot_dir)
        self.say(logging.INFO, f"snapshot saved to {path}")
        return path

    def say(self, level: int, text: str) -> None:
        """A note for the page (messages) and the "carvis" logger."""
        self.messages.append(text)
        del self.messages[:-50]
        log.log(level, text)
