#!/usr/bin/env python3
"""A season at once against one file after another: the race clip x4, a synthetic clip and a
corrupt file, rendered by one `carvis render … --jobs N` and by one `carvis render` per file.

    .venv/bin/python scripts/batch_bench.py [--jobs 2] [--frames 622]

Prints both wall times and their ratio, checks every output is complete (ffprobe's frame count
against the source's) and that the corrupt input is reported without stopping the rest.
Exit status 0 if every output is complete and the corrupt file was reported, else 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AXIONAUT = REPO.parent / "shared" / "data" / "axionaut"
PROFILE = REPO / "models" / "axionaut.yaml"


def frames_in(path: Path) -> int:
    """Frames ffprobe decodes from a video (0 if it cannot read it)."""
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
                          "-show_entries", "stream=nb_read_frames", "-of", "json", str(path)],
                         capture_output=True, text=True, timeout=300, check=False)
    streams = json.loads(out.stdout or "{}").get("streams") or [{}]
    return int(streams[0].get("nb_read_frames", 0) or 0)


def carvis(*args: str) -> tuple[float, int, str]:
    """Run `carvis ARGS`; (wall seconds, exit status, stderr)."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "carvis.cli", *args], capture_output=True,
                          text=True, cwd=REPO, check=False)
    return time.perf_counter() - t0, done.returncode, done.stderr


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--frames", type=int, default=300, help="frames of the synthetic clip")
    args = ap.parse_args()
    race = AXIONAUT / "race.mp4"
    if not race.is_file():
        print(f"batch_bench: the race clip is not at {race}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="batch_bench-"))
    (work / "seq").mkdir()
    # The Axionaut crop as fractions (the same pixels of a 1920x1080 frame), so that one profile
    # also fits the synthetic clip's 640x480 (the synthetic track cannot draw 1080p frames).
    profile = work / "axionaut-fractions.yaml"
    profile.write_text(PROFILE.read_text().replace(
        "crop: {top: 600, bottom: 1080, left: 0, right: 1800}",
        f"crop: {{top: {600 / 1080!r}, bottom: 1.0, left: 0.0, right: {1800 / 1920!r}}}"))
    model = work / "axionaut.tflite"
    _, code, err = carvis("export", str(AXIONAUT / "autopilot.hdf5"), "--profile",
                          str(profile), "-o", str(model))
    if code:
        print(err, file=sys.stderr)
        return 2
    clips = []
    for i in range(1, 5):
        clip = work / f"race{i}.mp4"
        clip.symlink_to(race)
        clips.append(str(clip))
    synthetic = f"synthetic:frames={args.frames}"
    corrupt = work / "corrupt.mp4"
    corrupt.write_bytes(os.urandom(100_000))
    sources = [*clips, synthetic, str(corrupt)]
    expected = {**{Path(c).stem: frames_in(race) for c in clips},
                f"synthetic_frames_{args.frames}": args.frames}
    flags = ["--model", str(model), "--profile", str(profile), "-q"]

    one_by_one = 0.0
    for source in sources:
        name = Path(source).stem if source != synthetic else next(
            k for k in expected if k.startswith("synthetic"))
        took, _, _ = carvis("render", source, "-o", str(work / "seq" / f"{name}.mp4"), *flags)
        one_by_one += took
    batch_s, code, err = carvis("render", *sources, "-o", str(work / "par"), "--jobs",
                                str(args.jobs), *flags)

    ok = True
    print(f"{len(sources)} sources ({len(clips)} x race.mp4, {synthetic}, a corrupt file) "
          f"on {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    for stem, want in expected.items():
        got = frames_in(work / "par" / f"{stem}.mp4")
        seq = frames_in(work / "seq" / f"{stem}.mp4")
        ok &= got == want == seq
        print(f"  {stem + '.mp4':<40} {got:>4} frames (--jobs {args.jobs}), {seq:>4} (one by "
              f"one), expected {want}")
    reported = [line for line in err.splitlines() if line.startswith("carvis: error:")]
    ok &= code == 1 and len(reported) == 1 and "corrupt.mp4" in reported[0]
    print(f"  corrupt input: exit status {code}, reported as: {reported[0] if reported else '-'}")
    print(f"  summary line: {err.strip().splitlines()[-1]}")
    print(f"\none `carvis render` per file: {one_by_one:.1f} s; one `carvis render --jobs "
          f"{args.jobs}`: {batch_s:.1f} s; ratio {batch_s / one_by_one:.2f} "
          f"({one_by_one / batch_s:.2f}x faster)")
    print(f"outputs kept in {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
