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

from test_remote_profile import board  # noqa: F401  (a fixture: an sshd on 127.0.0.1)


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


# --- inspect: weights in Constant nodes, dynamic dims, ConvTranspose, .ort, output dtypes -------------

def _paddle_like(path, dynamic=True):
    """paddle2onnx's shape: every weight in a Constant node, [N, 3, H, W] input, no value_info."""
    from onnx import helper

    w = helper.make_tensor("w", 1, [8, 3, 3, 3], RNG.normal(size=8 * 27).astype(np.float32).tolist())
    b = helper.make_tensor("b", 1, [8], RNG.normal(size=8).astype(np.float32).tolist())
    wt = helper.make_tensor("wt", 1, [8, 2, 2, 2], RNG.normal(size=64).astype(np.float32).tolist())
    nodes = [helper.make_node("Constant", [], ["w_c"], value=w, name="const_w"),
             helper.make_node("Constant", [], ["b_c"], value=b, name="const_b"),
             helper.make_node("Constant", [], ["wt_c"], value=wt, name="const_wt"),
             helper.make_node("Conv", ["x", "w_c", "b_c"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("ConvTranspose", ["r", "wt_c"], ["up"], strides=[2, 2], group=4, name="deconv"),
             helper.make_node("Sigmoid", ["up"], ["y"], name="sig")]
    shape = ["N", 3, "H", "W"] if dynamic else [1, 3, 16, 16]
    return _model(path, nodes, [], [_vi("x", shape)], [_vi("y", ["N", 8, "H2", "W2"] if dynamic else [1, 8, 16, 16])], opset=11, ir=6)


# conv: 8 x 8 x 8 outputs (stride 2 on 16x16) x 27 each; deconv (W [8, 2, 2, 2], 4 groups: 8 channels out):
# each of its 8 x 8 x 8 input elements scatters into 2 x 2 x 2 outputs
CONV_MACS = 8 * 8 * 8 * 27
DECONV_MACS = 8 * 8 * 8 * (2 * 2 * 2)


def test_constant_node_weights_count_as_parameters(tmp_path):
    from workbench import api

    info = api.inspect(_paddle_like(tmp_path / "p.onnx", dynamic=False))
    assert info["parameters"] == 8 * 27 + 8 + 64  # was 0: only initializers were counted
    rows = {r["name"]: r for r in info["layers"]}
    assert rows["conv"]["params"] == 8 * 27 + 8 and rows["deconv"]["params"] == 64
    assert "Constant" not in info["op_counts"]  # data, folded by ONNX Runtime at load, like initializers
    assert info["macs"] == CONV_MACS + DECONV_MACS and "macs_partial" not in info


def test_dynamic_dims_give_a_partial_total_then_input_shape_counts_all(tmp_path):
    src = _paddle_like(tmp_path / "p.onnx")
    r = _cli("inspect", src)
    assert r.exit_code == 0, r.output
    assert "partial: 2 op(s)" in r.output and "--input-shape" in r.output and "Conv x1, ConvTranspose x1" in r.output
    r = _cli("inspect", src, "--json")
    info = json.loads(r.output)
    assert info["macs_partial"]["unknown_ops"] == 2 and info["macs"] == 0
    assert {row["name"]: row["macs"] for row in info["layers"]}["conv"] is None
    r = _cli("inspect", src, "--input-shape", "1,3,16,16")
    assert r.exit_code == 0, r.output
    assert f"MACs per inference: {CONV_MACS + DECONV_MACS:,}" in r.output and "partial" not in r.output
    assert "run on zeros of x [1, 3, 16, 16]" in r.output
    info = json.loads(_cli("inspect", src, "--input-shape", "1,3,16,16", "--json").output)
    rows = {row["name"]: row for row in info["layers"]}
    assert rows["deconv"]["shape"] == [1, 8, 16, 16] and rows["deconv"]["macs"] == DECONV_MACS


def test_input_shape_of_the_wrong_rank_says_why_macs_stay_partial(tmp_path):
    r = _cli("inspect", _paddle_like(tmp_path / "p.onnx"), "--input-shape", "1,3,16")
    assert r.exit_code == 0, r.output
    assert "partial" in r.output and "has 3 dims" in r.output


def test_torch_conv_transpose_macs(tmp_path):
    import torch

    from workbench import api

    m = torch.nn.Sequential(torch.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2)).eval()
    torch.export.save(torch.export.export(m, (torch.zeros(1, 4, 8, 8),)), tmp_path / "ct.pt2")
    info = api.inspect(tmp_path / "ct.pt2")
    assert info["macs"] == 4 * 8 * 8 * 3 * 9  # each input element scatters into Cout/groups x 3 x 3 outputs (was 0)


def _to_ort(src, out):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.add_session_config_entry("session.save_model_format", "ORT")
    so.optimized_model_filepath = str(out)
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    return out


def test_ort_files_are_inspected_from_their_own_graph(tmp_path):
    ort_file = _to_ort(_paddle_like(tmp_path / "p.onnx", dynamic=False), tmp_path / "p.ort")
    r = _cli("inspect", ort_file, "--json")
    assert r.exit_code == 0, r.output  # was exit 4: KeyError 'graph'
    info = json.loads(r.output)
    assert info["format"] == "ort" and info["parameters"] == 8 * 27 + 8 + 64
    assert info["macs"] == CONV_MACS + DECONV_MACS
    assert {"Conv", "ConvTranspose"} <= set(info["op_counts"])
    assert "onnx" in info["exports_to"]["refused"]  # an .ort does not convert back
    r = _cli("inspect", ort_file)
    assert r.exit_code == 0 and "ConvTranspose" in r.output


def test_damaged_ort_file_is_bad_input(tmp_path):
    ort_file = _to_ort(_paddle_like(tmp_path / "p.onnx", dynamic=False), tmp_path / "p.ort")
    data = ort_file.read_bytes()
    (tmp_path / "bad.ort").write_bytes(data[:8] + bytes(64))
    r = _cli("inspect", tmp_path / "bad.ort")
    assert r.exit_code == 2, r.output


def test_dtype_column_is_each_ops_output_dtype(tmp_path):
    """A QDQ graph without value_info: QuantizeLinear writes int8, DequantizeLinear float32, Shape int64."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="quant"),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"], name="dequant"),
             helper.make_node("Shape", ["dq"], ["shp"], name="shape"),
             helper.make_node("Cast", ["shp"], ["y"], to=TensorProto.FLOAT, name="cast")]
    src = _model(tmp_path / "qdq.onnx", nodes, [_arr("s", np.float32(0.1)), _arr("zp", np.int8(0))],
                 [_vi("x", [1, 3, 4, 4])], [_vi("y", [4])])
    info = json.loads(_cli("inspect", src, "--json").output)
    assert {r["name"]: r["dtype"] for r in info["layers"]} == {"quant": "int8", "dequant": "float32", "shape": "int64",
                                                               "cast": "float32"}


# --- profile: dynamic dims are filled by --input-shape, or refused --------------------------------------

def test_profile_refuses_dynamic_non_batch_dims_without_input_shape(tmp_path):
    src = _paddle_like(tmp_path / "p.onnx")
    r = _cli("profile", src, "--runs", 2, "--warmup", 0, "-o", tmp_path / "r.json")
    assert r.exit_code == 2, r.output  # was: timed at [1, 3, 1, 1] without a word
    assert "Input 'x' has dynamic dims [?, 3, ?, ?]" in r.output and "--input-shape" in r.output
    assert not (tmp_path / "r.json").exists()


def test_profile_input_shape_is_used_and_reported(tmp_path):
    src = _paddle_like(tmp_path / "p.onnx")
    r = _cli("profile", src, "--runs", 3, "--warmup", 1, "--input-shape", "1,3,32,24", "--no-per-op")
    assert r.exit_code == 0, r.output
    assert "x [1, 3, 32, 24] float32, random (--input-shape)" in r.output
    rep = json.loads(_cli("profile", src, "--runs", 3, "--warmup", 0, "--input-shape", "1,3,32,24", "--json").output)
    assert rep["inputs"] == [{"name": "x", "shape": [1, 3, 32, 24], "dtype": "float32", "source": "--input-shape"}]
    assert rep["settings"]["input_shape"] == [1, 3, 32, 24]
    assert {o["kind"] for o in rep["ops"]} >= {"Conv", "ConvTranspose"}  # it ran at that shape, per op too


@pytest.mark.parametrize("shape, says", [("1,4,32,32", "dim 1 is fixed at 3"), ("1,3,32", "has 3 dims")])
def test_profile_input_shape_that_does_not_fit_is_refused(tmp_path, shape, says):
    r = _cli("profile", _paddle_like(tmp_path / "p.onnx"), "--runs", 2, "--input-shape", shape)
    assert r.exit_code == 2 and says in r.output, r.output


def test_profile_dynamic_batch_alone_is_timed_at_1_and_says_so(tmp_path):
    from onnx import helper

    src = _model(tmp_path / "b.onnx", [helper.make_node("Relu", ["x"], ["y"])], [], [_vi("x", ["batch", 3, 8, 8])],
                 [_vi("y", ["batch", 3, 8, 8])])
    rep = json.loads(_cli("profile", src, "--runs", 2, "--warmup", 0, "--json").output)
    assert rep["inputs"][0]["shape"] == [1, 3, 8, 8] and rep["inputs"][0]["source"] == "model, dynamic batch set to 1"


def test_profiler_script_alone_takes_input_shape(tmp_path):
    """The script streamed to a board: the same refusal (exit 2, JSON error) and the same shapes, with no workbench."""
    import subprocess
    import sys

    from workbench.profile import device_script

    src = _paddle_like(tmp_path / "p.onnx")
    script = tmp_path / "profiler.py"
    script.write_bytes(open(device_script.__file__, "rb").read())
    run = lambda *a: subprocess.run([sys.executable, "-I", str(script), str(src), "--runs", "2", "--warmup", "0",
                                     "--no-per-op", *a], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    p = run()
    assert p.returncode == 2 and json.loads(p.stdout)["error"]["kind"] == "bad_input", p.stdout + p.stderr
    p = run("--input-shape", "1,3,16,16")
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(p.stdout)["inputs"][0]["shape"] == [1, 3, 16, 16]


def test_profile_litert_dynamic_dims(tmp_path):
    """A .tflite with a [1, ?, ?, 3] input (shape_signature -1): refused without --input-shape, resized with it."""
    import tensorflow as tf

    w = tf.constant(RNG.normal(size=(3, 3, 3, 4)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32)])
    def f(x):
        return tf.nn.relu(tf.nn.conv2d(x, w, 1, "SAME"))

    conv = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
    (tmp_path / "dyn.tflite").write_bytes(conv.convert())
    r = _cli("profile", tmp_path / "dyn.tflite", "--runs", 2)
    assert r.exit_code == 2 and "dynamic dims [1, ?, ?, 3]" in r.output, r.output
    rep = json.loads(_cli("profile", tmp_path / "dyn.tflite", "--runs", 2, "--warmup", 0, "--input-shape", "1,20,12,3",
                          "--json").output)
    assert rep["inputs"][0]["shape"] == [1, 20, 12, 3] and rep["inputs"][0]["source"] == "--input-shape"


def test_remote_profile_passes_input_shape_to_the_board(tmp_path, request):
    board = request.getfixturevalue("board")
    src = _paddle_like(tmp_path / "p.onnx")
    r = _cli("profile", src, "--runs", 2, "--warmup", 0, *board.cli_args())
    assert r.exit_code == 2 and "dynamic dims" in r.output, r.output  # refused before connecting
    r = _cli("profile", src, "--runs", 2, "--warmup", 0, "--input-shape", "1,3,16,16", "--json", *board.cli_args())
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["target"]["remote"] == board.destination and rep["inputs"][0]["shape"] == [1, 3, 16, 16]


# --- benchmark and emulate take .onnx ----------------------------------------------------------------

def _classifier(path):
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm: 4 classes from a [1, 3, 8, 8] image."""
    from onnx import helper

    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc", "fb"], ["y"], transB=1, name="fc")]
    inits = [_arr("w", RNG.normal(size=(16, 3, 3, 3)).astype(np.float32)), _arr("b", RNG.normal(size=16).astype(np.float32)),
             _arr("fc", RNG.normal(size=(4, 16)).astype(np.float32)), _arr("fb", np.zeros(4, np.float32))]
    return _model(path, nodes, inits, [_vi("x", [1, 3, 8, 8])], [_vi("y", [1, 4])])


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """The classifier and 64 images labelled by its own float outputs (accuracy of the file as given: 100%)."""
    d = tmp_path_factory.mktemp("cls")
    src = _classifier(d / "cls.onnx")
    x = RNG.random((64, 3, 8, 8)).astype(np.float32)
    y = np.array([int(np.argmax(_runs(src, x[i:i + 1])[0])) for i in range(len(x))])
    np.savez(d / "data.npz", x=x, y=y)
    return src, d / "data.npz"


def test_benchmark_takes_onnx(labelled):
    src, data = labelled
    r = _cli("benchmark", src, "--calib", data, "--data", data, "--runs", 10, "--json")
    assert r.exit_code == 0, r.output  # was: "benchmark compares deployment stacks of PyTorch and Keras models"
    rows = {row["stack"]: row for row in json.loads(r.output)["rows"]}
    assert set(rows) == {"onnxruntime (as given)", "onnxruntime fp16", "onnxruntime dynamic", "onnxruntime int8",
                         "litert float", "litert int8", "tflite-micro int8"}  # the last three through ONNX -> TFLite
    assert all("error" not in row and row["latency_ms"] > 0 for row in rows.values()), rows
    assert rows["onnxruntime (as given)"]["accuracy"] == 1.0
    assert rows["onnxruntime int8"]["argmax_agreement"] >= 0.8
    assert rows["litert float"]["argmax_agreement"] == 1.0  # the NCHW model's data fed NHWC to the converted file
    assert rows["litert int8"]["argmax_agreement"] >= 0.8 and rows["tflite-micro int8"]["argmax_agreement"] >= 0.8


CLS_MACS = 16 * 8 * 8 * 27 + 4 * 16  # the classifier's conv and Gemm


def test_emulate_onnx_on_a_linux_board(labelled):
    src, data = labelled
    r = _cli("emulate", src, "--target", "raspberry-pi-4", "--eval", data, "--json")
    assert r.exit_code == 0, r.output  # was: "emulate works on .tflite models ... export --format tflite"
    d = json.loads(r.output)
    assert d["runtime"]["name"] == "ort" and d["runtime"]["module"] == "onnxruntime"
    assert d["fits"] is True and d["ram_bytes"] > 10 * 2**20  # a whole Python process holding ONNX Runtime
    assert d["macs"] == CLS_MACS and {o["kind"] for o in d["ops"]} >= {"Conv", "Gemm"}
    assert d["accuracy"]["metric"] == "top1" and d["accuracy"]["accuracy"] == 1.0  # run in ONNX Runtime, labels from its own float outputs
    text = _cli("emulate", src, "--target", "raspberry-pi-4").output
    assert "ort+mlas" in text and "with ONNX Runtime" in text and "not calibrated" in text


def test_emulate_qdq_onnx_costs_its_ops_as_int8(labelled, tmp_path):
    src, data = labelled
    q = tmp_path / "q.onnx"
    assert _cli("quantize", src, "--scheme", "int8", "--calib", data, "--format", "onnx", "-o", q).exit_code == 0
    d = json.loads(_cli("emulate", q, "--target", "raspberry-pi-4", "--json").output)
    kinds = {o["kind"]: o for o in d["ops"]}
    assert "QuantizeLinear" not in kinds and "DequantizeLinear" not in kinds
    assert kinds["Conv"]["dtype"] == "int8" and d["macs"] == CLS_MACS
    f = json.loads(_cli("emulate", src, "--target", "raspberry-pi-4", "--json").output)
    conv = lambda rep: next(o for o in rep["ops"] if o["kind"] == "Conv")["latency_ms"]
    assert conv(d) < conv(f)  # the board's int8 row, not its float row


def test_emulate_ort_file_on_a_linux_board(labelled, tmp_path):
    src, _ = labelled
    r = _cli("emulate", _to_ort(src, tmp_path / "cls.ort"), "--target", "raspberry-pi-5", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["macs"] == CLS_MACS


def test_emulate_onnx_on_an_mcu_is_refused_with_the_way_out(labelled):
    r = _cli("emulate", labelled[0], "--target", "stm32h743")
    assert r.exit_code == 2 and "TensorFlow Lite Micro" in r.output and "Linux board" in r.output, r.output


def test_emulate_onnx_with_dynamic_dims(tmp_path):
    r = _cli("emulate", _paddle_like(tmp_path / "p.onnx"), "--target", "raspberry-pi-4")
    assert r.exit_code == 2 and "make_dynamic_shape_fixed" in r.output, r.output
    from onnx import helper

    batch = _model(tmp_path / "b.onnx", [helper.make_node("Relu", ["x"], ["y"])], [], [_vi("x", ["N", 3, 8, 8])],
                   [_vi("y", ["N", 3, 8, 8])])
    assert _cli("emulate", batch, "--target", "raspberry-pi-4").exit_code == 0  # a dynamic batch alone is 1


def test_emulate_onnx_op_without_a_cpu_kernel_is_a_verdict(tmp_path):
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("ImageDecoder", ["x"], ["y"], name="decode")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.UINT8, [100])],
                          [helper.make_tensor_value_info("y", TensorProto.UINT8, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])
    m.ir_version = 9
    import onnx

    onnx.save(m, str(tmp_path / "dec.onnx"))
    r = _cli("emulate", tmp_path / "dec.onnx", "--target", "raspberry-pi-4")
    assert r.exit_code == 1 and "no CPU kernel for the ImageDecoder node 'decode'" in r.output, r.output


def test_inspect_input_shape_a_fixed_model_refuses_is_said_to_be_unused(tmp_path):
    r = _cli("inspect", _paddle_like(tmp_path / "p.onnx", dynamic=False), "--input-shape", "1,3,32,32")
    assert r.exit_code == 0, r.output
    assert "--input-shape was not used" in r.output and f"MACs per inference: {CONV_MACS + DECONV_MACS:,}" in r.output


def test_savedmodel_without_keras_metadata_counts_its_variables(tmp_path):
    import tensorflow as tf

    class Affine(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.random.normal([4, 3]))
            self.b = tf.Variable(tf.zeros([3]))

        @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
        def __call__(self, x):
            return tf.matmul(x, self.w) + self.b

    m = Affine()
    tf.saved_model.save(m, str(tmp_path / "sm"), signatures=m.__call__.get_concrete_function())
    info = json.loads(_cli("inspect", tmp_path / "sm", "--json").output)
    assert info["parameters"] == 4 * 3 + 3  # was 0
    assert info["macs"] is None and "SavedModel without Keras metadata" in info["note"]  # not a total of 0
