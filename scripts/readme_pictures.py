"""Make the README's pictures from real frames (needs ../shared/data beside the checkout).

    .venv/bin/python scripts/readme_pictures.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
AXIONAUT = REPO.parent / "shared" / "data" / "axionaut"
DOCS = REPO / "docs"

sys.path.insert(0, str(Path(__file__).parent))
from modes_readme import caption


def main() -> int:
    from carvis import pipeline, profile
    from carvis.frame import Frame
    from carvis.session import ModelSession

    if not (AXIONAUT / "autopilot.hdf5").is_file():
        print(f"needs the real Axionaut assets at {AXIONAUT}", file=sys.stderr)
        return 1
    DOCS.mkdir(exist_ok=True)
    prof = profile.load(REPO / "models" / "axionaut.yaml")
    renderer = pipeline.make_renderer(ModelSession(AXIONAUT / "autopilot.hdf5"), prof)
    frame = cv2.imread(str(AXIONAUT / "frames" / "frame3868.jpg"))
    roi = frame[600:1080, :1800].copy()
    out = renderer.render(Frame(frame.copy(), 0, 0.0))
    pair = np.vstack([caption(roi, "camera ROI (rows 600:1080, cols 0:1800)"),
                      caption(out, "carvis: maxpooling2d_2, channel 1, threshold 80, inferno")])
    small = cv2.resize(pair, (900, pair.shape[0] * 900 // 1800), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(DOCS / "overlay_axionaut.jpg"), small, [cv2.IMWRITE_JPEG_QUALITY, 85])
    print("wrote", DOCS / "overlay_axionaut.jpg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
