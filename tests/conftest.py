"""Shared test fixtures: where the real Axionaut assets are, and how to skip without them."""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# Converted .tflite files go to a cache of this run's own, never the user's ~/.cache/carvis.
os.environ.setdefault("CARVIS_CACHE", tempfile.mkdtemp(prefix="carvis-test-cache-"))

# Children must get Ctrl-C as a user's terminal gives it. A run started in the background
# (nohup, `&` in a script) inherits SIGINT ignored, and so would every carvis the tests start;
# a handler here makes it "caught", which exec turns back into the default in each child.
signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
AXIONAUT = SHARED_DATA / "axionaut"


def require_axionaut() -> Path:
    """The Axionaut asset folder, or skip the test with the reason."""
    if not (AXIONAUT / "autopilot.hdf5").is_file():
        pytest.skip(f"real Axionaut assets not found at {AXIONAUT} (../shared/data beside the "
                    "checkout); CI always has them")
    return AXIONAUT


@pytest.fixture(scope="session")
def axionaut_dir() -> Path:
    return require_axionaut()


@pytest.fixture(scope="session")
def axionaut_model_path(axionaut_dir: Path) -> Path:
    return axionaut_dir / "autopilot.hdf5"


@pytest.fixture(scope="session")
def axionaut_frames(axionaut_dir: Path) -> Path:
    return axionaut_dir / "frames"


@pytest.fixture(scope="session")
def race_clip(axionaut_dir: Path) -> Path:
    return axionaut_dir / "race.mp4"


def render_image(renderer, image, record=None):
    """One image's picture through a Renderer's one verb (the image is given up)."""
    from carvis.frame import Frame

    return renderer.render(Frame(image, 0, 0.0, record=record))
