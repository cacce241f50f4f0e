"""Streaming models keep state in resource variables (VAR_HANDLE, ASSIGN_VARIABLE, READ_VARIABLE,
CALL_ONCE). TFLM needs a MicroResourceVariables for them: the firmware harness and the exported
main.cc / sketch create one, sized from the model's VAR_HANDLE ops, so such a model runs on every
Cortex-M target instead of "DOES NOT FIT".

The model is made here: a tf.Module that mixes each frame with the state it keeps in a
tf.Variable, converted with resource variables enabled.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

TARGET = "stm32l4r5"
STATE_OPS = {"CALL_ONCE", "VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE"}


@pytest.fixture(scope="module")
def stateful_tflite(tmp_path_factory) -> Path:
    tf = pytest.importorskip("tensorflow")

    class Streaming(tf.Module):
        """y = (s + s') W with s' = 0.5 s + x: the output depends on every frame seen so far."""

        def __init__(self):
            super().__init__()
            rng = np.random.default_rng(0)
            self.w = tf.constant(rng.standard_normal((8, 4)).astype(np.float32))
            self.state = tf.Variable(tf.zeros((1, 8)), trainable=False)

        @tf.function(input_signature=[tf.TensorSpec((1, 8), tf.float32)])
        def __call__(self, x):
            prev = self.state.read_value()
            self.state.assign(0.5 * prev + x)
            return tf.matmul(self.state + prev, self.w)

    m = Streaming()
    conv = tf.lite.TFLiteConverter.from_concrete_functions([m.__call__.get_concrete_function()], m)
    conv.experimental_enable_resource_variables = True
    path = tmp_path_factory.mktemp("stateful") / "streaming.tflite"
    path.write_bytes(conv.convert())
    from workbench.frontends.tflite_reader import read_tflite

    kinds = [op.kind for op in read_tflite(path).ops]
    assert STATE_OPS <= set(kinds), kinds
    return path


def _frames(n: int = 5) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.uniform(-1, 1, size=(n, 1, 8)).astype(np.float32)


def test_exported_sources_create_the_resource_variables(stateful_tflite, tmp_path):
    from workbench.export.tflm_sources import write_tflm_project

    write_tflm_project(stateful_tflite, tmp_path / "p", name="stream")
    resolver = (tmp_path / "p" / "stream_op_resolver.h").read_text()
    main = (tmp_path / "p" / "main.cc").read_text()
    assert "constexpr int kResourceVariableCount = 2;" in resolver  # two VAR_HANDLE ops (main graph + init)
    assert "MicroResourceVariables::Create(allocator, stream_model::kResourceVariableCount)" in main
    assert "tflite::MicroInterpreter interpreter(model, op_resolver, allocator, resource_variables);" in main
    write_tflm_project(stateful_tflite, tmp_path / "a", name="stream", layout="arduino")
    sketch = (tmp_path / "a" / "examples" / "stream" / "stream.ino").read_text()
    assert "MicroResourceVariables::Create" in sketch and "static_interpreter(model, op_resolver, allocator" in sketch


def test_a_model_without_state_keeps_the_plain_interpreter(digits_tflite_int8, tmp_path):
    from workbench.export.tflm_sources import write_tflm_project

    write_tflm_project(digits_tflite_int8, tmp_path / "p", name="digits")
    assert "kResourceVariableCount" not in (tmp_path / "p" / "digits_op_resolver.h").read_text()
    main = (tmp_path / "p" / "main.cc").read_text()
    assert "MicroResourceVariables" not in main and "interpreter(model, op_resolver, tensor_arena, sizeof" in main


@pytest.fixture(scope="module")
def firmware_ready():
    from workbench.emulate.firmware import firmware_support

    why = firmware_support(TARGET)
    if why:
        pytest.skip(f"firmware emulation unavailable: {why}")


def test_a_stateful_model_runs_on_the_firmware_like_host_tflm(firmware_ready, stateful_tflite):
    """Every frame in one QEMU run, the state carried from frame to frame as in the host interpreter
    (the exported main.cc is compiled in the same build, so it builds against TFLM too)."""
    from workbench.emulate.firmware import run_firmware
    from workbench.frontends import load
    from workbench.runtimes.tflm import TflmRunner

    x = _frames()
    rep = run_firmware(stateful_tflite, TARGET, inputs=x, jobs=2)
    fw = np.asarray(rep.outputs).reshape(len(x), -1)
    host = np.asarray(TflmRunner(load(stateful_tflite))._run(x)).reshape(len(x), -1)
    np.testing.assert_allclose(fw, host, rtol=1e-5, atol=1e-5)
    same = np.repeat(x[:1], 3, axis=0)  # the same frame three times: the state makes the outputs differ
    again = np.asarray(run_firmware(stateful_tflite, TARGET, inputs=same, jobs=2).outputs).reshape(3, -1)
    assert not np.allclose(again[0], again[1]) and not np.allclose(again[1], again[2])
    assert {o["op"] for o in rep.per_op} & {"READ_VARIABLE", "ASSIGN_VARIABLE"}
    assert rep.arena_used_bytes > 0 and rep.flash_bytes > 0


def test_emulate_says_a_stateful_model_fits_and_export_writes_it(firmware_ready, stateful_tflite, tmp_path):
    from workbench.cli import main

    r = CliRunner().invoke(main, ["emulate", str(stateful_tflite), "--target", TARGET, "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["fits"] is True and d["method"] == "firmware" and d["unsupported_ops"] == []
    r = CliRunner().invoke(main, ["export", str(stateful_tflite), "--format", "tflm", "--target", TARGET,
                                  "-o", str(tmp_path / "proj")])
    assert r.exit_code == 0, r.output
    assert "DOES NOT FIT" not in r.output and "bigger target" not in r.output
