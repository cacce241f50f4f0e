"""The per-op terms of the latency model (element cycles, thread grain, depthwise factor) and the published
Raspberry Pi rows the profiles are fitted to: built from small hand-made graphs, no framework needed."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from workbench.emulate import load_target
from workbench.emulate.cost import activation_bytes, activation_elements, estimate_latency, speedup
from workbench.emulate.targets import DtypeCost, target_from_dict
from workbench.frontends.graph import Graph, Op, Tensor

ROOT = Path(__file__).resolve().parents[1]


def _pi_fit():
    spec = importlib.util.spec_from_file_location("pi_fit", ROOT / "scripts" / "pi_fit.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("pi_fit", mod)
    spec.loader.exec_module(mod)
    return mod


def _graph(hw: int = 56, cin: int = 32, cout: int = 64, *, hard_swish: bool = False, se_mul: bool = False,
           dtype: str = "float32") -> Graph:
    """input -> 1x1 CONV_2D -> 3x3 DEPTHWISE_CONV_2D [-> HARD_SWISH] [-> MUL by a per-channel vector]."""
    t = [Tensor(0, "in", (1, hw, hw, cin), dtype), Tensor(1, "w", (cout, 1, 1, cin), dtype, const=True),
         Tensor(2, "pw", (1, hw, hw, cout), dtype), Tensor(3, "dw_w", (1, 3, 3, cout), dtype, const=True),
         Tensor(4, "dw", (1, hw, hw, cout), dtype)]
    ops = [Op(0, "CONV_2D", 1, (0, 1), (2,)), Op(1, "DEPTHWISE_CONV_2D", 1, (2, 3), (4,))]
    last = 4
    if hard_swish:
        t.append(Tensor(len(t), "hs", (1, hw, hw, cout), dtype))
        ops.append(Op(len(ops), "HARD_SWISH", 1, (last,), (len(t) - 1,)))
        last = len(t) - 1
    if se_mul:
        t.append(Tensor(len(t), "gate", (1, 1, 1, cout), dtype))
        t.append(Tensor(len(t), "se", (1, hw, hw, cout), dtype))
        ops.append(Op(len(ops), "MUL", 1, (last, len(t) - 2), (len(t) - 1,)))
        last = len(t) - 1
    return Graph(format="tflite", tensors=tuple(t), ops=tuple(ops), inputs=(0,), outputs=(last,))


def _with(target, **cost):
    return replace(target, cost=replace(target.cost, **cost))


def test_hard_swish_and_squeeze_excite_mul_cost_their_elements():
    pi = _with(load_target("raspberry-pi-4"), element_cycles={"HARD_SWISH": 3.0, "MUL": 2.0})
    plain, hs, se = _graph(), _graph(hard_swish=True), _graph(hard_swish=True, se_mul=True)
    e_plain, e_hs, e_se = (estimate_latency(g, pi, threads=4) for g in (plain, hs, se))
    hs_op, mul_op = hs.ops[2], se.ops[3]
    cpb = pi.cost.dtypes["float32"].cycles_per_byte
    # HARD_SWISH and MUL are not split across threads: their whole element cost is paid once
    assert e_hs.ops[2].cycles == pytest.approx(pi.cost.op_overhead_cycles + cpb * activation_bytes(hs, hs_op)
                                               + 3.0 * activation_elements(hs, hs_op))
    assert e_se.ops[3].cycles == pytest.approx(pi.cost.op_overhead_cycles + cpb * activation_bytes(se, mul_op)
                                               + 2.0 * activation_elements(se, mul_op))
    assert activation_elements(hs, hs_op) == 2 * 56 * 56 * 64
    assert e_plain.total_ms < e_hs.total_ms < e_se.total_ms
    # a kind the profile does not list costs only its overhead and bytes
    no_terms = _with(pi, element_cycles={})
    assert estimate_latency(hs, no_terms, threads=4).ops[2].cycles == pytest.approx(
        pi.cost.op_overhead_cycles + cpb * activation_bytes(hs, hs_op))


def test_threads_do_not_speed_up_a_tiny_op_but_do_a_large_one():
    pi = _with(load_target("raspberry-pi-4"), parallel_grain=1e5, op_overhead_cycles=0.0)
    tiny, large = _graph(hw=1, cin=8, cout=8), _graph(hw=56, cin=64, cout=128)
    t1, t4 = estimate_latency(tiny, pi, threads=1), estimate_latency(tiny, pi, threads=4)
    assert t4.ops[0].cycles / t1.ops[0].cycles > 0.99  # 64 MACs: no speed-up
    l1, l4 = estimate_latency(large, pi, threads=1), estimate_latency(large, pi, threads=4)
    assert l1.ops[0].cycles / l4.ops[0].cycles > 3.3  # 25.7 M MACs: nearly the full 1 + 3 x 0.8
    assert speedup(4, 0.8, 1e5, 1e5) == pytest.approx(1 + 3 * 0.8 / 2)  # half the benefit at the grain
    assert speedup(4, 0.8, 10, 0.0) == pytest.approx(3.4)  # grain 0: the full speed-up, as before


def test_depthwise_factor_scales_only_depthwise_macs():
    pi = load_target("raspberry-pi-4")
    g = _graph()
    a = estimate_latency(g, _with(pi, class_factors={"depthwise": 1.0}), threads=1)
    b = estimate_latency(g, _with(pi, class_factors={"depthwise": 5.0}), threads=1)
    assert a.ops[0].cycles == pytest.approx(b.ops[0].cycles)
    cpm = pi.cost.dtypes["float32"].cycles_per_mac
    assert b.ops[1].cycles - a.ops[1].cycles == pytest.approx(4.0 * cpm * g.macs(g.ops[1]))


OLD_PI4 = """
name: old-pi
title: A profile written before element_cycles and parallel_grain existed
kind: linux
core: 4x Cortex-A72
clock_mhz: 1500
cores: 4
threads: 4
flash_bytes: null
ram_bytes: 1073741824
runtime: {name: litert, kernels: xnnpack, code_bytes: 1, ram_overhead_bytes: 1}
cost:
  op_overhead_cycles: 929
  dtypes:
    int8: {cycles_per_mac: 0.2663, cycles_per_byte: 0.406}
    int16: {cycles_per_mac: 0.5326, cycles_per_byte: 0.812}
    float32: {cycles_per_mac: 0.7793, cycles_per_byte: 0.0}
  class_factors: {}
  parallel_efficiency: 0.8
  undelegated_factor: 2.5
