"""`workbench emulate` on MCU targets reports the real firmware's numbers (TFLite Micro +
CMSIS-NN built for the core, run on QEMU), and keeps the verdict when something fails."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from workbench.cli import main
from workbench.emulate import emulate, load_target
from workbench.emulate.firmware import firmware_support

FIRMWARE_KEYS = {"elf", "flash_bytes", "ram_bytes", "text_bytes", "data_bytes", "bss_bytes", "arena_used_bytes",
                 "stack_bytes", "instructions", "per_op", "cpi", "latency_ms"}


@pytest.fixture(scope="module", autouse=True)
def needs_firmware():
    why_not = firmware_support("stm32l4r5")
    if why_not:
        pytest.skip(f"firmware emulation unavailable: {why_not}")


def run_cli(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def _arm_size(elf: str) -> int:
    out = subprocess.run(["arm-none-eabi-size", "-B", elf], capture_output=True, text=True, check=True).stdout
    text, data, _bss = (int(v) for v in out.splitlines()[1].split()[:3])
    return text + data


def test_mcu_emulate_reports_the_firmware(digits_tflite_int8):
    r = run_cli("emulate", digits_tflite_int8, "--target", "stm32l4r5", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    fw = d["firmware"]
    assert d["method"] == "firmware" and FIRMWARE_KEYS <= set(fw)
    assert d["flash_bytes"] == fw["flash_bytes"] == _arm_size(fw["elf"]) == fw["text_bytes"] + fw["data_bytes"]
    # RAM: the static sections, the arena the 32-bit build used plus TFLM's margin, and the painted stack
    assert d["ram_bytes"] == fw["ram_bytes"] == fw["ram_static_bytes"] + fw["arena_bytes"] + fw["stack_bytes"]
    assert 0 < fw["arena_used_bytes"] <= fw["arena_bytes"] and fw["stack_bytes"] > 0
    assert d["arena_bytes"] == fw["arena_bytes"]  # the arena that ram_bytes counts
    assert fw["instructions"] > 10_000 and d["latency_ms"] == fw["latency_ms"] > 0
    t = load_target("stm32l4r5")
    cycles = fw["latency_ms"] * 1e-3 * t.clock_hz
    assert 0.3 < cycles / fw["instructions"] < 5  # a plausible CPI for a Cortex-M4
    ops = [o for o in d["ops"] if "instructions" in o]
    assert len(ops) == len(d["ops"]) and sum(o["instructions"] for o in ops) <= fw["instructions"]
    # more than half the firmware's flash is runtime and kernels, which the estimate used to guess
    assert fw["flash_bytes"] > d["model_bytes"] + 20_000


def test_text_report_says_it_is_the_firmware(digits_tflite_int8):
    r = run_cli("emulate", digits_tflite_int8, "--target", "nrf52840")
    assert r.exit_code == 0, r.output
    assert "linked firmware" in r.output and "instructions" in r.output and "FITS on nrf52840" in r.output


def test_the_build_level_is_said_and_the_chosen_one_is_used(digits_tflite_int8):
    """Without --opt-level the report says the firmware is at TFLM's own levels and how to measure an -Os build;
    with it, the JSON and the text name the level, and the kernels at -Os execute more instructions."""
    default = json.loads(run_cli("emulate", digits_tflite_int8, "--target", "stm32l4r5", "--json").stdout)
    assert default["firmware"]["opt_level"] is None
    assert any("--opt-level -Os" in n for n in default["notes"])
    r = run_cli("emulate", digits_tflite_int8, "--target", "stm32l4r5", "--opt-level", "-Os", "--json")
    assert r.exit_code == 0, r.output
    small = json.loads(r.stdout)
    assert small["firmware"]["opt_level"] == "-Os" and not any("--opt-level -Os" in n for n in small["notes"])
    assert small["firmware"]["instructions"] > default["firmware"]["instructions"]
    assert small["latency_ms"] > default["latency_ms"]
    text = run_cli("emulate", digits_tflite_int8, "--target", "stm32l4r5", "--opt-level", "-Os")
    assert "firmware built at -Os on QEMU" in text.output


def test_no_firmware_gives_the_estimate(digits_tflite_int8):
    d = emulate(digits_tflite_int8, "stm32l4r5", firmware=False).to_dict()
    assert d["method"] == "estimate" and d["firmware"] is None


def test_eval_runs_on_the_firmware_kernels(digits_tflite_int8):
    d = emulate(digits_tflite_int8, "stm32l4r5", eval_data="digits", eval_samples=300).to_dict()
    acc = d["accuracy"]
    assert acc["candidate_runtime"]["runtime"] == "tflm-firmware" and acc["samples"] == 300
    assert acc["accuracy"] > 0.9
    vs = acc["vs_litert"]
    assert vs["samples"] == 300 and vs["max_lsb_difference"] <= 1 and vs["argmax_agreement"] >= 0.99
    assert d["firmware"]["samples"] == 300


def test_a_model_too_big_for_the_board_still_runs_and_does_not_fit(digits_tflite_int8, tmp_path):
    d = load_target("stm32l4r5").to_dict()
    d.pop("path")
    d.update(name="tiny-board", flash_bytes=16_384, ram_bytes=4_096)
    board = tmp_path / "tiny-board.yaml"
    board.write_text(yaml.safe_dump(d))
    r = run_cli("emulate", digits_tflite_int8, "--target-file", board, "--eval", "digits", "--eval-samples", 50, "--json")
    assert r.exit_code == 1, r.output
    rep = json.loads(r.stdout)
    assert rep["fits"] is False and rep["method"] == "firmware" and rep["latency_ms"] > 0
    assert rep["accuracy"]["accuracy"] > 0.8
    assert any("flash" in x and "short by" in x for x in rep["reasons"]) and any("RAM" in x for x in rep["reasons"])
    assert "Error:" not in r.output


def test_a_core_qemu_cannot_run_keeps_the_labelled_estimate(digits_tflite_int8):
    d = emulate(digits_tflite_int8, "esp32-s3").to_dict()
    assert d["method"] == "estimate" and d["firmware"] is None
    assert any("Not run on firmware" in n for n in d["notes"])


def test_firmware_required_but_no_tree_is_exit_2(digits_tflite_int8, tmp_path):
    r = run_cli("emulate", digits_tflite_int8, "--target", "stm32l4r5", "--firmware", "--tflm-dir", tmp_path)
    assert r.exit_code == 2 and "Error:" in r.output and "Traceback" not in r.output


def test_firmware_check_command():
    r = run_cli("firmware", "check", "--target", "stm32l4r5")
    assert r.exit_code == 0 and "available" in r.output
    r = run_cli("firmware", "check", "--target", "esp32-s3", "--json")
    assert r.exit_code == 1 and json.loads(r.stdout)["firmware"] is False and json.loads(r.stdout)["reason"]


def test_export_tflm_verify_builds_and_runs_the_project(digits_tflite_int8, tmp_path):
    out = tmp_path / "proj"
    r = run_cli("export", digits_tflite_int8, "--format", "tflm", "-o", out, "--target", "stm32l4r5", "--verify")
    assert r.exit_code == 0, r.output
    v = json.loads((out / "manifest.json").read_text())["metrics"]["verify"]
    assert v["built"] and v["matches_host_tflm"] and v["max_output_difference"] == 0 and v["fits"]
    assert "verified on QEMU mps2-an386" in r.output


def test_export_tflm_verify_fails_when_the_firmware_does_not_fit(digits_tflite_int8, tmp_path):
    d = load_target("stm32l4r5").to_dict()
    d.pop("path")
    d.update(name="small-board", flash_bytes=60_000, ram_bytes=200_000)  # the model fits, the linked firmware does not
    board = tmp_path / "small-board.yaml"
    board.write_text(yaml.safe_dump(d))
    r = run_cli("export", digits_tflite_int8, "--format", "tflm", "-o", tmp_path / "p", "--target", board, "--verify", "--force")
    assert r.exit_code == 1, r.output
    assert "does not" in r.output or "needs" in r.output
    r = run_cli("export", digits_tflite_int8, "--format", "tflm", "-o", tmp_path / "q", "--verify")
    assert r.exit_code == 2 and "--target" in r.output


def test_tflm_export_checks_the_fit_with_the_firmware(digits_tflite_int8, tmp_path):
    from workbench.emulate.project import write_tflm_project

    art = write_tflm_project(digits_tflite_int8, tmp_path / "p", target="stm32l4r5")
    m = art.metrics
    assert m["method"] == "firmware" and m["fits"] is True
    assert "latency (firmware on QEMU" in (art.path / "README.md").read_text()


@pytest.mark.slow
def test_fashion_model_on_the_firmware_with_reference_kernel_fallback(tmp_path):
    """The Fashion reference model: its MEAN (global average pooling) has no CMSIS-NN kernel and runs
    TFLM's reference kernel inside the same firmware; outputs agree with LiteRT's builtin kernels."""
    from workbench.api import convert
    from workbench.frontends.tflite_reader import read_tflite

    root = Path(__file__).resolve().parents[1]
    model = tmp_path / "fashion_int8.tflite"
    convert(root / "models" / "fashion_keras.keras", "tflite", model, scheme="int8", calib="fashion-mnist:train",
            calib_samples=200)
    kinds = {op.kind for op in read_tflite(model).ops}
    assert "MEAN" in kinds  # not among CMSIS-NN's optimized kernels in this TFLM tree
    d = emulate(model, "stm32l4r5", eval_data="fashion-mnist", eval_samples=200).to_dict()
    assert d["method"] == "firmware" and d["fits"]
    assert d["accuracy"]["accuracy"] > 0.85 and d["accuracy"]["vs_litert"]["max_lsb_difference"] <= 1
    assert any(o["kind"] == "MEAN" and o["instructions"] > 0 for o in d["ops"])
    assert d["firmware"]["instructions"] > 1_000_000
