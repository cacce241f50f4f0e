"""Firmware emulation: TFLM + CMSIS-NN built for a Cortex-M core, linked with the exported
project of a model, run on QEMU (workbench.emulate.firmware).

Needs arm-none-eabi-gcc with newlib, qemu-system-arm and a TFLM tree ($WORKBENCH_TFLM_DIR,
else ../shared/third_party/tflite-micro beside the repository); skipped, naming what is
missing, without them. The TFLM library for a core is built once into the user cache
(about 5.5 min on 2 cores the first time, then reused by every test and run).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = 300


def _tree_dir() -> Path:
    env = os.environ.get("WORKBENCH_TFLM_DIR")
    return Path(env) if env else ROOT.parent / "shared" / "third_party" / "tflite-micro"


@pytest.fixture(scope="session")
def fw_env():
    """(tree dir, toolchain) or a skip naming the missing piece."""
    from workbench.core.errors import ConfigError
    from workbench.emulate.firmware import (
        ToolMissingError,
        find_toolchain,
        validate_tree,
    )

    try:
        tc = find_toolchain()
    except ToolMissingError as exc:
        pytest.skip(f"firmware emulation needs {exc.program} ({exc.hint.splitlines()[-1]})")
    d = _tree_dir()
    try:
        validate_tree(d)
    except ConfigError as exc:
        pytest.skip(f"no usable TFLM tree at {d}: {exc.message}")
    return d, tc


@pytest.fixture(scope="session")
def digits_int8_samples(digits_tflite_int8):
    """SAMPLES digits test images quantized to the model's int8 input, and their labels."""
    from workbench.data import open_data
    from workbench.frontends import load
    from workbench.runtimes.base import quantize_input

    ds = open_data("digits", split="test") if _accepts_split() else open_data("digits:test")
    spec = load(digits_tflite_int8).inputs[0]
    x = quantize_input(np.asarray(ds.x[:SAMPLES], dtype=np.float32), spec)
    return x, None if ds.y is None else np.asarray(ds.y[:SAMPLES])


def _accepts_split() -> bool:
    import inspect

    from workbench.data import open_data

    return "split" in inspect.signature(open_data).parameters


@pytest.fixture(scope="session")
def m4_run(fw_env, digits_tflite_int8, digits_int8_samples):
    """The digits int8 model through the Cortex-M4 firmware, twice (the library built once)."""
    from workbench.emulate.firmware import run_firmware

    tree, _ = fw_env
    x, _ = digits_int8_samples
    t0 = time.perf_counter()
    first = run_firmware(digits_tflite_int8, "stm32l4r5", inputs=x, tflm_dir=tree, jobs=2)
    t1 = time.perf_counter()
    second = run_firmware(digits_tflite_int8, "stm32l4r5", inputs=x, tflm_dir=tree, jobs=2, cache=False)
    print(f"\nfirmware M4: first run {t1 - t0:.1f} s (library built now: {first.library_built}, "
          f"{first.library_seconds:.0f} s), rebuild + run {time.perf_counter() - t1:.1f} s")
    return first, second


def test_m4_outputs_bit_exact_with_host_tflm(m4_run, digits_tflite_int8, digits_int8_samples):
    from workbench.frontends import load
    from workbench.runtimes.tflm import TflmRunner

    rep, _ = m4_run
    x, y = digits_int8_samples
    host = TflmRunner(load(digits_tflite_int8))._run(x)  # the host interpreter, reference kernels
    fw = np.asarray(rep.outputs)
    assert fw.dtype == host.dtype == np.int8
    assert fw.shape == host.reshape(fw.shape).shape and rep.samples == SAMPLES
    diff = np.abs(fw.astype(np.int32) - host.reshape(fw.shape).astype(np.int32))
    assert int(diff.max()) == 0, f"CMSIS-NN firmware differs from host TFLM by up to {int(diff.max())} LSB"
    if y is not None:
        acc = float((fw.reshape(len(fw), -1).argmax(1) == y).mean())
        assert acc > 0.9


