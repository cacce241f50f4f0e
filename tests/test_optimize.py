"""`workbench optimize`: the variant that meets the budgets is found, written, and checks out
when measured independently; nothing fitting is exit 1 with the closest; re-runs are cached."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from workbench.cli import main
from workbench.emulate.firmware import firmware_support

TARGET = "stm32l4r5"


@pytest.fixture(scope="module", autouse=True)
def needs_firmware():
    why_not = firmware_support(TARGET)
    if why_not:
        pytest.skip(f"firmware emulation unavailable: {why_not}")


def run_cli(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def test_finds_a_pruned_variant_when_int8_is_too_slow(digits_keras_path, tmp_path):
    out = tmp_path / "opt"
    # the core timing model puts plain int8 at 1.59 ms on this board and the 50% pruned variant at 1.03 ms
    r = run_cli("optimize", digits_keras_path, "--target", TARGET, "--max-latency-ms", 1.3, "--max-drop", 3.0,
                "--calib", "digits:train", "--eval", "digits:test", "--train", "digits:train", "--eval-samples", 200,
                "--prune-ratios", "0.5", "--prune-epochs", "1,2", "-o", out, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    by = {c["variant"]: c for c in doc["candidates"]}
    assert "max_latency_ms" in by["int8"]["broken_budgets"]  # the plain int8 variant is too slow on the firmware
    chosen = doc["chosen"]
    assert chosen["stage"] == "prune" and not chosen["broken_budgets"] and chosen["method"] == "firmware"
    assert any(c["variant"] == chosen["variant"] for c in doc["pareto"])
    assert (out / "best.tflite").exists() and (out / "best.tflite.json").exists() and (out / "optimize.html").exists()
    assert "prune" in (out / "best.recipe.yaml").read_text()
    # checked independently: the written file, emulated and evaluated afresh
    from workbench.api import emulate, evaluate

    rep = emulate(out / "best.tflite", TARGET).to_dict()
    assert rep["method"] == "firmware" and rep["fits"] and rep["latency_ms"] <= 1.3
    m = evaluate(digits_keras_path, out / "best.tflite", "digits:test", samples=200).metrics
    assert m["accuracy_drop_pp"] <= 3.0


def test_nothing_fits_is_exit_1_with_the_closest_and_no_best(digits_keras_path, tmp_path):
    out = tmp_path / "none"
    args = ("optimize", digits_keras_path, "--target", TARGET, "--max-latency-ms", 0.01, "--calib", "digits:train",
            "--eval", "digits:test", "--eval-samples", 100, "-o", out, "--json")
    r = run_cli(*args)
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    assert doc["chosen"] is None and doc["closest"] and all("max_latency_ms" in c["broken_budgets"] for c in doc["closest"])
    assert not list(out.glob("best.*"))
    assert any("needs --train" in s for s in doc["skipped"])
    assert doc["measured_candidates"] >= 3
    # the same run again measures nothing new
    again = json.loads(run_cli(*args).stdout)
    assert again["measured_candidates"] == 0 and again["cached_candidates"] == doc["measured_candidates"]
    assert [c["latency_ms"] for c in again["candidates"]] == [c["latency_ms"] for c in doc["candidates"]]


def test_bad_input_fails_before_work(digits_keras_path, tmp_path):
    r = run_cli("optimize", digits_keras_path, "--target", TARGET, "--calib", "digits:train", "--eval", "digits:test",
                "-o", tmp_path / "o")
    assert r.exit_code == 2 and "at least one budget" in r.output
    r = run_cli("optimize", digits_keras_path, "--target", "no-such-board", "--max-drop", 1, "--calib", "digits:train",
                "--eval", "digits:test", "-o", tmp_path / "o")
    assert r.exit_code == 2 and "Unknown target" in r.output
