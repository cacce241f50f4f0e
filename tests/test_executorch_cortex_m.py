"""PyTorch -> ExecuTorch for Cortex-M boards (ExecuTorch's Cortex-M backend, CMSIS-NN ops): the int8 program, its
cortex_m ops in the manifest, parity through the ops' reference code, the host runtime's refusal; Ethos-U boards through
the Arm backend (EthosUBackend delegate), checked through the TOSA reference model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("executorch", reason="executorch (the 'executorch' extra) is not installed")
pytest.importorskip("tosa_serializer", reason="tosa-tools (tosa_serializer, imported by ExecuTorch's Arm/Cortex-M "
                                              "backend) is not installed: pip install --no-deps tosa-tools==2026.5.0")

from workbench import api  # noqa: E402
from workbench.cli import main  # noqa: E402
from workbench.core.errors import UnsupportedError  # noqa: E402
from workbench.frontends.loader import LoadOptions  # noqa: E402

from conftest import DIGITS_FACTORY, MODELS  # noqa: E402

SRC = MODELS / "digits_torch.pt"
OPTS = LoadOptions(factory=DIGITS_FACTORY)


@pytest.fixture(scope="module")
def cortex_m_pte(tmp_path_factory):
    out = tmp_path_factory.mktemp("cm") / "digits_m4.pte"
    return api.convert(SRC, "executorch", out, scheme="int8", calib="digits:train", calib_samples=128,
                       load_options=OPTS, target="stm32l4r5")


def test_cortex_m_program_lists_its_ops_and_says_where_it_runs(cortex_m_pte):
    recipe = json.loads(cortex_m_pte.manifest_path.read_text())["recipe"]
    assert recipe["backend"] == "Cortex-M (CMSIS-NN)" and recipe["cpu"] == "cortex-m4" and recipe["target"] == "stm32l4r5"
    ops = {o["op"] for o in recipe["cortex_m_ops"]}
    # the digits CNN: depthwise conv (1 input channel), conv, linear, and the float<->int8 edges
    assert {"cortex_m::quantized_conv2d.out", "cortex_m::quantized_depthwise_conv2d.out", "cortex_m::quantized_linear.out",
            "cortex_m::quantize_per_tensor.out", "cortex_m::dequantize_per_tensor.out"} <= ops
    assert not any(o["op"].startswith("aten::convolution") for o in recipe["program_ops"])  # nothing left in float
    assert "cortex_m kernels (CMSIS-NN)" in recipe["runtime_needed"] and "not run on the target" in recipe["checked_on"]
    par = recipe["agreement_with_float"]
    assert par["samples"] == 128 and par["argmax_agreement"] >= 0.97
    assert par["max_abs_error"] < 0.1 * par["reference_max_abs"], par


def test_cortex_m_program_agrees_with_float_on_held_out_digits(cortex_m_pte):
    """200 test samples through the lowered program's cortex_m reference ops, against the float model."""
    import torch

    from workbench.data import open_data
    from workbench.data.dataset import fit_to_input
    from workbench.export import executorch_cortex_m as cm
    from workbench.export.parity import run_model
    from workbench.export.torch_common import traceable

    handle = api.load(SRC, OPTS)
    data = open_data("digits", split="test", limit=200, seed=0)
    x = fit_to_input(data.x, handle.inputs[0].shape, handle.inputs[0].layout, data.name, "digits")
    calib = fit_to_input(open_data("digits", split="train", limit=128, seed=0).x, handle.inputs[0].shape,
                         handle.inputs[0].layout, "digits", "digits")
    _, model, sample = traceable(handle)
    lowered = cm.lower(torch, model, sample, calib, "cortex-m4")
    got = cm.run_edge(torch, lowered, x)[0]
    ref = run_model(handle, x)
    assert float(np.mean(got.argmax(1) == ref.argmax(1))) >= 0.97
    assert float(np.mean(got.argmax(1) == data.y)) >= 0.9


def test_host_runtime_refuses_it_naming_the_cortex_m_operator(cortex_m_pte):
    from workbench.export.parity import run_model

    with pytest.raises(UnsupportedError, match=r"no kernel for cortex_m::\w+") as info:
        run_model(cortex_m_pte.path, np.zeros((1, 1, 8, 8), np.float32))
    assert "CMSIS-NN" in info.value.hint
    res = CliRunner().invoke(main, ["benchmark", str(cortex_m_pte.path), "--calib", "digits:train", "--runs", "2"])
    assert res.exit_code == 2 and "cortex_m::quantized_conv2d" in res.output and "Traceback" not in res.output


