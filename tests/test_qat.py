"""Quantization-aware training: PyTorch (PT2E through litert-torch) and Keras 3 (tfmot via the
bridge), float vs PTQ vs QAT in their real runtimes, layers QAT cannot wrap, and the PT2E adapter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from workbench.cli import main
from workbench.optimize.config import QATConfig, TrainConfig

FACTORY = "workbench.builtin.models.reference:digits_torch"


def run(args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _pattern(x, w):
    import torch

    return torch.nn.functional.linear(x, w)


def test_pt2e_pattern_adapter_is_still_needed():
    """torchao 0.18 hands plain pattern functions to torch.export, which torch 2.13 refuses.
    When this test fails because no error is raised, the upstream fix has landed: delete
    ``pattern_functions_as_modules`` from workbench/optimize/qat_torch.py and its uses."""
    import torch
    from torchao.quantization.pt2e.utils import _get_aten_graph_module_for_pattern

    from workbench.optimize.qat_torch import pattern_functions_as_modules

    args = (torch.randn(2, 4), torch.randn(3, 4))
    try:
        _get_aten_graph_module_for_pattern(_pattern, args)
    except ValueError as exc:
        assert "Expected `mod` to be an instance of `torch.nn.Module`" in str(exc)
    else:
        pytest.fail("torch.export accepts pattern functions again: the adapter in qat_torch.py can be removed.")
    with pattern_functions_as_modules():
        import torchao.quantization.pt2e.utils as u

        gm = u._get_aten_graph_module_for_pattern(_pattern, args)
    assert any("linear" in str(n.target) for n in gm.graph.nodes)
    assert u._get_aten_graph_module_for_pattern is _get_aten_graph_module_for_pattern  # restored afterwards


def test_torch_qat_cli_with_onnx(tmp_path, digits_torch_path):
    out = tmp_path / "qat.tflite"
    r = run(["qat", digits_torch_path, "--factory", FACTORY, "--train", "digits:train", "--val", "digits:test",
             "--epochs", "1", "--train-samples", "320", "--onnx", "--json", "-o", out])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["float"]["runtime"] == "torch" and d["ptq"]["runtime"] == d["qat"]["runtime"] == "litert"
    assert d["qat"]["accuracy"] >= d["float"]["accuracy"] - 0.02
    assert d["qat"]["accuracy"] >= d["ptq"]["accuracy"] - 0.02
    assert d["qat"]["float_ops"] == []  # every operator of the digits CNN runs in int8
    from workbench.frontends import load

    h = load(out)
    assert h.inputs[0].dtype == "int8" and h.inputs[0].shape == (1, 8, 8, 1)
    onnx = Path(d["onnx"]["path"])
    assert onnx.exists() and d["onnx"]["accuracy"] >= d["qat"]["accuracy"] - 0.02
    import onnx as onnx_lib

    weights = [i for i in onnx_lib.load(str(onnx)).graph.initializer if len(i.dims) >= 2]
    assert weights and all(i.data_type == onnx_lib.TensorProto.INT8 for i in weights)
    assert Path(str(out) + ".json").exists() and Path(str(onnx) + ".json").exists()  # manifests
    assert not (tmp_path / "qat.tflite.ckpt").exists()


def test_keras3_qat_through_the_bridge(tmp_path, digits_keras_path):
    from workbench.optimize.qat import qat

    out = tmp_path / "qat.tflite"
    d = qat(digits_keras_path, out, QATConfig(train=TrainConfig(epochs=1, lr=1e-4, train_samples=512)),
            "digits:train", "digits:test").to_dict()
    assert d["route"].startswith("Keras 3 -> tf_keras (bridge) -> tfmot")
    assert d["float"]["runtime"] == "keras"
    assert d["qat"]["accuracy"] >= d["float"]["accuracy"] - 0.02
    assert d["qat"]["float_ops"] == [] and d["qat"]["unwrapped_layers"] == []
    from workbench.frontends import load

    assert load(out).inputs[0].dtype == "int8"


@pytest.fixture(scope="module")
def layernorm_model(tmp_path_factory) -> Path:
    import keras

    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inp)
    x = keras.layers.LayerNormalization(name="ln")(x)
    out = keras.layers.Dense(10, name="fc")(keras.layers.Flatten()(x))
    path = tmp_path_factory.mktemp("ln") / "ln.keras"
    keras.Model(inp, out).save(str(path))
    return path


def test_layer_qat_cannot_wrap_stays_float_and_is_named(tmp_path, layernorm_model):
    r = run(["qat", layernorm_model, "--train", "digits:train", "--epochs", "1", "--train-samples", "128",
             "-o", tmp_path / "ln.tflite"])
    assert r.exit_code == 0, r.output
    assert "left in float (QAT cannot wrap them): ln" in r.output
    assert "MEAN" in r.output  # the float operators are read from the .tflite itself


def test_strict_refuses_a_layer_qat_cannot_wrap(tmp_path, layernorm_model):
    r = run(["qat", layernorm_model, "--train", "digits:train", "--epochs", "1", "--strict", "-o", tmp_path / "ln.tflite"])
    assert r.exit_code == 2
    assert "'ln' (LayerNormalization)" in r.output
    assert not (tmp_path / "ln.tflite").exists()


def test_qat_output_must_be_tflite(tmp_path, digits_keras_path):
    r = run(["qat", digits_keras_path, "--train", "digits:train", "-o", tmp_path / "q.keras"])
    assert r.exit_code == 2 and ".tflite" in r.output


def test_qat_refuses_unlabelled_data(tmp_path, digits_keras_path):
    data = tmp_path / "x.npy"
    np.save(data, np.zeros((20, 8, 8, 1), dtype=np.float32))
    r = run(["qat", digits_keras_path, "--train", data, "-o", tmp_path / "q.tflite"])
    assert r.exit_code == 2 and "no labels" in r.output


def test_onnx_is_refused_for_keras(tmp_path, digits_keras_path):
    r = run(["qat", digits_keras_path, "--train", "digits:train", "--epochs", "1", "--train-samples", "64", "--onnx",
             "-o", tmp_path / "q.tflite"])
    assert r.exit_code == 2 and "PyTorch" in r.output


class _FlattenByBatch:
    """A digits CNN whose flatten reads the batch size, so exporting at batch 1 bakes ``reshape(1, -1)`` into the graph."""

    @staticmethod
    def build():
        import torch

        from workbench.builtin.models.reference import digits_torch

        class Net(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, x):
                m = self.inner
                x = torch.relu(m.conv2(torch.relu(m.conv1(x))))
                return m.fc(x.reshape(x.size(0), -1))

        return Net(digits_torch())


def _save_batch1_program(model, path: Path) -> Path:
    import torch

    model.eval()
    torch.export.save(torch.export.export(model, (torch.zeros(1, 1, 8, 8),)), str(path))
    return path


def test_qat_from_a_batch1_exported_program(tmp_path, digits_torch_path):
    """A .pt2 saved at batch 1 guards x.size()[0] == 1; QAT trains the module inside it with a dynamic batch."""
    import torch

    from workbench.builtin.models.reference import digits_torch

    model = digits_torch()
    model.load_state_dict(torch.load(str(digits_torch_path), weights_only=True))
    pt2 = _save_batch1_program(model, tmp_path / "digits_b1.pt2")
    out = tmp_path / "qat.tflite"
    r = run(["qat", pt2, "--train", "digits:train", "--val", "digits:test", "--epochs", "1", "--json", "-o", out])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)  # progress lines go to stderr
    assert d["route"].startswith("ExportedProgram.module()") and d["train_batch"] == "dynamic"
    assert d["qat"]["runtime"] == "litert" and d["qat"]["float_ops"] == []
    assert d["qat"]["accuracy"] >= d["float"]["accuracy"] - 0.01  # int8 within 1 pp of float on digits:test
    from workbench.frontends import load

    assert load(out).inputs[0].dtype == "int8"


def test_qat_from_a_program_with_its_batch_baked_in(tmp_path):
    """reshape(1, -1) in the graph: no other batch size fits, so each batch is fed one sample at a time."""
    pt2 = _save_batch1_program(_FlattenByBatch.build(), tmp_path / "baked.pt2")
    r = run(["qat", pt2, "--train", "digits:train", "--epochs", "1", "--train-samples", "96", "--batch-size", "16",
             "--lr", "0.003", "--json", "-o", tmp_path / "baked.tflite"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)  # progress lines go to stderr
    assert d["train_batch"].startswith("fixed at 1")
    assert d["training"]["steps"] == 6 and d["qat"]["accuracy"] is not None
