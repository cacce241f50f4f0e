"""The CLI's promises: fast help without frameworks, inspect for every format, JSON on stdout only."""

import json
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from workbench.cli import main

HEAVY = ("torch", "tensorflow", "litert_torch", "keras", "tf_keras", "executorch")


def test_help_imports_no_framework_and_is_fast():
    code = ("import sys, time; t=time.time(); from workbench.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit: pass\n"
            f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules], time.time()-t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    line = out.strip().splitlines()[-1]
    assert line.startswith("HEAVY []"), line
    assert float(line.split()[-1]) < 1.0, line


def test_python_dash_m_works():
    r = subprocess.run([sys.executable, "-m", "workbench", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "workbench" in r.stdout


def test_inspect_tflite_and_onnx_need_only_core(model_zoo):
    for fmt in ("tflite", "onnx"):
        code = ("import sys\nfrom workbench.cli import main\n"
                f"try:\n    main(['inspect', {str(model_zoo[fmt])!r}, '--json'])\nexcept SystemExit: pass\n"
                f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.strip().splitlines()[-1] == "HEAVY []"


@pytest.mark.parametrize("fmt", ["keras", "h5", "savedmodel", "torchscript", "exported_program", "state_dict", "onnx", "tflite"])
def test_inspect_every_format(model_zoo, fmt):
    args = ["inspect", str(model_zoo[fmt]), "--json"]
    if fmt == "state_dict":
        args += ["--factory", "workbench.builtin.models.reference:digits_torch"]
    if fmt == "torchscript":
        args += ["--input-shape", "1,1,8,8"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["format"] == fmt
    assert info["inputs"] and info["outputs"]
    if fmt != "savedmodel":  # a SavedModel records signatures, not layers
        assert info["parameters"] in (3818, 3820, 3821, 3832)  # conversions add shape constants
        assert info["macs"] == (None if fmt == "torchscript" else 25600)
    out_shape = info["outputs"][0]["shape"]
    assert out_shape[-1] == 10


def test_inspect_tflite_int8_reports_quantization(digits_tflite_int8):
    r = CliRunner().invoke(main, ["inspect", str(digits_tflite_int8), "--json"])
    info = json.loads(r.stdout)
    assert info["inputs"][0]["dtype"] == "int8"
    assert 0 < info["inputs"][0]["scale"] < 1
    assert info["op_counts"]["CONV_2D"] == 2


def test_inspect_human_output(model_zoo):
    r = CliRunner().invoke(main, ["inspect", str(model_zoo["tflite"])])
    assert r.exit_code == 0
    assert "MACs per inference: 25,600" in r.output
    assert "CONV_2D" in r.output


def test_errors_have_no_traceback_and_debug_shows_one(tmp_path):
    r = CliRunner().invoke(main, ["inspect", str(tmp_path / "missing.tflite")])
    assert r.exit_code == 2
    assert "does not exist" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["--debug", "inspect", str(tmp_path / "missing.tflite")])
    assert r.exit_code != 0 and r.exception is not None
