"""Issue 19: TF1 frozen graphs and TorchScript modules all the way through.

The TF1 graphs are built here in graph mode (placeholders, a conv, a BatchNorm that freezing and the
converter fold away, a matmul) and frozen with convert_variables_to_constants; the TorchScript modules
are traced and scripted here. Every export's parity with its source is asserted in numbers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from workbench.cli import main


def _freeze(path: Path, *, training_step: bool = False, no_placeholder: bool = False, bn_training: bool = False,
            svd: bool = False) -> Path:
    import tensorflow as tf

    tf1 = tf.compat.v1
    rng = np.random.default_rng(0)
    g = tf.Graph()
    with g.as_default():
        if no_placeholder:
            x = tf1.constant(rng.random((1, 8, 8, 1), dtype=np.float32))
        else:
            x = tf1.placeholder(tf.float32, (None, 8, 8, 1), name="images")
        w = tf1.Variable(rng.normal(0, 0.5, (3, 3, 1, 4)).astype(np.float32), name="conv_w")
        y = tf1.nn.conv2d(x, w, strides=[1, 1, 1, 1], padding="SAME")
        bn = [tf1.Variable(rng.uniform(0.5, 1.5, 4).astype(np.float32), name="bn_gamma"),
              tf1.Variable(rng.normal(0, 0.1, 4).astype(np.float32), name="bn_beta"),
              tf1.Variable(rng.normal(0, 0.2, 4).astype(np.float32), name="bn_mean"),
              tf1.Variable(rng.uniform(0.5, 2, 4).astype(np.float32), name="bn_var")]
        if bn_training:
            y, _, _ = tf1.nn.fused_batch_norm(y, bn[0], bn[1], is_training=True, name="bn")
        else:
            y, _, _ = tf1.nn.fused_batch_norm(y, bn[0], bn[1], bn[2], bn[3], is_training=False, name="bn")
        y = tf1.reshape(tf1.nn.relu(y), (-1, 8 * 8 * 4))
        if svd:
            y = tf1.reshape(tf1.linalg.svd(tf1.reshape(y, (-1, 16, 16)), compute_uv=False), (-1, 16))
        w2 = tf1.Variable(rng.normal(0, 0.1, (int(y.shape[1]), 10)).astype(np.float32), name="fc_w")
        b2 = tf1.Variable(rng.normal(0, 0.1, (10,)).astype(np.float32), name="fc_b")
        tf1.nn.softmax(tf1.nn.bias_add(tf1.matmul(y, w2), b2), name="probs")
        outputs = ["probs"]
        if training_step:
            loss = tf1.reduce_mean(g.get_tensor_by_name("probs:0"))
            tf1.train.GradientDescentOptimizer(0.1).minimize(loss, name="train")
            outputs.append("train")
        with tf1.Session(graph=g) as s:
            s.run(tf1.global_variables_initializer())
            frozen = tf1.graph_util.convert_variables_to_constants(s, g.as_graph_def(), outputs)
    path.write_bytes(frozen.SerializeToString())
    return path


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    d = tmp_path_factory.mktemp("tf1")
    return {"good": _freeze(d / "frozen.pb"), "train": _freeze(d / "train.pb", training_step=True),
            "noph": _freeze(d / "noph.pb", no_placeholder=True), "bn_training": _freeze(d / "bn_train.pb", bn_training=True),
            "svd": _freeze(d / "svd.pb", svd=True)}


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# --- TF1 frozen graphs -----------------------------------------------------------------------------------

def test_frozen_graph_is_recognised_and_inspected_without_tensorflow(graphs):
    code = ("import sys, json; from workbench import api; info = api.inspect(sys.argv[1]); "
            "print(json.dumps({'tf': 'tensorflow' in sys.modules, 'format': info['format'], 'inputs': info['inputs'], "
            "'outputs': info['outputs'], 'ops': info['op_counts'], 'to': sorted(info['exports_to']['paths'])}))")
    r = subprocess.run([sys.executable, "-c", code, str(graphs["good"])], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["tf"] is False  # read with the wire reader alone
    assert info["format"] == "frozen_graph"
    assert info["inputs"] == [{"name": "images", "shape": [None, 8, 8, 1], "dtype": "float32", "layout": "NHWC"}]
    assert info["outputs"] == [{"name": "probs", "shape": [None, 10], "dtype": "float32"}]
    assert {"Conv2D", "FusedBatchNormV3", "MatMul", "Softmax"} <= set(info["ops"])
    assert "tflite" in info["to"] and "tflm" in info["to"]


def test_frozen_graph_to_float_and_int8_tflite_matches_the_session(graphs, tmp_path):
    from workbench import api

    f = api.convert(graphs["good"], "tflite", tmp_path / "f.tflite")
    p = f.extra["recipe"]["parity"]["probs"]
    assert p["samples"] == 16 and p["max_abs_error"] < 1e-5 and p["argmax_agreement"] == 1.0
    assert f.extra["recipe"]["converter"] == "tf.compat.v1.lite.TFLiteConverter.from_frozen_graph"
    q = api.convert(graphs["good"], "tflite", tmp_path / "q.tflite", scheme="int8", calib="digits:train")
    p8 = q.extra["recipe"]["parity"]["probs"]
    assert p8["max_abs_error"] < 0.02 and p8["argmax_agreement"] >= 0.9, p8
    ops = api.inspect(tmp_path / "q.tflite")["op_counts"]
    assert set(ops) == {"CONV_2D", "RESHAPE", "FULLY_CONNECTED", "SOFTMAX"}, ops  # the BatchNorm is folded into the conv
    # and the .tflite agrees with the graph run in a TF1 session on real data
    cmp = api.evaluate(graphs["good"], tmp_path / "q.tflite", "digits:test", samples=100)
    assert cmp.metrics["argmax_agreement"] >= 0.95


@pytest.mark.parametrize("scheme", ["fp16", "dynamic", "int16x8"])
def test_frozen_graph_every_other_ptq_scheme(graphs, tmp_path, scheme):
    from workbench import api

    art = api.convert(graphs["good"], "tflite", tmp_path / "o.tflite", scheme=scheme, calib="digits:train")
    p = art.extra["recipe"]["parity"]["probs"]
    assert p["max_abs_error"] < (1e-3 if scheme == "fp16" else 0.02) and p["argmax_agreement"] >= 0.9, p


def test_inputs_and_outputs_options(graphs, tmp_path):
    r = _cli("export", graphs["train"], "--format", "tflite", "-o", tmp_path / "o.tflite", "--outputs", "probs",
             "--inputs", "images:2x8x8x1", "--json")
    assert r.exit_code == 0, r.output
    recipe = json.loads(r.output)["recipe"]
    assert recipe["input_shapes"] == {"images": [2, 8, 8, 1]} and recipe["parity"]["probs"]["samples"] == 32
    r = _cli("inspect", graphs["good"], "--outputs", "nosuch")
    assert r.exit_code == 2 and "'nosuch'" in r.output and "probs" in r.output, r.output


@pytest.mark.parametrize("case,names", [
    ("train", ["ResourceApplyGradientDescent", "Conv2DBackpropFilter", "training only"]),
    ("bn_training", ["FusedBatchNormV3 (bn)", "training mode"]),
    ("noph", ["without placeholders"]),
    ("svd", ["Svd"]),
])
def test_frozen_graph_refusals_name_the_op(graphs, tmp_path, case, names):
    out = tmp_path / "o.tflite"
    r = _cli("export", graphs[case], "--format", "tflite", "-o", out)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and not out.exists()
    for n in names:
        assert n in r.output, r.output


def test_saved_model_proto_and_onnx_are_not_graphdefs(tmp_path):
    from workbench.core.errors import ModelFormatError
    from workbench.frontends.detect import detect_format

    sm = tmp_path / "saved_model.pb"
    sm.write_bytes(b"\x08\x01\x12\x04\x0a\x02\x0a\x00")  # schema version 1, one MetaGraphDef
    with pytest.raises(ModelFormatError) as e:
        detect_format(sm)
    assert "SavedModel folder" in str(e.value)
    onnx_like = tmp_path / "m.pb"
    onnx_like.write_bytes(b"\x08\x07\x12\x07pytorch")  # ir_version 7, producer name (no graph yet: still not a SavedModel)
    assert detect_format(onnx_like) == "onnx"


# --- TorchScript -> ONNX ---------------------------------------------------------------------------------

def _torch_net():
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(4)
            self.f = torch.nn.Linear(4 * 8 * 8, 10)

        def forward(self, x):
            return torch.softmax(self.f(torch.flatten(torch.relu(self.bn(self.c(x))), 1)), 1)

    torch.manual_seed(0)
    return Net().eval()


@pytest.mark.parametrize("how", ["trace", "script"])
def test_torchscript_to_onnx_with_parity(tmp_path, how):
    import onnxruntime as ort
    import torch

    from workbench import api

    net = _torch_net()
    ts = torch.jit.trace(net, torch.zeros(1, 1, 8, 8)) if how == "trace" else torch.jit.script(net)
    ts.save(str(tmp_path / "m.pt"))
    art = api.convert(tmp_path / "m.pt", "onnx", tmp_path / "m.onnx", load_options=api.LoadOptions(input_shape=(1, 1, 8, 8)))
    p = art.extra["recipe"]["parity"]
    assert p["max_abs_error"] < 1e-5 and p["argmax_agreement"] == 1.0, p
    assert art.extra["recipe"]["exporter"].startswith("torch.onnx.export (TorchScript")
    x = np.random.default_rng(1).normal(size=(1, 1, 8, 8)).astype(np.float32)  # beyond the parity inputs' range
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x})[0]
    assert np.max(np.abs(got - ts(torch.from_numpy(x)).detach().numpy())) < 1e-5
    q = api.convert(tmp_path / "m.pt", "onnx", tmp_path / "q.onnx", scheme="int8", calib="digits:train",
                    load_options=api.LoadOptions(input_shape=(1, 1, 8, 8)))
    assert q.extra["recipe"]["format"] == "QDQ" and q.extra["recipe"]["parity"]["max_abs_error"] < 1e-5


def test_scripted_control_flow_is_carried_both_branches(tmp_path):
    import onnxruntime as ort
    import torch

    from workbench import api

    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.f = torch.nn.Linear(16, 4)

        def forward(self, x):
            if x.sum() > 0:
                return self.f(x)
            return -self.f(x) * 2.0

    ts = torch.jit.script(Branchy().eval())
    ts.save(str(tmp_path / "b.pt"))
    art = api.convert(tmp_path / "b.pt", "onnx", tmp_path / "b.onnx", load_options=api.LoadOptions(input_shape=(1, 16)))
    assert art.extra["recipe"]["control_flow"]["if"] >= 1
    sess = ort.InferenceSession(str(tmp_path / "b.onnx"), providers=["CPUExecutionProvider"])
    for sign in (1.0, -1.0):
        x = sign * np.abs(np.random.default_rng(2).normal(size=(1, 16))).astype(np.float32)
        want = ts(torch.from_numpy(x)).detach().numpy()
        assert np.max(np.abs(sess.run(None, {"input": x})[0] - want)) < 1e-5


def test_torchscript_refusals_name_the_construct(tmp_path):
    import torch

    from workbench import api
    from workbench.core.errors import UnsupportedError

    class Stateful(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.f = torch.nn.Linear(4, 4)
            self.state = torch.zeros(1, 4)

        def forward(self, x):
            y = self.f(x + self.state)
            self.state = y.detach()
            return y

    class TakesRate(torch.nn.Module):
        def forward(self, x, sr: int):
            return x * float(sr)

    torch.jit.script(Stateful()).save(str(tmp_path / "s.pt"))
    torch.jit.script(TakesRate()).save(str(tmp_path / "r.pt"))
    opts = api.LoadOptions(input_shape=(1, 4))
    with pytest.raises(UnsupportedError) as e:
        api.convert(tmp_path / "s.pt", "onnx", tmp_path / "s.onnx", load_options=opts)
    assert "self.state" in str(e.value) and "prim::SetAttr" in str(e.value)
    with pytest.raises(UnsupportedError) as e:
        api.convert(tmp_path / "r.pt", "onnx", tmp_path / "r.onnx")
    assert "sr (int)" in str(e.value)
    # .tflite: TorchScript -> ONNX -> TFLite through the registered onnx2tf route, parity checked at each step
    net = torch.jit.trace(_torch_net(), torch.zeros(1, 1, 8, 8))
    net.save(str(tmp_path / "t.pt"))
    r = _cli("export", tmp_path / "t.pt", "--format", "tflite", "--input-shape", "1,1,8,8", "-o", tmp_path / "t.tflite")
    assert r.exit_code == 0, r.output
    info = api.inspect(tmp_path / "t.pt", api.LoadOptions(input_shape=(1, 1, 8, 8)))
    assert "tflite" in info["exports_to"]["paths"] and "tflite" not in info["exports_to"]["refused"]


def test_tf1_saved_model_without_serving_default(tmp_path):
    import tensorflow as tf

    from workbench import api
    from workbench.core.errors import ModelFormatError
    from workbench.frontends.detect import detect_format

    tf1 = tf.compat.v1
    rng = np.random.default_rng(0)
    g = tf.Graph()
    with g.as_default():
        x = tf1.placeholder(tf.float32, (None, 8, 8, 1), name="images")
        w = tf1.Variable(rng.normal(0, 0.5, (3, 3, 1, 4)).astype(np.float32), name="conv_w")
        y = tf1.reshape(tf1.nn.relu(tf1.nn.conv2d(x, w, [1, 1, 1, 1], "SAME")), (-1, 256))
        p = tf1.nn.softmax(tf1.matmul(y, tf1.Variable(rng.normal(0, 0.1, (256, 10)).astype(np.float32))), name="probs")
        with tf1.Session(graph=g) as s:
            s.run(tf1.global_variables_initializer())
            b = tf1.saved_model.Builder(str(tmp_path / "sm"))
            sig = tf1.saved_model.predict_signature_def(inputs={"images": x}, outputs={"probs": p})
            b.add_meta_graph_and_variables(s, ["serve"], signature_def_map={"predict": sig})  # no serving_default
            b.save()
    h = api.load(tmp_path / "sm")
    assert (h.format, h.framework, h.meta["signature"]) == ("savedmodel_tf1", "tf1", "predict")
    assert [i.name for i in h.inputs] == ["images"] and [o.name for o in h.outputs] == ["probs"]
    art = api.convert(h, "tflite", tmp_path / "sm.tflite", scheme="int8", calib="digits:train")
    par = art.extra["recipe"]["parity"]["probs"]
    assert par["max_abs_error"] < 0.02 and par["argmax_agreement"] >= 0.9, par
    with pytest.raises(ModelFormatError) as e:  # its saved_model.pb alone is not a frozen graph, nor an ONNX file
        detect_format(tmp_path / "sm" / "saved_model.pb")
    assert "SavedModel folder" in str(e.value)


def test_torchscript_to_tflite_goes_through_the_onnx_route(tmp_path):
    """TorchScript -> TFLite is the checked ONNX export followed by onnx2tf, each step with its own parity."""
    import torch

    from workbench import api
    from workbench.runtimes.litert import LiteRTRunner

    torch.jit.trace(_torch_net(), torch.zeros(1, 1, 8, 8)).save(str(tmp_path / "t.pt"))
    art = api.convert(tmp_path / "t.pt", "tflite", tmp_path / "t.tflite", load_options=api.LoadOptions(input_shape=(1, 1, 8, 8)))
    recipe = art.extra["recipe"]
    assert recipe["route"] == "torchscript -> onnx -> tflite" and recipe["converter"].startswith("onnx2tf")
    assert recipe["torchscript_to_onnx"]["parity"]["max_abs_error"] < 1e-5
    assert recipe["float_parity"]["max_abs_error"] < 1e-4 and recipe["input_layout"]["permutation"] == [0, 2, 3, 1]
    # checked independently: the written file against the TorchScript module, NHWC in
    x = np.random.default_rng(1).normal(size=(1, 1, 8, 8)).astype(np.float32)
    want = torch.jit.load(str(tmp_path / "t.pt"))(torch.from_numpy(x)).detach().numpy()
    got = LiteRTRunner(api.load(tmp_path / "t.tflite")).predict(x.transpose(0, 2, 3, 1))
    assert np.abs(got - want).max() < 1e-4
