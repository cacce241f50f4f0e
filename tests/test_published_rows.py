"""The published firmware rows (workbench/emulate/firmware/published_rows.yaml) are complete and sourced."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from workbench.emulate.firmware.library import OPT_LEVELS
from workbench.emulate.targets import MemorySpec, load_target

ROWS = Path(__file__).resolve().parents[1] / "workbench" / "emulate" / "firmware" / "published_rows.yaml"
MLPERF_TINY = {"kws", "ic", "vww", "ad"}


def _data() -> dict:
    return yaml.safe_load(ROWS.read_text(encoding="utf-8"))


def test_every_row_names_a_known_board_and_model_and_its_source():
    d = _data()
    for r in d["rows"]:
        assert r["board"] in d["boards"], r
        assert r["model"] in MLPERF_TINY or r["model"] in d["models"], r
        assert r["use"] in ("fit", "check", "software-differs", "measurement-fault"), r
        assert r.get("opt_level") in (None, *OPT_LEVELS), r
        assert r["ms"] > 0 and r["software"] and r["published"] and r["url"].startswith("https://"), r


def test_every_extra_model_is_pinned_by_url_and_sha256():
    for key, m in _data()["models"].items():
        assert m["url"].startswith("https://"), key
        assert re.fullmatch(r"[0-9a-f]{64}", m["sha256"]), key
        assert m["what"], key


def test_every_board_has_a_cited_memory_or_a_target_profile():
    for name, b in _data()["boards"].items():
        assert b["core"].startswith("Cortex-M") and b["clock_mhz"] > 0, name
        if "memory" in b:
            mem = MemorySpec(**b["memory"])
            assert mem.flash_wait_states >= 0 and "https://" in mem.source and mem.calibration, name
        else:
            assert load_target(b["target"]).memory is not None, name


def test_each_core_with_rows_of_current_software_has_a_held_out_row():
    d = _data()
    held = {d["boards"][r["board"]]["core"] for r in d["rows"] if r["use"] == "check"}
    assert {"Cortex-M4F", "Cortex-M7", "Cortex-M33"} <= held


def test_stored_heldout_errors_cover_every_check_row_and_add_up():
    """heldout.json (bench_firmware.py --heldout --write) holds every row of published_rows.yaml; its per-core
    median and worst come from the check rows only, and each error is predicted / published - 1."""
    import json
    import statistics

    d = _data()
    stored = json.loads((ROWS.parent / "heldout.json").read_text())
    assert {(r["board"], r["model"], r["use"]) for r in stored["rows"]} == {(r["board"], r["model"], r["use"]) for r in d["rows"]}
    per_core: dict = {}
    for r in stored["rows"]:
        assert r["error"] == pytest.approx(r["predicted_ms"] / r["ms"] - 1, abs=1e-3)
        assert r["lower_ms"] <= r["predicted_ms"]
        if r["use"] == "check":
            per_core.setdefault(r["core"], []).append(abs(r["error"]))
    assert set(per_core) == set(stored["cores"])
    for core, errs in per_core.items():
        s = stored["cores"][core]
        assert s["rows"] == len(errs)
        assert s["median_abs_error"] == pytest.approx(statistics.median(errs), abs=1e-3)
        assert s["worst_abs_error"] == pytest.approx(max(errs), abs=1e-3)


def test_a_measurement_fault_source_has_a_row_no_cortex_m_could_run():
    """A source is marked measurement-fault only when one of its rows needs more than two instructions per cycle
    (the instructions of the firmware built here at the row's level over the published cycles): no Cortex-M core
    issues more. Every row of such a source is marked, and no other row breaks the rule."""
    import json

    d = _data()
    stored = {(r["board"], r["model"]): r for r in json.loads((ROWS.parent / "heldout.json").read_text())["rows"]}

    def ipc(r):
        s = stored[(r["board"], r["model"])]
        assert s["opt_level"] == r.get("opt_level") and s["instructions"] > 0
        return s["instructions"] / (r["ms"] * 1e3 * d["boards"][r["board"]]["clock_mhz"])

    faulty = {r["url"] for r in d["rows"] if ipc(r) > 2.0}
    assert faulty, "no row breaks the rule: nothing should be marked measurement-fault"
    for r in d["rows"]:
        assert (r["use"] == "measurement-fault") == (r["url"] in faulty), (r["board"], r["model"], round(ipc(r), 2))
