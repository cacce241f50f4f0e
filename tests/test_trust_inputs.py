"""Inputs that used to end as "Internal error": ONNX external data that is short, missing or outside
the model's folder is refused by every command, naming the tensor and the file."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from workbench.cli import main


def _external_model(folder, location="m.onnx.data"):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).random((64, 64), dtype=np.float32), "W")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "m.onnx"
    onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=location,
                    size_threshold=0)
    return path


OURS = "tensor 'W' needs bytes 0-16,384 of 'm.onnx.data', which has 1,000 bytes"


@pytest.mark.parametrize("command,needle", [
    (["inspect"], OURS), (["quantize", "--format", "onnx", "--scheme", "dynamic", "-o", "{out}"], OURS),
    (["profile"], "External initializer: W offset: 0 size to read: 16384 given file_length: 1000"),  # the board's ORT says it
])
def test_short_onnx_external_data_is_bad_input(tmp_path, command, needle):
    model = _external_model(tmp_path)
    ok = CliRunner().invoke(main, ["inspect", str(model)])
    assert ok.exit_code == 0, ok.output
    data = tmp_path / "m.onnx.data"
    data.write_bytes(data.read_bytes()[:1000])
    args = [a.format(out=tmp_path / "q.onnx") for a in command]
    res = CliRunner().invoke(main, [args[0], str(model), *args[1:]])
    assert res.exit_code == 2, res.output
    assert needle in res.stderr
    assert not (tmp_path / "q.onnx").exists()


def test_missing_onnx_external_data_is_named(tmp_path):
    model = _external_model(tmp_path)
    (tmp_path / "m.onnx.data").unlink()
    res = CliRunner().invoke(main, ["inspect", str(model)])
    assert res.exit_code == 2 and "'m.onnx.data', which does not exist beside the model" in res.stderr, res.output


def test_onnx_external_data_outside_the_model_folder_is_refused(tmp_path):
    inner = tmp_path / "inner"
    inner.mkdir()
    model = _external_model(tmp_path, location="m.onnx.data")
    (inner / "m.onnx").write_bytes(model.read_bytes().replace(b"m.onnx.data", b"../m.onnx.d"))
    (tmp_path / "m.onnx.d").write_bytes((tmp_path / "m.onnx.data").read_bytes()[:-1])
    res = CliRunner().invoke(main, ["inspect", str(inner / "m.onnx")])
    assert res.exit_code == 2 and "outside the model's folder" in res.stderr, res.output


def test_keras_tflite_exports_are_run_before_they_are_written(tmp_path, digits_keras_path, digits_tflite_int8, monkeypatch):
    import json

    from workbench.export import keras_tflite

    out = tmp_path / "f.tflite"
    res = CliRunner().invoke(main, ["export", str(digits_keras_path), "--format", "tflite", "-o", str(out)])
    assert res.exit_code == 0, res.output
    check = json.loads((tmp_path / "f.tflite.json").read_text())["recipe"]["check"]
    assert check["samples"] == 16 and check["max_abs_error"] < check["tolerance"] and check["argmax_agreement"] == 1.0
    real = keras_tflite.convert_bytes  # a converter that writes another computation (an int8 file for a float export)
    monkeypatch.setattr(keras_tflite, "convert_bytes", lambda job: (digits_tflite_int8.read_bytes(), real(job)[1]))
    res = CliRunner().invoke(main, ["export", str(digits_keras_path), "--format", "tflite", "-o", str(tmp_path / "g.tflite")])
    assert res.exit_code == 1, res.output
    assert "does not match its source" in res.stderr and not (tmp_path / "g.tflite").exists()


def test_long_steps_say_how_far_they_are_and_short_ones_stay_quiet(caplog):
    import logging
    import time

    from workbench.core.progress import stage

    with caplog.at_level(logging.INFO, logger="workbench.progress"):
        with stage("quick", after=5):
            pass
        assert caplog.messages == []
        with stage("slow step", after=0.05, every=0.1):
            time.sleep(0.45)
    assert caplog.messages[0] == "slow step ..." and caplog.messages[-1].startswith("slow step: done in")
    assert sum("so far" in m for m in caplog.messages) >= 2


def test_a_pytorch_conversion_shows_progress_on_stderr(tmp_path, digits_torch_path, monkeypatch):
    import functools

    import workbench.core.progress as progress

    # a conversion in a warm process can end within the default 2 s of silence: say everything here
    monkeypatch.setattr(progress, "stage", functools.partial(progress.stage, after=0))
    res = CliRunner().invoke(main, ["export", str(digits_torch_path), "--factory", "workbench.builtin.models.reference:digits_torch",
                                    "--format", "tflite", "--json", "-o", str(tmp_path / "m.tflite")])
    assert res.exit_code == 0, res.output
    assert "Converting 'digits_torch.pt' (torch -> tflite, float) ..." in res.stderr
    assert "done in" in res.stderr
    import json

    assert json.loads(res.stdout)["artifact"]["format"] == "tflite"  # stdout stays one JSON document
