"""A clean console while live: what native libraries print on fd 2 (libjpeg's "Premature end of
JPEG file", OpenCV's and FFmpeg's warnings) becomes carvis' own counted one-line notes.

The live counterpart of :func:`carvis.tfquiet.held_stderr`, which holds fd 2 for one call: a
run lasts hours, so here fd 2 goes to a pipe for the whole run and a thread reads it line by
line. Python's own ``sys.stderr`` keeps writing to the console.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator

log = logging.getLogger("carvis")

#: Which library a native line comes from, by its look.
SOURCES = (
    ("ffmpeg", re.compile(r"^\[[\w-]+ @ 0x[0-9a-f]+\]")),
    ("opencv", re.compile(r"^\[ ?(WARN|ERROR|INFO)|OpenCV|cv::")),
    ("libjpeg", re.compile(r"JPEG|Huffman|marker", re.IGNORECASE)),
)
_NOISE = re.compile(r"0x[0-9a-f]+|\d+")


class Notes:
    """Counts notes by kind; each distinct line is logged once, repeats only counted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()
        self._seen: set[str] = set()

    def add(self, kind: str, text: str = "", level: int = logging.WARNING) -> None:
        """Count one note; log it the first time its wording (numbers aside) is seen."""
        key = f"{kind}:{_NOISE.sub('#', text)}"
        with self._lock:
            self.counts[kind] += 1
            first = key not in self._seen
            if first and len(self._seen) < 1000:
                self._seen.add(key)
        if first and text:
            log.log(level, "%s: %s (further ones are counted in /stats)", kind, text)

    def snapshot(self) -> dict[str, int]:
        """The counts so far."""
        with self._lock:
            return dict(self.counts)


#: The notes of this process.
NOTES = Notes()


def classify(line: str) -> str:
    """The library a native stderr line is from ("native" when it cannot be told)."""
    return next((name for name, pattern in SOURCES if pattern.search(line)), "native")


def _clean(line: str) -> str:
    """A native line without its decoration (OpenCV's '[ WARN:0@1.2] global file.cpp:12')."""
    line = re.sub(r"^\[ ?\w+:\d+@[\d.]+\] (global )?\S+ ", "", line.strip())
    return re.sub(r"^\[[\w-]+ @ 0x[0-9a-f]+\] ", "", line)


@contextlib.contextmanager
def native_notes(notes: Notes = NOTES) -> Iterator[Notes]:
    """Route fd 2 to notes for the duration; Python's sys.stderr still reaches the console."""
    sys.stderr.flush()
    console = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    saved_stderr = sys.stderr
    sys.stderr = open(console, "w", buffering=1, errors="replace",  # noqa: SIM115
                      closefd=False)

    def pump() -> None:
        with open(read_fd, "rb", closefd=True) as pipe:
            for raw in pipe:
                line = raw.decode(errors="replace").strip()
                if line:
                    notes.add(classify(line), _clean(line))

    reader = threading.Thread(target=pump, name="carvis-native-stderr", daemon=True)
    reader.start()
    try:
        yield notes
    finally:
        sys.stderr.flush()
        replaced, sys.stderr = sys.stderr, saved_stderr
        os.dup2(console, 2)  # the pipe's last writer is gone: the reader sees its end
        reader.join(1.0)
        replaced.close()
        os.close(console)
