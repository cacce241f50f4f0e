"""Shared fixtures. Heavy artifacts (converted models) are built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
# The TFLite Micro tree the firmware tests build with: the offline copy beside the repository
# (shared/third_party, see its PROVENANCE.md) unless the caller points elsewhere.
SHARED_TFLM = ROOT.parent / "shared" / "third_party" / "tflite-micro"
if SHARED_TFLM.is_dir():
    os.environ.setdefault("WORKBENCH_TFLM_DIR", str(SHARED_TFLM))
DIGITS_FACTORY = "workbench.builtin.models.reference:digits_torch"
FASHION_FACTORY = "workbench.builtin.models.reference:fashion_torch"


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def digits_keras_path() -> Path:
    return MODELS / "digits_keras.keras"


@pytest.fixture(scope="session")
def digits_torch_path() -> Path:
    return MODELS / "digits_torch.pt"


@pytest.fixture(scope="session")
def digits_test():
    from workbench.data import open_data

    return open_data("digits:test")


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Path:
    """A session folder for converted models shared by many tests."""
    return tmp_path_factory.mktemp("artifacts")


def _keras_to_tflite(src: Path, out: Path, scheme: str) -> Path:
    """Build a .tflite from a Keras reference model through workbench's own exporter."""
    from workbench import api

    if not out.exists():
        api.convert(src, "tflite", out, scheme=scheme, calib="digits:train" if "digits" in src.name else "fashion-mnist:train",
                    calib_samples=200)
    return out


@pytest.fixture(scope="session")
def digits_tflite_float(artifacts, digits_keras_path) -> Path:
    return _keras_to_tflite(digits_keras_path, artifacts / "digits_float.tflite", "float")


@pytest.fixture(scope="session")
def digits_tflite_int8(artifacts, digits_keras_path) -> Path:
    return _keras_to_tflite(digits_keras_path, artifacts / "digits_int8.tflite", "int8")


@pytest.fixture(scope="session")
def digits_int16x8(artifacts, digits_keras_path) -> Path:
    return _keras_to_tflite(digits_keras_path, artifacts / "digits_int16x8.tflite", "int16x8")


@pytest.fixture(scope="session")
def digits_fp16(artifacts, digits_keras_path) -> Path:
    return _keras_to_tflite(digits_keras_path, artifacts / "digits_fp16.tflite", "fp16")


@pytest.fixture(scope="session")
def digits_dynamic(artifacts, digits_keras_path) -> Path:
    return _keras_to_tflite(digits_keras_path, artifacts / "digits_dynamic.tflite", "dynamic")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def torch_digits_handle(digits_torch_path):
    from workbench.frontends import load

    return load(digits_torch_path, factory=DIGITS_FACTORY)


@pytest.fixture(scope="session")
def model_zoo(artifacts, digits_keras_path, digits_torch_path):
    """The digits reference model saved in every format users bring (built once per session)."""
    import torch

    from workbench.builtin.models import reference
    from workbench.frontends import load

    zoo = {"keras": digits_keras_path, "state_dict": digits_torch_path}
    tm = load(digits_torch_path, factory=DIGITS_FACTORY).obj
    x = torch.zeros(1, 1, 8, 8)
    zoo["torchscript"] = artifacts / "digits.ts"
    torch.jit.save(torch.jit.trace(tm, x), zoo["torchscript"])
    zoo["exported_program"] = artifacts / "digits.pt2"
    torch.export.save(torch.export.export(tm, (x,)), zoo["exported_program"])
    zoo["onnx"] = artifacts / "digits.onnx"
    from workbench import api

    api.convert(digits_torch_path, "onnx", zoo["onnx"], load_options=api.LoadOptions(factory=DIGITS_FACTORY), write_manifest=False)
    import tf_keras

    km = reference.digits_keras()  # Keras 3 -> also save a Keras 2 (tf_keras) .h5 twin with the same architecture
    k2 = tf_keras.Sequential([tf_keras.layers.Conv2D(8, 3, padding="same", activation="relu", input_shape=(8, 8, 1)),
                              tf_keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu"),
                              tf_keras.layers.Flatten(), tf_keras.layers.Dense(10)])
    k2.set_weights(load(digits_keras_path).obj.get_weights())
    zoo["h5"] = artifacts / "digits.h5"
    k2.save(zoo["h5"])
    zoo["savedmodel"] = artifacts / "digits_savedmodel"
    import tensorflow as tf

    tf.saved_model.save(k2, str(zoo["savedmodel"]))
    del km
    zoo["tflite"] = artifacts / "digits_zoo.tflite"
    api.convert(digits_keras_path, "tflite", zoo["tflite"], write_manifest=False)
    return zoo
