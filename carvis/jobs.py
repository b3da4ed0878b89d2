"""One render: a source → its pictures → one output. The only render path: `carvis render` of
one source runs it in its own process, a batch runs it once per source in workers.

A job's maps come from the model (a session) or from a map track (``--maps``, no model); its
frames can also be kept as a track (``--save-maps``). Errors become the outcome's one line, so
one failing source in a batch never stops the others.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from carvis import donkeyconfig, hud, pilots, pipeline, sources
from carvis.composer import Composer
from carvis.errors import CarvisError
from carvis.profile import Profile
from carvis.session import ModelSession
from carvis.sinks import Sink
from carvis.sinks.table import SinkOptions, check_not_input, open_sink

log = logging.getLogger("carvis")

PROGRESS_EVERY = 0.25  # seconds between two "frames" progress events of one job


@dataclasses.dataclass(frozen=True)
class Job:
    """One source and the file (or PNG folder) it is rendered to; a batch's jobs may each name
    their model. A staged job (a cluster's) is written under a temporary name beside the output
    and renamed into place when whole, so a job run again (its worker died) never mixes two
    attempts."""

    source: str
    output: Path
    model: Path | None = None  # None: the options' model
    staged: bool = False


@dataclasses.dataclass(frozen=True)
class RenderOptions:
    """What a job is rendered with (picklable: it goes to batch workers)."""

    profile: Profile | None  # None with a map track and no --profile (the track's own)
    model: Path | None  # with a map track: only to check the track was made by it
    backend: str = "auto"
    lambda_policy: str = "error"
    fps: float | None = None
    start: str | None = None
    end: str | None = None
    max_frames: int | None = None
    plot: bool = False
    plot_seconds: float = 5.0
    hud: bool | None = None
    encoder_threads: int | None = None
    save_maps: Path | None = None  # keep every frame's map in this track
    maps: Path | None = None  # draw from this track instead of the model
    draw: tuple[tuple[str, Any], ...] = ()  # drawing flags given with a track
    scale: int | None = None  # the picture scaled by this (None: small ones up to 480 rows)
    pilot_type: str | None = None  # a DonkeyCar pilot's --type
    car_config: Path | None = None  # a DonkeyCar car's config.py (--config)
    where: tuple[str, ...] = ()  # --where KEY=VALUE tests of a tub's records


@dataclasses.dataclass
class Outcome:
    """How one job went: frames written, seconds, and its error (None if it finished)."""

    job: Job
    frames: int = 0
    seconds: float = 0.0
    error: str | None = None
    interrupted: bool = False
    notes: list[str] = dataclasses.field(default_factory=list)


#: A job's progress: ("start", {"frames": expected or None, "describe": line}) once, then
#: ("frames", n) with the frames written since the last event.
Progress = Callable[[str, Any], None]


def job_options(job: Job, options: RenderOptions) -> RenderOptions:
    """The options a job is rendered with: its own model, when it names one."""
    return options if job.model is None else dataclasses.replace(options, model=job.model)


def open_session(options: RenderOptions) -> ModelSession | None:
    """The model session a job needs (None when it draws from a track)."""
    if options.maps is not None:
        return None
    return ModelSession(options.model, backend=options.backend,
                        lambda_policy=options.lambda_policy)


def find_pilot(session: ModelSession, options: RenderOptions) -> pilots.Pilot | None:
    """The model as a DonkeyCar pilot: --type and the car's --config, or its own names."""
    config = donkeyconfig.read(options.car_config) if options.car_config else None
    return pilots.find(session, options.pilot_type, config)


def steering_renderer(session: ModelSession, profile: Profile, source: Any, *,
                      plot: bool = False, plot_seconds: float = 5.0,
                      hud_on: bool | None = None, scale: int | None = None,
                      pilot: Any = "auto") -> pipeline.Renderer:
    """The Renderer; on a tub (or with --plot) its HUD shows the recorded steering beside the
    model's unless the HUD is turned off, and --plot charts both."""
    if plot and hud_on is False:
        raise CarvisError("--plot charts the HUD's steering; drop --no-hud")
    chart = hud.StripChart(plot_seconds, source.fps) if plot else None
    tub = hud_on is None and bool(plot or getattr(source, "records", None))

    def make(p: Profile, with_chart: hud.StripChart | None = None) -> pipeline.Renderer:
        return pipeline.make_renderer(session, p, with_chart, scale=scale, fps=source.fps,
                                      pilot=pilot)

    if not tub or plot:
        return make(profile.replace(hud=True) if tub else profile, chart)
    plain = make(profile)  # its own refusal comes first, unmixed
    try:
        return make(profile.replace(hud=True), chart)
    except CarvisError as exc:  # a tub, and a model without a steering output for the HUD
        log.info("note: no steering HUD (%s)", exc)
        return plain


def cut_at_decode(source: Any, profile: Profile) -> Profile:
    """The profile to draw with. When the picture is only the profile's crop (output: roi), a
    video source is asked to cut it as it decodes (fewer pixels turned into BGR:
    carvis.sources.region); if it does, its frames are the crop already, and the profile to
    draw them with has no crop."""
    if profile.output != "roi" or profile.crop is None or not hasattr(source, "size"):
        return profile
    width, height = source.size
    box = profile.crop.pixels(height, width)
    return dataclasses.replace(profile, crop=None) if source.crop_at_decode(box) else profile


def _track_renderer(options: RenderOptions, source: Any) -> pipeline.Renderer:
    """A Renderer that draws a track's maps (no model)."""
    from carvis.review.replay import TrackMaps, drawing_profile, open_track

    track = open_track(options.maps, source, options.model)
    profile = drawing_profile(track, options.profile, dict(options.draw))
    if options.plot and not track.has_steering:
        raise CarvisError(f"--plot charts the steering, and map track {track.path.name} holds "
                          "none (it was made without the HUD); drop --plot")
    chart = hud.StripChart(options.plot_seconds, source.fps) if options.plot else None
    if options.plot or (options.hud is None and track.has_recorded):
        profile = profile.replace(hud=True)
    maps = TrackMaps(track, profile)
    return pipeline.Renderer(maps, Composer(profile, chart, times=maps.times,
                                            scale=options.scale, fps=source.fps))


def render_job(job: Job, options: RenderOptions, session: ModelSession | None,
               progress: Progress | None = None) -> Outcome:
    """Render one source to its output in this process; errors become the outcome's line."""
    t0 = time.perf_counter()
    outcome = Outcome(job)
    sink: Sink | None = None
    target = staging_name(job.output) if job.staged else job.output
    try:
        if job.staged:
            check_replaceable(job.output, [job.source])
        with sources.open_source(job.source, fps=options.fps) as source:
            start = sources.frame_position(options.start, "--start")
            end = sources.frame_position(options.end, "--end")
            frames = sources.select_frames(source, source.fps, start, end)
            keep = sources.parse_where(options.where)
            if keep is not None:
                frames = (frame for frame in frames if keep(frame))
            expected = sources.count_frames(source, start, end, keep)
            if options.max_frames is not None:
                frames = itertools.islice(frames, options.max_frames)
                expected = options.max_frames if expected is None else \
                    min(expected, options.max_frames)
            if expected == 0:
                last = f"{source.frame_count} frames" if not getattr(source, "records", None) \
                    else f"records {source.records[0].get('_index')}.." \
                         f"{source.records[-1].get('_index')}"
                asked = " and ".join(f"--where {w}" for w in options.where) or \
                    f"--start {options.start} .. --end {options.end}"
                raise CarvisError(f"nothing to render: {source.name} has {last}, none in "
                                  f"{asked}; give a range inside it")
            if session is None:
                renderer = _track_renderer(options, source)
            else:  # a map track (--save-maps) keeps the crop of the whole frame: no cut
                profile = options.profile if options.save_maps else \
                    cut_at_decode(source, options.profile)
                renderer = steering_renderer(session, profile, source, plot=options.plot,
                                             plot_seconds=options.plot_seconds,
                                             hud_on=options.hud, scale=options.scale,
                                             pilot=find_pilot(session, options))
            sink = open_sink(target, SinkOptions(source.fps, threads=options.encoder_threads),
                             inputs=[job.source], allowed=("", ".avi", ".mp4", ".mkv"))
            writer = _track_writer(options, renderer, session, source)
            if progress is not None:
                what = (session.describe(renderer.layer_name) if session is not None
                        else f"maps from {options.maps} (no model)")
                progress("start", {"frames": expected, "describe": what})
            throttle = Throttle(progress) if progress is not None else None
            with sink:
                try:
                    outcome.frames = pipeline.render(frames, renderer, sink, progress=throttle)
                except BaseException:
                    if writer is not None:
                        writer.abort()
                    raise
            if outcome.frames == 0:
                if writer is not None:
                    writer.abort()
                raise CarvisError(f"no frame was read from {source.name} in the range asked "
                                  "for, so nothing was written; check --start/--end")
            if writer is not None:
                writer.close()
            if throttle is not None:
                throttle.flush()
            outcome.notes.extend(_notes(source, renderer))
            if job.staged:
                put_in_place(target, job.output)
    except KeyboardInterrupt:
        outcome.interrupted = True
        outcome.frames = getattr(sink, "frames", 0)
        if job.staged and outcome.frames:  # what was written is playable: kept, as unstaged
            put_in_place(target, job.output)
    except Exception as exc:  # noqa: BLE001 - one job's failure is its outcome, not the batch's
        outcome.error = str(exc) if isinstance(exc, CarvisError | OSError) else \
            f"{type(exc).__name__}: {exc}"
        outcome.frames = getattr(sink, "frames", 0) if sink is not None else 0
        if job.staged:
            _remove(target)
    outcome.seconds = time.perf_counter() - t0
    return outcome


# -- staged outputs: a temporary name beside the output, renamed into place when whole ---------
STAGE_PREFIX = ".carvis-part-"


def staging_name(output: Path) -> Path:
    """A new temporary name beside output, with its suffix (so the same sink writes it)."""
    return output.with_name(f"{STAGE_PREFIX}{uuid.uuid4().hex[:8]}-{output.name}")


def check_replaceable(output: Path, inputs: list[str]) -> None:
    """Refuse, before rendering, an output the whole result could not be renamed onto."""
    check_not_input(output, inputs)
    if output.suffix and output.is_dir():
        raise CarvisError(f"output {str(output)!r} is a folder; give a new file name ending "
                          f"in {output.suffix}, or a name without a suffix for PNG frames")
    if not output.suffix and output.exists() and not output.is_dir():
        raise CarvisError(f"output {str(output)!r} exists and is not a folder; give a new "
                          "folder name for the PNG frames")


def put_in_place(staged: Path, output: Path) -> None:
    """Rename a whole staged output onto its name (a PNG folder replaces the earlier one as a
    file would), then drop what earlier attempts at it left."""
    if staged.is_dir() and output.is_dir():
        old = output.with_name(f"{STAGE_PREFIX}{uuid.uuid4().hex[:8]}-{output.name}")
        os.rename(output, old)
        os.rename(staged, output)
        _remove(old)
    elif staged.exists():
        os.replace(staged, output)
    for left in output.parent.glob(f"{STAGE_PREFIX}*-{_glob_escape(output.name)}"):
        if len(left.name) == len(STAGE_PREFIX) + 9 + len(output.name):
            _remove(left)


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _remove(path: Path) -> None:
    """A staged file or folder, gone (nothing if it was never made)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _track_writer(options: RenderOptions, renderer: pipeline.Renderer,
                  session: ModelSession | None, source: Any) -> Any:
    """With --save-maps, a new track that the renderer hands every frame's map."""
    if options.save_maps is None:
        return None
    if session is None:
        raise CarvisError("--save-maps keeps the model's maps; with --maps they are already "
                          "in a track")
    from carvis.review.track import TrackWriter, track_meta

    writer = TrackWriter(options.save_maps, track_meta(renderer.maps, source))
    renderer.on_map = writer.append
    return writer


def _notes(source: Any, renderer: pipeline.Renderer) -> list[str]:
    """What the outcome says besides the count: skipped images, the steering summary."""
    notes = []
    skipped = getattr(source, "skipped", [])
    if skipped:
        names = ", ".join(Path(str(p)).name for p in skipped[:5])
        notes.append(f"skipped {len(skipped)} unreadable image{'s' * (len(skipped) != 1)} "
                     f"({names}{', ...' if len(skipped) > 5 else ''}); the output has one "
                     "frame per image read, numbered in order without them")
    if renderer.log.rows:
        notes.append(renderer.log.summary())
    return notes


class Throttle:
    """render()'s per-frame progress as a "frames" event at most every PROGRESS_EVERY s."""

    def __init__(self, progress: Progress) -> None:
        self.progress, self.pending, self.last = progress, 0, time.monotonic()

    def __call__(self, n: int) -> None:
        self.pending += n
        if time.monotonic() - self.last >= PROGRESS_EVERY:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.progress("frames", self.pending)
        self.pending, self.last = 0, time.monotonic()
