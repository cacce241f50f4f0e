"""`optimize` measures no candidate twice and weighs flash: a "larger calibration set" needs more
samples than int8 already used, and a stripped int8 model with less flash is not beaten by int8."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from workbench.cli import main

TARGET = "stm32l4r5"


@pytest.fixture
def estimate_only(monkeypatch, tmp_path):
    """No TFLite Micro tree: the MCU is emulated by its estimates (seconds, not a firmware build)."""
    monkeypatch.delenv("WORKBENCH_TFLM_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _calib(path, n: int):
    from workbench.data import open_data

    d = open_data("digits:train", split="train", limit=n, seed=0)
    np.savez(path, x=d.x, y=d.y)
    return path


def _optimize(model, calib, out) -> dict:
    """`workbench optimize` for TARGET on 10 calibration samples of ``calib`` and 50 digits test samples."""
    r = CliRunner().invoke(main, list(map(str, (
        "optimize", model, "--target", TARGET, "--max-flash", 2_000_000, "--calib", calib,
        "--calib-samples", 10, "--eval", "digits:test", "--eval-samples", 50, "-o", out, "--json"))))
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_no_larger_calibration_without_more_samples_and_flash_is_a_pareto_criterion(digits_keras_path, tmp_path,
                                                                                    estimate_only):
    calib = _calib(tmp_path / "calib10.npz", 10)
    out = tmp_path / "opt"
    doc = _optimize(digits_keras_path, calib, out)
    by = {c["variant"]: c for c in doc["candidates"]}
    # 10 samples, all used by int8: a "larger" set would be the same model measured twice
    assert not [v for v in by if v.startswith("int8-calib")]
    assert any("larger calibration set" in s and "holds 10 samples" in s and "measured twice" in s for s in doc["skipped"])
    # the stripped model: same loss, latency and RAM as int8, less flash -> on the front, int8 not
    int8, stripped = by["int8"], by["int8-stripped"]
    assert stripped["flash_bytes"] < int8["flash_bytes"]
    assert (stripped["drop_pp"], stripped["latency_ms"], stripped["ram_bytes"]) == (int8["drop_pp"], int8["latency_ms"], int8["ram_bytes"])
    front = [c["variant"] for c in doc["pareto"]]
    assert "int8-stripped" in front and "int8" not in front
    assert doc["pareto_criteria"] == ["drop_pp", "latency_ms", "ram_bytes", "flash_bytes"]
    assert min(c["flash_bytes"] for c in doc["candidates"]) == stripped["flash_bytes"]
    assert doc["chosen"]["variant"] != "int8"  # int8 is beaten on flash at the same loss, latency and RAM


def test_larger_calibration_uses_what_the_data_holds(digits_keras_path, tmp_path):
    from workbench.pipeline.recipe import ModelRef
    from workbench.pipeline.search import Budgets, Search, SearchConfig

    def search(n_samples: int, calib_samples: int) -> Search:
        cfg = SearchConfig(model=ModelRef(name="digits", path=digits_keras_path), target=TARGET,
                           budgets=Budgets(max_drop_pp=1.0), calib=str(_calib(tmp_path / f"c{n_samples}.npz", n_samples)),
                           eval="digits:test", calib_samples=calib_samples)
        return Search(cfg, tmp_path / "o", lambda s: None, "tflm", "keras", True)

    s = search(25, 10)
    assert s.larger_calibration() == 25 and not s.skipped  # all 25, fewer than 4 x 10
    s = search(100, 10)
    assert s.larger_calibration() == 40
    s = search(12, 20)
    assert s.larger_calibration() is None and "holds 12 samples and int8 already calibrates on 12" in s.skipped[0]


def test_a_larger_calibration_set_that_builds_the_same_model_is_dropped(digits_keras_path, tmp_path, estimate_only):
    from workbench.data import open_data

    one = open_data("digits:train", split="train", limit=1, seed=0)
    calib = tmp_path / "same40.npz"
    np.savez(calib, x=np.repeat(one.x, 40, axis=0))  # 40 copies of one sample: more of them widen no range
    out = tmp_path / "opt"
    doc = _optimize(digits_keras_path, calib, out)
    assert not [c for c in doc["candidates"] if c["variant"].startswith("int8-calib")]
    assert any("int8-calib40" in s and "same model as int8, byte for byte" in s for s in doc["skipped"])
    built = out / "runs" / "digits_keras"
    assert (built / "int8-calib40").is_dir()  # it was built and measured, then recognised as int8 again
