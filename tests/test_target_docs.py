"""docs/targets.md documents every field the target loader accepts, and its example board is a
profile `workbench emulate --target FILE` accepts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from workbench.cli import main
from workbench.emulate import load_target
from workbench.emulate.targets import accepted_fields

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "targets.md"


def _documented() -> set[str]:
    """The backticked names in the first column of the doc's field table."""
    names = set()
    for line in DOC.read_text().splitlines():
        m = re.match(r"\|\s*`([^`]+)`\s*\|", line)
        if m:
            names.add(m.group(1))
    return names


def _example(tmp_path: Path) -> Path:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1, "the doc holds one example board"
    p = tmp_path / "board.yaml"
    p.write_text(blocks[0])
    return p


def test_every_accepted_field_is_documented():
    missing = [f for f in accepted_fields() if f not in _documented()]
    assert not missing, f"docs/targets.md does not document: {', '.join(missing)}"


def test_the_field_list_follows_the_dataclasses(monkeypatch):
    """A field added to a profile dataclass shows up in accepted_fields (and so must be documented)."""
    import dataclasses

    import workbench.emulate.targets as targets

    extended = dataclasses.make_dataclass("RuntimeSpec", [("flash_wait_states", int, dataclasses.field(default=0))],
                                          bases=(targets.RuntimeSpec,), frozen=True)
    monkeypatch.setattr(targets, "RuntimeSpec", extended)
    assert "runtime.flash_wait_states" in accepted_fields()
    assert "runtime.flash_wait_states" not in _documented()


def test_readme_links_the_doc():
    assert "docs/targets.md" in (ROOT / "README.md").read_text()


def test_the_example_board_loads_with_every_documented_number(tmp_path):
    p = _example(tmp_path)
    t = load_target(str(p))
    raw = yaml.safe_load(p.read_text())
    assert t.name == raw["name"] and t.core == "Cortex-M33" and t.flash_bytes == 2 << 20 and t.ram_bytes == 786 << 10
    assert t.sources and all(s.url.startswith("https://") for s in t.sources)


def test_emulate_accepts_the_example_board(tmp_path, digits_tflite_int8):
    p = _example(tmp_path)
    for flag in ("--target", "--target-file"):
        r = CliRunner().invoke(main, ["emulate", str(digits_tflite_int8), flag, str(p), "--no-firmware", "--json"])
        assert r.exit_code == 0, r.output
        d = json.loads(r.stdout)
        assert d["target"] == "my-stm32u585-board"
        assert d["fits"] is True and d["latency_ms"] > 0 and d["method"] == "estimate"


def test_a_bad_field_in_the_example_names_it(tmp_path, digits_tflite_int8):
    p = _example(tmp_path)
    d = yaml.safe_load(p.read_text())
    d["runtime"]["code_bytes"] = -1
    p.write_text(yaml.safe_dump(d))
    r = CliRunner().invoke(main, ["emulate", str(digits_tflite_int8), "--target", str(p)])
    assert r.exit_code == 2 and "runtime.code_bytes" in r.output and "Traceback" not in r.output


@pytest.mark.slow
def test_the_example_board_runs_on_firmware(tmp_path, digits_tflite_int8):
    from workbench.emulate.firmware import firmware_support

    p = _example(tmp_path)
    why = firmware_support(str(p))
    if why:
        pytest.skip(f"firmware emulation unavailable: {why}")
    r = CliRunner().invoke(main, ["emulate", str(digits_tflite_int8), "--target", str(p), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["method"] == "firmware" and d["firmware"]["machine"] == "mps2-an505" and d["firmware"]["instructions"] > 0


def test_the_doc_names_every_core_with_a_timing_table():
    """The latency paragraph lists the cores whose firmware latency comes from the core timing model."""
    from workbench.emulate.firmware.timing_tables import CORES

    text = " ".join(DOC.read_text().split())
    m = re.search(r"timing tables: ([^;]+);", text)
    assert m, "docs/targets.md no longer says which cores have timing tables"
    assert sorted(c.strip() for c in m.group(1).split(",")) == sorted(CORES)
    assert "no published row checked" in text and CORES["Cortex-M55"].unvalidated.startswith("no published row checked")
