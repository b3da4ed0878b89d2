"""Import TensorFlow without the C++ start-up chatter, so errors stay one line."""

from __future__ import annotations

import os
import sys


def import_tensorflow() -> None:
    """Import tensorflow once with its native stderr logging silenced.

    The CUDA stubs of the standard wheel print "Could not find cuda drivers..." from C++ during
    import whatever TF_CPP_MIN_LOG_LEVEL says, so file descriptor 2 is pointed at /dev/null
    for the duration of the import only.
    """
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
