"""Post-training quantization and export, measured in the real runtimes."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import DIGITS_FACTORY
from workbench import api
from workbench.cli import main
from workbench.core.errors import ConfigError, DataError, OutputExistsError, UnsupportedError
from workbench.frontends.tflite_reader import read_tflite


def test_keras_int8_keeps_accuracy_and_is_small(digits_keras_path, digits_tflite_float, digits_tflite_int8):
    cmp = api.evaluate(digits_keras_path, digits_tflite_int8, "digits:test")
    m = cmp.metrics
    assert m["samples"] == 449
    assert m["accuracy_drop_pp"] <= 0.5, m  # within half a point of float, measured in LiteRT
    assert m["sqnr_db"] > 25
    assert digits_tflite_int8.stat().st_size < 0.5 * digits_tflite_float.stat().st_size
    g = read_tflite(digits_tflite_int8)
    assert g.tensors[g.inputs[0]].dtype == "int8" and g.tensors[g.outputs[0]].dtype == "int8"


def test_float_tflite_matches_keras(digits_keras_path, digits_tflite_float):
    m = api.evaluate(digits_keras_path, digits_tflite_float, "digits:test").metrics
    assert m["max_abs_error"] < 1e-4 and m["argmax_agreement"] == 1.0


def test_manifest_records_hashes_config_and_versions(digits_tflite_int8):
    man = json.loads(digits_tflite_int8.with_name(digits_tflite_int8.name + ".json").read_text())
    import hashlib

    assert man["artifact"]["sha256"] == hashlib.sha256(digits_tflite_int8.read_bytes()).hexdigest()
    assert man["config"]["scheme"] == "int8" and man["config"]["calib_used"] == 200
    assert man["source"]["sha256"] and "tensorflow" in man["libraries"]
    assert man["recipe"]["io_dtype"] == "int8"


def test_per_tensor_switch_still_works(digits_keras_path, tmp_path):
    out = tmp_path / "pt.tflite"
    api.convert(digits_keras_path, "tflite", out, scheme="int8", calib="digits:train", per_channel=False)
    g = read_tflite(out)
    conv = next(op for op in g.ops if op.kind == "CONV_2D")
    assert len(g.tensors[conv.inputs[1]].scale) == 1  # one scale for the whole filter


def test_per_channel_is_the_default(digits_tflite_int8):
    g = read_tflite(digits_tflite_int8)
    conv = next(op for op in g.ops if op.kind == "CONV_2D")
    assert len(g.tensors[conv.inputs[1]].scale) == g.tensors[conv.inputs[1]].shape[0]


def test_same_inputs_give_identical_bytes(digits_keras_path, tmp_path, digits_tflite_int8):
    out = tmp_path / "again.tflite"
    api.convert(digits_keras_path, "tflite", out, scheme="int8", calib="digits:train", calib_samples=200)
    assert out.read_bytes() == digits_tflite_int8.read_bytes()


@pytest.mark.parametrize("scheme", ["fp16", "dynamic", "int16x8"])
def test_keras_other_schemes_run_in_litert(digits_keras_path, tmp_path, scheme):
    out = tmp_path / f"{scheme}.tflite"
    api.convert(digits_keras_path, "tflite", out, scheme=scheme, calib="digits:train", calib_samples=100)
    m = api.evaluate(digits_keras_path, out, "digits:test", samples=200).metrics
    assert m["accuracy_drop_pp"] <= 1.0, m


def test_torch_int8_tflite_has_nhwc_int8_io(digits_torch_path, tmp_path):
    out = tmp_path / "t8.tflite"
    lo = api.LoadOptions(factory=DIGITS_FACTORY)
    api.convert(digits_torch_path, "tflite", out, scheme="int8", calib="digits:train", calib_samples=100, load_options=lo)
    g = read_tflite(out)
    x = g.tensors[g.inputs[0]]
    assert x.shape == (1, 8, 8, 1) and x.dtype == "int8"
    assert "TRANSPOSE" not in [op.kind for op in g.ops[:1]]  # no input transpose: NHWC at the boundary
    m = api.evaluate(digits_torch_path, out, "digits:test", load_options=lo).metrics
    assert m["accuracy_drop_pp"] <= 1.0 and m["sqnr_db"] > 25, m


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory, digits_torch_path):
    d = tmp_path_factory.mktemp("onnx")
    lo = api.LoadOptions(factory=DIGITS_FACTORY)
    out = {}
    for cal in ("minmax", "entropy", "percentile"):
        out[cal] = d / f"{cal}.onnx"
        api.convert(digits_torch_path, "onnx", out[cal], scheme="int8", calibrator=cal, calib="digits:train", load_options=lo)
    return out


def test_onnx_calibrators_differ_and_keep_accuracy(onnx_models, digits_torch_path):
    blobs = {k: v.read_bytes() for k, v in onnx_models.items()}
    assert blobs["entropy"] != blobs["minmax"]  # real entropy ranges, not min/max in disguise
    assert blobs["percentile"] != blobs["minmax"]
    lo = api.LoadOptions(factory=DIGITS_FACTORY)
    for path in onnx_models.values():
        m = api.evaluate(digits_torch_path, path, "digits:test", load_options=lo).metrics
        assert m["accuracy_drop_pp"] <= 1.5, (path.name, m)


def test_ort_format_runs(digits_torch_path, tmp_path):
    out = tmp_path / "m.ort"
    lo = api.LoadOptions(factory=DIGITS_FACTORY)
    api.convert(digits_torch_path, "ort", out, scheme="int8", calib="digits:train", calib_samples=100, load_options=lo)
    assert out.read_bytes()[4:8] == b"ORTM"
    assert api.evaluate(digits_torch_path, out, "digits:test", load_options=lo, samples=100).metrics["argmax_agreement"] >= 0.97


@pytest.mark.parametrize("model,fmt,kw,err,text", [
    ("torch", "tflite", {"scheme": "mixed-int16", "int16_layers": ("x",), "calib": "digits:train"}, UnsupportedError, "Available here"),
    ("keras", "tflite", {"scheme": "int8", "calibrator": "entropy", "calib": "digits:train"}, UnsupportedError, "min/max"),
    ("torch", "onnx", {"scheme": "int8", "io_dtype": "int8", "calib": "digits:train"}, UnsupportedError, "float32"),
    ("keras", "tflite", {"scheme": "int8"}, ConfigError, "needs calibration data"),
    ("keras", "tflite", {"scheme": "dynamic", "io_dtype": "int8"}, ConfigError, "needs --scheme int8"),
])
def test_impossible_combinations_are_refused_up_front(digits_keras_path, digits_torch_path, tmp_path, model, fmt, kw, err, text):
    src = digits_keras_path if model == "keras" else digits_torch_path
    out = tmp_path / "x.out"
    with pytest.raises(err) as e:
        api.convert(src, fmt, out, load_options=api.LoadOptions(factory=DIGITS_FACTORY), **kw)
    assert text in str(e.value)
    assert not out.exists()


def test_calibration_data_of_wrong_shape(digits_keras_path, tmp_path):
    with pytest.raises(DataError) as e:
        api.convert(digits_keras_path, "tflite", tmp_path / "x.tflite", scheme="int8", calib="fashion-mnist:test", calib_samples=10)
    assert "(28, 28, 1)" in str(e.value) and "(8, 8, 1)" in str(e.value)


def test_constant_calibration_data_is_refused(digits_keras_path, tmp_path):
    p = tmp_path / "c.npz"
    np.savez(p, x=np.ones((120, 8, 8, 1), np.float32))
    with pytest.raises(DataError) as e:
        api.convert(digits_keras_path, "tflite", tmp_path / "x.tflite", scheme="int8", calib=str(p))
    assert "constant" in str(e.value)


def test_few_calibration_samples_warn(digits_keras_path, tmp_path):
    r = CliRunner().invoke(main, ["quantize", str(digits_keras_path), "--scheme", "int8", "--calib", "digits:train",
                                  "--calib-samples", "20", "-o", str(tmp_path / "w.tflite")])
    assert r.exit_code == 0, r.output
    assert "Only 20 calibration samples" in r.stderr


def test_existing_output_is_kept_without_overwrite(digits_keras_path, tmp_path):
    out = tmp_path / "m.tflite"
    out.write_bytes(b"old")
    r = CliRunner().invoke(main, ["export", str(digits_keras_path), "--format", "tflite", "-o", str(out)])
    assert r.exit_code == 2 and "--overwrite" in r.output and out.read_bytes() == b"old"
    with pytest.raises(OutputExistsError):
        api.convert(digits_keras_path, "tflite", out)


def test_failed_conversion_leaves_nothing_behind(digits_keras_path, tmp_path, monkeypatch):
    import workbench.export.engine as conv_mod

    def boom(job):
        job.out.write_bytes(b"half a model")
        raise RuntimeError("converter crashed")

    conv_mod._register_builtin()
    exp = conv_mod.EXPORTERS.get(("keras", "tflite"))
    monkeypatch.setitem(conv_mod.EXPORTERS._items, ("keras", "tflite"), conv_mod.Exporter(run=boom, schemes=exp.schemes))
    with pytest.raises(RuntimeError):
        api.convert(digits_keras_path, "tflite", tmp_path / "m.tflite")
    assert list(tmp_path.iterdir()) == []


def test_quantize_cli_json_is_pure_and_reports_accuracy(digits_keras_path, tmp_path):
    out = tmp_path / "q.tflite"
    r = CliRunner().invoke(main, ["quantize", str(digits_keras_path), "--scheme", "int8", "--calib", "digits:train",
                                  "--eval", "digits:test", "--eval-samples", "300", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)  # nothing but JSON on stdout (no converter noise)
    assert doc["metrics"]["samples"] == 300
    assert doc["metrics"]["accuracy_drop_pp"] <= 1.0
    assert doc["artifact"]["bytes"] == out.stat().st_size


def test_compare_cli(digits_keras_path, digits_tflite_int8):
    r = CliRunner().invoke(main, ["compare", str(digits_keras_path), str(digits_tflite_int8), "--data", "digits:test", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["candidate_runtime"]["runtime"] == "litert" and d["reference_runtime"]["runtime"] == "keras"
    assert 0.9 < d["accuracy"] <= 1.0
