"""What every file sink checks before and while writing, worded once for every container."""

from __future__ import annotations

import os
from pathlib import Path

from carvis.errors import CarvisError


def check_writable_dir(path: Path, what: str) -> None:
    """Fail early, in one line, if files cannot be created in this folder."""
    if not path.exists():
        raise CarvisError(f"{what} {str(path)!r}: folder does not exist; create it first")
    if not path.is_dir():
        raise CarvisError(f"{what} {str(path)!r} is not a folder")
    if not os.access(path, os.W_OK | os.X_OK):
        raise CarvisError(f"{what} {str(path)!r}: no permission to write there; "
                          "choose another output path")


def check_writable_file(path: Path) -> None:
    """Fail early, in one line, where the file cannot be created or overwritten."""
    check_writable_dir(path.resolve().parent, "output")
    if path.exists() and not os.access(path, os.W_OK):
        raise CarvisError(f"output {str(path)!r} exists and is read-only; "
                          "choose another output path")


def write_failed(path: Path | str, exc: BaseException, frames: int) -> CarvisError:
    """The one line for a write that failed, whatever the container: what, why, what to do."""
    reason = getattr(exc, "strerror", None) or (str(exc).strip().splitlines() or [""])[0] or \
        type(exc).__name__
    kept = (f"after {frames} frame{'s' * (frames != 1)}; what reached the disk before plays"
            if frames else "before any frame")
    return CarvisError(f"cannot write {str(path)!r} ({reason}) {kept}; free disk space or give "
                       "an output on another disk")
