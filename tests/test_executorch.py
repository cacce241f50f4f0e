"""PyTorch -> ExecuTorch (.pte, XNNPACK): float parity, int8 accuracy, the runner, the CLI, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("executorch", reason="executorch (the 'executorch' extra) is not installed")

from workbench import api  # noqa: E402
from workbench.cli import main  # noqa: E402
from workbench.frontends.loader import LoadOptions  # noqa: E402

from conftest import DIGITS_FACTORY, FASHION_FACTORY, MODELS  # noqa: E402
from test_remote_profile import board  # noqa: E402,F401  (a fixture: a real sshd on 127.0.0.1)

SOURCES = {"digits": (MODELS / "digits_torch.pt", DIGITS_FACTORY, "digits"),
           "fashion": (MODELS / "fashion_torch.pt", FASHION_FACTORY, "fashion-mnist")}
# int8 accuracy may fall at most this far below the float model's on held-out data (percentage points).
INT8_MAX_DROP_PP = 1.5
CALIB = 128


@pytest.fixture(scope="module")
def pte(tmp_path_factory):
    """(name, scheme) -> the Artifact of that reference model exported to .pte (built once, on demand)."""
    folder = tmp_path_factory.mktemp("pte")
    built = {}

    def get(name: str, scheme: str):
        if (name, scheme) not in built:
            src, factory, data = SOURCES[name]
            built[name, scheme] = api.convert(src, "executorch", folder / f"{name}_{scheme}.pte", scheme=scheme,
                                              calib=f"{data}:train" if scheme == "int8" else None, calib_samples=CALIB,
                                              load_options=LoadOptions(factory=factory))
        return built[name, scheme]

    return get


@pytest.mark.parametrize("name", ["digits", "fashion"])
def test_float_program_matches_torch(pte, name):
    art = pte(name, "float")
    recipe = art.extra["recipe"]
    assert recipe["backend"] == "XNNPACK"
    assert recipe["ops_outside_xnnpack"] == [] and recipe["xnnpack_partitions"] == 1  # the whole CNN in XNNPACK
    assert recipe["means_given_keepdim"] == (1 if name == "fashion" else 0)  # fashion's global average pool
    par = recipe["parity"]
    assert par["samples"] == 16 and par["argmax_agreement"] == 1.0
    assert par["max_abs_error"] < 1e-4 * max(1.0, par["reference_max_abs"]), par
    manifest = json.loads(art.manifest_path.read_text())
    assert manifest["artifact"]["format"] == "executorch" and manifest["libraries"]["executorch"] == "1.5.1"
    assert manifest["recipe"]["parity"] == par


def test_runner_reproduces_the_export_time_parity(pte):
    from workbench.export import parity
    from workbench.frontends import load
    from workbench.runtimes import open_runner

    art = pte("digits", "float")
    handle = load(SOURCES["digits"][0], LoadOptions(factory=DIGITS_FACTORY))
    x = parity.parity_inputs(handle.inputs[0].shape, None)  # the same seeded samples the export used
    runner = open_runner(art.path)
    assert runner.name == "executorch" and runner.inputs[0].shape == (1, 1, 8, 8)
    got = runner.predict(x)
    m = parity.measure(parity.run_model(handle, x), got)
    assert m["max_abs_error"] == art.extra["recipe"]["parity"]["max_abs_error"]
    np.testing.assert_array_equal(got, open_runner(art.path).predict(x))  # deterministic across loads


@pytest.mark.parametrize("name", ["digits", "fashion"])
def test_int8_program_keeps_accuracy(pte, name):
    src, factory, data = SOURCES[name]
    art = pte(name, "int8")
    recipe = art.extra["recipe"]
    assert recipe["quantizer"] == "XNNPACKQuantizer (PT2E)" and art.config["calib_used"] == CALIB
    assert art.bytes < 0.7 * pte(name, "float").bytes  # int8 weights: the program shrinks
    res = api.evaluate(src, art.path, f"{data}:test", load_options=LoadOptions(factory=factory), samples=400).metrics
    assert res["accuracy"] >= res["reference_accuracy"] - INT8_MAX_DROP_PP / 100, res
    assert res["argmax_agreement"] >= 0.97, res


def test_pte_is_recognised_by_content(pte, tmp_path):
    from workbench.frontends.detect import detect_format

    renamed = tmp_path / "model.bin"
    renamed.write_bytes(pte("digits", "float").path.read_bytes())
    assert detect_format(renamed) == "pte"
    broken = tmp_path / "broken.pte"
    broken.write_bytes(renamed.read_bytes()[:200])
    r = CliRunner().invoke(main, ["compare", str(renamed), str(broken), "--data", "digits:test", "--samples", "20"])
    assert r.exit_code == 2 and "broken.pte" in r.output and "Traceback" not in r.output


def test_inspect_and_emulate_a_pte_need_no_torch(pte):
    """The .pte reader is the flatbuffer itself: inspect, and emulate's graph and cost model, run without torch in the
    calling process (emulate measures RAM in a child process that runs ExecuTorch's runtime)."""
    import subprocess
    import sys

    path = str(pte("fashion", "int8").path)
    code = ("import sys, json\nfrom click.testing import CliRunner\nfrom workbench.cli import main\n"
            f"r = CliRunner().invoke(main, ['inspect', {path!r}, '--json'])\n"
            f"e = CliRunner().invoke(main, ['emulate', {path!r}, '--target', 'raspberry-pi-4'])\n"
            "print(json.dumps({'inspect': r.exit_code, 'out': r.stdout, 'emulate': e.exit_code, 'emulate_out': e.output, "
            "'heavy': [m for m in ('torch', 'executorch') if m in sys.modules]}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["heavy"] == [] and res["inspect"] == 0, res
    info = json.loads(res["out"])
    assert info["format"] == "pte" and info["inputs"][0]["shape"] == [1, 1, 28, 28]
    assert info["program"]["instructions"] == ["delegate:XnnpackBackend"]  # one XNNPACK partition, nothing else
    assert info["program"]["segment_bytes"] > 100_000  # the int8 weights live in the delegate's segment
    assert res["emulate"] == 0 and "executorch+xnnpack" in res["emulate_out"], res["emulate_out"]


def test_pte_reader_refuses_corrupt_files_cleanly(pte, tmp_path):
    from fuzz import fuzz_reader

    from workbench.frontends.pte_reader import read_pte

    f = tmp_path / "x.pte"

    def read(data: bytes):
        f.write_bytes(data)
        return read_pte(f)

    # the header's first 8 bytes are kept; changes fall in the flatbuffer part
    outcomes = fuzz_reader(pte("digits", "int8").path.read_bytes(), read, seed=0, head=8, span=2400)
    assert outcomes["refused"] > 0 and outcomes["read"] > 0, outcomes


def test_compare_and_benchmark_cli_with_a_pte(pte):
    art = pte("digits", "int8")
    r = CliRunner().invoke(main, ["compare", str(SOURCES["digits"][0]), str(art.path), "--factory", DIGITS_FACTORY,
                                  "--data", "digits:test", "--samples", "200", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["samples"] == 200 and out["argmax_agreement"] >= 0.97
    r = CliRunner().invoke(main, ["benchmark", str(SOURCES["digits"][0]), "--factory", DIGITS_FACTORY, "--calib", "digits:train",
                                  "--data", "digits:test", "--samples", "100", "--runs", "20", "--stack", "pytorch eager",
                                  "--stack", "executorch float", "--json"])
    assert r.exit_code == 0, r.output
    rows = {row["stack"]: row for row in json.loads(r.stdout)["rows"]}
    et = rows["executorch float"]
    assert "error" not in et, et
    assert et["runtime"] == "executorch" and et["argmax_agreement"] == 1.0 and et["latency_ms"] > 0
    r = CliRunner().invoke(main, ["benchmark", str(art.path), "--calib", "digits:train", "--data", "digits:test",
                                  "--samples", "100", "--runs", "20", "--json"])
    assert r.exit_code == 0, r.output
    (row,) = json.loads(r.stdout)["rows"]
    assert row["stack"] == "executorch (as given)" and row["accuracy"] > 0.9


def test_an_op_executorch_cannot_take_is_refused_by_name(tmp_path):
    import torch

    class Cumulative(torch.nn.Module):
        def forward(self, x):
            return torch.cumprod(x, dim=-1)

    src = tmp_path / "cumprod.pt2"
    torch.export.save(torch.export.export(Cumulative(), (torch.rand(1, 8),)), src)
    out = tmp_path / "cumprod.pte"
    r = CliRunner().invoke(main, ["export", str(src), "--format", "executorch", "-o", str(out)])
    assert r.exit_code == 2, r.output
    assert "aten.cumprod" in r.output and "Core ATen" in r.output and "Traceback" not in r.output
    assert not out.exists() and not (tmp_path / "cumprod.pte.json").exists()


def test_unavailable_options_are_refused_before_any_work():
    src, factory, _ = SOURCES["digits"]
    r = CliRunner().invoke(main, ["quantize", str(src), "--factory", factory, "--format", "executorch",
                                  "--scheme", "int16x8", "--calib", "digits:train", "-o", "never.pte"])
    assert r.exit_code == 2 and "float, int8" in r.output


def test_profile_a_pte_with_per_op_times_from_etdump(tmp_path):
    """A program partly in XNNPACK (the conv) and partly in ExecuTorch's own kernels (atan2, which XNNPACK
    does not take): the export says so, and the profile times both kinds of op."""
    import warnings

    import torch

    from workbench import profile as profiling

    class Angle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 8, 3)

        def forward(self, x):
            y = self.conv(x)
            return torch.atan2(y, y + 2.0)

    src = tmp_path / "angle.pt2"
    torch.export.save(torch.export.export(Angle().eval(), (torch.rand(1, 1, 16, 16),)), src)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        art = api.convert(src, "executorch", tmp_path / "angle.pte")
    assert [o["op"] for o in art.extra["recipe"]["ops_outside_xnnpack"]] == ["aten.atan2.default"]
    assert art.extra["recipe"]["parity"]["max_abs_error"] < 1e-5
    assert any("atan2" in str(w.message) and "portable" in str(w.message) for w in caught)
    rep = profiling.profile(art.path, threads=1, runs=10, warmup=2, per_op_runs=5)
    assert rep["runtime"]["name"] == "executorch" and rep["runtime"]["threads"] == 1
    assert rep["model"]["format"] == "pte" and rep["latency"]["p50_ms"] > 0
    by_provider = {}
    for o in rep["ops"]:
        by_provider.setdefault(o["provider"], []).append(o)
        assert o["latency_ms"] >= 0 and o["mean_ms"] >= 0
    assert any(o["kind"] == "Convolution" for o in by_provider["XnnpackBackend"]), rep["ops"]
    assert any("atan2" in o["name"] for o in by_provider["executorch kernels"]), rep["ops"]
    assert sum(o["latency_ms"] for o in rep["ops"]) > 0
    r = CliRunner().invoke(main, ["profile", str(art.path), "--runtime", "litert"])
    assert r.exit_code == 2 and "executorch" in r.output


def test_a_recipe_exports_and_evaluates_a_pte(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""name: et
models:
  - {{name: digits-torch, path: {SOURCES['digits'][0]}, factory: {DIGITS_FACTORY}}}
data: {{calib: digits:train, eval: digits:test, eval_samples: 100, calib_samples: 64}}
variants:
  - {{name: float, scheme: float, formats: [executorch]}}
""")
    r = CliRunner().invoke(main, ["run", str(recipe), "-o", str(tmp_path / "out"), "--json"])
    assert r.exit_code == 0, r.output
    assert list((tmp_path / "out").rglob("model.pte")), sorted(p.name for p in (tmp_path / "out").rglob("*"))
    assert '"executorch"' in r.stdout and "accuracy" in r.stdout


def test_the_keepdim_adapter_is_still_needed_and_exact():
    """XNNPACK takes mean.dim with keepdim=True only: without the rewrite the pool stays outside, with it the
    whole model is one partition computing the same values. When the first assert fails, ExecuTorch takes
    keepdim=False itself and ``keepdim_means`` can go."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from workbench.export.torch_executorch import WhyNotXnnpack, keepdim_means, outside_delegate

    class Pool(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return torch.mean(torch.relu(self.conv(x)), dim=(2, 3))

    model, x = Pool().eval(), torch.rand(1, 3, 8, 8)

    def left(module):
        with WhyNotXnnpack() as why:
            edge = to_edge_transform_and_lower(torch.export.export(module, (x,)), partitioner=[XnnpackPartitioner()])
        return outside_delegate(edge.exported_program(), why.reasons)

    before = left(model)
    assert [o["op"] for o in before] == ["aten.mean.dim"] and "keepdim" in before[0]["reason"], before
    gm = torch.export.export(model, (x,)).module()
    assert keepdim_means(torch, gm) == 1
    torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)
    assert left(gm) == []


def test_remote_profile_of_a_pte_over_ssh(board, pte):
    """The device script on a "board" (this machine over a real sshd, see tests/test_remote_profile.py) runs the
    .pte in ExecuTorch there, with per-op times from its ETDump."""
    import sys

    from workbench import profile as profiling

    rep = profiling.profile_remote(pte("digits", "int8").path, board.destination, runs=10, warmup=1, threads=1,
                                   ssh_options=board.options(), python=sys.executable)
    assert rep["runtime"]["name"] == "executorch" and rep["target"]["remote"] == board.destination
    assert rep["per_op"]["available"] is True and rep["ops"], rep["per_op"]
    assert {o["provider"] for o in rep["ops"]} == {"XnnpackBackend"}  # the int8 digits CNN is one XNNPACK partition


def test_per_tensor_and_mse_calibration_reach_the_quantizer(pte, tmp_path):
    src, factory, data = SOURCES["digits"]
    art = api.convert(src, "executorch", tmp_path / "pt.pte", scheme="int8", calib=f"{data}:train", calib_samples=CALIB,
                      per_channel=False, calibrator="mse", load_options=LoadOptions(factory=factory))
    recipe = art.extra["recipe"]
    assert recipe["per_channel"] is False and recipe["calibrator"] == "mse"
    assert art.bytes < pte("digits", "int8").bytes  # one scale per weight tensor instead of one per channel
    assert recipe["agreement_with_float"]["argmax_agreement"] >= 0.9
