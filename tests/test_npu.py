"""NPU targets (Arm Ethos-U through Vela): emulate reports Vela's own numbers, CPU fallbacks, errors."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from workbench.emulate import emulate
from workbench.emulate.targets import load_target

pytest.importorskip("ethosu.vela", reason="needs the npu extra: pip install 'workbench[npu]'")

NPU_TARGETS = ["corstone-300", "ethos-u55-128", "himax-we2", "alif-ensemble-e7", "nxp-imx93"]


def _direct_vela(model, tmp_path, accelerator, system_config, memory_mode, extra_ini: str | None = None):
    """Vela run by hand, as a user would, independent of workbench's runner."""
    cmd = [sys.executable, "-m", "ethosu.vela", str(model), "--output-dir", str(tmp_path / "out"),
           "--accelerator-config", accelerator, "--config", "Arm/vela.ini"]
    if extra_ini:
        ini = tmp_path / "clock.ini"
        ini.write_text(extra_ini)
        cmd += ["--config", str(ini)]
    cmd += ["--system-config", system_config, "--memory-mode", memory_mode]
    subprocess.run(cmd, check=True, capture_output=True, cwd=tmp_path)
    with open(tmp_path / "out" / f"{model.stem}_summary_{system_config}.csv", newline="") as f:
        return next(csv.DictReader(f))


@pytest.mark.parametrize("name", NPU_TARGETS)
def test_npu_profiles_load_with_sources(name):
    t = load_target(name)
    assert t.npu is not None and t.npu.family == "ethos-u" and t.npu.clock_mhz > 0 and t.npu.sram_bytes > 0
    assert t.sources and t.assumptions


def test_emulate_equals_a_direct_vela_run(digits_tflite_int8, tmp_path):
    rep = emulate(digits_tflite_int8, "corstone-300")  # 500 MHz = the system config's own clock: no override
    row = _direct_vela(digits_tflite_int8, tmp_path, "ethos-u55-128", "Ethos_U55_High_End_Embedded", "Shared_Sram")
    n = rep.to_dict()["npu"]
    assert n["npu_cycles"] == int(float(row["cycles_npu"])) and n["total_cycles"] == int(float(row["cycles_total"]))
    assert n["sram_bytes"] == round(float(row["sram_memory_used"]) * 1024)
    assert n["flash_bytes"] == round(float(row["off_chip_flash_memory_used"]) * 1024)
    assert n["original_weight_bytes"] == int(float(row["total_original_weights"]))
    assert n["encoded_weight_bytes"] == int(float(row["total_npu_encoded_weights"]))
    assert n["npu_ms"] == pytest.approx(float(row["inference_time"]) * 1e3, rel=1e-6)
    assert n["cpu_ops"] == 0 and n["per_layer"] and rep.fits and rep.method == "npu-compiler"


def test_board_clock_overrides_the_system_config(digits_tflite_int8, tmp_path):
    rep = emulate(digits_tflite_int8, "himax-we2")  # U55-64 at 400 MHz
    # Vela 5.2.0's figures depend on the system config's name as well as its values (an inheriting section
    # named "Mine" gives other cycles than one named after its parent), so the direct run uses workbench's name.
    name = "Ethos_U55_High_End_Embedded_400MHz"
    ini = f"[System_Config.{name}]\ninherit=System_Config.Ethos_U55_High_End_Embedded\ncore_clock=400e6\n"
    row = _direct_vela(digits_tflite_int8, tmp_path, "ethos-u55-64", name, "Shared_Sram", ini)
    n = rep.to_dict()["npu"]
    assert n["total_cycles"] == int(float(row["cycles_total"])) and n["clock_hz"] == 400e6
    assert n["npu_ms"] == pytest.approx(float(row["inference_time"]) * 1e3, rel=1e-6)


@pytest.fixture(scope="module")
def cumsum_int8(tmp_path_factory):
    """A small int8 model with an op the NPU lacks (CUMSUM, which the converter keeps in float)."""
    np = pytest.importorskip("numpy")
    tf = pytest.importorskip("tensorflow")
    import keras

    inp = keras.Input((8, 8, 1), batch_size=1)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    x = keras.ops.cumsum(keras.layers.Flatten()(x), axis=-1)
    m = keras.Model(inp, keras.layers.Dense(4)(x))
    conv = tf.lite.TFLiteConverter.from_keras_model(m)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    rng = np.random.default_rng(0)
    conv.representative_dataset = lambda: ([rng.random((1, 8, 8, 1), dtype=np.float32)] for _ in range(10))
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    path = tmp_path_factory.mktemp("npu") / "cumsum_int8.tflite"
    path.write_bytes(conv.convert())
    return path


