"""What the live loop measures, and how it is shown: /stats JSON and the display's status line."""

from __future__ import annotations

import collections
import time
from pathlib import Path
from typing import Any

from carvis.live import metrics
from carvis.live.capture import CaptureThread, RateMeter
from carvis.live.console import NOTES
from carvis.live.inference import MapThread
from carvis.sinks.threaded import SinkWorker, percentile_ms

STATS_INTERVAL = 0.5  # seconds between two reads of the stage times and the sinks' health


class LoopMeter:
    """Frames processed, output rate and loop times of the live loop."""

    def __init__(self) -> None:
        self.processed = 0
        self.rate = RateMeter()
        self.loop_times: collections.deque[float] = collections.deque(maxlen=300)
        self.stage_ms: dict[str, float] = {}
        self.started = time.monotonic()
        self._next_check = 0.0

    def restart(self) -> None:
        """Count uptime from now."""
        self.started = time.monotonic()

    def frame_done(self, t0: float) -> bool:
        """Count a frame whose processing began at perf_counter t0; True when a check is due."""
        self.processed += 1
        self.rate.tick()
        self.loop_times.append(time.perf_counter() - t0)
        if t0 < self._next_check:
            return False
        self._next_check = t0 + STATS_INTERVAL
        return True


def signal_stats(capture: CaptureThread) -> dict[str, Any]:
    """Losses and reconnects of the source, and what it skipped (broken frames, files)."""
    lost = capture.lost_since
    files = list(getattr(capture.source, "skipped", []))
    return {"lost_for_s": None if lost is None else round(time.monotonic() - lost, 2),
            "losses": capture.losses, "reconnects": capture.reconnects,
            "last_loss": capture.last_loss,
            "skipped": getattr(capture.source, "corrupt", 0) + len(files),
            "skipped_files": [Path(f).name for f in files[-20:]]}


def map_stats(age: tuple[int, float] | None, model: MapThread) -> dict[str, Any]:
    """How old the map on the newest output is (frames, ms), and how fast maps come."""
    latest = model.latest
    return {"age_frames": age[0] if age else None,
            "age_ms": round(age[1] * 1e3, 1) if age else None,
            "fps": round(model.rate.rate(), 2), "computed": model.computed,
            "compute_ms": round(latest.compute_s * 1e3, 2) if latest else None}


#: Where a frame's latency ends, by the sink it is measured at (its worker's write done).
LATENCY_TO = {"mjpeg": "JPEG-encoded for the stream", "display": "shown in the window",
              "record": "written to the recording"}


def live_stats(meter: LoopMeter, capture: CaptureThread, sinks: dict[str, dict[str, Any]], *,
               source: str, running: bool, recording: bool, encoded: int) -> dict[str, Any]:
    """Counts, rates, per-stage times and latency, JSON-ready; sinks are their stats()."""
    stages = {"capture": percentile_ms(capture.read_times, 50), **meter.stage_ms}
    if "mjpeg" in sinks:
        stages["encode"] = sinks["mjpeg"]["write_ms"]
    latency_from = next((n for n in ("mjpeg", "display", "record") if n in sinks), None)
    latency = sinks[latency_from] if latency_from else {}
    return {
        "source": source,
        "running": running,
        "uptime_s": round(time.monotonic() - meter.started, 2),
        "fps_in": round(capture.rate.rate(), 2),
        "fps_out": round(meter.rate.rate(), 2),
        "frames": {"captured": capture.captured, "processed": meter.processed,
                   "encoded": encoded},
        "stages_ms": {k: _round(v) for k, v in stages.items()},
        "loop_ms": _round(percentile_ms(meter.loop_times, 50)),
        "latency_ms": {"from": "capture", "to": LATENCY_TO.get(latency_from),
                       "p50": latency.get("latency_p50_ms"),
                       "p99": latency.get("latency_p99_ms")},
        "drops": {"capture": capture.dropped,
                  **{name: s["dropped"] for name, s in sinks.items()}},
        "sinks": sinks,
        "recording": recording,
    }


def hud_text(settings: dict[str, Any], meter: LoopMeter, capture: CaptureThread,
             display: SinkWorker | None, age: tuple[int, float] | None) -> str:
    """One status line for the display, from the published settings."""
    lat = percentile_ms(display.latencies, 50) if display is not None else None
    rec = "  REC" if settings["recording"] else ""
    over = "" if settings["overlay"] else " (overlay off)"
    old = f"  map {age[0]} fr/{age[1] * 1e3:.0f} ms" if age else "  no map yet"
    return (f"{meter.rate.rate():4.1f} fps  {lat or 0:4.0f} ms  drops "
            f"{capture.dropped}{old}  |  {settings['layer']} ch {settings['channel']}  "
            f"thr {settings['threshold']:g}{over}{rec}")


def summary(meter: LoopMeter, capture: CaptureThread, model: MapThread) -> str:
    """One line on how the run went."""
    lost = (f", source lost {capture.losses} time(s), back {capture.reconnects}"
            if capture.losses else "")
    return (f"{meter.processed} frames processed of {capture.captured} captured "
            f"({capture.dropped} dropped to stay live), {model.computed} maps{lost}")


class Report:
    """What the live run says of itself: /stats, /metrics, the display's line, the summary."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner

    def stats(self) -> dict[str, Any]:
        """Counts, rates, per-stage times and latency, JSON-ready (any thread)."""
        r = self.runner
        recorder = r.panel.recorder
        sinks = {name: w.stats() for name, w in r.sinks.items()}
        record = recorder.stats()
        if record is not None:
            sinks["record"] = record
        encoder = getattr(r.sinks.get("mjpeg"), "sink", None)
        out = live_stats(r.meter, r.capture, sinks, source=r.source.name,
                         running=r.panel.running, recording=recorder.recording,
                         encoded=getattr(encoder, "encodes", 0))
        out.update(map=map_stats(r.map_age, r.model), signal=signal_stats(r.capture),
                   placeholders=r.placeholders, record_error=recorder.failure,
                   record_failures=list(recorder.failures), notes=NOTES.snapshot())
        return out

    def metrics(self) -> str:
        """The stats in Prometheus' text format (any thread)."""
        r = self.runner
        full = r.server.stats() if r.server is not None else self.stats()
        return metrics.render(full, r.hists)

    def hud_text(self) -> str:
        """One status line for the display."""
        r = self.runner
        shown = r.controls.settings() or r.panel.current_settings()
        return hud_text({**shown, "recording": r.panel.recorder.recording}, r.meter, r.capture,
                        r.sinks.get("display"), r.map_age)

    def summary(self) -> str:
        """One line on how the run went."""
        return summary(self.runner.meter, self.runner.capture, self.runner.model)


def _round(v: float | None) -> float | None:
    return round(v, 2) if v is not None else None
