"""The conversion matrix (issue 14): every new path checked for parity on the reference models, with
the measured numbers beside the bounds, and the refusals naming the layer or the upstream reason.

Measured here (2 cores): Keras -> ONNX float max abs error 3.8e-6 (Fashion, random inputs),
~10 s per export (a child process with KERAS_BACKEND=torch); PyTorch -> fp16 TFLite 4.9e-3 on
logits up to 30 (digits); a float .tflite -> int8 with ai-edge-quantizer keeps Fashion's
accuracy (91.7% -> 91.7% on 300 samples).
"""

from __future__ import annotations

import numpy as np
import pytest

from workbench import api
from workbench.core.errors import UnsupportedError

DIGITS_FACTORY = "workbench.builtin.models.reference:digits_torch"


def test_keras_to_onnx_float_matches_keras(digits_keras_path, tmp_path):
    art = api.convert(digits_keras_path, "onnx", tmp_path / "d.onnx")
    p = art.extra["recipe"]["parity"]
    assert p["max_abs_error"] < 1e-4 and p["argmax_agreement"] == 1.0, p  # measured 2e-6
    m = api.evaluate(digits_keras_path, art.path, "digits:test", samples=200).metrics
    assert m["accuracy_drop_pp"] == 0.0 and m["max_abs_error"] < 1e-4, m


def test_keras_to_onnx_int8_through_onnx_runtime(digits_keras_path, tmp_path):
    art = api.convert(digits_keras_path, "onnx", tmp_path / "d8.onnx", scheme="int8", calib="digits:train", calib_samples=100)
    assert art.extra["recipe"]["quantizer"] == "onnxruntime.quantization" and art.extra["recipe"]["parity"]["max_abs_error"] < 1e-4
    m = api.evaluate(digits_keras_path, art.path, "digits:test", samples=300).metrics
    assert m["accuracy_drop_pp"] <= 2.0, m


def test_tf_keras_h5_to_onnx(model_zoo, tmp_path):
    art = api.convert(model_zoo["h5"], "onnx", tmp_path / "h5.onnx")
    assert art.extra["recipe"]["source_api"] == 2 and art.extra["recipe"]["parity"]["max_abs_error"] < 1e-4


def test_keras_custom_and_lambda_layers_are_refused_by_name(tmp_path):
    import keras

    @keras.saving.register_keras_serializable(package="wbtest")
    class Doubler(keras.layers.Layer):
        def call(self, x):
            return x * 2.0

    inp = keras.Input((4,))
    out = keras.layers.Dense(2, name="head")(keras.layers.Lambda(lambda t: t + 1.0, name="plus_one")(Doubler(name="twice")(inp)))
    path = tmp_path / "custom.keras"
    keras.Model(inp, out).save(path)
    h = api.load(path, api.LoadOptions(trust_model=True))
    with pytest.raises(UnsupportedError) as e:
        api.convert(h, "onnx", tmp_path / "c.onnx")
    assert "twice" in str(e.value) and "Doubler" in str(e.value) and "plus_one (Lambda)" in str(e.value)
    assert not (tmp_path / "c.onnx").exists()


def test_torch_to_fp16_tflite_checked_in_litert(digits_torch_path, tmp_path):
    lo = api.LoadOptions(factory=DIGITS_FACTORY)
    art = api.convert(digits_torch_path, "tflite", tmp_path / "fp16.tflite", scheme="fp16", load_options=lo)
    p = art.extra["recipe"]["parity"]
    assert p["max_abs_error"] < 0.05 and p["argmax_agreement"] == 1.0, p  # measured 4.9e-3 on logits up to 30
    from workbench.frontends import load

    assert "float16" in {t.dtype for t in load(art.path).meta["graph"].tensors}
    m = api.evaluate(digits_torch_path, art.path, "digits:test", load_options=lo, samples=300).metrics
    assert m["accuracy_drop_pp"] == 0.0, m