def test_op_the_npu_lacks_is_reported_on_the_cpu_with_its_time(cumsum_int8):
    rep = emulate(cumsum_int8, "ethos-u55-128")
    n = rep.to_dict()["npu"]
    cpu = {r["op"]: r for r in n["cpu_ops_detail"]}
    assert "CUMSUM" in cpu and cpu["CUMSUM"]["cpu_ms"] > 0
    assert any("Unsupported opType" in r for r in cpu["CUMSUM"]["reasons"])
    assert n["cpu_ms"] == pytest.approx(sum(r["cpu_ms"] for r in n["cpu_ops_detail"]), abs=1e-5)
    assert rep.latency_ms == pytest.approx(n["npu_ms"] + n["cpu_ms"], rel=1e-4)
    assert any("stay on the CPU" in note and "CUMSUM" in note for note in rep.notes)


def test_float_model_says_what_stays_on_the_cpu_and_why(digits_tflite_float):
    rep = emulate(digits_tflite_float, "ethos-u55-128")
    n = rep.to_dict()["npu"]
    assert n["npu_ops"] == 0 and n["cpu_ops"] >= 3
    assert all(any("Float32" in r for r in row["reasons"]) for row in n["cpu_ops_detail"] if row["op"] == "CONV_2D")
    assert any("Nothing runs on the NPU" in note for note in rep.notes)


def test_missing_vela_exits_3_with_the_pip_line(digits_tflite_int8, monkeypatch):
    from click.testing import CliRunner

    from workbench.cli import main
    import workbench.export.vela as vela

    monkeypatch.setattr(vela, "vela_available", lambda: False)
    r = CliRunner().invoke(main, ["emulate", str(digits_tflite_int8), "--target", "ethos-u55-128"])
    assert r.exit_code == 3, r.output
    assert "pip install 'ethos-u-vela==5.2.0'" in r.output


def test_recipes_compile_only_integer_variants_for_npu_boards(tmp_path, digits_keras_path):
    """In `run`, an NPU board gets the int8 variant compiled by Vela; float gets a row saying why not."""
    import yaml

    from workbench.pipeline.recipe import load_recipe
    from workbench.pipeline.run import run_recipe

    recipe = tmp_path / "npu.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "npu", "models": [{"name": "digits", "path": str(digits_keras_path)}],
        "data": {"calib": "digits:train", "calib_samples": 50},
        "variants": [{"name": "float", "scheme": "float"}, {"name": "int8", "scheme": "int8"}],
        "targets": ["corstone-300"]}))
    doc = run_recipe(load_recipe(recipe), tmp_path / "out")
    rows = {r["variant"]: r for r in doc["rows"] if r.get("target") == "corstone-300"}
    assert rows["float"]["fits"] is None and "Vela offloads only fully integer" in rows["float"]["skipped"]
    assert rows["int8"]["fits"] is True and rows["int8"]["latency_ms"] > 0


