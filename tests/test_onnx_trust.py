"""ONNX models from the wild: old opsets, shared biases, quantizer crashes, Constant-node weights,
dynamic dimensions, .ort files. Every model is built here with onnx.helper, tiny, shaped like the
real one that broke (a PaddleOCR detector at opset 11, a tf2onnx audio model sharing biases).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from workbench.cli import main


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _model(path, nodes, inits, inputs, outputs, opset=17, ir=8):
    import onnx
    from onnx import helper

    g = helper.make_graph(nodes, "g", inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = ir
    onnx.save(m, str(path))
    return path


def _vi(name, shape):
    from onnx import TensorProto, helper

    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _arr(name, a):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(a), name)


def _runs(path, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnxcal")
    np.savez(d / "img3.npz", x=RNG.random((24, 3, 8, 8)).astype(np.float32))
    np.savez(d / "img4.npz", x=RNG.random((24, 4, 8, 8)).astype(np.float32))
    return d


def _conv_opset11(path):
    """Conv + bias + Relu at opset 11, as paddle2onnx writes a PP-OCR detector."""
    from onnx import helper

    return _model(path, [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
                         helper.make_node("Relu", ["c"], ["y"], name="relu")],
                  [_arr("w", RNG.normal(size=(8, 3, 3, 3)).astype(np.float32)), _arr("b", RNG.normal(size=8).astype(np.float32))],
                  [_vi("x", [1, 3, 8, 8])], [_vi("y", [1, 8, 8, 8])], opset=11, ir=6)


# --- int8 from old opsets ---------------------------------------------------------------------------

def test_opset11_per_channel_int8_is_upgraded_told_and_runs(tmp_path, calib):
    src = _conv_opset11(tmp_path / "det11.onnx")
    out = tmp_path / "q.onnx"
    r = _cli("quantize", src, "--scheme", "int8", "--calib", calib / "img3.npz", "--format", "onnx", "-o", out)
    assert r.exit_code == 0, r.output
    assert "opset 11" in r.output and "upgraded to opset 13" in r.output
    y = _runs(out, np.ones((1, 3, 8, 8), np.float32))[0]  # before the fix ONNX Runtime refused the file
    assert y.shape == (1, 8, 8, 8)
    recipe = json.loads((tmp_path / "q.onnx.json").read_text())["recipe"]
    assert recipe["opset_upgraded"] == {"from": 11, "to": 13} and recipe["per_channel"] is True
    assert "upgraded" in recipe["notes"][0]
    assert recipe["check"]["loaded_and_ran"].startswith("onnxruntime")


def test_opset11_per_tensor_keeps_the_opset(tmp_path, calib):
    import onnx

    src = _conv_opset11(tmp_path / "det11.onnx")
    out = tmp_path / "q.onnx"
    r = _cli("quantize", src, "--scheme", "int8", "--per-tensor", "--calib", calib / "img3.npz", "--format", "onnx", "-o", out)
    assert r.exit_code == 0, r.output
    assert "opset_upgraded" not in json.loads((tmp_path / "q.onnx.json").read_text())["recipe"]
    assert [o.version for o in onnx.load(str(out)).opset_import if o.domain in ("", "ai.onnx")] == [11]
    _runs(out, np.ones((1, 3, 8, 8), np.float32))


def test_opset11_upgrade_failure_falls_back_to_per_tensor(tmp_path, calib, monkeypatch):
    from onnx import version_converter

    def refuse(model, target):
        raise RuntimeError("No adapter for op Foo")

    monkeypatch.setattr(version_converter, "convert_version", refuse)
    src = _conv_opset11(tmp_path / "det11.onnx")
    out = tmp_path / "q.onnx"
    r = _cli("quantize", src, "--scheme", "int8", "--calib", calib / "img3.npz", "--format", "onnx", "-o", out)
    assert r.exit_code == 0, r.output
    assert "per tensor" in r.output and "No adapter for op Foo" in r.output
    recipe = json.loads((tmp_path / "q.onnx.json").read_text())["recipe"]
    assert recipe["per_channel"] is False and "per_channel_fallback" in recipe
    _runs(out, np.ones((1, 3, 8, 8), np.float32))


@pytest.mark.parametrize("scheme", ["dynamic", "fp16"])
def test_opset11_other_schemes_are_run_once(tmp_path, scheme):
    src = _conv_opset11(tmp_path / "det11.onnx")
    out = tmp_path / "q.onnx"
    r = _cli("quantize", src, "--scheme", scheme, "--format", "onnx", "-o", out)
    assert r.exit_code == 0, r.output
    check = json.loads((tmp_path / "q.onnx.json").read_text())["recipe"]["check"]
    assert "random sample of shape [1, 3, 8, 8]" in check["loaded_and_ran"]


# --- a bias shared by two Conv nodes (tf2onnx) -----------------------------------------------------

def _shared_bias(path):
    """Two Convs share the bias 'conv_b'; the first one's output is named 'conv_b0', the name ONNX Runtime's
    quantizer gives its copy of the bias (basic-pitch's tf2onnx graph has this shape)."""
    from onnx import helper

    return _model(path, [helper.make_node("Conv", ["x", "w1", "conv_b"], ["conv_b0"], pads=[1, 1, 1, 1], name="c1"),
                         helper.make_node("Neg", ["conv_b0"], ["n"], name="neg"),
                         helper.make_node("Conv", ["n", "w2", "conv_b"], ["y"], pads=[1, 1, 1, 1], name="c2")],
                  [_arr("w1", RNG.normal(size=(4, 4, 3, 3)).astype(np.float32)),
                   _arr("w2", RNG.normal(size=(4, 4, 3, 3)).astype(np.float32)), _arr("conv_b", RNG.normal(size=4).astype(np.float32))],
                  [_vi("x", [1, 4, 8, 8])], [_vi("y", [1, 4, 8, 8])])


def test_shared_bias_whose_copy_name_is_taken_quantizes_to_a_loadable_file(tmp_path, calib):
    src = _shared_bias(tmp_path / "shared.onnx")
    out = tmp_path / "q.onnx"
    r = _cli("quantize", src, "--scheme", "int8", "--calib", calib / "img4.npz", "--format", "onnx", "-o", out)
    assert r.exit_code == 0, r.output
    x = RNG.random((1, 4, 8, 8)).astype(np.float32)
    ref, got = _runs(src, x)[0], _runs(out, x)[0]
    assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] > 0.99  # quantized, and still the same function
    assert json.loads((tmp_path / "q.onnx.json").read_text())["recipe"]["shared_biases_copied"] == 1