@pytest.mark.parametrize("scheme,max_drop,tflm", [
    ("int8", 1.5, True), ("int16x8", 1.0, True), ("dynamic", 1.0, False),
    ("weight-int8", 0.5, False), ("weight-int4", 4.0, False), ("fp16", 0.0, False),
])
def test_float_tflite_quantized_with_ai_edge_quantizer(digits_tflite_float, tmp_path, scheme, max_drop, tflm):
    art = api.convert(digits_tflite_float, "tflite", tmp_path / f"{scheme}.tflite", scheme=scheme, calib="digits:train",
                      calib_samples=100)
    r = art.extra["recipe"]
    assert r["quantizer"] == "ai-edge-quantizer" and r["runs_in"]["tflm"] is tflm
    m = api.evaluate(digits_tflite_float, art.path, "digits:test", samples=300).metrics
    assert m["accuracy_drop_pp"] <= max_drop, m
    assert art.bytes < digits_tflite_float.stat().st_size


def test_float_tflite_without_signature_gets_one(digits_tflite_float, tmp_path):
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    m = s.ModelT.InitFromObj(s.Model.GetRootAsModel(digits_tflite_float.read_bytes(), 0))
    m.signatureDefs = []
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    nosig = tmp_path / "nosig.tflite"
    nosig.write_bytes(bytes(b.Output()))
    art = api.convert(nosig, "tflite", tmp_path / "q.tflite", scheme="int8", calib="digits:train", calib_samples=100)
    assert art.extra["recipe"]["signature_added"] is True
    assert api.evaluate(nosig, art.path, "digits:test", samples=200).metrics["accuracy_drop_pp"] <= 1.5


def test_mixed_int16_puts_the_named_ops_in_int16(digits_tflite_float, tmp_path):
    from workbench.frontends import load

    # an inner op (the graph output stays int8), named by a part of its output tensor's name
    art = api.convert(digits_tflite_float, "tflite", tmp_path / "mix.tflite", scheme="mixed-int16", calib="digits:train",
                      calib_samples=100, int16_layers=("conv2_1/Relu",))
    dts = {t.dtype for t in load(art.path).meta["graph"].tensors}
    assert {"int8", "int16"} <= dts, dts
    assert api.evaluate(digits_tflite_float, art.path, "digits:test", samples=200).metrics["accuracy_drop_pp"] <= 1.5
    tflm = api.evaluate(digits_tflite_float, art.path, "digits:test", samples=50, candidate_runtime="tflm").metrics
    assert tflm["argmax_agreement"] >= 0.95, tflm  # the int8 <-> int16 QUANTIZE ops run in TFLite Micro too


def test_weight_int8_runs_in_tflite_micro_per_tensor_only(digits_tflite_float, tmp_path):
    from workbench.data import open_data
    from workbench.evaluate.compare import predict
    from workbench.runtimes import open_runner

    d = open_data("digits:test", limit=50)
    art = api.convert(digits_tflite_float, "tflite", tmp_path / "w8.tflite", scheme="weight-int8", per_channel=False)
    assert art.extra["recipe"]["runs_in"]["tflm"] is True
    assert np.max(np.abs(predict(open_runner(art.path, "tflm"), d) - predict(open_runner(art.path), d))) < 1e-3  # measured 7.6e-6
    # per-channel: TFLite Micro's DEQUANTIZE applies one scale, so it computes something else (measured 11.9 on logits ~30)
    art = api.convert(digits_tflite_float, "tflite", tmp_path / "w8c.tflite", scheme="weight-int8")
    assert art.extra["recipe"]["runs_in"]["tflm"] is False
    assert np.max(np.abs(predict(open_runner(art.path, "tflm"), d) - predict(open_runner(art.path), d))) > 1.0


def test_onnx_to_tflite_is_listed_with_every_tflite_scheme(model_zoo):
    # the conversion itself: tests/test_onnx_to_tflite.py
    exports = api.inspect(model_zoo["onnx"])["exports_to"]
    assert {"float", "int8", "int16x8", "fp16"} <= set(exports["paths"]["tflite"]) and "tflite" not in exports["refused"]


def test_inspect_lists_the_new_paths(digits_keras_path, digits_tflite_float):
    assert "onnx" in api.inspect(digits_keras_path)["exports_to"]["paths"]
    tfl = api.inspect(digits_tflite_float)["exports_to"]["paths"]["tflite"]
    assert {"int8", "weight-int4", "mixed-int16"} <= set(tfl)
