"""Native libraries' lines on stderr kept off the console: TensorFlow's start-up chatter,
the converter's log, LiteRT's INFO lines. The one place TensorFlow's log level is set."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

#: TensorFlow's C++ log level wherever carvis sets it (2 still lets the cuInit line through).
TF_LOG_LEVEL = "3"


@contextlib.contextmanager
def held_stderr() -> Iterator[list[str]]:
    """Hold what is written to fd 2 into a list (filled once the with block has closed)."""
    captured: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured.extend(tmp.read().decode(errors="replace").splitlines())


def quiet_environment() -> None:
    """Ask TensorFlow for no C++ start-up chatter (before it is imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_LOG_LEVEL)
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def import_tensorflow() -> None:
    """Import TensorFlow and Keras once, their native stderr lines held back."""
    # The CUDA stubs of the standard wheel print "Could not find cuda drivers..." from C++
    # whatever TF_CPP_MIN_LOG_LEVEL says, so fd 2 is held for the import only.
    if "tensorflow" in sys.modules:
        return
    quiet_environment()
    with held_stderr():
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
