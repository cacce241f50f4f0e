"""Target profiles: every built-in file loads and cites its sources; bad files name the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from workbench.cli import main
from workbench.emulate import list_targets, load_target
from workbench.emulate.targets import Target
from workbench.core.errors import ConfigError

EXPECTED = {"raspberry-pi-zero-2w", "raspberry-pi-3b-plus", "raspberry-pi-4", "raspberry-pi-5", "stm32l4r5", "nrf52840",
            "stm32f746", "stm32h743", "nrf5340", "esp32-s3", "host",
            "corstone-300", "ethos-u55-128", "himax-we2", "alif-ensemble-e7", "nxp-imx93", "raspberry-pi-pico-2"}
ROOT = Path(__file__).resolve().parents[1]


def test_all_profiles_are_listed_and_shipped():
    assert set(list_targets()) == EXPECTED
    # the repository folder is what the wheel ships as workbench.builtin.targets
    assert {p.stem for p in (ROOT / "targets").glob("*.yaml")} == EXPECTED
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"workbench.builtin.targets" = "targets"' in pyproject and '"workbench.builtin.targets" = ["*.yaml"]' in pyproject


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_profile_loads_and_has_sources(name):
    t = load_target(name)
    assert isinstance(t, Target) and t.name == name
    assert t.sources and all(s.fact.strip() and s.url.strip() for s in t.sources)
    assert t.clock_mhz > 0 and t.ram_bytes > 0 and t.cores >= t.threads >= 1
    assert t.cost.calibration, "each profile says how its cost coefficients were obtained"
    if t.kind == "mcu":
        assert t.runtime.name == "tflm" and t.runtime.kernels in ("cmsis-nn", "esp-nn")
        assert t.flash_bytes and t.runtime.code_bytes > 0 and t.threads == 1
    else:
        assert t.runtime.name == "litert" and t.runtime.kernels == "xnnpack" and t.flash_bytes is None
    for key in ("int8", "int16", "float32"):
        assert t.cost.dtype(key).cycles_per_mac >= 0 and t.cost.dtype(key).cycles_per_byte >= 0
    json.dumps(t.to_dict())


def test_public_facts_of_the_notes_table():
    facts = {  # board: (clock MHz, flash bytes, RAM bytes)
        "stm32l4r5": (120, 2 << 20, 640 << 10), "nrf52840": (64, 1 << 20, 256 << 10), "stm32f746": (216, 1 << 20, 320 << 10),
        "stm32h743": (480, 2 << 20, 1 << 20), "nrf5340": (128, 1 << 20, 512 << 10), "esp32-s3": (240, 8 << 20, 512 << 10),
        "raspberry-pi-pico-2": (150, 4 << 20, 520 << 10),  # RP2350 and Pico 2 datasheets (raspberrypi.com)
    }
    for name, (mhz, flash, ram) in facts.items():
        t = load_target(name)
        assert (t.clock_mhz, t.flash_bytes, t.ram_bytes) == (mhz, flash, ram), name
    assert load_target("raspberry-pi-5").core == "4x Cortex-A76" and load_target("raspberry-pi-zero-2w").ram_bytes == 512 << 20
    pico = load_target("raspberry-pi-pico-2")
    assert pico.core == "Cortex-M33" and all("raspberrypi.com" in s.url for s in pico.sources[:4])
    assert any("16 kB XIP cache" in s.fact for s in pico.sources)


def test_unknown_target_lists_the_valid_ones():
    with pytest.raises(ConfigError) as e:
        load_target("stm32f4")
    assert "stm32l4r5" in str(e.value) and "raspberry-pi-4" in str(e.value)


def _edited(tmp_path: Path, edit) -> Path:
    d = yaml.safe_load((ROOT / "targets" / "stm32l4r5.yaml").read_text())
    edit(d)
    p = tmp_path / "board.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def test_target_file_loads(tmp_path):
    p = _edited(tmp_path, lambda d: d.update(name="my-board", ram_bytes=4096))
    t = load_target(str(p))
    assert t.name == "my-board" and t.ram_bytes == 4096 and t.path == str(p)


@pytest.mark.parametrize("edit, field", [
    (lambda d: d["cost"]["dtypes"]["int8"].update(cycles_per_mac="fast"), "cost.dtypes.int8.cycles_per_mac"),
    (lambda d: d.pop("ram_bytes"), "ram_bytes"),
    (lambda d: d.update(kind="fpga"), "kind"),
    (lambda d: d["runtime"].update(name="tvm"), "runtime.name"),
    (lambda d: d.update(sources=[]), "sources"),
    (lambda d: d["sources"][0].pop("url"), "sources[0].url"),
    (lambda d: d.update(clock_mhz=-5), "clock_mhz"),
    (lambda d: d.update(colour="red"), "colour"),
    (lambda d: d["cost"]["class_factors"].update(depthwise=0), "cost.class_factors.depthwise"),
])
def test_malformed_target_file_names_the_field(tmp_path, edit, field):
    p = _edited(tmp_path, edit)
    with pytest.raises(ConfigError) as e:
        load_target(str(p))
    assert f"'{field}'" in str(e.value) and str(p) in str(e.value)


def test_invalid_yaml_says_where(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\n  kind: [mcu\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_target(str(p))


def test_cli_targets_list_and_show():
    r = CliRunner().invoke(main, ["targets", "list"])
    assert r.exit_code == 0, r.output
    for name in EXPECTED:
        assert name in r.output
    r = CliRunner().invoke(main, ["targets", "list", "--json"])
    assert r.exit_code == 0 and {t["name"] for t in json.loads(r.output)} == EXPECTED
    r = CliRunner().invoke(main, ["targets", "show", "stm32l4r5"])
    assert r.exit_code == 0 and "sources:" in r.output and "mlcommons" in r.output and "Cortex-M4F" in r.output
    r = CliRunner().invoke(main, ["targets", "show", "raspberry-pi-4", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["runtime"]["kernels"] == "xnnpack"


def test_cli_targets_show_unknown_exits_2():
    r = CliRunner().invoke(main, ["targets", "show", "arduino-uno"])
    assert r.exit_code == 2 and "Valid:" in r.output and "nrf52840" in r.output
