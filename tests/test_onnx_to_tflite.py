"""ONNX -> TFLite through onnx2tf's TensorFlow-free backend, then ai-edge-quantizer (workbench/export/onnx_tflite.py).

The ONNX files are the digits and Fashion-MNIST reference models exported by torch's TorchScript-based
exporter (about a second each); every comparison runs the .onnx in ONNX Runtime (NCHW inputs) and the
.tflite in LiteRT (the same inputs transposed to NHWC) on held-out test data.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from workbench import api

pytest.importorskip("onnx2tf", reason="onnx2tf is not installed (make venv installs requirements-onnx2tf.txt)")

MODELS = Path(__file__).resolve().parents[1] / "models"


def _torch_to_onnx(name: str, shape: tuple, out: Path) -> Path:
    import torch

    from workbench.frontends import load

    model = load(MODELS / f"{name}_torch.pt", factory=f"workbench.builtin.models.reference:{name}_torch").obj.eval()
    torch.onnx.export(model, (torch.zeros(*shape),), str(out), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["output"])
    return out


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx_tflite")
    return {"digits": _torch_to_onnx("digits", (1, 1, 8, 8), d / "digits.onnx"),
            "fashion": _torch_to_onnx("fashion", (1, 1, 28, 28), d / "fashion.onnx")}


def _held_out(name: str, n: int):
    from workbench.data import open_data

    data = open_data({"digits": "digits:test", "fashion": "fashion-mnist:test"}[name])
    data = data.take(n, seed=0) if len(data) > n else data
    x = np.asarray(data.x, dtype=np.float32)
    x = x[:, None] if x.ndim == 3 else (np.transpose(x, (0, 3, 1, 2)) if x.shape[-1] == 1 else x)  # NCHW for ONNX
    return x, np.asarray(data.y)


def _ort_and_litert(onnx_path: Path, tflite: Path, x: np.ndarray):
    from workbench.runtimes import open_runner

    ort, lite = open_runner(onnx_path), open_runner(tflite)
    try:
        return ort.predict(x), lite.predict(np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1))))
    finally:
        ort.close()
        lite.close()


@pytest.mark.parametrize("name", ["digits"])  # fashion's float step is asserted inside its int8 test
def test_float_tflite_matches_onnxruntime_in_nhwc(onnx_models, tmp_path, name):
    art = api.convert(onnx_models[name], "tflite", tmp_path / f"{name}.tflite")
    recipe = art.extra["recipe"]
    assert recipe["input_layout"] == {"onnx": "NCHW", "tflite": "NHWC", "permutation": [0, 2, 3, 1], "transposed": True}
    assert recipe["float_parity"]["max_abs_error"] < 1e-4  # measured 5.7e-6 on 16 random inputs
    h = api.load(art.path)
    side = 8 if name == "digits" else 28
    assert h.inputs[0].shape == (1, side, side, 1) and h.inputs[0].layout == "NHWC"  # the signature says the layout
    x, _ = _held_out(name, 300)
    ref, cand = _ort_and_litert(onnx_models[name], art.path, x)
    assert float(np.max(np.abs(ref - cand))) < 1e-4, float(np.max(np.abs(ref - cand)))  # measured 9.5e-6
    assert np.mean(ref.argmax(1) == cand.argmax(1)) == 1.0
    manifest = json.loads(art.manifest_path.read_text())
    assert manifest["recipe"]["onnx2tf"] == recipe["onnx2tf"] and manifest["recipe"]["input_layout"]["tflite"] == "NHWC"


@pytest.mark.parametrize("name, calib", [("digits", "digits:train"), ("fashion", "fashion-mnist:train")])
def test_int8_tflite_agrees_with_onnxruntime_on_held_out_data(onnx_models, tmp_path, name, calib):
    art = api.convert(onnx_models[name], "tflite", tmp_path / f"{name}_int8.tflite", scheme="int8", calib=calib,
                      calib_samples=200)
    h = api.load(art.path)
    assert h.inputs[0].dtype == "int8" and h.inputs[0].layout == "NHWC"
    assert not [f for f in art.float_ops() if f["op"] not in ("QUANTIZE", "DEQUANTIZE")]
    x, y = _held_out(name, 500)
    ref, cand = _ort_and_litert(onnx_models[name], art.path, x)
    agree = float(np.mean(ref.argmax(1) == cand.argmax(1)))
    drop = float(np.mean(ref.argmax(1) == y) - np.mean(cand.argmax(1) == y))
    # measured: digits (all 449 test samples) agreement 1.0, drop 0.0 pp; fashion (500) agreement 0.996, drop 0.0 pp
    assert agree >= 0.98 and drop <= 0.015, (agree, drop)
    recipe = art.extra["recipe"]
    assert recipe["float_parity"]["max_abs_error"] < 1e-4  # the float step first: digits 5.7e-6, fashion 2.9e-6
    assert recipe["agreement_with_onnxruntime"]["argmax_agreement"] >= 0.9


def _onnx_with(op_node, inputs, outputs, path: Path) -> Path:
    import onnx
    from onnx import helper

    graph = helper.make_graph([op_node], "g", inputs, outputs)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_an_op_onnx2tf_cannot_lower_is_refused_by_name(tmp_path):
    from click.testing import CliRunner
    from onnx import TensorProto, helper

    from workbench.cli import main

    node = helper.make_node("TfIdfVectorizer", ["ids"], ["counts"], name="bag_of_words", mode="TF", min_gram_length=1,
                            max_gram_length=1, max_skip_count=0, ngram_counts=[0], ngram_indexes=[0, 1], pool_int64s=[2, 3])
    src = _onnx_with(node, [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 6])],
                     [helper.make_tensor_value_info("counts", TensorProto.FLOAT, [1, 2])], tmp_path / "tfidf.onnx")
    before = src.read_bytes()
    out = tmp_path / "tfidf.tflite"
    r = CliRunner().invoke(main, ["export", str(src), "--format", "tflite", "-o", str(out)])
    assert r.exit_code == 2, r.output
    assert "TfIdfVectorizer" in r.output and "bag_of_words" in r.output and "Traceback" not in r.output
    assert not out.exists() and not Path(str(out) + ".json").exists()
    assert src.read_bytes() == before  # onnx2tf rewrites its input in place: it only ever sees a copy


def test_json_stdout_stays_clean_and_cwd_untouched(onnx_models, tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = tmp_path / "d.tflite"
    exe = Path(sys.executable).parent / "workbench"
    r = subprocess.run([str(exe), "export", str(onnx_models["digits"]), "--format", "tflite", "-o", str(out), "--json"],
                       cwd=str(cwd), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout)  # one JSON document and nothing else
    assert doc["artifact"]["format"] == "tflite" and doc["recipe"]["input_layout"]["tflite"] == "NHWC"
    assert list(cwd.iterdir()) == []  # onnx2tf writes schema files and reports beside its output: not here
    assert "flatbuffer_direct" not in r.stderr  # its progress bars stay in the child


def test_an_nhwc_onnx_input_is_kept_as_it_is(tmp_path):
    """An ONNX whose input is NHWC already (as Keras models export): onnx2tf would read it as NCHW and write an
    N,H,C,W input behind a TRANSPOSE; the converter keeps it, and parity runs without a transpose."""
    import torch

    from workbench.frontends import load

    net = load(MODELS / "digits_torch.pt", factory="workbench.builtin.models.reference:digits_torch").obj.eval()

    class ChannelLast(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x.permute(0, 3, 1, 2))

    src = tmp_path / "nhwc.onnx"
    torch.onnx.export(ChannelLast(), (torch.zeros(1, 8, 8, 1),), str(src), dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["logits"])
    art = api.convert(src, "tflite", tmp_path / "nhwc.tflite")
    recipe = art.extra["recipe"]
    assert recipe["input_layout"] == {"onnx": "NHWC", "tflite": "NHWC", "permutation": [0, 1, 2, 3], "transposed": False}
    assert api.load(art.path).inputs[0].shape == (1, 8, 8, 1)
    assert recipe["float_parity"]["max_abs_error"] < 1e-4
    assert api.load(art.path).meta["graph"].ops[0].kind != "TRANSPOSE"  # the input goes straight into the first conv


def test_without_onnx2tf_the_export_says_how_to_install_it(onnx_models, tmp_path, monkeypatch):
    from workbench.core.errors import MissingDependencyError
    from workbench.export import onnx_tflite

    monkeypatch.setattr(onnx_tflite, "onnx2tf_version", lambda: None)
    with pytest.raises(MissingDependencyError) as e:
        api.convert(onnx_models["digits"], "tflite", tmp_path / "x.tflite")
    assert e.value.exit_code == 3 and "requirements-onnx2tf.txt" in str(e.value)
    assert not (tmp_path / "x.tflite").exists()


def test_onnx_to_tflite_micro_sources_through_int8(onnx_models, tmp_path):
    from click.testing import CliRunner

    from workbench.cli import main

    out = tmp_path / "tflm"
    r = CliRunner().invoke(main, ["export", str(onnx_models["digits"]), "--format", "tflm", "--calib", "digits:train",
                                  "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["source"]["path"] == "digits.onnx"  # the user's model, not the temporary int8 .tflite
    assert (out / "digits_model_data.cc").is_file() and (out / "manifest.json").is_file()