def test_m4_counts_are_deterministic_and_sizes_match_arm_size(m4_run, fw_env):
    a, b = m4_run
    _, tc = fw_env
    assert a.instructions > 0 and a.instructions == b.instructions
    assert [o["instructions"] for o in a.per_op] == [o["instructions"] for o in b.per_op]
    assert {o["op"] for o in a.per_op} >= {"CONV_2D", "FULLY_CONNECTED"}
    assert sum(o["instructions"] for o in a.per_op) <= a.instructions
    out = subprocess.run([str(tc.size), a.elf], capture_output=True, text=True, check=True).stdout
    text, data = (int(v) for v in out.splitlines()[1].split()[:2])
    assert a.flash_bytes == text + data == b.flash_bytes
    assert (a.text_bytes, a.data_bytes) == (text, data)
    # RAM: static data + the arena TFLM used (with margin) + the measured stack.
    assert a.arena_used_bytes > 1000 and a.arena_bytes >= a.arena_used_bytes
    assert 256 < a.stack_bytes < 64 * 1024
    assert a.ram_bytes == a.ram_static_bytes + a.arena_bytes + a.stack_bytes
    assert a.ram_static_bytes <= a.data_bytes + a.bss_bytes
    assert a.latency_ms is not None and a.latency_ms > 0 and a.cpi
    d = a.to_dict()
    assert "outputs" not in d and d["source"] == "firmware"
    import json

    json.dumps(d)


def test_m4_export_arena_covers_the_32bit_build(m4_run):
    rep, _ = m4_run
    assert rep.arena_used_bytes <= rep.export_arena_bytes


def test_bad_tflm_dir_is_a_config_error(tmp_path, digits_tflite_int8):
    from workbench.core.errors import ConfigError
    from workbench.emulate.firmware import find_tree, run_firmware

    (tmp_path / "tensorflow").mkdir()
    with pytest.raises(ConfigError) as ei:
        find_tree(tmp_path)
    assert ei.value.exit_code == 2 and "Makefile" in ei.value.message
    with pytest.raises(ConfigError):
        run_firmware(digits_tflite_int8, "stm32l4r5", tflm_dir=tmp_path / "missing")


def test_missing_toolchain_is_exit_3_with_the_install_line(monkeypatch, tmp_path):
    from workbench.emulate.firmware import toolchain

    toolchain._find.cache_clear()
    monkeypatch.setenv("WORKBENCH_ARM_TOOLCHAIN", str(tmp_path))
    try:
        with pytest.raises(toolchain.ToolMissingError) as ei:
            toolchain.find_toolchain()
        assert ei.value.exit_code == 3
        assert toolchain.INSTALL_LINE in str(ei.value)
    finally:
        toolchain._find.cache_clear()


def test_support_says_why_not():
    from workbench.emulate.firmware import firmware_support, machine_problem

    assert "Xtensa" in machine_problem("2x Xtensa LX7")
    assert firmware_support("esp32-s3") is not None
    assert firmware_support("raspberry-pi-4") is not None


def test_op_missing_from_the_tree_is_unsupported(fw_env, tmp_path):
    from types import SimpleNamespace

    from workbench.core.errors import UnsupportedError
    from workbench.emulate.firmware.build import check_ops_in_tree
    from workbench.emulate.firmware.tree import validate_tree

    tree = validate_tree(fw_env[0])
    ops = [SimpleNamespace(kind="CONV_2D", method="AddConv2D"), SimpleNamespace(kind="FANCY_OP", method="AddFancyOp")]
    with pytest.raises(UnsupportedError) as ei:
        check_ops_in_tree(ops, tree, "m.tflite")
    assert "FANCY_OP" in ei.value.message and ei.value.exit_code != 3


@pytest.mark.slow
@pytest.mark.parametrize("target", ["stm32f746", "nrf5340"])
def test_other_cores_run_the_digits_model(fw_env, target, digits_tflite_int8, digits_int8_samples):
    from workbench.emulate.firmware import firmware_support, run_firmware
    from workbench.frontends import load
    from workbench.runtimes.tflm import TflmRunner

    why = firmware_support(target, tflm_dir=fw_env[0])
    if why is not None:
        pytest.skip(why)
    x, _ = digits_int8_samples
    rep = run_firmware(digits_tflite_int8, target, inputs=x[:50], tflm_dir=fw_env[0], jobs=2)
    host = TflmRunner(load(digits_tflite_int8))._run(x[:50])
    assert np.array_equal(np.asarray(rep.outputs), host.reshape(np.asarray(rep.outputs).shape))
    again = run_firmware(digits_tflite_int8, target, inputs=x[:50], tflm_dir=fw_env[0], jobs=2)
    assert again.instructions == rep.instructions > 0


