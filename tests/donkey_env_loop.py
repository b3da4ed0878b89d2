"""A DonkeyCar vehicle loop with carvis' part, in a DonkeyCar env (run by tests/test_donkey_env.py)."""
import json
import os
import sys

os.environ.setdefault("LOGLEVEL", "WARNING")  # before donkeycar is imported: it reads it then
import cv2
import numpy as np
from donkeycar.vehicle import Vehicle

from carvis.donkey import OverlayPart

repo = sys.argv[1]



class Camera:
    """A camera part: RGB frames with a lane line that moves."""

    def __init__(self):
        self.n = 0

    def run(self):
        self.n += 1
        img = np.zeros((120, 160, 3), np.uint8)
        cv2.line(img, (40 + self.n, 119), (80, 40), (255, 255, 255), 6)
        return img

seen = []


class Keep:
    """A part that keeps what the loop hands on."""

    def run(self, image, overlay):
        seen.append((image.copy(), overlay.copy()))

V = Vehicle()
V.add(Camera(), outputs=["cam/image_array"])
V.add(OverlayPart(f"{repo}/models/default.tflite", f"{repo}/models/default.yaml"),
      inputs=["cam/image_array"], outputs=["cam/overlay"])
V.add(Keep(), inputs=["cam/image_array", "cam/overlay"])
V.start(rate_hz=50, max_loop_count=8)
changed = [float(np.mean(a != b)) for a, b in seen]
print(json.dumps({"frames": len(seen), "shape": list(seen[-1][1].shape),
                  "changed": max(changed), "numpy": np.__version__, "cv2": cv2.__version__,
                  "tf": "tensorflow" in sys.modules}))
