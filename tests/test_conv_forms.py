"""A one-channel-input convolution has two forms (CONV_2D, DEPTHWISE_CONV_2D); `--tune` keeps the one the
target's firmware runs faster, measured, and the result is bit-identical to the given model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from workbench.cli import main
from workbench.core.errors import ConfigError, ToolFailure
from workbench.emulate.firmware import firmware_support
from workbench.emulate.tune import tune_conv_forms
from workbench.export.conv_forms import candidates, flip


def _litert(data: bytes, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=data)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"]).copy()


def _filter(data: bytes, op: int):
    from ai_edge_litert import schema_py_generated as s

    m = s.ModelT.InitFromObj(s.Model.GetRootAsModel(data, 0))
    sg = m.subgraphs[0]
    w = sg.tensors[sg.operators[op].inputs[1]]
    code = m.operatorCodes[sg.operators[op].opcodeIndex].builtinCode
    raw = np.frombuffer(bytes(bytearray(m.buffers[w.buffer].data)), np.int8).reshape(list(w.shape))
    return code, raw, w.quantization.quantizedDimension, list(w.quantization.scale)


@pytest.fixture(scope="module")
def two_branch(tmp_path_factory, digits_test) -> Path:
    """int8 model with two one-channel-input convolutions (8 and 16 filters) and one that is not (8 channels in)."""
    import keras

    from workbench.api import convert

    L = keras.layers
    inp = keras.Input((8, 8, 1))
    a = L.Conv2D(8, 3, padding="same", activation="relu")(inp)
    b = L.Conv2D(16, 3, padding="same", activation="relu")(inp)
    c = L.Conv2D(4, 3, padding="same")(a)
    out = L.Dense(10)(L.Flatten()(L.Concatenate()([b, c])))
    model = keras.Model(inp, out)
    d = tmp_path_factory.mktemp("forms")
    model.save(d / "two.keras")
    x = np.asarray(digits_test.x[:128], dtype="float32").reshape(-1, 8, 8, 1)
    np.save(d / "calib.npy", x)
    convert(d / "two.keras", "tflite", d / "two.tflite", scheme="int8", calib=str(d / "calib.npy"))
    return d / "two.tflite"


def test_only_one_channel_convolutions_have_two_forms(two_branch):
    found = candidates(two_branch.read_bytes())
    assert sorted(c.filters for c in found) == [8, 16] and {c.form for c in found} == {"CONV_2D"}
    with pytest.raises(ValueError, match="only one form"):
        others = set(range(6)) - {c.op for c in found}
        flip(two_branch.read_bytes(), [min(others)])


def test_the_other_form_computes_the_same_bytes(digits_tflite_int8, rng):
    data = digits_tflite_int8.read_bytes()
    (c,) = candidates(data)
    other = flip(data, [c.op])
    code, w, dim, scales = _filter(other, c.op)
    code0, w0, dim0, scales0 = _filter(data, c.op)
    assert (code0, dim0, w0.shape) == (3, 0, (8, 3, 3, 1)) and (code, dim, w.shape) == (4, 3, (1, 3, 3, 8))
    assert scales == scales0 and np.array_equal(w[0, :, :, 5], w0[5, :, :, 0])  # filter 5 moved, not changed
    for _ in range(16):
        x = rng.integers(-128, 128, size=(1, 8, 8, 1), dtype=np.int8)
        assert _litert(data, x).tobytes() == _litert(other, x).tobytes()
    back = flip(other, [c.op])  # and back: the original layout and quantized dimension
    code2, w2, dim2, _ = _filter(back, c.op)
    assert code2 == 3 and dim2 == 0 and np.array_equal(w2, w0)
    assert [c2.form for c2 in candidates(back)] == ["CONV_2D"]


def _fake_firmware(costs: dict, calls: list):
    """An emulate stand-in: each two-form op costs costs[(op, form)] cycles; the other ops 1,000."""

    def emulate(path, target):
        forms = {c.op: c.form for c in candidates(Path(path).read_bytes())}
        calls.append(dict(forms))
        per_op = [{"index": i, "depth": 0, "op": forms.get(i, "X"), "instructions": costs.get((i, forms.get(i)), 1000)}
                  for i in range(6)]
        timing = [{"index": o["index"], "depth": 0, "cycles_board": 2 * o["instructions"]} for o in per_op]
        total = sum(o["instructions"] for o in per_op)
        return {"firmware": {"instructions": total, "per_op": per_op, "latency_ms": total / 1e5,
                             "timing": {"per_op": timing, "cycles_board": 2 * total}}}

    return emulate


def test_each_op_keeps_the_form_measured_faster(two_branch):
    found = {c.filters: c.op for c in candidates(two_branch.read_bytes())}
    o8, o16 = found[8], found[16]
    costs = {(o8, "CONV_2D"): 900, (o8, "DEPTHWISE_CONV_2D"): 500, (o16, "CONV_2D"): 700, (o16, "DEPTHWISE_CONV_2D"): 1200}
    calls = []
    r = tune_conv_forms(two_branch, "stm32l4r5", emulate=_fake_firmware(costs, calls))
    kept = {o["filters"]: o["kept"] for o in r.ops}
    assert kept == {8: "DEPTHWISE_CONV_2D", 16: "CONV_2D"} and r.changed
    # given, all flipped, then the mixed choice measured on its own: the number reported is a measurement
    assert len(calls) == 3 and calls[2] == {o8: "DEPTHWISE_CONV_2D", o16: "CONV_2D"}
    assert r.tuned["instructions"] == r.given["instructions"] - 400
    assert {c.op: c.form for c in candidates(r.data)} == calls[2]
    assert r.check["bit_identical"] and r.check["runtimes"] == ["litert", "tflm"]


def test_nothing_changes_when_the_given_forms_are_faster(two_branch):
    calls = []
    costs = {(i, "DEPTHWISE_CONV_2D"): 5000 for i in range(6)}
    r = tune_conv_forms(two_branch, "stm32l4r5", emulate=_fake_firmware(costs, calls))
    assert not r.changed and r.data == two_branch.read_bytes() and r.tuned == r.given and len(calls) == 2


def test_a_firmware_that_did_not_run_is_a_tool_failure_not_a_choice(two_branch):
    def broken(path, target):
        return {"firmware": None, "tool_failure": {"message": "link error in arm-none-eabi-ld"}}

    with pytest.raises(ToolFailure, match="link error"):
        tune_conv_forms(two_branch, "stm32l4r5", emulate=broken)


@pytest.mark.parametrize("target, why", [("raspberry-pi-4", "linux target"), ("ethos-u55-128", "NPU board")])
def test_targets_without_a_cortex_m_firmware_are_refused(digits_tflite_int8, target, why):
    with pytest.raises(ConfigError, match=why):
        tune_conv_forms(digits_tflite_int8, target)


def test_cli_refuses_tune_before_any_work(tmp_path, digits_tflite_int8):
    for args, msg in ((["--format", "tflm"], "give --target"), (["--format", "onnx", "--target", "stm32l4r5"], "--format onnx"),
                      (["--format", "tflm", "--target", "raspberry-pi-4"], "linux target"),
                      (["--format", "tflm", "--target", "esp32-s3"], "no machine")):
        r = CliRunner().invoke(main, ["export", str(digits_tflite_int8), "--tune", "-o", str(tmp_path / "out"), *args])
        assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output
        assert not (tmp_path / "out").exists()


def test_tuned_tflm_project_on_the_real_firmware(tmp_path, digits_tflite_int8):
    why_not = firmware_support("stm32l4r5")
    if why_not:
        pytest.skip(f"firmware emulation unavailable: {why_not}")
    out = tmp_path / "proj"
    r = CliRunner().invoke(main, ["export", str(digits_tflite_int8), "--format", "tflm", "--target", "stm32l4r5", "--tune",
                                  "--verify", "-o", str(out)])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())["metrics"]
    (op,) = m["tune"]["ops"]
    # digits' first layer (8 filters over one channel): CMSIS-NN's depthwise kernel runs it in fewer instructions
    assert op["form"] == "CONV_2D" and op["kept"] == "DEPTHWISE_CONV_2D"
    assert op["other"]["instructions"] < op["given"]["instructions"]
    assert m["tune"]["tuned"]["instructions"] < m["tune"]["given"]["instructions"]
    assert m["verify"]["instructions"] == pytest.approx(m["tune"]["tuned"]["instructions"], rel=0.01)
    resolver = (out / f"{digits_tflite_int8.stem}_op_resolver.h").read_text()
    assert "AddDepthwiseConv2D" in resolver and "AddConv2D" in resolver  # conv2 has 8 input channels: one form


def test_a_missing_toolchain_is_exit_3_before_any_work(tmp_path, digits_tflite_int8, monkeypatch):
    import workbench.emulate.firmware as fw

    monkeypatch.setattr(fw, "firmware_support", lambda *a, **k: "the program 'arm-none-eabi-gcc' was not found on PATH")
    r = CliRunner().invoke(main, ["export", str(digits_tflite_int8), "--format", "tflm", "--target", "stm32l4r5", "--tune",
                                  "-o", str(tmp_path / "out")])
    assert r.exit_code == 3 and "arm-none-eabi-gcc" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "out").exists()


def test_a_filter_buffer_shared_with_another_tensor_is_copied_not_rewritten(digits_tflite_int8, rng):
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    data = digits_tflite_int8.read_bytes()
    (c,) = candidates(data)
    m = s.ModelT.InitFromObj(s.Model.GetRootAsModel(data, 0))
    sg = m.subgraphs[0]
    w = sg.tensors[sg.operators[c.op].inputs[1]]
    twin = s.TensorT()  # an unused tensor reading the same bytes
    twin.name, twin.type, twin.shape, twin.buffer = b"twin", w.type, w.shape, w.buffer
    sg.tensors.append(twin)
    b = flatbuffers.Builder(len(data) + 1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    shared = bytes(b.Output())
    before = bytes(bytearray(m.buffers[w.buffer].data))
    out = s.ModelT.InitFromObj(s.Model.GetRootAsModel(flip(shared, [c.op]), 0))
    osg = out.subgraphs[0]
    new_w, old_twin = osg.tensors[osg.operators[c.op].inputs[1]], osg.tensors[-1]
    assert new_w.buffer != old_twin.buffer and bytes(bytearray(out.buffers[old_twin.buffer].data)) == before
    x = rng.integers(-128, 128, size=(1, 8, 8, 1), dtype=np.int8)
    assert _litert(data, x).tobytes() == _litert(flip(shared, [c.op]), x).tobytes()
