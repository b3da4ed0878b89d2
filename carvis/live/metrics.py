"""/metrics: the live stats in Prometheus' text format (0.0.4), and the stage histograms."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from typing import Any

#: Upper bounds of the stage latency buckets, seconds.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, math.inf)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Histogram:
    """Cumulative counts of observed seconds per bucket, their sum and count (thread-safe)."""

    def __init__(self, buckets: Iterable[float] = BUCKETS) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.sum = 0.0
        self.count = 0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        """Count one observation."""
        with self._lock:
            for i, bound in enumerate(self.buckets):
                if seconds <= bound:
                    self.counts[i] += 1
                    break
            self.sum += seconds
            self.count += 1

    def snapshot(self) -> tuple[list[tuple[float, int]], float, int]:
        """([(bound, cumulative count)], sum, count)."""
        with self._lock:
            total, out = 0, []
            for bound, n in zip(self.buckets, self.counts):
                total += n
                out.append((bound, total))
            return out, self.sum, self.count


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _bound(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(bound)


class _Text:
    """Lines of the exposition format, one HELP/TYPE per family."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[dict[str, Any], float | None]]) -> None:
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for labels, value in samples:
            if value is None:
                continue
            tag = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            self.lines.append(f"{name}{{{tag}}} {float(value):g}" if tag
                              else f"{name} {float(value):g}")

    def histogram(self, name: str, help_text: str, hists: dict[str, Histogram]) -> None:
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        for stage, hist in sorted(hists.items()):
            buckets, total, count = hist.snapshot()
            for bound, n in buckets:
                self.lines.append(f'{name}_bucket{{stage="{stage}",le="{_bound(bound)}"}} {n}')
            self.lines.append(f'{name}_sum{{stage="{stage}"}} {total:.6f}')
            self.lines.append(f'{name}_count{{stage="{stage}"}} {count}')


def render(stats: dict[str, Any], hists: dict[str, Histogram]) -> str:
    """The stats of LiveRunner.stats() (with the viewers') as Prometheus text."""
    t = _Text()
    frames, source = stats["frames"], stats.get("signal", {})
    t.family("carvis_frames_in_total", "counter", "Frames captured from the source.",
             [({}, frames["captured"])])
    t.family("carvis_frames_out_total", "counter", "Frames sent to the outputs.",
             [({}, frames["processed"])])
    t.family("carvis_maps_total", "counter", "Maps the model computed.",
             [({}, stats["map"]["computed"])])
    t.family("carvis_drops_total", "counter", "Frames dropped, by cause.",
             [({"cause": k}, v) for k, v in sorted(stats["drops"].items())]
             + [({"cause": "viewer_busy"}, stats.get("viewer_frames_skipped"))])
    t.family("carvis_fps", "gauge", "Frame rates over the last seconds.",
             [({"of": "in"}, stats["fps_in"]), ({"of": "out"}, stats["fps_out"]),
              ({"of": "map"}, stats["map"]["fps"])])
    t.family("carvis_map_age_frames", "gauge", "Frames between the newest output and its map.",
             [({}, stats["map"]["age_frames"])])
    t.family("carvis_map_age_seconds", "gauge", "Capture time of the newest output minus its "
             "map's.", [({}, _seconds(stats["map"]["age_ms"]))])
    t.family("carvis_viewers", "gauge", "Viewers of the MJPEG stream now.",
             [({}, stats.get("viewers"))])
    t.family("carvis_viewers_total", "counter", "Viewers that connected.",
             [({}, stats.get("viewers_total"))])
    t.family("carvis_viewers_dropped_total", "counter", "Viewers cut off for not reading.",
             [({}, stats.get("viewers_dropped"))])
    t.family("carvis_source_up", "gauge", "1 while the source delivers frames.",
             [({}, 0 if source.get("lost_for_s") is not None else 1)])
    t.family("carvis_source_losses_total", "counter", "Times the source was lost.",
             [({}, source.get("losses", 0))])
    t.family("carvis_source_reconnects_total", "counter", "Times a lost source came back.",
             [({}, source.get("reconnects", 0))])
    t.family("carvis_source_skipped_total", "counter", "Broken frames or files skipped.",
             [({}, source.get("skipped", 0))])
    t.family("carvis_recording", "gauge", "1 while recording.",
             [({}, int(bool(stats["recording"])))])
    t.family("carvis_recording_failures_total", "counter", "Recordings stopped by an error.",
             [({}, len(stats.get("record_failures", [])))])
    t.family("carvis_notes_total", "counter", "Library lines and client hang-ups, counted.",
             [({"kind": k}, v) for k, v in sorted(stats.get("notes", {}).items())])
    t.histogram("carvis_stage_seconds", "Time per frame in each stage.", hists)
    return "\n".join(t.lines) + "\n"


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1e3
