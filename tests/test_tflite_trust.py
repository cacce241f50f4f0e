"""TFLite files the quantizers and readers must not trust blindly, each built here from the kind of input that
broke: an old-schema float file, hybrid and weight-only files, a ``div_no_nan``, residual PyTorch nets
whose "int8" model kept float ADD/MEAN ops, and a file whose buffer points past its end.

Measured here (2 cores): the residual net's int8 model matches PyTorch to 0.6% of the logits' range;
building the TensorFlow models takes ~8 s (TensorFlow's import), each PyTorch conversion ~10 s.
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from click.testing import CliRunner

from workbench import api
from workbench.cli import main
from workbench.core.errors import ModelFormatError, RuntimeFailure
from workbench.frontends.tflite_reader import graph_float_ops, read_tflite, read_tflite_bytes

RNG = np.random.default_rng(0)
W_CONV = RNG.normal(0, 0.5, (3, 3, 1, 8)).astype(np.float32)
W_FC1 = RNG.normal(0, 0.1, (128, 64)).astype(np.float32)  # over 1024 weights: dynamic range quantizes it
W_FC2 = RNG.normal(0, 0.3, (64, 10)).astype(np.float32)
W_DIV = RNG.normal(0, 0.1, (64, 10)).astype(np.float32)


def _convert(fn, dynamic: bool = False) -> bytes:
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    if dynamic:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]  # no representative data: int8 weights, float activations
    with contextlib.redirect_stdout(io.StringIO()):
        return conv.convert()


@pytest.fixture(scope="module")
def tf_models(tmp_path_factory):
    """A small float CNN (conv, pool, two dense layers, softmax), its dynamic-range (hybrid) twin, and a
    model dividing by a ReLU's output with div_no_nan."""
    import tensorflow as tf

    spec = [tf.TensorSpec([1, 8, 8, 1], tf.float32)]

    @tf.function(input_signature=spec)
    def cnn(x):
        y = tf.nn.relu(tf.nn.conv2d(x, W_CONV, 1, "SAME"))
        y = tf.reshape(tf.nn.avg_pool2d(y, 2, 2, "VALID"), [1, 128])
        return tf.nn.softmax(tf.matmul(tf.nn.relu(tf.matmul(y, W_FC1)), W_FC2))

    @tf.function(input_signature=spec)
    def div(x):
        v = tf.reshape(x, [1, 64])
        return tf.math.divide_no_nan(tf.matmul(v, W_DIV), tf.nn.relu(tf.matmul(v, W_DIV) - 0.3))

    d = tmp_path_factory.mktemp("tf_models")
    out = {"float": d / "cnn.tflite", "hybrid": d / "cnn_hybrid.tflite", "div": d / "div.tflite"}
    out["float"].write_bytes(_convert(cnn))
    out["hybrid"].write_bytes(_convert(cnn, dynamic=True))
    out["div"].write_bytes(_convert(div))
    return out