@pytest.mark.slow
@pytest.mark.parametrize("layout,lang", [("plain", "c"), ("arduino", "cpp")])
def test_every_layout_builds_and_runs(fw_env, layout, lang, digits_tflite_int8, m4_run):
    from workbench.emulate.firmware import run_firmware

    rep = run_firmware(digits_tflite_int8, "stm32l4r5", tflm_dir=fw_env[0], layout=layout, lang=lang, jobs=2)
    assert rep.instructions > 0 and rep.flash_bytes > 0


@pytest.mark.slow
def test_reference_kernels_are_selectable(fw_env, digits_tflite_int8, digits_int8_samples, m4_run):
    from workbench.emulate.firmware import run_firmware

    x, _ = digits_int8_samples
    ref = run_firmware(digits_tflite_int8, "stm32l4r5", inputs=x[:20], tflm_dir=fw_env[0], kernels="reference", jobs=2)
    cmsis, _ = m4_run
    assert ref.library_key != cmsis.library_key
    assert ref.instructions > cmsis.instructions
    assert np.array_equal(np.asarray(ref.outputs), np.asarray(cmsis.outputs)[:20])


def test_one_opt_level_builds_every_source_at_it_and_changes_only_the_speed(fw_env, digits_tflite_int8,
                                                                            digits_int8_samples, m4_run):
    """--opt-level -Os (what mbed-os, the Arduino Mbed core and Zephyr compile with): every TFLM and CMSIS-NN
    object is compiled at -Os, the library is a different cached one, the outputs stay bit-identical and
    the kernels execute more instructions than at TFLM's own -O2."""
    from workbench.emulate.firmware import run_firmware
    from workbench.emulate.firmware.library import get_library
    from workbench.emulate.firmware.machines import machine_for_core
    from workbench.emulate.firmware.plan import all_sources, compile_command
    from workbench.emulate.firmware.tree import find_tree

    tree_dir, toolchain = fw_env
    x, _ = digits_int8_samples
    small = run_firmware(digits_tflite_int8, "stm32l4r5", inputs=x[:20], tflm_dir=tree_dir, jobs=2, opt_level="-Os")
    default, _ = m4_run
    assert small.opt_level == "-Os" and default.opt_level is None
    assert small.library_key != default.library_key
    assert np.array_equal(np.asarray(small.outputs), np.asarray(default.outputs)[:20])
    assert small.instructions > default.instructions
    tree = find_tree(tree_dir)
    lib = get_library(tree, machine_for_core("Cortex-M4F"), toolchain, opt_level="-Os")
    levels = {c for g, src in all_sources(lib.plan) for c in compile_command(lib.plan, g, src, tree.root, toolchain)
              if c.startswith("-O")}
    assert levels == {"-Os"}, levels


def test_opt_level_is_checked_and_keys_its_own_library():
    from workbench.core.errors import ConfigError
    from workbench.emulate.firmware.library import OPT_LEVELS, OPT_VARS, check_options, library_key, make_args
    from workbench.emulate.firmware.machines import machine_for_core
    from workbench.emulate.firmware.toolchain import Toolchain
    from workbench.emulate.firmware.tree import TflmTree

    from workbench.cli.emulate_cmd import emulate_cmd

    with pytest.raises(ConfigError, match="-O9"):
        check_options("cmsis-nn", "release_with_logs", "-O9")
    choice = next(p for p in emulate_cmd.params if p.name == "opt_level").type
    assert tuple(choice.choices) == OPT_LEVELS
    m = machine_for_core("Cortex-M4F")
    bin_ = Path("/usr/bin")
    tc = Toolchain(gcc=bin_ / "arm-none-eabi-gcc", gxx=bin_ / "arm-none-eabi-g++", size=bin_ / "arm-none-eabi-size",
                   ar=bin_ / "arm-none-eabi-ar", objcopy=bin_ / "arm-none-eabi-objcopy", qemu=bin_ / "qemu-system-arm",
                   gcc_version="gcc 12.2", qemu_version="qemu 7.2")
    tree = TflmTree(root=Path("/t"), source="argument", commit=None, content_key="k")
    keys = {library_key(tree, m, "cmsis-nn", "release", tc, level) for level in (None, "-Os", "-O3")}
    assert len(keys) == 3
    args = make_args(Path("/t"), m, "cmsis-nn", "release", tc, Path("/g"), "-O3")
    assert [a for a in args if a.split("=")[0] in OPT_VARS] == [f"{v}=-O3" for v in OPT_VARS]
    assert not [a for a in make_args(Path("/t"), m, "cmsis-nn", "release", tc, Path("/g")) if a.split("=")[0] in OPT_VARS]


