"""workbench profile on this machine: the report, per-op times, errors, Ctrl-C, light imports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from workbench import profile as profiling
from workbench.profile import run as profile_run
from workbench.cli import main
from workbench.profile import device_script as profiler

from conftest import DIGITS_FACTORY

HEAVY = {"torch", "tensorflow", "keras", "tf_keras", "litert_torch", "jax", "executorch"}


@pytest.fixture(scope="session")
def digits_onnx(artifacts, digits_torch_path) -> Path:
    """The digits reference CNN exported by torch.onnx.export, weights inside the file."""
    import contextlib
    import io

    import torch

    from workbench.frontends import load

    out = artifacts / "digits_profile.onnx"
    if not out.exists():
        model = load(digits_torch_path, factory=DIGITS_FACTORY).obj.eval()
        args = dict(input_names=["x"], output_names=["y"])
        with contextlib.redirect_stdout(io.StringIO()):
            try:  # the TorchScript exporter takes 0.5 s, the dynamo one 5-20 s: keep the default tests fast
                torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), str(out), dynamo=False, **args)
            except (TypeError, RuntimeError):  # a torch without the TorchScript exporter
                torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), str(out), external_data=False, **args)
    return out


def _check_common(r: dict, model: Path):
    assert r["kind"] == "measurement" and r["schema"] == "workbench.profile/1"
    assert r["model"]["name"] == model.name and r["model"]["bytes"] == model.stat().st_size
    from workbench.core.files import sha256_file

    assert r["model"]["sha256"] == sha256_file(model)
    assert r["target"]["remote"] is None and r["target"]["description"]
    assert r["target"]["system"]["cores"] >= 1 and r["target"]["system"]["machine"]
    lat = r["latency"]
    assert lat["runs"] == r["settings"]["runs"]
    assert 0 < lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]
    assert r["latency_ms"] == lat["mean_ms"] > 0 and lat["std_ms"] >= 0
    assert r["load_ms"] > 0 and r["first_inference_ms"] > 0
    assert r["throughput"]["inferences_per_s"] > 0
    assert isinstance(r["ram_bytes"], int) and r["memory"]["peak_rss_bytes"] > 0
    assert r["interrupted"] is False
    json.dumps(r)  # JSON-ready


def test_profile_tflite_float(digits_tflite_float):
    r = profiling.profile(digits_tflite_float, runs=30, warmup=3, threads=1)
    _check_common(r, digits_tflite_float)
    assert r["runtime"]["name"] == "litert" and r["runtime"]["module"] in ("ai_edge_litert", "tflite_runtime", "tensorflow.lite")
    assert r["runtime"]["threads"] == 1 and r["settings"]["threads"] == 1
    assert r["inputs"][0]["dtype"] == "float32" and r["inputs"][0]["shape"][0] == 1
    # LiteRT has no per-op timer in Python: the report says so, and lists the graph's ops without times.
    assert r["per_op"]["available"] is False and "benchmark_model" in r["per_op"]["reason"]
    kinds = [o["kind"] for o in r["ops"]]
    assert "CONV_2D" in kinds and "FULLY_CONNECTED" in kinds
    assert all(o["latency_ms"] is None for o in r["ops"]) and [o["index"] for o in r["ops"]] == list(range(len(kinds)))


def test_profile_tflite_int8_uses_integer_inputs(digits_tflite_int8):
    r = profiling.profile(digits_tflite_int8, runs=10, warmup=1)
    _check_common(r, digits_tflite_int8)
    assert r["inputs"][0]["dtype"] == "int8"
    assert r["runtime"]["threads"] == r["target"]["system"]["cores_available"]  # default: every core


def test_profile_onnx_per_op(digits_onnx):
    r = profiling.profile(digits_onnx, runs=20, warmup=2)
    _check_common(r, digits_onnx)
    assert r["runtime"]["name"] == "ort" and r["runtime"]["module"] == "onnxruntime"
    assert r["per_op"]["available"] is True and r["per_op"]["runs"] == 20
    assert r["ops"] and all(o["latency_ms"] >= 0 and o["name"] and o["kind"] for o in r["ops"])
    assert {"Gemm", "MatMul", "FusedGemm"} & {o["kind"] for o in r["ops"]}
    assert [o["index"] for o in r["ops"]] == list(range(len(r["ops"])))


def test_ctrl_c_returns_partial_results(digits_tflite_float):
    def progress(ev):
        if ev.get("event") == "progress" and ev.get("stage") == "runs":
            raise KeyboardInterrupt

    r = profiling.profile(digits_tflite_float, runs=10_000, warmup=0, progress=progress)
    assert r["interrupted"] is True
    assert 1 <= r["latency"]["runs"] < 10_000 and r["latency_ms"] > 0
    assert r["per_op"]["available"] is False and "interrupted" in r["per_op"]["reason"]


def test_stop_event_ends_runs(digits_tflite_float):
    import threading

    stop = threading.Event()
    stop.set()
    r = profiler.profile_model(str(digits_tflite_float), "litert", 1, 100, 5, stop=stop)
    assert r["interrupted"] is True and r["latency"]["runs"] == 0 and r["latency_ms"] is None
    assert r["load_ms"] > 0 and r["first_inference_ms"] > 0


def test_progress_events(digits_tflite_float):
    events = []
    profiling.profile(digits_tflite_float, runs=5, warmup=2, progress=events.append)
    stages = [e["stage"] for e in events if e["event"] == "stage"]
    assert stages == ["load", "first", "warmup", "runs", "per_op"]
    last = [e for e in events if e["event"] == "progress" and e["stage"] == "runs"][-1]
    assert last["done"] == last["total"] == 5


# --- errors -------------------------------------------------------------------------------

def _cli(*args):
    return CliRunner().invoke(main, list(args))


def test_cli_json_and_output(digits_tflite_float, tmp_path):
    out = tmp_path / "r.json"
    res = _cli("profile", str(digits_tflite_float), "--runs", "5", "--warmup", "1", "--json", "-o", str(out))
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    assert r["kind"] == "measurement" and json.loads(out.read_text())["model"]["sha256"] == r["model"]["sha256"]
    again = _cli("profile", str(digits_tflite_float), "--runs", "5", "-o", str(out))
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_cli_human_output(digits_onnx):
    res = _cli("profile", str(digits_onnx), "--runs", "5", "--warmup", "0", "--threads", "1")
    assert res.exit_code == 0, res.output
    for text in ("latency p50", "latency p99", "model load", "first inference", "throughput", "per-op", "ort via onnxruntime"):
        assert text in res.output


def test_cli_interrupted_prints_partial_and_exits_130(digits_tflite_float, monkeypatch):
    real = profiling.profile

    def interrupted(*a, **kw):
        def progress(ev):
            if ev.get("event") == "progress" and ev.get("stage") == "runs":
                raise KeyboardInterrupt

        return real(a[0], runs=1000, warmup=0, progress=progress)

    monkeypatch.setattr(profiling, "profile", interrupted)
    res = _cli("profile", str(digits_tflite_float))
    assert res.exit_code == 130
    assert "INTERRUPTED" in res.output and "latency p50" in res.output


@pytest.mark.parametrize("args, code, text", [
    (["--runs", "0"], 2, "--runs"),
    (["--threads", "0"], 2, "--threads"),
    (["--runtime", "ort"], 2, "--runtime litert"),
    (["--ssh-option", "Port=22"], 2, "--remote"),
    (["--remote", "-oProxyCommand=x"], 2, "not an ssh destination"),
    (["--remote", "pi@host:22"], 2, "ssh://"),
    (["--remote", "pi@host", "--ssh-option", "-F /x"], 2, "not an ssh option"),
])
def test_cli_bad_options(digits_tflite_float, args, code, text):
    res = _cli("profile", str(digits_tflite_float), *args)
    assert res.exit_code == code, res.output
    assert text in res.output


def test_bad_models(tmp_path, digits_tflite_float, digits_keras_path):
    res = _cli("profile", str(tmp_path / "missing.tflite"))
    assert res.exit_code == 2 and "does not exist" in res.output
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(digits_tflite_float.read_bytes()[:3000])
    res = _cli("profile", str(cut))
    assert res.exit_code == 2 and "could not load" in res.output and "cut.tflite" in res.output
    res = _cli("profile", str(digits_keras_path))
    assert res.exit_code == 2 and "workbench export" in res.output


# --- the profiler as a self-contained script ----------------------------------------------

def test_script_runs_without_workbench(digits_tflite_float, tmp_path):
    """The file runs with workbench made unimportable: it is what a board without workbench runs."""
    script = tmp_path / "profiler_copy.py"
    shutil.copy(profiler.__file__, script)
    code = ("import runpy, sys; sys.modules['workbench'] = None; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code, str(script), str(digits_tflite_float), "--runs", "3", "--warmup", "0"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["kind"] == "measurement" and r["latency"]["runs"] == 3 and r["model"]["name"] == digits_tflite_float.name


def test_script_syntax_runs_on_old_board_pythons():
    """Raspberry Pi OS Buster ships Python 3.7: the streamed script must parse there."""
    import ast

    ast.parse(Path(profiler.__file__).read_text(), feature_version=(3, 7))


def test_script_protocol_over_stdin_with_stop(digits_onnx):
    """The remote protocol without ssh: script, then model on stdin, then 'stop' on the control channel."""
    model = digits_onnx.read_bytes()
    script = Path(profiler.__file__).read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", profile_run.BOOTSTRAP, "--events", "--control-stdin", "--model-stdin",
                             str(len(model)), "--model-name", "n a m e.onnx", "--runtime", "ort", "--runs", "100000000"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdin.write(b"%d\n" % len(script) + script + model)
    proc.stdin.flush()
    for line in proc.stderr:  # wait until the runs have started
        if line.startswith(profiler.EVENT_PREFIX.encode()) and b'"stage": "runs"' in line:
            break
    proc.stdin.write(b"stop\n")
    proc.stdin.close()
    out = proc.stdout.read()
    proc.stderr.read()
    proc.wait(timeout=60)
    r = json.loads(out)
    assert proc.returncode == 0 and r["interrupted"] is True and r["model"]["name"] == "n a m e.onnx"
    assert r["latency"]["runs"] < 100000000


def test_script_reports_missing_runtime(tmp_path, digits_tflite_float):
    blockers = tmp_path / "blockers"
    for mod in ("ai_edge_litert", "tflite_runtime", "tensorflow"):
        (blockers / mod).mkdir(parents=True)
        (blockers / mod / "__init__.py").write_text("raise ImportError('not on this board')\n")
    env = dict(os.environ, PYTHONPATH=str(blockers))
    proc = subprocess.run([sys.executable, profiler.__file__, str(digits_tflite_float)], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 3
    err = json.loads(proc.stdout)["error"]
    assert err["kind"] == "missing_dependency" and err["pip"] == "ai-edge-litert"


# --- small pieces -------------------------------------------------------------------------

def test_latency_stats_match_numpy(rng):
    xs = list(rng.exponential(1.0, size=101))
    s = profiler.latency_stats(xs)
    for q in (50, 90, 99):
        assert s[f"p{q}_ms"] == pytest.approx(np.percentile(xs, q))
    assert s["std_ms"] == pytest.approx(np.std(xs, ddof=1)) and s["mean_ms"] == pytest.approx(np.mean(xs))
    assert profiler.latency_stats([])["mean_ms"] is None


def test_parse_ort_trace_drops_first_run_and_takes_median():
    def run(ts, durs):
        ev = [{"cat": "Session", "name": "model_run", "ts": ts, "dur": 100}]
        for k, (node, d) in enumerate(durs):
            ev.append({"cat": "Node", "name": f"{node}_kernel_time", "ts": ts + 1 + k, "dur": d,
                       "args": {"op_name": node.upper(), "node_index": str(k), "provider": "CPUExecutionProvider"}})
        return ev

    events = run(0, [("conv", 5000), ("gemm", 900)]) + run(1000, [("conv", 10), ("gemm", 3)]) + \
        run(2000, [("conv", 12), ("gemm", 4)]) + run(3000, [("conv", 400), ("gemm", 5)])
    ops = profiler.parse_ort_trace(events)
    assert [o["name"] for o in ops] == ["conv", "gemm"] and ops[0]["kind"] == "CONV"
    assert ops[0]["latency_ms"] == pytest.approx(0.012) and ops[1]["latency_ms"] == pytest.approx(0.004)
    assert ops[0]["mean_ms"] == pytest.approx((10 + 12 + 400) / 3 / 1000)


def test_thermal_and_throttling(tmp_path, monkeypatch):
    zone = tmp_path / "thermal_zone0"
    zone.mkdir()
    (zone / "temp").write_text("48312\n")
    (zone / "type").write_text("cpu-thermal\n")
    monkeypatch.setattr(profiler.shutil, "which", lambda name: "/usr/bin/vcgencmd" if name == "vcgencmd" else None)

    class Done:
        stdout = "throttled=0x50005\n"

    monkeypatch.setattr(profiler.subprocess, "run", lambda *a, **kw: Done())
    st = profiler.thermal_state(str(tmp_path))
    assert st["temperature_c"] == {"cpu-thermal": 48.3}
    thr = st["throttled"]
    assert thr["raw"] == "0x50005" and thr["now"] and thr["since_boot"]
    assert "under-voltage now" in thr["flags"] and "throttling has occurred" in thr["flags"]


def test_arm_board_description():
    facts = {"board": "Raspberry Pi 4 Model B Rev 1.4", "cpu_model": None, "cpu_core": "Cortex-A72", "cores": 4,
             "cpu_mhz": {"max": 1800.0}, "machine": "aarch64"}
    assert profiler.describe_machine(facts) == "Raspberry Pi 4 Model B Rev 1.4, 4 cores Cortex-A72, up to 1800 MHz, aarch64"


# --- comparing reports --------------------------------------------------------------------

ESTIMATE = {"kind": "estimate", "target": "rpi4", "model": {"name": "m.tflite"}, "latency_ms": 2.0, "ram_bytes": 1000,
            "flash_bytes": 5000,
            "ops": [{"index": 0, "name": "conv1", "kind": "CONV_2D", "latency_ms": 1.5},
                    {"index": 1, "name": "fc", "kind": "FULLY_CONNECTED", "latency_ms": 0.5},
                    {"index": 2, "name": "sm", "kind": "SOFTMAX", "latency_ms": 0.01}]}
MEASURED = {"kind": "measurement", "target": {"name": "pi@pi4", "description": "Raspberry Pi 4"},
            "model": {"name": "m.tflite"}, "latency_ms": 3.0, "ram_bytes": 1500,
            "ops": [{"index": 0, "name": "/conv1_fused", "kind": "Conv_2d", "latency_ms": 2.25},
                    {"index": 1, "name": "fc", "kind": "FULLY_CONNECTED", "latency_ms": 0.25}]}


def test_compare_reports_totals_and_ops():
    c = profiling.compare_reports(ESTIMATE, MEASURED)
    totals = {t["metric"]: t for t in c["totals"]}
    assert totals["latency_ms"]["ratio"] == pytest.approx(1.5) and totals["ram_bytes"]["ratio"] == pytest.approx(1.5)
    assert totals["flash_bytes"]["b"] is None and totals["flash_bytes"]["ratio"] is None
    ops = {o["name"]: o for o in c["ops"]}
    assert ops["fc"]["matched_by"] == "name" and ops["fc"]["ratio"] == pytest.approx(0.5)
    assert ops["conv1"]["matched_by"] == "kind order" and ops["conv1"]["ratio"] == pytest.approx(1.5)
    assert "sm" not in ops  # no measured time for it
    assert c["a"]["kind"] == "estimate" and c["b"]["target"] == "pi@pi4"


def test_compare_report_cli(tmp_path, digits_tflite_float):
    a, b = tmp_path / "est.json", tmp_path / "meas.json"
    a.write_text(json.dumps(ESTIMATE))
    b.write_text(json.dumps(MEASURED))
    res = _cli("compare-report", str(a), str(b))
    assert res.exit_code == 0, res.output
    assert "latency_ms" in res.output and "1.50x" in res.output and "conv1" in res.output
    res = _cli("compare-report", str(a), str(b), "--json")
    assert json.loads(res.output)["totals"][0]["metric"] == "latency_ms"
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    res = _cli("compare-report", str(a), str(bad))
    assert res.exit_code == 2 and "not JSON" in res.output
    res = _cli("compare-report", str(a), str(digits_tflite_float))
    assert res.exit_code == 2


def test_compare_real_reports_note_missing_per_op(digits_tflite_float, tmp_path):
    m = profiling.profile(digits_tflite_float, runs=5, warmup=0)
    c = profiling.compare_reports(ESTIMATE, m)
    assert c["ops"] == [] and any("B has no per-op times" in n for n in c["notes"])


# --- the light-install promise ------------------------------------------------------------

def test_profile_imports_no_heavy_framework(digits_tflite_float, digits_onnx, tmp_path):
    code = f"""
