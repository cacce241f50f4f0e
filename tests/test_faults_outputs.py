"""Fault injection on what commands leave behind: SIGKILL at any moment of an export, a killed
`workbench run` and its workers, two runs on one output folder, a full disk (a small tmpfs).
Real processes and real signals; run with `make test-faults`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.faults

CLI = [sys.executable, "-m", "workbench"]


def _sha(p: Path) -> str:
    from workbench.core.files import sha256_file

    return sha256_file(p)


def _children(pid: int) -> set[int]:
    out = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.add(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _workers(pid: int) -> set[int]:
    """The spawned worker processes of a run (not the resource tracker)."""
    found = set()
    for c in _children(pid):
        try:
            cmd = Path(f"/proc/{c}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"spawn_main" in cmd:
            found.add(c)
    return found


def _wait(cond, seconds: float, step: float = 0.1):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(step)
    return cond()


def test_sigkill_at_any_moment_never_pairs_a_model_with_another_manifest(tmp_path, digits_keras_path):
    out, man = tmp_path / "m.tflite", tmp_path / "m.tflite.json"
    args = [*CLI, "quantize", str(digits_keras_path), "--scheme", "dynamic", "--eval", "digits:test", "--overwrite", "-o", str(out)]
    t0 = time.monotonic()
    subprocess.run(args, check=True, capture_output=True)
    full = time.monotonic() - t0
    states = set()
    for frac in (0.5, 0.7, 0.8, 0.9, 0.95):
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(full * frac)
        p.send_signal(signal.SIGKILL)
        p.wait()
        model_ok, man_ok = out.exists(), man.exists()
        if model_ok and man_ok:
            assert json.loads(man.read_text())["artifact"]["sha256"] == _sha(out), f"mismatched pair at {frac:.0%}"
        states.add((model_ok, man_ok))
    assert (True, True) in states
    # the next run cleans what the killed ones left, and publishes a consistent pair
    subprocess.run(args, check=True, capture_output=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite", "m.tflite.json"]
    assert json.loads(man.read_text())["artifact"]["sha256"] == _sha(out)


def test_sigint_during_evaluation_keeps_the_old_pair(tmp_path, root):
    model = root / "models" / "fashion_keras.keras"
    out, man = tmp_path / "m.tflite", tmp_path / "m.tflite.json"
    subprocess.run([*CLI, "export", str(model), "--format", "tflite", "-o", str(out)], check=True, capture_output=True)
    old = (out.read_bytes(), man.read_bytes())
    p = subprocess.Popen([*CLI, "quantize", str(model), "--scheme", "dynamic", "--eval", "fashion-mnist:test",
                          "--eval-samples", "10000", "--overwrite", "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    staged = _wait(lambda: [q for q in tmp_path.glob(".m.tflite.*.tmp.d") if (q / "m.tflite").exists()], 120, 0.02)
    assert staged, "the new model was never staged"
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    if p.returncode == 0:
        pytest.skip("the evaluation finished before the interrupt arrived")
    assert p.returncode in (130, 2), err  # interrupted (or refused the data: the old pair must stay either way)
    assert (out.read_bytes(), man.read_bytes()) == old
    assert sorted(q.name for q in tmp_path.iterdir()) == ["m.tflite", "m.tflite.json"]


def test_sigkill_of_a_tflm_export_never_leaves_the_folder_missing(tmp_path, digits_tflite_int8):
    out = tmp_path / "project"
    args = [*CLI, "export", str(digits_tflite_int8), "--format", "tflm", "--overwrite", "-o", str(out)]
    t0 = time.monotonic()
    subprocess.run(args, check=True, capture_output=True)
    full = time.monotonic() - t0
    for frac in (0.6, 0.8, 0.9, 0.95, 0.99):
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(full * frac)
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert (out / "manifest.json").is_file(), f"no project after a kill at {frac:.0%}"
    subprocess.run(args, check=True, capture_output=True)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["project"]


def _recipe(d: Path, model: Path, variants: int) -> Path:
    r = d / "r.yaml"
    vs = "".join(f"  - {{name: v{i}, scheme: {s}, formats: [tflite, onnx]}}\n" for i, s in
                 enumerate(["float", "dynamic", "fp16"][:variants]))
    r.write_text(f"models: [{{name: d, path: {model}}}]\ndata: {{eval: digits:test, eval_samples: 100}}\nvariants:\n{vs}")
    return r


def test_a_killed_run_takes_its_workers_with_it(tmp_path, digits_keras_path):
    r = _recipe(tmp_path, digits_keras_path, 3)
    p = subprocess.Popen([*CLI, "run", str(r), "-o", str(tmp_path / "out"), "--jobs", "2"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = _wait(lambda: _workers(p.pid) if len(_workers(p.pid)) >= 2 else set(), 120)
    assert len(workers) >= 2, "the run never started its workers"
    time.sleep(2)  # let them get into their jobs
    p.send_signal(signal.SIGKILL)
    p.wait()
    left = _wait(lambda: not any(_alive(w) for w in workers), 15)
    alive = [w for w in workers if _alive(w)]
    for w in alive:
        os.kill(w, signal.SIGKILL)
    assert left, f"workers {alive} outlived their run"


def test_two_runs_on_one_output_folder(tmp_path, digits_keras_path):
    r = _recipe(tmp_path, digits_keras_path, 2)
    out = tmp_path / "out"
    first = subprocess.Popen([*CLI, "run", str(r), "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert _wait(lambda: (out / ".lock").exists() and (out / ".lock").read_text().strip() == str(first.pid), 60)
    second = subprocess.run([*CLI, "run", str(r), "-o", str(out)], capture_output=True, text=True)
    assert second.returncode == 2 and f"in use by another `workbench run` (pid {first.pid})" in second.stderr
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    again = subprocess.run([*CLI, "run", str(r), "-o", str(out)], capture_output=True, text=True)
    assert again.returncode == 0 and again.stderr.count("cached") == 2, again.stderr


@pytest.fixture()
def tiny_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("a full disk is made with a small tmpfs, which needs root (mount -t tmpfs)")
    d = tmp_path / "tiny"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12k", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not allowed here: {r.stderr.strip()}")
    yield d
    subprocess.run(["umount", str(d)], check=False)


def test_a_full_disk_is_exit_2_with_nothing_left_behind(tiny_disk, digits_keras_path):
    out = tiny_disk / "m.tflite"
    r = subprocess.run([*CLI, "export", str(digits_keras_path), "--format", "tflite", "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "No space left on the device" in r.stderr and "Internal error" not in r.stderr
    assert list(tiny_disk.iterdir()) == []