def _old_schema(data: bytes) -> bytes:
    """The model as pre-2.4 converters wrote it: every op code only in deprecated_builtin_code, builtin_code 0."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    m = s.ModelT.InitFromObj(s.Model.GetRootAsModel(data, 0))
    for oc in m.operatorCodes:
        assert oc.builtinCode < 127
        oc.deprecatedBuiltinCode, oc.builtinCode = oc.builtinCode, 0
    b = flatbuffers.Builder(len(data))
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _litert(path, x: np.ndarray) -> np.ndarray:
    from workbench.runtimes import open_runner

    r = open_runner(path)
    try:
        return r.predict(x)
    finally:
        r.close()


def _digits(n: int = 64) -> np.ndarray:
    from workbench.data import open_data
    from workbench.data.dataset import fit_to_input

    d = open_data("digits:test", limit=n)
    return fit_to_input(d.x, (1, 8, 8, 1), "NHWC", d.name, "test")


# --- 10. float .tflite -> int8 with ai-edge-quantizer -------------------------------------------------------------

def test_old_schema_float_tflite_quantizes_to_an_int8_model_that_runs(tf_models, tmp_path):
    old = tmp_path / "old.tflite"
    old.write_bytes(_old_schema(tf_models["float"].read_bytes()))
    from ai_edge_litert import schema_py_generated as s

    m = s.Model.GetRootAsModel(old.read_bytes(), 0)
    assert {m.OperatorCodes(k).BuiltinCode() for k in range(m.OperatorCodesLength())} == {0}  # all "ADD" to a naive reader
    kinds = [op.kind for op in read_tflite(old).ops]
    assert kinds == [op.kind for op in read_tflite(tf_models["float"]).ops] and "ADD" not in kinds  # our reader normalises
    with pytest.warns(UserWarning, match="deprecated_builtin_code"):
        art = api.convert(old, "tflite", tmp_path / "old_int8.tflite", scheme="int8", calib="digits:train", calib_samples=100,
                          write_manifest=False)
    r = art.extra["recipe"]
    assert r["opcodes_normalised"] == len(set(kinds)) and r["checked_on_samples"] == 100
    q = read_tflite(art.path)
    assert "ADD" not in [op.kind for op in q.ops] and graph_float_ops(q) == []
    modern = api.convert(tf_models["float"], "tflite", tmp_path / "new_int8.tflite", scheme="int8", calib="digits:train",
                         calib_samples=100, write_manifest=False)
    x = _digits()
    cand = _litert(art.path, x)  # LiteRT runs it, and it is the model the current schema gives
    assert np.all(np.isfinite(cand)) and np.array_equal(cand, _litert(modern.path, x))
    assert np.max(np.abs(_litert(tf_models["float"], x) - cand)) < 0.15  # softmax outputs; measured 0.069


def test_hybrid_tflite_is_recognised_and_dequantized_before_int8(tf_models, tmp_path):
    hybrid = tf_models["hybrid"]
    r = CliRunner().invoke(main, ["inspect", str(hybrid)])
    assert r.exit_code == 0 and "hybrid: int8 weights, float activations" in r.output, r.output
    r = CliRunner().invoke(main, ["inspect", str(tf_models["float"])])
    assert "hybrid" not in r.output
    with pytest.warns(UserWarning, match="hybrid"):
        art = api.convert(hybrid, "tflite", tmp_path / "h8.tflite", scheme="int8", calib="digits:train", calib_samples=100)
    d = art.extra["recipe"]["dequantized"]
    assert d["tensors"] >= 1 and d["dtypes"] == ["int8"] and any("hybrid" in n for n in art.extra["recipe"]["notes"])
    q = read_tflite(art.path)
    assert graph_float_ops(q) == [] and json.loads(art.manifest_path.read_text())["float_ops"] == []
    assert all(op.kind not in ("DEQUANTIZE",) for op in q.ops)
    x = _digits()
    ref, cand = _litert(hybrid, x), _litert(art.path, x)
    assert np.max(np.abs(ref - cand)) < 0.15, np.max(np.abs(ref - cand))  # softmax outputs; measured 0.067
    # ai-edge-quantizer keeps quantized weights as they are "regardless of the selected recipe": without the
    # dequantization the hybrid's per-channel int8 weights would stay per-channel here, and int8 under weight-int4
    with pytest.warns(UserWarning, match="hybrid"):
        pt = api.convert(hybrid, "tflite", tmp_path / "h8t.tflite", scheme="int8", per_channel=False, calib="digits:train",
                         calib_samples=100, write_manifest=False)
        w4 = api.convert(hybrid, "tflite", tmp_path / "h4.tflite", scheme="weight-int4", write_manifest=False)
    assert {(t.dtype, len(t.scale)) for t in _weights(pt.path)} == {("int8", 1)}
    assert {t.dtype for t in _weights(w4.path)} == {"int4"}


def _weights(path) -> list:
    return [t for t in read_tflite(path).tensors if t.const and t.scale and len(t.shape or ()) > 1]


@pytest.mark.parametrize("scheme", ["weight-int8", "weight-int4", "fp16"])
def test_dequantized_weights_compute_what_the_weight_only_model_computes(tf_models, tmp_path, scheme):
    from workbench.export.tflite_prepare import prepare

    wq = api.convert(tf_models["float"], "tflite", tmp_path / "wq.tflite", scheme=scheme, write_manifest=False).path
    prep = prepare(wq.read_bytes(), "test")
    (tmp_path / "deq.tflite").write_bytes(prep.data)
    g = read_tflite(tmp_path / "deq.tflite")
    assert prep.dequantized["dequantize_ops_removed"] >= 2 and "DEQUANTIZE" not in [op.kind for op in g.ops]
    assert {t.dtype for t in g.tensors if t.const and len(t.shape or ()) > 1} == {"float32"}
    x = _digits(16)
    assert np.max(np.abs(_litert(wq, x) - _litert(tmp_path / "deq.tflite", x))) < 1e-5


def test_weight_only_tflite_loses_its_dequantize_ops_and_old_weights(tf_models, tmp_path):
    w8 = api.convert(tf_models["float"], "tflite", tmp_path / "w8.tflite", scheme="weight-int8", write_manifest=False).path
    assert "DEQUANTIZE" in [op.kind for op in read_tflite(w8).ops]
    assert "hybrid: int8 weights" in CliRunner().invoke(main, ["inspect", str(w8)]).output
    with pytest.warns(UserWarning, match="hybrid"):
        art = api.convert(w8, "tflite", tmp_path / "w8_int8.tflite", scheme="int8", calib="digits:train", calib_samples=100,
                          write_manifest=False)
    d = art.extra["recipe"]["dequantized"]
    assert d["dequantize_ops_removed"] == d["tensors"] >= 2
    direct = api.convert(tf_models["float"], "tflite", tmp_path / "f_int8.tflite", scheme="int8", calib="digits:train",
                         calib_samples=100, write_manifest=False)
    # the int8 weights it came with are gone, not carried beside their re-quantized copies
    assert art.path.stat().st_size <= direct.path.stat().st_size * 1.05, (art.path.stat().st_size, direct.path.stat().st_size)
    assert [op.kind for op in read_tflite(art.path).ops] == [op.kind for op in read_tflite(direct.path).ops]


def test_div_no_nan_divisor_that_quantizes_to_zero_stays_float(tf_models, tmp_path):
    with pytest.warns(UserWarning, match="DIV .* kept in float"):
        art = api.convert(tf_models["div"], "tflite", tmp_path / "div8.tflite", scheme="int8", calib="digits:train",
                          calib_samples=100)
    kept = art.extra["recipe"]["kept_float_automatically"]
    assert [k["op"] for k in kept] == ["DIV"] and kept[0]["min"] <= 0.0
    q = read_tflite(art.path)
    div = [op for op in q.ops if op.kind == "DIV"]
    assert len(div) == 1 and q.op_dtype(div[0]) == "float32"
    assert [f["op"] for f in json.loads(art.manifest_path.read_text())["float_ops"]] == ["DIV"]
    x = _digits(200)
    ref, cand = _litert(tf_models["div"], x), _litert(art.path, x)  # ordinary inputs, beyond the calibration set
    assert np.all(np.isfinite(cand)) and np.all(np.isfinite(ref))


def test_a_written_model_that_fails_in_litert_names_the_op_and_keep_float(tf_models, tmp_path, monkeypatch):
    """Without the DIV scan, ai-edge-quantizer writes an int8 DIV that divides by its zero point: the check run
    on the calibration samples catches it, names the op and the --keep-float that avoids it, and leaves no file."""
    from workbench.export import tflite_quant

    monkeypatch.setattr(tflite_quant, "_risky_divisions", lambda data, calib, cfg: [])
    out = tmp_path / "div8.tflite"
    with pytest.raises(RuntimeFailure) as e:
        api.convert(tf_models["div"], "tflite", out, scheme="int8", calib="digits:train", calib_samples=100)
    assert "(DIV" in e.value.message and "calibration samples" in e.value.message
    assert "--keep-float" in e.value.hint and "div_no_nan" in e.value.hint
    assert not out.exists() and list(tmp_path.iterdir()) == []
    rx = e.value.hint.split("--keep-float '", 1)[1].split("'")[0]
    monkeypatch.undo()
    art = api.convert(tf_models["div"], "tflite", tmp_path / "ok.tflite", scheme="int8", calib="digits:train",
                      calib_samples=100, keep_float=(rx,))  # the advice works
    assert [f["op"] for f in art.float_ops()] == ["DIV"]


# --- 11. PyTorch -> int8 TFLite leaves no residual ADD / MEAN in float ----------------------------------------------

def _residual_net(float_op: bool = False):
    import torch
    from torch import nn

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            z = self.bn2(self.conv2(y))
            if float_op:
                z = torch.sin(z)  # nothing in PT2E annotates SIN: it stays float, deliberately
            z = torch.relu(z + y)  # the residual ADD
            return self.fc(z.mean(dim=(2, 3)))  # global average pooling: MEAN

    torch.manual_seed(0)
    net = Residual()
    for bn in (net.bn1, net.bn2):  # batch norm statistics as a trained net has them
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _pt2(net, path):
    import torch

    torch.export.save(torch.export.export(net, (torch.zeros(1, 1, 8, 8),)), path)
    return path


def test_residual_torch_net_converts_to_int8_without_float_add_or_mean(tmp_path):
    src = _pt2(_residual_net(), tmp_path / "res.pt2")
    art = api.convert(src, "tflite", tmp_path / "res8.tflite", scheme="int8", calib="digits:train", calib_samples=100)
    g = read_tflite(art.path)
    kinds = [op.kind for op in g.ops]
    assert "ADD" in kinds and "MEAN" in kinds
    assert graph_float_ops(g) == [] and "DEQUANTIZE" not in kinds, [(op.kind, g.op_dtype(op)) for op in g.ops]
    r = art.extra["recipe"]
    assert r["float_ops"] == [] and json.loads(art.manifest_path.read_text())["float_ops"] == []
    a = r["agreement_with_float"]
    assert a["max_abs_error"] < 0.05 * a["reference_max_abs"], a  # measured 0.6%


def test_an_op_left_float_is_listed_in_output_manifest_and_emulate_report(tmp_path):
    src = _pt2(_residual_net(float_op=True), tmp_path / "sin.pt2")
    out = tmp_path / "sin8.tflite"
    r = CliRunner().invoke(main, ["quantize", str(src), "--scheme", "int8", "--calib", "digits:train", "--calib-samples", "100",
                                  "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert [(f["op"], f["count"]) for f in d["float_ops"]] == [("SIN", 1)], d["float_ops"]
    assert any("SIN x1" in w for w in d["warnings"]), d["warnings"]
    assert json.loads(out.with_name(out.name + ".json").read_text())["float_ops"] == d["float_ops"]
    assert "ADD" not in [f["op"] for f in d["float_ops"]]
    for target in ("stm32l4r5", "raspberry-pi-4"):
        r = CliRunner().invoke(main, ["emulate", str(out), "--target", target, "--no-firmware"])
        assert "1 op(s) of this quantized model compute in float: SIN x1" in r.output, r.output
        r = CliRunner().invoke(main, ["emulate", str(out), "--target", target, "--no-firmware", "--json"])
        assert [f["op"] for f in json.loads(r.stdout)["float_ops"]] == ["SIN"]


def test_litert_torch_still_needs_the_add_and_mean_annotations():
    """litert-torch 0.10 finds ADD and MEAN through source_fn_stack metadata, which torch 2.13's torch.export no
    longer records. When its own quantizer annotates them again, annotate_by_target in torch_tflite.py can go."""
    import torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config

    gm = torch.export.export(_residual_net(), (torch.zeros(1, 1, 8, 8),)).module()
    PT2EQuantizer().set_global(get_symmetric_quantization_config()).annotate(gm)
    add = next(n for n in gm.graph.nodes if n.target == torch.ops.aten.add.Tensor)
    if "quantization_annotation" in add.meta:
        pytest.fail("litert-torch annotates residual ADDs itself again: annotate_by_target can be removed.")


# --- 15. buffer offsets outside the file ----------------------------------------------------------------------------

def _external_buffer(data: bytes, beyond: int = 0) -> tuple[bytes, int]:
    """The largest buffer moved after the flatbuffer (``offset``/``size``, as models over 2 GB store data), its
    offset pushed ``beyond`` bytes further. Returns the file and the buffer's index."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    m = s.ModelT.InitFromObj(s.Model.GetRootAsModel(data, 0))
    b = max(range(len(m.buffers)), key=lambda i: 0 if m.buffers[i].data is None else len(m.buffers[i].data))
    payload = np.asarray(m.buffers[b].data, np.uint8).tobytes()
    m.buffers[b].data, m.buffers[b].offset, m.buffers[b].size = None, 1 << 40, len(payload)

    def pack() -> bytes:
        fb = flatbuffers.Builder(len(data))
        fb.Finish(m.Pack(fb), file_identifier=b"TFL3")
        return bytes(fb.Output())

    n = len(pack())
    start = (n + 15) // 16 * 16
    m.buffers[b].offset = start + beyond
    head = pack()
    assert len(head) == n
    return head + b"\0" * (start - n) + payload, b


def test_buffer_offset_beyond_the_file_is_refused_everywhere(tf_models, tmp_path):
    data = tf_models["float"].read_bytes()
    good, _ = _external_buffer(data)
    (tmp_path / "good.tflite").write_bytes(good)
    x = _digits(8)  # the valid external-buffer file reads and runs as the original does
    assert read_tflite(tmp_path / "good.tflite").parameters == read_tflite(tf_models["float"]).parameters
    assert np.array_equal(_litert(tmp_path / "good.tflite", x), _litert(tf_models["float"], x))

    bad, b = _external_buffer(data, beyond=1 << 20)
    path = tmp_path / "bad.tflite"
    path.write_bytes(bad)
    with pytest.raises(ModelFormatError) as e:
        read_tflite_bytes(bad, str(path))
    assert f"buffer {b} " in e.value.message and f"{len(bad):,} bytes" in e.value.message
    for args in (["inspect", str(path)], ["emulate", str(path), "--target", "stm32l4r5", "--no-firmware", "--eval", "digits:test"]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2, (args, r.output)
        assert f"buffer {b} " in r.output and f"{len(bad):,} bytes" in r.output and "Traceback" not in r.output
