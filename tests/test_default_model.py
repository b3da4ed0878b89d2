"""A fresh clone runs with nothing downloaded: the default model, with and without TensorFlow."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np

from carvis import cli
from carvis.synthetic import SyntheticTrack

# Runs carvis with tensorflow/keras made unimportable, as on a Pi with LiteRT only.
NO_TF = textwrap.dedent("""
    import sys
    class NoTensorFlow:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
                raise ImportError(f"No module named {name!r}")
    sys.meta_path.insert(0, NoTensorFlow())
    from carvis import cli
    code = cli.main(sys.argv[1:])
    leaked = [m for m in ("tensorflow", "keras") if m in sys.modules]
    assert not leaked, leaked
    sys.exit(code)
""")


def test_default_model_renders_without_tensorflow(tmp_path):
    with_tf, without_tf = tmp_path / "tf", tmp_path / "litert"
    assert cli.main(["render", "synthetic:frames=4", "-o", str(with_tf), "--quiet",
                     "--backend", "tensorflow"]) == 0
    r = subprocess.run([sys.executable, "-c", NO_TF, "render", "synthetic:frames=4", "-o",
                        str(without_tf), "--quiet"], capture_output=True, text=True,
                       env=dict(os.environ, CARVIS_CACHE=str(tmp_path / "cache")), timeout=120,
                       check=False)
    assert r.returncode == 0, r.stderr
    a, b = sorted(with_tf.glob("*.png")), sorted(without_tf.glob("*.png"))
    assert len(a) == len(b) == 4
    track = SyntheticTrack(640, 480, seed=0)
    for i, (x, y) in enumerate(zip(a, b)):
        ia, ib = cv2.imread(str(x)), cv2.imread(str(y))
        differ = (np.abs(ia.astype(int) - ib.astype(int)).max(-1) > 0).mean()
        assert differ < 1e-3  # the committed .tflite is the same net, to float rounding
        lit = (ia != track.frame(i)).any(-1).mean()
        assert 0.005 < lit < 0.5  # the lanes light up, not nothing and not everything


def test_default_tflite_is_the_default_model_at_its_layer(capsys):
    assert cli.main(["layers", str(Path(__file__).parents[1] / "models" / "default.tflite")]) == 0
    out = capsys.readouterr().out
    assert "'conv2'" in out and "default.keras" in out