import json, sys
from click.testing import CliRunner
from workbench.cli import main
codes = []
for args in (["--help"], ["profile", "--help"], ["profile", {str(digits_tflite_float)!r}, "--runs", "3", "--json"],
             ["profile", {str(digits_onnx)!r}, "--runs", "3", "--json", "-o", {str(tmp_path / 'r.json')!r}],
             ["compare-report", {str(tmp_path / 'r.json')!r}, {str(tmp_path / 'r.json')!r}]):
    codes.append(CliRunner().invoke(main, args).exit_code)
print(json.dumps({{"codes": codes, "loaded": sorted({{m.split(".")[0] for m in sys.modules}})}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["codes"] == [0, 0, 0, 0, 0]
    assert not HEAVY & set(out["loaded"]), HEAVY & set(out["loaded"])


# --- calibrating a target from measurements -----------------------------------------------

def _fake_measurement(model: Path, latency_ms: float, threads: int, runtime: str = "litert") -> dict:
    from workbench.core.files import sha256_file

    return {"kind": "measurement", "model": {"name": model.name, "path": str(model), "sha256": sha256_file(model)},
            "runtime": {"name": runtime, "threads": threads}, "latency_ms": latency_ms, "interrupted": False}


def test_calibrate_one_measurement_makes_it_exact(digits_tflite_float, tmp_path):
    from workbench.emulate import emulate, load_target_file

    from workbench.profile.calibrate import calibrate, write_target

    measured = profiling.profile(digits_tflite_float, runs=50, warmup=5, threads=1, per_op=False)
    res = calibrate("host", [("measured.json", measured)], name="my-host")
    row = res.rows[0]
    assert row["measured_ms"] == measured["latency_ms"] and abs(row["after_error"]) < 1e-3
    assert res.error_after < 1e-3 <= res.error_before or res.error_before < 1e-3
    out = write_target(res.target, tmp_path / "my-host.yaml")
    t = load_target_file(out)
    assert t.name == "my-host" and "workbench targets calibrate" in t.cost.calibration
    assert any("measured.json" in s.url for s in t.sources)
    again = emulate(digits_tflite_float, t, threads=1).to_dict()["latency_ms"]
    assert again == pytest.approx(measured["latency_ms"], rel=1e-3)


def test_calibrate_recovers_group_scales(digits_tflite_float, digits_tflite_int8):
    """Measurements made by a known 'true' board: per-group scales are found again."""
    from dataclasses import replace

    from workbench.emulate import emulate, load_target
    from workbench.profile.calibrate import calibrate
    from workbench.emulate.targets import DtypeCost

    base = load_target("raspberry-pi-4")
    truth_scales = {"overhead": 2.0, "int8": 3.0, "int16": 1.0, "float32": 1.5}
    cm = base.cost
    truth = replace(base, cost=replace(cm, op_overhead_cycles=cm.op_overhead_cycles * 2.0, dtypes={
        k: DtypeCost(v.cycles_per_mac * truth_scales[k], v.cycles_per_byte * truth_scales[k]) for k, v in cm.dtypes.items()}))
    reports = [_fake_measurement(m, emulate(m, truth, threads=t).latency.total_ms, t)
               for m in (digits_tflite_float, digits_tflite_int8) for t in (1, 4)]
    res = calibrate(base, reports)
    assert res.error_before > 0.3 and res.error_after < 1e-3
    for g in ("overhead", "int8", "float32"):
        assert res.scales[g] == pytest.approx(truth_scales[g], rel=1e-3)


def test_calibrate_cli_and_errors(digits_tflite_float, digits_onnx, tmp_path):
    good = tmp_path / "pf.json"
    good.write_text(json.dumps(_fake_measurement(digits_tflite_float, 0.05, 1)))
    out = tmp_path / "board.yaml"
    res = _cli("targets", "calibrate", "host", "--from", str(good), "-o", str(out))
    assert res.exit_code == 0, res.output
    assert "before" in res.output and "after" in res.output and out.exists()
    assert _cli("targets", "show", str(out)).exit_code == 0
    res = _cli("targets", "calibrate", "host", "--from", str(good), "-o", str(out))
    assert res.exit_code == 2 and "--overwrite" in res.output
    ort = tmp_path / "ort.json"
    ort.write_text(json.dumps(_fake_measurement(digits_onnx, 0.05, 1, runtime="ort")))
    res = _cli("targets", "calibrate", "host", "--from", str(ort), "-o", str(tmp_path / "x.yaml"))
    assert res.exit_code == 2 and "litert" in res.output
    res = _cli("targets", "calibrate", "stm32l4r5", "--from", str(good), "-o", str(tmp_path / "x.yaml"))
    assert res.exit_code == 2 and "only LiteRT targets" in res.output
    moved = tmp_path / "moved.json"
    rep = _fake_measurement(digits_tflite_float, 0.05, 1)
    rep["model"]["path"] = str(tmp_path / "gone.tflite")
    moved.write_text(json.dumps(rep))
    res = _cli("targets", "calibrate", "host", "--from", str(moved), "-o", str(tmp_path / "y.yaml"))
    assert res.exit_code == 2 and "--model FILE" in res.output
    res = _cli("targets", "calibrate", "host", "--from", str(moved), "--model", str(digits_tflite_float),
               "-o", str(tmp_path / "y.yaml"), "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["rms_error_after"] < 1e-3


def test_profile_ort_format_whatever_its_name(digits_onnx, tmp_path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "digits.ort")
    so.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(digits_onnx), so, providers=["CPUExecutionProvider"])
    renamed = tmp_path / "digits.model"
    (tmp_path / "digits.ort").rename(renamed)
    r = profiling.profile(renamed, runs=5, warmup=0)
    assert r["model"]["format"] == "ort" and r["runtime"]["name"] == "ort" and r["latency_ms"] > 0