def test_ethos_u_target_gets_an_ethos_u_delegate_checked_through_the_tosa_reference_model(tmp_path):
    pytest.importorskip("tosa_reference_model", reason="tosa-tools' tosa_reference_model is not installed")
    pytest.importorskip("ethosu.vela", reason="ethos-u-vela is not installed")
    from workbench.frontends.pte_reader import read_pte

    out = tmp_path / "npu.pte"
    res = CliRunner().invoke(main, ["export", str(SRC), "--factory", DIGITS_FACTORY, "--format", "executorch",
                                    "--scheme", "int8", "--calib", "digits:train", "--calib-samples", "64",
                                    "--target", "ethos-u55-128", "-o", str(out)])
    assert res.exit_code == 0, res.output
    method = read_pte(out).method("forward")  # read back without torch
    assert method.delegates == ("EthosUBackend",) and "delegate:EthosUBackend" in method.instructions
    recipe = json.loads(out.with_name("npu.pte.json").read_text())["recipe"]
    assert recipe["accelerator"] == "ethos-u55-128" and recipe["system_config"] == "Ethos_U55_High_End_Embedded"
    assert recipe["memory_mode"] == "Shared_Sram" and recipe["delegates"] == ["EthosUBackend"]
    # the digits CNN runs whole on the NPU: only the float<->int8 edges stay on the CPU
    assert {o["op"] for o in recipe["ops_outside_delegate"]} == {"quantized_decomposed::quantize_per_tensor.out",
                                                                  "quantized_decomposed::dequantize_per_tensor.out"}
    par = recipe["agreement_with_float"]
    assert "TOSA reference model" in par["checked_through"] and "not the NPU" in par["checked_through"]
    assert par["samples"] == 64 and par["argmax_agreement"] >= 0.97
    assert par["max_abs_error"] < 0.1 * par["reference_max_abs"], par
    assert "Ethos-U delegate" in recipe["runtime_needed"] and "driver" in recipe["runtime_needed"]
    assert recipe["vela"]["npu_cycles"] > 0 and recipe["vela"]["macs"] > 0 and "estimate" in recipe["vela"]["source"]


def test_ethos_u_program_below_the_parity_bound_is_not_written(tmp_path, monkeypatch):
    pytest.importorskip("tosa_reference_model", reason="tosa-tools' tosa_reference_model is not installed")
    from workbench.core.errors import CheckFailed
    from workbench.export import executorch_cortex_m as cm

    monkeypatch.setattr(cm, "MIN_ARGMAX_AGREEMENT", 1.01)  # no program can reach it
    with pytest.raises(CheckFailed, match="nothing was written"):
        api.convert(SRC, "executorch", tmp_path / "npu.pte", scheme="int8", calib="digits:train", calib_samples=16,
                    load_options=OPTS, target="ethos-u55-128")
    assert not list(tmp_path.iterdir())


def test_non_cortex_m_mcu_and_float_are_refused(tmp_path):
    with pytest.raises(UnsupportedError, match="needs a Cortex-M core"):
        api.convert(SRC, "executorch", tmp_path / "esp.pte", scheme="int8", calib="digits:train", calib_samples=16,
                    load_options=OPTS, target="esp32-s3")
    with pytest.raises(UnsupportedError, match="int8 only"):
        api.convert(SRC, "executorch", tmp_path / "f.pte", scheme="float", load_options=OPTS, target="stm32l4r5")
    with pytest.raises(UnsupportedError, match="int8 only"):
        api.convert(SRC, "executorch", tmp_path / "u.pte", scheme="float", load_options=OPTS, target="ethos-u55-128")
    with pytest.raises(UnsupportedError, match="own observers"):  # --calibrator mse would be silently ignored
        api.convert(SRC, "executorch", tmp_path / "m.pte", scheme="int8", calib="digits:train", calib_samples=16,
                    calibrator="mse", load_options=OPTS, target="stm32l4r5")
    assert not list(tmp_path.iterdir())


def test_missing_tosa_tools_is_exit_3_naming_the_install(monkeypatch):
    """Without tosa-tools the Cortex-M backend cannot import: a missing-dependency error (exit 3) with the
    --no-deps install line, not a TypeError."""
    import sys

    from workbench.core.errors import MissingDependencyError
    from workbench.export import executorch_cortex_m as cm

    monkeypatch.setitem(sys.modules, "tosa_serializer", None)  # import tosa_serializer now raises ImportError
    with pytest.raises(MissingDependencyError) as e:
        cm.import_backend()
    assert e.value.exit_code == 3 and "tosa_serializer" in e.value.message
    assert "--no-deps tosa-tools==" in e.value.hint