def test_tflm_export_for_an_npu_board_holds_the_vela_model_and_compiles(digits_tflite_int8, tmp_path):
    """export --format tflm --target <Ethos-U board>: the Vela-compiled model, AddEthosU() in the resolver,
    a README naming the driver and memory regions; the sources compile against the TFLM tree's headers."""
    import os
    import shutil

    from click.testing import CliRunner

    from workbench.cli import main

    out = tmp_path / "npu"
    r = CliRunner().invoke(main, ["export", str(digits_tflite_int8), "--format", "tflm", "--target", "corstone-300",
                                  "-o", str(out)])
    assert r.exit_code == 0, r.output
    resolver = next(out.glob("*_op_resolver.h")).read_text()
    assert "AddEthosU()" in resolver
    readme = (out / "README.md").read_text()
    assert "Ethos-U core driver" in readme or "ethos-u-core-driver" in readme
    assert "Shared_Sram" in readme and "ethos-u55-128" in readme
    import json

    npu = json.loads((out / "manifest.json").read_text())["metrics"]["npu"]
    assert npu["compiler"] == "vela" and npu["npu_ops"] >= 1 and npu["arena_bytes"] > 0
    tree = os.environ.get("WORKBENCH_TFLM_DIR")
    gxx = shutil.which("arm-none-eabi-g++")
    if not tree or not gxx:
        pytest.skip("compiling needs arm-none-eabi-g++ and a TFLM tree (WORKBENCH_TFLM_DIR)")
    dl = f"{tree}/tensorflow/lite/micro/tools/make/downloads"
    for src in ["main.cc", *[p.name for p in out.glob("*_model_data.cc")]]:
        cmd = [gxx, "-std=c++17", "-mcpu=cortex-m55", "-mthumb", "-mfloat-abi=hard", "-fno-rtti", "-fno-exceptions",
               "-DTF_LITE_STATIC_MEMORY", "-Wall", "-Wextra", "-Werror", "-isystem", tree, "-isystem", f"{dl}/flatbuffers/include",
               "-isystem", f"{dl}/gemmlowp", "-isystem", f"{dl}/ruy", "-c", src, "-o", str(tmp_path / (src + ".o"))]
        res = subprocess.run(cmd, cwd=out, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-2000:]
    r = CliRunner().invoke(main, ["export", str(digits_tflite_int8), "--format", "tflm", "--target", "corstone-300",
                                  "-o", str(tmp_path / "v"), "--verify"])
    assert r.exit_code == 2 and "Ethos-U" in r.output


def test_without_firmware_the_cpu_ops_are_the_cost_model_only(cumsum_int8):
    rep = emulate(cumsum_int8, "ethos-u55-128", firmware=False)
    n = rep.to_dict()["npu"]
    assert n["host_firmware"] is None and all("firmware_instructions" not in r for r in n["cpu_ops_detail"])
    assert any("host core's firmware did not run" in note for note in rep.notes)


@pytest.mark.slow
def test_ops_left_on_the_cpu_are_counted_on_the_host_cores_firmware(cumsum_int8):
    """The Cortex-M55 firmware (TFLM + CMSIS-NN with Helium on QEMU mps3-an547) counts the instructions of the ops
    Vela leaves on the CPU; the whole model's host-core latency is the core timing model's (Cortex-M55 table, no
    published row checked), the CPU ops' time in the NPU total stays the cost model's with the model's cycles beside."""
    from workbench.emulate import render_text
    from workbench.emulate.firmware import firmware_support, run_firmware

    why = firmware_support("ethos-u55-128")
    if why:
        pytest.skip(f"firmware emulation unavailable: {why}")
    rep = emulate(cumsum_int8, "ethos-u55-128", firmware=True)
    n = rep.to_dict()["npu"]
    h = n["host_firmware"]
    assert h["core"] == "Cortex-M55" and h["machine"] == "mps3-an547" and h["cpu"] == "cortex-m55"
    rows = {r["op"]: r for r in n["cpu_ops_detail"]}
    assert rows["CUMSUM"]["firmware_instructions"] > 0
    assert h["cpu_ops_matched"] == h["cpu_ops"] == len(n["cpu_ops_detail"])
    assert h["instructions_cpu_ops"] == sum(r["firmware_instructions"] for r in n["cpu_ops_detail"])
    assert 0 < h["instructions_cpu_ops"] < h["instructions_whole_model"]
    assert h["latency_basis"] == "core timing model" and h["timing_validation"].startswith("no published row checked")
    assert 0 < h["latency_lower_ms_whole_model"] <= h["latency_ms_whole_model"]
    assert 0 < rows["CUMSUM"]["firmware_cycles_lower"] <= rows["CUMSUM"]["firmware_cycles_board"]
    assert rep.latency_ms == pytest.approx(n["npu_ms"] + n["cpu_ms"], rel=1e-4)  # the CPU part: cost model
    text = render_text(rep)
    assert f"Cortex-M55 firmware on QEMU mps3-an547: {h['cpu_ops']} CPU op(s)" in text and "by core timing model" in text
    direct = run_firmware(cumsum_int8, "ethos-u55-128")
    assert direct.instructions == h["instructions_whole_model"]
    per_op = {p["op"]: p["instructions"] for p in direct.per_op}
    assert per_op["CUMSUM"] == rows["CUMSUM"]["firmware_instructions"]
