"""emulate on ExecuTorch programs (.pte): the XNNPACK delegate's graph read without torch, costed by the board's
model, RAM measured in ExecuTorch's runtime in a child process, MCU boards and corrupt files refused."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

pytest.importorskip("executorch", reason="executorch (the 'executorch' extra) is not installed")

from workbench import api  # noqa: E402
from workbench.cli import main  # noqa: E402
from workbench.frontends.loader import LoadOptions  # noqa: E402

from conftest import DIGITS_FACTORY, MODELS  # noqa: E402

DIGITS = MODELS / "digits_torch.pt"


@pytest.fixture(scope="module")
def digits_pte(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pte_emulate")
    return {scheme: api.convert(DIGITS, "executorch", folder / f"digits_{scheme}.pte", scheme=scheme,
                                calib="digits:train" if scheme == "int8" else None, calib_samples=64,
                                load_options=LoadOptions(factory=DIGITS_FACTORY)).path
            for scheme in ("float", "int8")}


@pytest.fixture(scope="module")
def reports(digits_pte):
    out = {}
    for scheme, path in digits_pte.items():
        r = CliRunner().invoke(main, ["emulate", str(path), "--target", "raspberry-pi-4", "--json"])
        assert r.exit_code == 0, r.output
        out[scheme] = json.loads(r.stdout)
    return out


def _torch_layers_with_macs() -> list[dict]:
    """The PyTorch model's layers as `workbench inspect` counts them (conv1, conv2, fc)."""
    r = CliRunner().invoke(main, ["inspect", str(DIGITS), "--factory", DIGITS_FACTORY, "--json"])
    assert r.exit_code == 0, r.output
    return [layer for layer in json.loads(r.stdout)["layers"] if layer["macs"]]


@pytest.mark.parametrize("scheme", ["float", "int8"])
def test_delegate_graph_matches_the_source_layers(reports, scheme):
    rep = reports[scheme]
    layers = _torch_layers_with_macs()
    heavy = [op for op in rep["ops"] if op["macs"]]
    # conv1 has one input channel: XNNPACK runs it as a depthwise convolution (as LiteRT does)
    assert [op["kind"] for op in heavy] == ["DEPTHWISE_CONV_2D", "CONV_2D", "FULLY_CONNECTED"]
    assert [op["macs"] for op in heavy] == [x["macs"] for x in layers] == [4608, 18432, 2560]
    assert rep["macs"] == 25600
    want = "int8" if scheme == "int8" else "float32"
    assert {op["dtype"] for op in heavy} == {want}
    assert all(op["delegated"] for op in rep["ops"])


def test_latency_from_the_cost_model_int8_faster_and_ram_measured(reports):
    for scheme, rep in reports.items():
        assert rep["runtime"]["name"] == "executorch" and rep["runtime"]["kernels"] == "xnnpack"
        assert rep["latency_method"] == "cost model estimate"
        assert rep["latency_ms"] == pytest.approx(sum(op["latency_ms"] for op in rep["ops"]), rel=1e-3)
        assert rep["ram_bytes"] > 0 and rep["memory"]["peak_rss_bytes"] == rep["ram_bytes"]
        assert rep["memory"]["measured_with"].startswith("executorch ")
        assert rep["fits"] is True and rep["unsupported_ops"] == []
        assert any("fitted to" in n and "XNNPACK" in n for n in rep["notes"])
    assert reports["int8"]["latency_ms"] < reports["float"]["latency_ms"]


def test_mcu_target_refuses_a_pte(digits_pte):
    r = CliRunner().invoke(main, ["emulate", str(digits_pte["int8"]), "--target", "stm32l4r5"])
    assert r.exit_code == 2, r.output
    assert "ExecuTorch firmware for MCUs is not built" in r.output and "--format tflite" in r.output
    assert "Traceback" not in r.output


