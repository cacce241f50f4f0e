"""Defects a newcomer's sweep of real architectures found (issue 12, items 3-12): each test failed before its fix.

The models are built here, tiny: a Keras LSTM, a PyTorch GRU/LSTM/TransformerEncoder, a tf_keras MobileNetV2
at 32x32, a Keras 3 Sequential, ONNX files with external data. MACs are checked against hand-computed counts.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from click.testing import CliRunner

from workbench.cli import main

HERE = __name__


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


# --- item 3: a converter crash in a child process becomes a typed error ------------------------------

def _segfault(_payload):
    import ctypes

    ctypes.string_at(0)  # reads address 0: SIGSEGV


def _raise_with_hint(_payload):
    from workbench.core.errors import DataError

    try:
        raise KeyError("inner cause")
    except KeyError as exc:
        raise DataError("outer message", hint="the hint") from exc


def _echo(payload):
    return {"got": payload["x"].sum()}


def test_child_crash_is_a_runtime_failure_with_phase_and_frame():
    from workbench.core.isolate import ChildCrashed, run_isolated

    with pytest.raises(ChildCrashed) as info:
        run_isolated(f"{HERE}:_segfault", None, phase="test step")
    err = info.value
    assert err.exit_code == 2 and err.signal_name == "SIGSEGV" and err.phase == "test step"
    assert "_segfault" in err.stack and "test step crashed" in err.message


def test_child_errors_keep_type_hint_and_remote_traceback():
    from workbench.core.errors import DataError
    from workbench.core.isolate import RemoteTraceback, run_isolated

    with pytest.raises(DataError) as info:
        run_isolated(f"{HERE}:_raise_with_hint", None, phase="x")
    assert info.value.hint == "the hint"
    assert isinstance(info.value.__cause__, RemoteTraceback) and "inner cause" in info.value.__cause__.text
    assert run_isolated(f"{HERE}:_echo", {"x": np.ones(3)}, phase="x") == {"got": 3.0}


@pytest.fixture(scope="module")
def keras_lstm(tmp_path_factory):
    import keras

    d = tmp_path_factory.mktemp("lstm")
    m = keras.Sequential([keras.Input((20, 8)), keras.layers.LSTM(32), keras.layers.Dense(10, activation="softmax")])
    m.save(d / "k_lstm.keras")
    rng = np.random.default_rng(0)
    np.savez(d / "seq.npz", x=rng.normal(size=(64, 20, 8)).astype("float32"), y=rng.integers(0, 10, 64))
    return d


def test_keras_lstm_int8_crash_is_reported_not_fatal(keras_lstm):
    r = _cli("quantize", keras_lstm / "k_lstm.keras", "--scheme", "int8", "--calib", keras_lstm / "seq.npz",
             "-o", keras_lstm / "out.tflite")
    assert r.exit_code == 2, r.output
    assert "crashed (SIGSEGV) during calibration" in r.output and "LSTM" in r.output
    assert "--scheme dynamic" in r.output and "unroll=True" in r.output
    assert not (keras_lstm / "out.tflite").exists()


def test_keras_lstm_macs_and_while_loop_tflite(keras_lstm):
    from workbench import api

    lstm = 20 * (8 * 4 * 32 + 32 * 4 * 32)  # timesteps x (input kernel + recurrent kernel)
    dense = 32 * 10
    info = api.inspect(keras_lstm / "k_lstm.keras")
    assert info["macs"] == lstm + dense
    out = keras_lstm / "float.tflite"
    api.convert(keras_lstm / "k_lstm.keras", "tflite", out, overwrite=True)
    t = api.inspect(out)
    assert "WHILE" in t["op_counts"]
    assert t["macs"] == lstm + dense  # the loop body runs 20 times (its trip count read from the condition)
    assert t["parameters"] >= 5578  # the LSTM's weights live in the loop body's subgraph


# --- item 4: ONNX with external data -------------------------------------------------------------------

@pytest.fixture(scope="module")
def onnx_external(tmp_path_factory):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    d = tmp_path_factory.mktemp("onnxext")
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(16, 3, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(rng.normal(size=(16 * 8 * 8, 10)).astype(np.float32) * 0.05, "fc")
    shape = numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "shape")
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("Reshape", ["r", "shape"], ["f"]), helper.make_node("MatMul", ["f", "fc"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], [w, fc, shape])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(d / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.onnx.data", size_threshold=1024)
    np.savez(d / "img.npz", x=rng.normal(size=(32, 3, 8, 8)).astype(np.float32))
    return d


def test_onnx_external_data_is_sized_quantized_and_copied(onnx_external):
    from workbench import api

    d = onnx_external
    total = (d / "ext.onnx").stat().st_size + (d / "ext.onnx.data").stat().st_size
    info = api.inspect(d / "ext.onnx")
    assert info["file_bytes"] == total and info["external_data"] == ["ext.onnx.data"]
    r = _cli("quantize", d / "ext.onnx", "--scheme", "int8", "--calib", d / "img.npz", "--eval", d / "img.npz",
             "--format", "onnx", "-o", d / "q.onnx")
    assert r.exit_code == 0, r.output
    r = _cli("export", d / "ext.onnx", "--format", "onnx", "-o", d / "f.onnx")
    assert r.exit_code == 0, r.output
    assert (d / "f.onnx").stat().st_size > (d / "ext.onnx.data").stat().st_size  # self-contained
    assert "external_data" not in api.inspect(d / "f.onnx")


def test_onnx_missing_external_data_is_bad_input(onnx_external, tmp_path):
    import shutil

    shutil.copy(onnx_external / "ext.onnx", tmp_path / "ext.onnx")
    r = _cli("inspect", tmp_path / "ext.onnx")
    assert r.exit_code == 2 and "ext.onnx.data" in r.output


# --- item 5: TorchScript names what it lacks before any work ----------------------------------------------

def test_torchscript_asks_for_the_input_shape_it_lacks(tmp_path):
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.c(x).mean((2, 3))

    torch.jit.script(Net().eval()).save(str(tmp_path / "ts.pt"))
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 3, 8, 8), np.float32))
    # issue 19 and 23: TorchScript reaches TFLite and ONNX through the TorchScript exporter; a scripted module
    # records no input shape, so that is the one thing asked for, by name
    for fmt, out in (("tflite", "o.tflite"), ("onnx", "o.onnx")):
        r = _cli("quantize", tmp_path / "ts.pt", "--scheme", "int8", "--calib", tmp_path / "d.npz", "--format", fmt,
                 "-o", tmp_path / out)
        assert r.exit_code == 2 and "--input-shape" in r.output and "Traceback" not in r.output, r.output
        assert not (tmp_path / out).exists()


# --- item 6 and 9: tf_keras depthwise, separable, recurrent, attention MACs --------------------------------

def test_tf_keras_h5_mobilenetv2_inspects_with_depthwise_macs(tmp_path):
    import tf_keras

    m = tf_keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10)
    m.save(tmp_path / "mnv2.h5")
    r = _cli("inspect", tmp_path / "mnv2.h5", "--json")
    assert r.exit_code == 0, r.output
    import json

    d = json.loads(r.output)
    dw = [row for row in d["layers"] if row["op"] == "DepthwiseConv2D"]
    assert dw and all(row["macs"] > 0 for row in dw)
    first = dw[0]  # expanded_conv_depthwise: 3x3 over 16x16x16 (alpha 0.35 -> 16 channels)
    assert first["macs"] == int(np.prod(first["shape"][1:])) * 9


def test_keras_separable_and_attention_macs(tmp_path):
    import keras

    from workbench import api

    x = keras.Input((16, 16, 3))
    y = keras.layers.SeparableConv2D(8, 3, padding="same")(x)
    keras.Model(x, y).save(tmp_path / "sep.keras")
    assert api.inspect(tmp_path / "sep.keras")["macs"] == 16 * 16 * 3 * 9 + 16 * 16 * 8 * 3
    x = keras.Input((10, 16))
    keras.Model(x, keras.layers.MultiHeadAttention(2, 8)(x, x)).save(tmp_path / "mha.keras")
    proj = 3 * 10 * 16 * 2 * 8 + 10 * 2 * 8 * 16  # q, k, v and output projections
    attn = 2 * 10 * 10 * (8 + 8)  # heads x Tq x Tk x (key_dim + value_dim)
    assert api.inspect(tmp_path / "mha.keras")["macs"] == proj + attn


def _torch_models():
    import torch

    class GRUNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.g = torch.nn.GRU(8, 32, batch_first=True)
            self.fc = torch.nn.Linear(32, 10)

        def forward(self, x):
            y, _ = self.g(x)
            return self.fc(y[:, -1])

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            layer = torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0)
            self.enc = torch.nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
            self.fc = torch.nn.Linear(16, 10)

        def forward(self, x):
            return self.fc(self.enc(x).mean(1))

    return GRUNet, Encoder


@pytest.fixture(scope="module")
def torch_seq(tmp_path_factory):
    import torch

    d = tmp_path_factory.mktemp("torchseq")
    GRUNet, Encoder = _torch_models()
    torch.manual_seed(0)
    torch.export.save(torch.export.export(GRUNet().eval(), (torch.zeros(1, 20, 8),)), str(d / "gru.pt2"))
    torch.export.save(torch.export.export(Encoder().eval(), (torch.zeros(1, 10, 16),)), str(d / "enc.pt2"))
    np.savez(d / "seq.npz", x=np.random.default_rng(0).normal(size=(32, 20, 8)).astype("float32"))
    return d


def test_torch_gru_and_transformer_macs(torch_seq):
    from workbench import api

    gru = api.inspect(torch_seq / "gru.pt2")
    assert gru["macs"] == 20 * (3 * 32 * 8 + 3 * 32 * 32) + 32 * 10
    assert gru["parameters"] == sum(r["params"] for r in gru["layers"])  # the GRU's weights are on its row
    enc = api.inspect(torch_seq / "enc.pt2")
    in_proj, attn, out_proj = 10 * 16 * 48, 2 * 10 * 10 * (8 + 8), 10 * 16 * 16
    ffn = 10 * 16 * 32 * 2
    assert enc["macs"] == in_proj + attn + out_proj + ffn + 16 * 10  # not divided by the sequence length


def test_torch_gru_int8_failure_keeps_its_cause(torch_seq):
    from workbench import api
    from workbench.core.errors import RuntimeFailure

    with pytest.raises(RuntimeFailure) as info:
        api.convert(torch_seq / "gru.pt2", "tflite", torch_seq / "g.tflite", scheme="int8", calib=str(torch_seq / "seq.npz"))
    err = info.value
    assert err.__cause__ is not None  # chained: --debug shows litert-torch's traceback
    assert "traces with torch.export (checked)" in err.hint and "GRU" in err.message
    assert "while PT2E" in err.message


def test_debug_shows_the_upstream_traceback(torch_seq):
    r = CliRunner().invoke(main, ["--debug", "quantize", str(torch_seq / "gru.pt2"), "--scheme", "int8", "--calib",
                                  str(torch_seq / "seq.npz"), "-o", str(torch_seq / "g2.tflite")])
    import traceback

    text = "".join(traceback.format_exception(r.exc_info[1]))
    assert "The above exception was the direct cause" in text and "IndexError" in text


# --- item 7: Keras 3 Sequential channel pruning ------------------------------------------------------------

def test_keras3_sequential_channel_plan():
    import keras

    from workbench.optimize.config import PruneConfig
    from workbench.optimize.prune_keras import plan_channels

    m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, activation="relu"),
                          keras.layers.Conv2D(8, 3, activation="relu"), keras.layers.GlobalAveragePooling2D(),
                          keras.layers.Dense(10)])
    _, plan = plan_channels(m, PruneConfig(method="channel", sparsity=0.5), "seq.keras")
    assert plan.changed


# --- item 10: layouts both ways ------------------------------------------------------------------------------

def test_fit_to_input_transposes_both_ways():
    from workbench.core.errors import DataError
    from workbench.data.dataset import fit_to_input

    nchw = np.zeros((2, 1, 8, 8), np.float32)
    assert fit_to_input(nchw, (1, 8, 8, 1), "NHWC", "d").shape == (2, 8, 8, 1)
    nhwc = np.zeros((2, 8, 8, 3), np.float32)
    assert fit_to_input(nhwc, (1, 3, 8, 8), "NCHW", "d").shape == (2, 3, 8, 8)
    assert fit_to_input(np.zeros((2, 3, 8, 8)), (1, 8, 8, 3), None, "d").shape == (2, 8, 8, 3)
    with pytest.raises(DataError) as info:
        fit_to_input(np.zeros((2, 4, 16)), (1, 8, 8, 1), "NHWC", "d")
    assert "arrangement" in info.value.hint


@pytest.mark.slow
def test_nchw_eval_data_against_litert_torch_nhwc_tflite(tmp_path, digits_torch_path):
    from sklearn.datasets import load_digits

    from tests.conftest import DIGITS_FACTORY

    d = load_digits()
    np.savez(tmp_path / "nchw.npz", x=(d.images / 16.0).astype("float32")[:, None], y=d.target)
    r = _cli("quantize", digits_torch_path, "--factory", DIGITS_FACTORY, "--scheme", "int8", "--calib",
             tmp_path / "nchw.npz", "--eval", tmp_path / "nchw.npz", "--eval-samples", 200, "-o", tmp_path / "d.tflite")
    assert r.exit_code == 0, r.output
    assert "accuracy:" in r.output


# --- item 11: degenerate references --------------------------------------------------------------------------

class _Stub:
    def __init__(self, y):
        from workbench.frontends.handle import TensorSpec

        self.y = y
        self.inputs = (TensorSpec("x", (1, 4), "float32"),)

    def predict(self, x):
        return self.y[: len(x)]

    def info(self):
        return {"runtime": "stub"}


def test_constant_reference_warns_that_metrics_are_meaningless():
    from workbench.data.dataset import Dataset
    from workbench.evaluate.compare import compare_runners

    data = Dataset(x=np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32), y=np.zeros(8, int), name="d")
    tiny = np.full((8, 10), 1e-9, np.float32) + np.random.default_rng(1).normal(size=(8, 10)).astype(np.float32) * 1e-10
    cmp = compare_runners(_Stub(tiny), _Stub(np.zeros((8, 10), np.float32)), data)
    assert cmp.warnings and "meaningless" in cmp.warnings[0] and cmp.to_dict()["warnings"]
    same = np.tile(np.linspace(0, 1, 10, dtype=np.float32), (8, 1))
    assert "same output for every sample" in compare_runners(_Stub(same), _Stub(same), data).warnings[0]
    real = np.random.default_rng(2).normal(size=(8, 10)).astype(np.float32)
    assert compare_runners(_Stub(real), _Stub(real), data).warnings == ()


# --- item 12 (part): litert-torch layer names ----------------------------------------------------------------

def test_litert_torch_names_map_to_module_paths():
    from workbench.frontends.tflite_reader import torch_module_path

    w = "litert_torch._convert.to_channel_last_io.ChannelLastIOWrapper"
    name = f"{w}/pkg.mod.<locals>.DigitsCNN_wrapped;;{w}/pkg.mod.<locals>.DigitsCNN_wrapped/torch.nn.modules.conv.Conv2d_conv1;1"
    assert torch_module_path(name) == "conv1"
    assert torch_module_path(f"{w}/pkg.mod.<locals>.DigitsCNN_wrapped;1") == "DigitsCNN"
    enc = ("__main__.T/torch.nn.modules.transformer.TransformerEncoder_enc/torch.nn.modules.transformer."
           "TransformerEncoderLayer_0/torch.nn.modules.activation.MultiheadAttention_self_attn;8")
    assert torch_module_path(enc) == "enc.0.self_attn"
    assert torch_module_path("sequential_1/lstm_1/while") is None
    assert torch_module_path("serving_default_output_0_output") is None
