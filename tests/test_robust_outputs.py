"""Interrupted commands leave the old output or the new one, never half of one; outputs are reproducible."""

import os
import signal
import subprocess
import sys
import time

import pytest


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_quantize_leaves_no_partial_output(tmp_path, digits_keras_path, sig):
    out = tmp_path / "m.tflite"
    out.write_bytes(b"previous version")
    cmd = [sys.executable, "-m", "workbench", "quantize", str(digits_keras_path), "--scheme", "int8", "--calib", "digits:train",
           "--eval", "digits:test", "-o", str(out), "--overwrite"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(6)  # inside the import/conversion work
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode != 0 or out.read_bytes()[4:8] == b"TFL3"
    assert "Traceback" not in err
    content = out.read_bytes()
    assert content == b"previous version" or content[4:8] == b"TFL3"
    leftovers = [f.name for f in tmp_path.iterdir() if f.name not in ("m.tflite", "m.tflite.json")]
    assert leftovers == []


def test_onnx_export_is_byte_reproducible(tmp_path, digits_torch_path):
    from conftest import DIGITS_FACTORY
    from workbench import api

    lo = api.LoadOptions(factory=DIGITS_FACTORY)
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    for p in (a, b):
        api.convert(digits_torch_path, "onnx", p, scheme="int8", calib="digits:train", calib_samples=50, load_options=lo)
    assert a.read_bytes() == b.read_bytes()
