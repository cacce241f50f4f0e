"""Per-layer quantization diagnosis and mixed precision."""

import json

from click.testing import CliRunner

from workbench.cli import main


def test_debug_quant_ranks_layers_and_builds_mixed_model(digits_keras_path, tmp_path):
    out = tmp_path / "mixed.tflite"
    r = CliRunner().invoke(main, ["debug-quant", str(digits_keras_path), "--calib", "digits:train", "--samples", "16",
                                  "--auto-keep-float", "1", "--eval", "digits:test", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    sq = [row["sqnr_db"] for row in res["layers"]]
    assert sq == sorted(sq) and len(sq) >= 3  # worst first, every compute layer paired
    assert [row["op"] for row in res["layers"]].count("CONV_2D") == 2
    v = res["variants"]
    assert v["float"]["bytes"] > v["mixed"]["bytes"] > v["int8"]["bytes"]  # the kept layer is float again
    assert out.exists() and res["keep_float"] == [res["layers"][0]["name"]]


def test_keep_float_with_unknown_layer(digits_keras_path):
    r = CliRunner().invoke(main, ["debug-quant", str(digits_keras_path), "--calib", "digits:train", "--samples", "4",
                                  "--keep-float", "no_such_layer"])
    assert r.exit_code == 2 and "no_such_layer" in r.output
