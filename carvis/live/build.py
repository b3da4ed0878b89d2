"""A live runner wired from `carvis run`'s options: its sinks opened and handed to it.

The runner holds the loop; this module decides what it feeds: a window, the MJPEG server and
its page, a relay (through the sinks table, carvis.sinks.table), and the recorder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from carvis.frame import Frame
from carvis.live.panel import Panel
from carvis.live.recording import Recorder
from carvis.live.runner import LiveOptions, LiveRunner
from carvis.pipeline import Renderer
from carvis.sinks.table import SINKS, SinkOptions, open_sink
from carvis.sinks.threaded import SinkWorker
from carvis.sources.base import Source


def build(source: Source, renderer: Renderer, options: LiveOptions | None = None, *,
          sinks: Mapping[str, SinkWorker] | None = None,
          on_frame: Callable[[Frame], None] | None = None) -> LiveRunner:
    """The live runner for a source and renderer, its sinks opened as the options ask (and
    any others given, e.g. an embedding program's own)."""
    options = options or LiveOptions()
    late: dict[str, Any] = {}  # the runner, once made: the display and server read it
    panel = Panel(renderer, Recorder(source.fps, lambda level, text: panel.say(level, text),
                                     first=options.record, folder=options.snapshot_dir,
                                     queue_size=options.record_queue),
                  options.snapshot_dir)
    given = dict(sinks or {})
    sinks: dict[str, SinkWorker] = {}
    server = None
    try:
        if options.display:
            from carvis.sinks.display import DisplaySink

            display = DisplaySink("carvis", on_key=panel.handle_key,
                                  hud=lambda: late["runner"].report.hud_text())
            sinks["display"] = SinkWorker(display, "display", idle_interval=0.03)
        if options.serve is not None:
            from carvis.sinks.mjpeg import JpegEncoder, MjpegServer

            host, port = options.serve
            server = MjpegServer(host, port, panel.controls, token=options.token,
                                 send_timeout=options.send_timeout,
                                 stats=lambda: late["runner"].report.stats(),
                                 metrics=lambda: late["runner"].report.metrics())
            sinks["mjpeg"] = SinkWorker(JpegEncoder(server.broadcast, options.jpeg_quality),
                                        "mjpeg")
        if options.publish:
            from carvis.sinks.publish import PublishWorker

            schemes = [key for key in SINKS if key.endswith("://")]
            publisher = open_sink(options.publish, SinkOptions(source.fps,
                                                               bitrate=options.bitrate),
                                  allowed=schemes)
            sinks["publish"] = PublishWorker(publisher)
        if options.record:
            panel.recorder.start()
        runner = LiveRunner(source, panel, {**sinks, **given}, options=options, server=server,
                            on_frame=on_frame)
    except BaseException:
        for worker in sinks.values():
            worker.close(timeout=0.5)
        if server is not None:
            server.close()
        panel.recorder.stop(announce=False)
        raise
    late["runner"] = runner
    return runner
