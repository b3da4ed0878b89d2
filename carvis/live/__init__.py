"""Live mode: capture thread -> latest-frame slot -> overlay -> sinks, each in its own thread.

``capture`` reads the source, ``controls`` queues setting changes for the loop, ``keys`` maps the
display's keys to actions, ``recording`` writes .avi files and snapshots, ``stats`` measures and
shows, ``runner`` runs the loop and owns the threads.
"""

from carvis.live.capture import CaptureThread, RateMeter
from carvis.live.controls import Busy, Controls
from carvis.live.keys import THRESHOLD_STEP
from carvis.live.recording import Recorder
from carvis.live.runner import LiveOptions, LiveRunner

__all__ = ["THRESHOLD_STEP", "Busy", "CaptureThread", "Controls", "LiveOptions", "LiveRunner",
           "RateMeter", "Recorder"]
