"""LiteRT's interpreter from whatever the env has: ai-edge-litert, else tflite-runtime (DonkeyCar's
Pi runtime), else TensorFlow's tf.lite (a donkeycar[pc] env), behind carvis' one wrapper. Each
case runs in a child process where the runtimes ahead of it cannot be imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import donkey_pilots
import numpy as np
import pytest
from conftest import REPO

from carvis.backends import installed

pytest.importorskip("donkeycar.parts.tub_v2", reason="DonkeyCar is needed: pip install "
                    "--no-deps donkeycar pyfiglet prettytable")
pytest.importorskip("tf_keras", reason="DonkeyCar's pilots are built with tf-keras (Keras 2)")


def blocked(*names: str) -> str:
    """Code that makes these modules unimportable (run before carvis is imported)."""
    return "import sys\n" + "".join(f"sys.modules[{n!r}] = None\n" for n in names)


def child(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env=env, check=False)


@pytest.fixture(scope="session")
def pilots(tmp_path_factory) -> donkey_pilots.DonkeyPilots:
    return donkey_pilots.build(tmp_path_factory.getbasetemp())


@pytest.mark.parametrize(("block", "runtime"), [
    ((), "ai-edge-litert"),
    (("ai_edge_litert",), "tflite-runtime" if installed("tflite_runtime") else "tensorflow"),
    (("ai_edge_litert", "tflite_runtime"), "tensorflow"),
    (("ai_edge_litert", "tflite_runtime", "tensorflow"), None),
])
def test_the_runtime_is_the_first_one_installed(block, runtime):
    r = child(blocked(*block) + textwrap.dedent("""
        import json
        from carvis.backends import litert_available, litert_runtime
        print(json.dumps([litert_runtime(), litert_available()]))
        """))
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.splitlines()[-1]) == [runtime, runtime is not None]


def test_without_any_runtime_the_message_names_what_to_install(pilots):
    r = child(blocked("ai_edge_litert", "tflite_runtime", "tensorflow") + textwrap.dedent(f"""
        from carvis.backends.litert import LiteRTModel
        from carvis.errors import CarvisError
        try:
            LiteRTModel(open({str(pilots.model("linear", "tflite"))!r}, "rb").read(),
                        "linear.tflite")
        except CarvisError as exc:
            print(exc)
        """))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == (
        "linear.tflite: running a .tflite needs a LiteRT runtime; install one: pip install "
        "ai-edge-litert (or tflite-runtime, as on a DonkeyCar Pi; TensorFlow's tf.lite works too)")


def test_without_ai_edge_litert_a_donkeycar_tflite_renders_through_tf_lite(pilots, tmp_path):
    out = tmp_path / "frames"
    fed = {k: pilots.fed("imu", "tflite")[k][:3].tolist() for k in ("img_in", "imu_in")}
    (tmp_path / "fed.json").write_text(json.dumps(fed))
    r = child(blocked("ai_edge_litert", "tflite_runtime") + textwrap.dedent(f"""
        import json
        import numpy as np
        from carvis import cli
        from carvis.backends.litert import LiteRTModel, load
        from carvis.backends.tflite import read_tflite
        # several named inputs on tf.lite: DonkeyCar's imu pilot
        imu = LiteRTModel(read_tflite({str(pilots.model("imu", "tflite"))!r}))
        fed = json.load(open({str(tmp_path / "fed.json")!r}))
        outs = [imu({{k: np.asarray(v[n:n + 1], np.float32) for k, v in fed.items()}})
                for n in range(3)]
        code = cli.main(["render", {str(pilots.tub)!r}, "--model",
                         {str(pilots.model("linear", "tflite"))!r}, "-o", {str(out)!r},
                         "--format", "png", "--quiet"])
        print(json.dumps({{"runtime": imu.runtime, "code": code,
                          "linear": load({str(pilots.model("linear", "tflite"))!r}).runtime,
                          "imu": {{k: [o[k][0].tolist() for o in outs] for k in outs[0]}},
                          "tf": "tensorflow" in sys.modules}}))
        """))
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.splitlines()[-1])
    assert (result["runtime"], result["linear"], result["code"]) == ("tensorflow",) * 2 + (0,)
    assert len(sorted(out.rglob("*.png"))) == donkey_pilots.RECORDS
    got = pilots.got("imu", "tflite")
    for name in ("out_0", "out_1"):
        np.testing.assert_allclose(result["imu"][name], got[name][:3], rtol=0, atol=1e-5)