def test_opt_level_where_no_firmware_is_built_is_refused(digits_tflite_int8):
    from click.testing import CliRunner

    from workbench.cli import main

    r = CliRunner().invoke(main, ["emulate", str(digits_tflite_int8), "--target", "raspberry-pi-4", "--opt-level", "-Os"])
    assert r.exit_code == 2 and "applies to the MCU firmware build" in r.output and "raspberry-pi-4" in r.output
    r = CliRunner().invoke(main, ["emulate", str(digits_tflite_int8), "--target", "stm32l4r5", "--no-firmware",
                                 "--opt-level=-O3"])
    assert r.exit_code == 2 and "--no-firmware" in r.output and "Traceback" not in r.output


def test_failures_name_the_phase(m4_run, fw_env):
    from workbench.core.errors import RuntimeFailure, ToolFailure
    from workbench.emulate.firmware import machine_for_core
    from workbench.emulate.firmware.qemu import run_elf

    rep, _ = m4_run
    _, tc = fw_env
    m = machine_for_core("Cortex-M4F")
    with pytest.raises(RuntimeFailure) as ei:
        run_elf(tc.qemu, m, rep.elf, b"\x00" * 3)  # not a whole sample
    assert "whole number of samples" in ei.value.message and "during" in ei.value.message
    with pytest.raises(ToolFailure) as ei:  # QEMU timing out is the emulation failing, not a verdict on the model
        run_elf(tc.qemu, m, rep.elf, b"\x00" * 64 * 200000, timeout=0.5)  # far too many samples for 0.5 s
    assert "did not finish" in ei.value.message and ei.value.exit_code == 4


def test_setup_leaves_an_existing_tree_alone(fw_env):
    from workbench.emulate.firmware import setup

    res = setup(fw_env[0])
    assert res.actions and res.actions[0].startswith("already present")
    assert res.tree.content_key.startswith(("git:", "content:"))


def test_link_uses_an_offline_tree_and_replaces_a_dangling_link(fw_env, tmp_path):
    from workbench.emulate.firmware import link

    dest = tmp_path / "cache" / "tflite-micro"
    res = link(fw_env[0], dest)
    assert dest.is_symlink() and res.actions[0].startswith("linked")
    assert link(fw_env[0], dest).actions[0].startswith("already linked")
    dest.unlink()
    dest.symlink_to(tmp_path / "gone", target_is_directory=True)  # the tree it pointed to moved away
    assert link(fw_env[0], dest).actions[0].startswith("linked") and dest.resolve() == Path(fw_env[0]).resolve()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file").write_text("x")
    from workbench.core.errors import ConfigError

    with pytest.raises(ConfigError):
        link(fw_env[0], tmp_path / "other")


def test_tick_ratio_is_exact_and_may_be_a_fraction():
    """The SSE-300 counter of the Cortex-M55 machine ticks at 32 MHz: 31.25 instructions per tick under -icount shift=0."""
    from fractions import Fraction

    from workbench.emulate.firmware import MACHINES, machine_for_core, machine_problem

    m55 = machine_for_core("Cortex-M55")
    assert machine_problem("cortex-m55") is None and m55.qemu_machine == "mps3-an547"
    assert m55.tick_ratio == Fraction(125, 4) and m55.instructions_per_tick == 31.25
    assert m55.ticks_to_instructions(6400) == 200_000 and m55.ticks_to_instructions(3) == 94  # 93.75 rounds up
    assert MACHINES["Cortex-M4F"].instructions_per_tick == 40 and MACHINES["Cortex-M33"].instructions_per_tick == 50
    d = m55.to_dict()
    assert d["timer_kind"] == "sse-counter" and d["vectors"] == [0x10000000, 512 * 1024]
    assert d["code"][0] == 0x70000000 and d["code"][1] > 512 * 1024  # code beyond the ITCM
    assert m55.timer_defines == ("-DWB_TIMER_SSE_COUNTER=1",) and MACHINES["Cortex-M7"].timer_defines == ()


def test_machine_table_refuses_an_unknown_timer_or_a_vector_table_outside_its_region():
    import dataclasses

    from workbench.emulate.firmware import MACHINES

    with pytest.raises(ValueError, match="timer_kind"):
        dataclasses.replace(MACHINES["Cortex-M55"], timer_kind="systick")
    with pytest.raises(ValueError, match="vector table"):
        dataclasses.replace(MACHINES["Cortex-M55"], vectors=None)  # boots at 0x10000000, code is at 0x70000000