def test_truncated_pte_is_refused_naming_the_file(digits_pte, tmp_path):
    data = digits_pte["int8"].read_bytes()
    for cut in (len(data) // 2, len(data) - 200, 600):
        bad = tmp_path / f"cut{cut}.pte"
        bad.write_bytes(data[:cut])
        r = CliRunner().invoke(main, ["emulate", str(bad), "--target", "raspberry-pi-4"])
        assert r.exit_code == 2, (cut, r.output)
        assert bad.name in r.output and "Traceback" not in r.output


def test_corrupt_delegate_payloads_are_model_format_errors(digits_pte):
    from fuzz import fuzz_reader

    from workbench.frontends.pte_reader import read_calls
    from workbench.frontends.xnnpack_graph import read_xnn_graph

    payload = read_calls(digits_pte["float"]).calls[0].payload
    assert read_xnn_graph(payload).nodes  # the intact one reads
    outcomes = fuzz_reader(payload, lambda data: read_xnn_graph(data, "x.pte"), seed=1)
    assert outcomes["refused"] > 0 and outcomes["read"] > 0, outcomes


def test_eval_runs_the_program_in_executorch(digits_pte):
    r = CliRunner().invoke(main, ["emulate", str(digits_pte["int8"]), "--target", "raspberry-pi-4", "--eval", "digits",
                                  "--json"])
    assert r.exit_code == 0, r.output
    acc = json.loads(r.stdout)["accuracy"]
    assert acc["candidate_runtime"]["runtime"] == "executorch" and acc["samples"] > 100


def test_an_op_outside_the_delegate_is_named_and_priced_as_undelegated(tmp_path):
    """atan2 has no XNNPACK node: ExecuTorch runs it in its portable kernels, which the cost fit does not cover."""
    import torch

    from workbench.emulate.cost import estimate_latency, op_cycles
    from workbench.emulate.pte_board import pte_target
    from workbench.emulate.targets import load_target
    from workbench.frontends import load

    class LinearAtan2(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(16, 8)

        def forward(self, x):
            y = self.fc(x)
            return torch.atan2(y, y + 1.0)

    src = tmp_path / "atan2.pt2"
    torch.export.save(torch.export.export(LinearAtan2().eval(), (torch.rand(1, 16),)), src)
    out = tmp_path / "atan2.pte"
    r = CliRunner().invoke(main, ["export", str(src), "--format", "executorch", "-o", str(out)])
    assert r.exit_code == 0, r.output
    tgt, graph = pte_target(load(out), load_target("raspberry-pi-4"))
    assert tgt.runtime.name == "executorch"
    assert [op.kind for op in graph.ops] == ["FULLY_CONNECTED", "ADD", "aten::atan2.out"]
    assert graph.meta["outside_delegate"] == ("aten::atan2.out",) and graph.macs(graph.ops[0]) == 16 * 8
    est = estimate_latency(graph, tgt, 1, set(graph.meta["delegated"]))
    assert [o.delegated for o in est.ops] == [True, True, False]
    atan = graph.ops[2]
    assert est.ops[2].cycles == pytest.approx(op_cycles(graph, atan, tgt, 1, False))
    assert op_cycles(graph, atan, tgt, 1, False) > op_cycles(graph, atan, tgt, 1, True)  # the undelegated factor


def test_inspect_reads_layers_params_and_macs_from_the_delegate(digits_pte):
    """inspect of a .pte counts what the PyTorch model it came from has: parameters and MACs per layer."""
    r = CliRunner().invoke(main, ["inspect", str(DIGITS), "--factory", DIGITS_FACTORY, "--json"])
    src = json.loads(r.stdout)
    for scheme, path in digits_pte.items():
        r = CliRunner().invoke(main, ["inspect", str(path), "--json"])
        assert r.exit_code == 0, r.output
        info = json.loads(r.stdout)
        assert info["parameters"] == src["parameters"] == 3818, scheme
        assert info["macs"] == src["macs"] == 25600, scheme
        heavy = [(x["op"], x["params"], x["macs"]) for x in info["layers"] if x["macs"]]
        assert heavy == [("DEPTHWISE_CONV_2D", 80, 4608), ("CONV_2D", 1168, 18432), ("FULLY_CONNECTED", 2570, 2560)]
