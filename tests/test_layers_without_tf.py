"""`carvis layers X.h5` from the file's config alone: the same table as the loaded model's, no TF."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import model_factory  # tests/ is on sys.path (pytest's default prepend import mode)
import numpy as np
import pytest

from carvis import models
from carvis.errors import CarvisError

REPO = Path(__file__).resolve().parents[1]

# Run before carvis is imported: any import of TensorFlow or Keras fails, as on a machine
# that has only the core dependencies (h5py, numpy).
BLOCK_TF = ("import sys\n"
            "for name in ('tensorflow', 'keras', 'tf_keras', 'ai_edge_litert', 'tflite_runtime'):\n"
            "    sys.modules[name] = None\n")


def _keras_table(path: Path, lambda_policy: str = "error") -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return models.format_layer_table(models.load_model(path, lambda_policy=lambda_policy))


def _without_tf(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", BLOCK_TF + code, *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO, env=env, check=False)


@pytest.fixture(scope="module")
def car_files(tmp_path_factory) -> dict[str, Path]:
    """Keras 2 files saved by the real tf_keras (DonkeyCar, PilotNet, a branched policy) and
    Keras 3 ones (.keras archive and .h5)."""
    pytest.importorskip("tf_keras", reason="tf-keras (the real Keras 2) is in the test extra")
    tmp = tmp_path_factory.mktemp("config_tables")
    rng = np.random.default_rng(3)
    donkey, donkey_theano = model_factory.donkey(tmp, rng)
    keras3_keras, keras3_h5 = model_factory.keras3_models(tmp, rng)
    cases = [donkey, donkey_theano, model_factory.pilotnet_bn(tmp, rng),
             model_factory.policy_functional(tmp, rng), keras3_keras, keras3_h5]
    return {case.kind: case.path for case in cases}


def test_axionaut_table_from_the_file_equals_the_loaded_model(axionaut_model_path):
    table = models.format_layer_table_from_file(axionaut_model_path)
    assert table == _keras_table(axionaut_model_path)
    assert "conv:4  convolution2d_4  Conv2D" in table  # Keras 1's Convolution2D, as Keras 3 names it


@pytest.mark.parametrize("kind", ["donkey", "donkey_theano", "pilotnet_bn", "policy_functional",
                                  "keras3_keras", "keras3_h5"])
def test_table_from_the_file_equals_the_loaded_model(car_files, kind):
    path = car_files[kind]
    assert models.format_layer_table_from_file(path) == _keras_table(path)
    rows = models.layer_table_from_file(path)
    assert rows[0].type == "InputLayer" and any(row.is_conv and row.is_spatial for row in rows)


def test_lambda_keeps_its_type_and_runs_as_identity(tmp_path):
    pytest.importorskip("tf_keras", reason="tf-keras (the real Keras 2) is in the test extra")
    case = model_factory.pilotnet_lambda(tmp_path, np.random.default_rng(4))
    identity = _keras_table(case.path, lambda_policy="identity")
    table = models.format_layer_table_from_file(case.path)
    assert "lambda_1  Lambda" in table
    assert table == identity.replace("Identity", "Lambda  ")  # same column width either way


def test_file_errors_are_the_loaders(tmp_path):
    missing = tmp_path / "missing.h5"
    with pytest.raises(CarvisError, match="not found"):
        models.format_layer_table_from_file(missing)
    text = tmp_path / "notes.h5"
    text.write_text("not a model")
    with pytest.raises(CarvisError, match="not a Keras model file"):
        models.format_layer_table_from_file(text)


def test_the_table_needs_no_tensorflow(axionaut_model_path):
    code = ("import sys\n"
            "from carvis import models\n"
            "print(models.format_layer_table_from_file(sys.argv[1]))\n"
            "assert 'tensorflow' not in [m for m in sys.modules if sys.modules[m] is not None]\n")
    done = _without_tf(code, str(axionaut_model_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip("\n") == _keras_table(axionaut_model_path)


def test_carvis_layers_runs_without_tensorflow(axionaut_model_path):
    code = ("import runpy, sys\n"
            "sys.argv = ['carvis', 'layers', sys.argv[1]]\n"
            "runpy.run_module('carvis.cli', run_name='__main__')\n")
    done = _without_tf(code, str(axionaut_model_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip("\n") == _keras_table(axionaut_model_path)