sources: [{fact: f, url: u}]
"""


def test_a_profile_without_the_new_fields_gives_the_old_numbers():
    t = target_from_dict(yaml.safe_load(OLD_PI4), "old.yaml")
    assert t.cost.element_cycles == {} and t.cost.parallel_grain == 0.0
    assert "element_cycles" not in t.to_dict()["cost"] and "parallel_grain" not in t.to_dict()["cost"]
    g = _graph(hard_swish=True, se_mul=True)
    est = estimate_latency(g, t, threads=4)
    parallel = {"CONV_2D", "DEPTHWISE_CONV_2D"}
    for op, row in zip(g.ops, est.ops):  # the formula before the new terms
        work = 0.7793 * g.macs(op) + 0.0 * activation_bytes(g, op)
        expected = 929 + (work / 3.4 if op.kind in parallel else work)
        assert row.cycles == pytest.approx(expected)
    for name in ("stm32l4r5", "host", "nrf52840"):  # profiles that do not use the new fields still load
        c = load_target(name).cost
        assert c.element_cycles == {} and c.parallel_grain == 0.0


@pytest.mark.parametrize("bad,field", [({"element_cycles": {"MUL": -1}}, "cost.element_cycles.MUL"),
                                       ({"element_cycles": [1]}, "cost.element_cycles"),
                                       ({"parallel_grain": -5}, "cost.parallel_grain")])
def test_bad_new_fields_name_the_field(bad, field):
    from workbench.core.errors import ConfigError

    d = yaml.safe_load(OLD_PI4)
    d["cost"].update(bad)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        target_from_dict(d, "bad.yaml")


def test_published_rows_parse_and_fit_and_check_rows_are_apart():
    pf = _pi_fit()
    rows = pf.load_rows()
    assert len(rows) >= 12
    for r in rows:
        assert r["url"].startswith("https://") and r["software"] and r["use"] in ("fit", "check")
        assert r["model"] in pf.BUILDERS and r["dtype"] in ("float32", "int8") and r["threads"] >= 1
        load_target(r["board"])
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))
    fit = {(r["board"], r["os"], r["model"], r["dtype"]) for r in rows if r["use"] == "fit"}
    check = {(r["board"], r["os"], r["model"], r["dtype"]) for r in rows if r["use"] == "check"}
    assert fit and check and not fit & check  # no measurement is both fitted and checked
    assert any(r["use"] == "check" and (r["board"], r["os"]) == pf.REFERENCE for r in rows)


def test_a_row_without_its_source_is_refused(tmp_path):
    pf = _pi_fit()
    p = tmp_path / "rows.yaml"
    p.write_text("rows:\n- {id: a, board: raspberry-pi-4, os: arm64, model: mobilenet_v1, dtype: int8, ms: 1,"
                 " threads: 4, clock_mhz: 1500, software: x, use: fit}\n")
    with pytest.raises(ValueError, match="url"):
        pf.load_rows(p)


def test_the_fit_evaluates_the_same_model_as_emulate_and_recovers_known_coefficients():
    """The fast evaluation the fit uses equals estimate_latency; a fit to rows made by known coefficients
    finds rows it was not given within a few percent."""
    pf = _pi_fit()
    pi = _with(load_target("raspberry-pi-4"), op_overhead_cycles=500.0, class_factors={"depthwise": 4.0},
               element_cycles={"HARD_SWISH": 0.0, "MUL": 8.0})
    cpb = {"float32": 0.0, "int8": 0.406}
    truth = {"op_overhead_cycles": 500.0, "cpm_float32": pi.cost.dtypes["float32"].cycles_per_mac,
             "cpm_int8": pi.cost.dtypes["int8"].cycles_per_mac, "depthwise": 4.0, "e_HARD_SWISH": 0.0, "e_MUL": 8.0}
    graphs = {("g%d" % k, "float32"): _graph(hw=hw, cin=ci, cout=co, hard_swish=hs, se_mul=se)
              for k, (hw, ci, co, hs, se) in enumerate([(56, 32, 64, False, False), (28, 64, 128, True, True),
                                                         (14, 128, 256, False, True), (7, 256, 512, True, False),
                                                         (112, 16, 32, True, True), (28, 32, 32, False, False),
                                                         (14, 96, 96, True, True)])}
    feats = {k: pf.features(g) for k, g in graphs.items()}
    for k, g in graphs.items():
        fast = pf.cycles(feats[k], truth, 0.0, 4, 0.8, cpb) / pi.clock_hz * 1e3
        assert fast == pytest.approx(estimate_latency(g, pi, threads=4).total_ms, rel=1e-9)
    rows = [{"id": m, "board": "raspberry-pi-4", "os": "arm64", "model": m, "dtype": d, "threads": 4, "clock_mhz": 1500,
             "ms": estimate_latency(g, pi, threads=4).total_ms} for (m, d), g in graphs.items()]
    fitted = pf.fit(rows[:-1], feats, 0.8, cpb, starts=pf.STARTS[:1])
    held = rows[-1]
    assert fitted.predict_ms(held, feats[(held["model"], "float32")], 0.8, cpb) == pytest.approx(held["ms"], rel=0.03)


def test_onnx_ops_use_the_element_cost_of_their_tflite_kind():
    g = _graph(hard_swish=True)
    onnx = replace(g, format="onnx", ops=tuple(replace(o, kind="HardSwish") if o.kind == "HARD_SWISH" else o for o in g.ops))
    pi = _with(load_target("raspberry-pi-4"), element_cycles={"HARD_SWISH": 3.0})
    assert estimate_latency(onnx, pi, threads=1).ops[2].cycles == pytest.approx(estimate_latency(g, pi, threads=1).ops[2].cycles)


def test_calibration_scales_element_cycles_as_its_own_group(digits_tflite_float, digits_tflite_int8):
    """A board whose element work is 2.5x the profile's: calibration finds that scale, and the profile it
    writes estimates every measured run as the calibration's 'after' column says."""
    from workbench.core.files import sha256_file
    from workbench.emulate import emulate
    from workbench.profile.calibrate import calibrate

    base = _with(load_target("raspberry-pi-4"), element_cycles={"CONV_2D": 3.0, "SOFTMAX": 50.0})
    cm = base.cost
    truth = _with(base, op_overhead_cycles=cm.op_overhead_cycles * 2.0, element_cycles={"CONV_2D": 7.5, "SOFTMAX": 125.0},
                  dtypes={k: DtypeCost(v.cycles_per_mac * s, v.cycles_per_byte * s)
                          for (k, v), s in zip(cm.dtypes.items(), (3.0, 1.0, 1.5))})
    reports = [{"kind": "measurement", "model": {"name": m.name, "path": str(m), "sha256": sha256_file(m)},
                "runtime": {"name": "litert", "threads": t}, "interrupted": False,
                "latency_ms": emulate(m, truth, threads=t).latency.total_ms}
               for m in (digits_tflite_float, digits_tflite_int8) for t in (1, 2, 4)]
    res = calibrate(base, reports)
    assert res.scales["elements"] == pytest.approx(2.5, rel=1e-3)
    assert res.target.cost.element_cycles["SOFTMAX"] == pytest.approx(125.0, rel=1e-3)
    for row, rep in zip(res.rows, reports):
        written = emulate(rep["model"]["path"], res.target, threads=rep["runtime"]["threads"]).latency.total_ms
        assert written == pytest.approx(row["after_ms"], rel=1e-4) and written == pytest.approx(rep["latency_ms"], rel=1e-3)


def test_targets_show_prints_the_element_costs():
    from click.testing import CliRunner

    from workbench.cli import main

    out = CliRunner().invoke(main, ["targets", "show", "raspberry-pi-4"]).output
    mul = load_target("raspberry-pi-4").cost.element_cycles["MUL"]
    assert f"cycles per activation element: HARD_SWISH 0, MUL {mul:g}" in out
    assert "cycles per activation element" not in CliRunner().invoke(main, ["targets", "show", "stm32l4r5"]).output
