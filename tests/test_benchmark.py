"""benchmark: the same model on several stacks, measured side by side."""

import json

from click.testing import CliRunner

from workbench.cli import main


def test_benchmark_keras_stacks(digits_keras_path):
    r = CliRunner().invoke(main, ["benchmark", str(digits_keras_path), "--calib", "digits:train", "--data", "digits:test",
                                  "--samples", "100", "--runs", "20", "--stack", "keras", "--stack", "litert float",
                                  "--stack", "litert int8", "--stack", "tflite-micro int8", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    rows = {row["stack"]: row for row in res["rows"]}
    assert set(rows) == {"keras", "litert float", "litert int8", "tflite-micro int8"}
    for row in rows.values():
        assert "error" not in row, row
        assert row["latency_ms"] > 0 and row["load_ms"] > 0 and row["bytes"] > 0
        assert row["accuracy"] > 0.9
    assert rows["litert int8"]["bytes"] < rows["litert float"]["bytes"]
    assert rows["litert float"]["sqnr_db"] > 80  # float conversion is near-exact
    assert rows["tflite-micro int8"]["argmax_agreement"] >= 0.98


def test_benchmark_refuses_a_tflite(digits_tflite_int8):
    r = CliRunner().invoke(main, ["benchmark", str(digits_tflite_int8), "--calib", "digits:train"])
    assert r.exit_code == 2 and "PyTorch or Keras" in r.output