def test_a_written_model_that_does_not_load_is_an_error_and_nothing_is_left(tmp_path, calib, monkeypatch):
    """The safety net under every fix above: without the bias copies the quantizer writes a file ONNX Runtime
    refuses; the command must fail (it used to exit 0) and leave neither the model nor a manifest."""
    from workbench.export import onnx_checks

    monkeypatch.setattr(onnx_checks, "split_shared_biases", lambda path: 0)
    src = _shared_bias(tmp_path / "shared.onnx")
    out = tmp_path / "q.onnx"
    r = _cli("quantize", src, "--scheme", "int8", "--calib", calib / "img4.npz", "--format", "onnx", "-o", out)
    assert r.exit_code == 2, r.output
    assert "does not load in ONNX Runtime" in r.output and "c2" in r.output and "Nothing was written" in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.onnx"]


def test_ort_output_is_checked_too(tmp_path, calib):
    src = _shared_bias(tmp_path / "shared.onnx")
    out = tmp_path / "q.ort"
    r = _cli("quantize", src, "--scheme", "int8", "--calib", calib / "img4.npz", "--format", "ort", "-o", out)
    assert r.exit_code == 0, r.output
    recipe = json.loads((tmp_path / "q.ort.json").read_text())["recipe"]
    assert "loaded_and_ran" in recipe["ort_check"] and "loaded_and_ran" in recipe["check"]


# --- a crash inside onnxruntime.quantization -------------------------------------------------------

def test_quantizer_crash_is_a_typed_error_naming_the_node(tmp_path, calib):
    """LayerNormalization over (C, H, W) with a (C, H, W) scale: a valid model ONNX Runtime runs, on which the
    per-channel quantizer raises a numpy ValueError."""
    from onnx import helper

    src = _model(tmp_path / "ln.onnx", [helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], axis=1, name="block1/ln")],
                 [_arr("s", np.ones((3, 8, 8), np.float32)), _arr("b", np.zeros((3, 8, 8), np.float32))],
                 [_vi("x", [1, 3, 8, 8])], [_vi("y", [1, 3, 8, 8])])
    _runs(src, np.ones((1, 3, 8, 8), np.float32))
    out = tmp_path / "q.onnx"
    r = _cli("quantize", src, "--scheme", "int8", "--calib", calib / "img3.npz", "--format", "onnx", "-o", out)
    assert r.exit_code == 2, r.output
    assert "LayerNormalization node 'block1/ln'" in r.output and "Internal error" not in r.output
    assert "--per-tensor" in r.output
    assert not out.exists()