@pytest.fixture(scope="session")
def m55_run(fw_env, digits_tflite_int8, digits_int8_samples):
    """The digits int8 model through the Cortex-M55 (Helium) firmware on mps3-an547, all samples."""
    from workbench.emulate.firmware import run_firmware

    x, _ = digits_int8_samples
    return run_firmware(digits_tflite_int8, "corstone-300", inputs=x, tflm_dir=fw_env[0], jobs=2)


@pytest.mark.slow
def test_m55_outputs_bit_exact_with_host_tflm(m55_run, digits_tflite_int8, digits_int8_samples):
    from workbench.frontends import load
    from workbench.runtimes.tflm import TflmRunner

    x, y = digits_int8_samples
    host = TflmRunner(load(digits_tflite_int8))._run(x)  # the host interpreter, reference kernels
    fw = np.asarray(m55_run.outputs)
    assert m55_run.samples == SAMPLES and fw.dtype == host.dtype == np.int8
    diff = np.abs(fw.astype(np.int32) - host.reshape(fw.shape).astype(np.int32))
    assert int(diff.max()) == 0, f"Helium CMSIS-NN firmware differs from host TFLM by up to {int(diff.max())} LSB"
    if y is not None:
        assert float((fw.reshape(len(fw), -1).argmax(1) == y).mean()) > 0.9


@pytest.mark.slow
def test_m55_runs_helium_code_and_its_latency_is_the_core_timing_model(m55_run, fw_env, m4_run):
    """MVE (Helium) instructions in the linked image (CMSIS-NN's ARM_MATH_MVEI path), none in the M4 image; no CPI
    is fitted for the Cortex-M55, so the latency is the core timing model's (its Cortex-M55 table), unchecked."""
    rep = m55_run
    assert rep.core == "Cortex-M55" and rep.cpu == "cortex-m55" and rep.machine == "mps3-an547"

    def mnemonics(elf):  # objdump decodes MVE only when told the architecture (else it shows LDC/CDP)
        out = subprocess.run(["arm-none-eabi-objdump", "-d", "-m", "armv8.1-m.main", elf], capture_output=True,
                             text=True, check=True).stdout
        return {ln.split("\t")[2].split()[0] for ln in out.splitlines() if ln.count("\t") >= 2}

    # CMSIS-NN's ARM_MATH_MVEI kernels: predicated int8 loads, multiply-accumulate across vectors, tail predication
    mve = {"vldrb.u8", "vmlava.s8", "vaddva.s8", "vldrw.u32", "vpst", "vctp.8"}
    assert mve <= mnemonics(rep.elf)
    assert not mve & mnemonics(m4_run[0].elf)
    assert rep.instructions > 10_000 and sum(o["instructions"] for o in rep.per_op) <= rep.instructions
    assert rep.instructions_per_tick == 31.25
    assert rep.cpi is None and rep.cpi_latency_ms is None and "no CPI is known for Cortex-M55" in rep.cpi_source
    t = rep.timing
    assert rep.latency_method == "core timing model" and t["core_model"] == "Cortex-M55"
    assert 0 < rep.latency_lower_ms <= rep.latency_ms and t["histogram"].get("other", 0) == 0
    assert t["histogram"]["mve_load"] > 0 and t["histogram"]["mve_mac"] > 0 and t["histogram"]["loop_end"] > 0
    assert t["validation"].startswith("no published row checked")


@pytest.mark.slow
def test_m55_timer_ratio_is_measured_and_a_wrong_table_fails(m55_run, fw_env):
    import dataclasses

    from workbench.core.errors import ToolFailure
    from workbench.emulate.firmware import machine_for_core
    from workbench.emulate.firmware.qemu import run_elf
    from workbench.emulate.firmware.run import _check_timer

    m = machine_for_core("Cortex-M55")
    sample = bytes(64)  # one all-zero digits input (8x8x1 int8)
    res = run_elf(fw_env[1].qemu, m, m55_run.elf, sample)
    n, ticks = res.values["calib_instructions"], res.values["calib_ticks"]
    assert n / ticks == 31.25  # 200,000 instructions = 6,400 ticks of the 32 MHz counter
    _check_timer(res.values, m)
    with pytest.raises(ToolFailure, match="ticks every 31.25 instructions"):
        _check_timer(res.values, dataclasses.replace(m, timer_hz=25_000_000))
