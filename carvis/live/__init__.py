"""Live mode: capture thread -> latest-frame slot -> newest map -> sinks, each in its own thread.

``capture`` reads the source (and reopens a lost one), ``inference`` runs the model on the newest
frame, ``controls`` queues setting changes, ``keys`` maps the display's keys to actions,
``recording`` writes wall-clock recordings and snapshots, ``stats`` and ``metrics`` measure and
show, ``console`` turns native libraries' stderr into notes, ``panel`` is what keys and the page
act on, ``runner`` runs the loop over the parts ``build`` hands it.
"""

from carvis.live.build import build
from carvis.live.capture import CaptureThread, RateMeter
from carvis.live.controls import Busy, Controls
from carvis.live.keys import THRESHOLD_STEP
from carvis.live.recording import Recorder
from carvis.live.runner import LiveOptions, LiveRunner

__all__ = ["THRESHOLD_STEP", "Busy", "CaptureThread", "Controls", "LiveOptions", "LiveRunner",
           "RateMeter", "Recorder", "build"]
