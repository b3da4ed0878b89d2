"""The onboard window: an OpenCV window that shows the overlay and turns key presses into
settings changes. Every HighGUI call happens in the display's own thread (its SinkWorker)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import cv2
import numpy as np

from carvis.errors import CarvisError
from carvis.sinks import Sink

KEYS_HELP = ("q quit, +/- threshold, c next channel, l next conv layer, o overlay on/off, "
             "r start/stop recording, s snapshot PNG")


def check_screen() -> None:
    """Fail in one line, before a window is opened, if there is no screen to open it on."""
    if not sys.platform.startswith("linux"):
        return
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return
    if os.environ.get("QT_QPA_PLATFORM", "").startswith(("offscreen", "eglfs", "linuxfb")):
        return
    raise CarvisError("--display needs a screen, and no DISPLAY is set (over ssh: ssh -X, on "
                      "the car: run it from the desktop); or watch in a browser with --serve")


class DisplaySink(Sink):
    """Shows frames in a window; key presses go to ``on_key``, a HUD line from ``hud``."""

    def __init__(self, title: str = "carvis", on_key: Callable[[int], None] | None = None,
                 hud: Callable[[], str] | None = None) -> None:
        check_screen()
        self.title = title
        self.on_key = on_key
        self.hud = hud
        self.shown = 0
        self._open = False

    def write(self, image: np.ndarray) -> None:
        if not self._open:
            cv2.namedWindow(self.title, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO)
            cv2.resizeWindow(self.title, image.shape[1], image.shape[0])
            self._open = True
        if self.hud is not None:
            # The frame may be read by other sinks at the same time: draw on a copy.
            image = draw_hud(image.copy(), self.hud())
        cv2.imshow(self.title, image)
        self.shown += 1
        self.idle()

    def idle(self) -> None:
        """Pump window events and hand key presses on (also while no frame comes)."""
        if not self._open:
            return
        key = cv2.waitKey(1)
        if key != -1 and self.on_key is not None:
            self.on_key(key & 0xFF)
        if self.on_key is not None and cv2.getWindowProperty(
                self.title, cv2.WND_PROP_VISIBLE) < 1:
            self.on_key(ord("q"))  # the window was closed with the mouse

    def close(self) -> None:
        if self._open:
            self._open = False
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)


def draw_hud(image: np.ndarray, text: str) -> np.ndarray:
    """One line of status text, outlined so it reads on any background (in place)."""
    scale = max(0.4, image.shape[1] / 1600)
    org = (8, int(22 * scale / 0.6))
    for color, width in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        cv2.putText(image, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, width,
                    cv2.LINE_AA)
    return image
