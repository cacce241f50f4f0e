"""Shared fixtures. Heavy artifacts (converted models) are built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
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


@pytest.fixture
def rng():
    return np.random.default_rng(0)
