"""Trust in `workbench run` and in published files: names that cannot escape the output folder,
YAML that cannot explode, caches keyed by content and checked before they are served, tool
failures that are never cached, artifacts and manifests replaced as one unit."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from workbench.cli import main
from workbench.core.errors import ConfigError, ToolFailure

LAUGHS = """a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def _recipe(d: Path, model: Path, *, model_name="digits", variant="float", data="eval: test.npz", extra="") -> Path:
    r = d / "r.yaml"
    r.write_text(f"name: t\nmodels:\n  - {{name: {model_name}, path: {model}}}\ndata: {{{data}}}\n"
                 f"variants:\n  - {{name: {variant}, scheme: float, formats: [tflite]}}\n{extra}")
    return r


def _digits_npz(path: Path, labels_shift: int = 0, n: int = 200) -> Path:
    from workbench.data import open_data

    ds = open_data("digits:test").take(n, 0)
    np.savez(path, x=ds.x, y=(ds.y + labels_shift) % 10)
    return path


# --- 1. names cannot reach outside the output folder ---------------------------------------------------------------

@pytest.mark.parametrize("field,value", [("model_name", "../../victim"), ("variant", "/tmp/victim-abs"),
                                         ("variant", "a/b"), ("variant", ".."), ("model_name", ".hidden")])
def test_recipe_names_that_are_paths_are_refused(tmp_path, digits_keras_path, field, value):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    run = tmp_path / "a" / "b"
    run.mkdir(parents=True)
    r = _recipe(run, digits_keras_path, **{field: json.dumps(value)})
    res = CliRunner().invoke(main, ["run", str(r), "-o", str(run / "out")])
    assert res.exit_code == 2, res.output
    assert "cannot name an output folder" in res.stderr and "line" in res.stderr
    assert (victim / "keep.txt").read_text() == "precious"


def test_publish_never_writes_outside_the_output_folder(tmp_path):
    from workbench.pipeline.run import publish

    out, victim, src = tmp_path / "out", tmp_path / "victim", tmp_path / "src"
    for d in (out, victim, src):
        d.mkdir()
    (victim / "v").mkdir()
    (victim / "v" / "keep.txt").write_text("precious")
    (src / "model.tflite").write_bytes(b"x")
    for model, variant in (("..", "victim"), ("m", "../../victim/v"), ("m", str(victim / "v"))):
        with pytest.raises(ConfigError, match="outside the output folder"):
            publish(src, out, model, variant)
    (out / "linked").symlink_to(victim)  # a folder link inside the output leads outside it
    with pytest.raises(ConfigError, match="outside the output folder"):
        publish(src, out, "linked", "v")
    assert (victim / "v" / "keep.txt").read_text() == "precious"
    dst = publish(src, out, "m", "v")
    assert (dst / "model.tflite").read_bytes() == b"x" and dst.parent.parent == out


# --- 4. YAML that explodes ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [["run", "{f}"], ["emulate", "{model}", "--target-file", "{f}"]])
def test_billion_laughs_yaml_is_refused_quickly(tmp_path, digits_tflite_int8, command):
    f = tmp_path / "bomb.yaml"
    f.write_text(LAUGHS)
    assert len(LAUGHS) < 600
    args = [a.format(f=f, model=digits_tflite_int8) for a in command]
    t0 = time.monotonic()
    res = CliRunner().invoke(main, args)
    assert time.monotonic() - t0 < 10
    assert res.exit_code == 2, res.output
    assert "anchors and aliases" in res.stderr and str(f) in res.stderr


def test_aliases_of_ordinary_size_still_work():
    import yaml

    from workbench.core.yamlfile import expanded_nodes

    node = yaml.compose("base: &b {scheme: int8, formats: [tflite]}\nvariants: [*b, *b, *b]\n")
    assert expanded_nodes(node) == 28  # root, 'base', 6 nodes of the mapping, 'variants', a list of 3 x 6
    assert expanded_nodes(yaml.compose(LAUGHS)) > 10 ** 8


# --- 20. recipes of the wrong shape are refused with the key and the line -----------------------------------------------

@pytest.mark.parametrize("data,extra,needle", [
    ("eval: test.npz, eval_samples: many", "", "'eval_samples' in data should be a whole number, found 'many'"),
    ("eval: test.npz", "targets: raspberry-pi-4\n", "'targets' should be a list"),
    ("eval: [test.npz]", "", "'eval' in data should be text, found a list"),
])
def test_recipe_values_of_the_wrong_type(tmp_path, digits_keras_path, data, extra, needle):
    r = _recipe(tmp_path, digits_keras_path, data=data, extra=extra)
    res = CliRunner().invoke(main, ["run", str(r), "-o", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    assert needle in res.stderr and "line" in res.stderr


def test_recipe_formats_as_text_is_refused(tmp_path, digits_keras_path):
    r = tmp_path / "r.yaml"
    r.write_text(f"models: [{{path: {digits_keras_path}}}]\nvariants:\n  - {{name: f, formats: tflite}}\n")
    with pytest.raises(ConfigError, match=r"line 3: 'formats' in variants should be a list"):
        from workbench.pipeline.recipe import load_recipe

        load_recipe(r)


def test_non_utf8_recipe_and_target_files(tmp_path, digits_tflite_int8):
    f = tmp_path / "latin1.yaml"
    f.write_bytes("name: caf\xe9\nmodels: []\n".encode("latin-1"))
    for args in (["run", str(f)], ["emulate", str(digits_tflite_int8), "--target-file", str(f)]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2, res.output
        assert "not UTF-8" in res.stderr and "line 1" in res.stderr


def test_recipe_data_paths_are_relative_to_the_recipe(tmp_path, digits_keras_path, monkeypatch):
    from workbench.pipeline.recipe import load_recipe

    d = tmp_path / "project"
    d.mkdir()
    _digits_npz(d / "test.npz")
    r = _recipe(d, digits_keras_path)
    monkeypatch.chdir(tmp_path)
    assert load_recipe(r).data["eval"] == str((d / "test.npz").resolve())


# --- 3. one run per output folder ------------------------------------------------------------------------------------

def test_second_run_on_the_same_output_is_refused(tmp_path, digits_keras_path):
    from workbench.pipeline.cache import run_lock

    _digits_npz(tmp_path / "test.npz")
    r = _recipe(tmp_path, digits_keras_path)
    out = tmp_path / "out"
    out.mkdir()
    with run_lock(out):
        res = CliRunner().invoke(main, ["run", str(r), "-o", str(out)])
    assert res.exit_code == 2, res.output
    assert f"in use by another `workbench run` (pid {os.getpid()})" in res.stderr
    assert not (out / ".cache").exists()


# --- 5, 6, 7. the cache serves only what it can prove ----------------------------------------------------------------

@pytest.fixture()
def small_run(tmp_path, digits_keras_path):
    _digits_npz(tmp_path / "test.npz")
    r = _recipe(tmp_path, digits_keras_path)
    return tmp_path, r


def _run(r: Path, out: Path):
    res = CliRunner().invoke(main, ["run", str(r), "-o", str(out)])
    return res, (json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else None)


def test_cache_follows_the_data_content_not_its_path(small_run):
    d, r = small_run
    res, doc = _run(r, d / "out")
    assert res.exit_code == 0, res.output
    acc = doc["rows"][0]["reference_accuracy"]
    assert acc > 0.9
    res, doc = _run(r, d / "out")
    assert "cached" in res.stderr and doc["rows"][0]["reference_accuracy"] == acc
    _digits_npz(d / "test.npz", labels_shift=1)  # same path, other labels
    res, doc = _run(r, d / "out")
    assert "cached" not in res.stderr, res.stderr
    assert doc["rows"][0]["reference_accuracy"] < 0.2


def test_tampered_cache_entries_are_rebuilt_not_served(small_run):
    d, r = small_run
    res, doc = _run(r, d / "out")
    assert res.exit_code == 0, res.output
    good = doc["rows"][0]
    entry = next(p for p in (d / "out" / ".cache").iterdir() if p.is_dir())
    model = entry / "artifacts" / "model.tflite"
    blob = bytearray(model.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    model.write_bytes(bytes(blob))
    res, doc = _run(r, d / "out")
    assert "failed its check: artifacts/model.tflite changed since it was stored" in res.stderr
    assert doc["rows"][0]["accuracy"] == good["accuracy"]
    published = d / "out" / "digits" / "float" / "model.tflite"
    assert published.read_bytes() == (entry / "artifacts" / "model.tflite").read_bytes() != bytes(blob)
    result = json.loads((entry / "result.json").read_text())
    result["rows"][0]["bytes"] = 1120
    (entry / "result.json").write_text(json.dumps(result))
    res, doc = _run(r, d / "out")
    assert "failed its check: result.json changed since it was stored" in res.stderr and doc["rows"][0]["bytes"] == good["bytes"]
    (entry / "digests.json").unlink()
    res, _ = _run(r, d / "out")
    assert "failed its check: it has no digests.json" in res.stderr


def test_a_tool_failure_is_reported_and_never_cached(small_run, monkeypatch):
    import workbench.emulate as emulate_pkg

    d, r = small_run
    r.write_text(r.read_text() + "targets: [raspberry-pi-4]\n")

    def broken(*a, **k):
        raise ToolFailure("The firmware build timed out after 900 s.")

    monkeypatch.setattr(emulate_pkg, "emulate", broken)
    res, doc = _run(r, d / "out")
    assert res.exit_code == 4, res.output
    row = doc["rows"][0]
    assert row["fits"] is None and "timed out" in row["tool_failure"] and row["accuracy"] > 0.9
    assert not [p for p in (d / "out" / ".cache").iterdir() if p.is_dir()]  # nothing kept
    assert (d / "out" / "digits" / "float" / "model.tflite").exists()  # the built model is still published
    monkeypatch.undo()
    res, doc = _run(r, d / "out")
    assert res.exit_code == 0 and "cached" not in res.stderr and doc["rows"][0]["fits"] is True


def test_a_variant_that_cannot_be_built_exits_1_and_is_not_cached(tmp_path, digits_keras_path):
    _digits_npz(tmp_path / "test.npz")
    r = tmp_path / "r.yaml"  # Keras -> TFLite has no weight-int4 path (it goes through a float .tflite)
    r.write_text(f"models: [{{name: d, path: {digits_keras_path}}}]\n"
                 "variants:\n  - {name: v, scheme: weight-int4, formats: [tflite]}\n")
    res = CliRunner().invoke(main, ["run", str(r), "-o", str(tmp_path / "out")])
    assert res.exit_code == 1, res.output
    assert "not built" in res.stdout
    assert not [p for p in (tmp_path / "out" / ".cache").iterdir() if p.is_dir()]


# --- 2. an artifact and its manifest are replaced together ------------------------------------------------------------

def test_interrupted_export_keeps_the_old_model_and_manifest(tmp_path, digits_keras_path, monkeypatch):
    from workbench import api

    out = tmp_path / "m.tflite"
    res = CliRunner().invoke(main, ["export", str(digits_keras_path), "--format", "tflite", "-o", str(out)])
    assert res.exit_code == 0, res.output
    old_model, old_manifest = out.read_bytes(), (tmp_path / "m.tflite.json").read_bytes()

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "evaluate", interrupted)
    res = CliRunner().invoke(main, ["quantize", str(digits_keras_path), "--scheme", "dynamic", "--eval", "digits:test",
                                    "--overwrite", "-o", str(out)])
    assert res.exit_code == 130
    assert out.read_bytes() == old_model and (tmp_path / "m.tflite.json").read_bytes() == old_manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite", "m.tflite.json"]


def test_a_crash_between_renames_never_pairs_new_model_with_old_manifest(tmp_path, monkeypatch):
    import workbench.core.files as files

    out, man = tmp_path / "m.tflite", tmp_path / "m.tflite.json"
    out.write_bytes(b"old")
    man.write_text('{"sha": "old"}')
    new, new_man = tmp_path / "n", tmp_path / "n.json"
    new.write_bytes(b"new")
    new_man.write_text('{"sha": "new"}')
    real, calls = os.replace, []

    def dies_after_one(a, b):
        if calls:
            raise SystemExit("killed")
        calls.append(b)
        real(a, b)

    monkeypatch.setattr(files.os, "replace", dies_after_one)
    with pytest.raises(SystemExit):
        files.commit_files([(new, out), (new_man, man)])
    assert out.read_bytes() == b"new" and not man.exists()


def test_folder_outputs_are_swapped_in_one_step_and_stale_temps_cleaned(tmp_path):
    from workbench.core.files import _exchange, atomic_path

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "f").write_text("a")
    (b / "f").write_text("b")
    assert _exchange(a, b) and (a / "f").read_text() == "b"
    dest = tmp_path / "project"
    dest.mkdir()
    (dest / "model.cc").write_text("old")
    dead = 2 ** 22 + 12345  # above the default pid_max: no such process
    stale = tmp_path / f".project.{dead}.xyz.tmp"
    stale.mkdir()
    with atomic_path(dest, suffix="") as tmp:
        tmp.mkdir()
        (tmp / "model.cc").write_text("new")
    assert (dest / "model.cc").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "project"]


# --- 20. output paths the machine refuses ---------------------------------------------------------------------------

def test_output_below_a_file_or_onto_a_folder(tmp_path, digits_keras_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    res = CliRunner().invoke(main, ["export", str(digits_keras_path), "--format", "tflite", "-o", str(f / "m.tflite")])
    assert res.exit_code == 2 and "which is a file, not a folder" in res.stderr, res.output
    res = CliRunner().invoke(main, ["export", str(digits_keras_path), "--format", "tflite", "-o", str(tmp_path), "--overwrite"])
    assert res.exit_code == 2 and "is a folder; this command writes a file there" in res.stderr, res.output
    res = CliRunner().invoke(main, ["export", str(digits_keras_path), "--format", "tflm", "-o", str(f), "--overwrite"])
    assert res.exit_code == 2 and "is a file; this command writes a folder there" in res.stderr, res.output
    assert f.read_text() == "x"


def test_a_full_disk_is_said_as_such(tmp_path, digits_keras_path, monkeypatch):
    import errno

    import workbench.core.files as files

    def full(dest, obj):
        raise OSError(errno.ENOSPC, "No space left on device", str(dest))

    monkeypatch.setattr(files, "write_json_atomic", full)
    monkeypatch.setattr("workbench.export.artifact.write_json_atomic", full)
    res = CliRunner().invoke(main, ["export", str(digits_keras_path), "--format", "tflite", "-o", str(tmp_path / "m.tflite")])
    assert res.exit_code == 2, res.output
    assert "No space left on the device while writing" in res.stderr and "Internal error" not in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_file_added_to_a_cache_entry_is_not_served(small_run):
    d, r = small_run
    res, _ = _run(r, d / "out")
    assert res.exit_code == 0, res.output
    entry = next(p for p in (d / "out" / ".cache").iterdir() if p.is_dir())
    (entry / "artifacts" / "extra.bin").write_bytes(b"x")  # it would be published beside the model
    res, _ = _run(r, d / "out")
    assert "failed its check: artifacts/extra.bin was added after the folder was stored" in res.stderr
    assert not (d / "out" / "digits" / "float" / "extra.bin").exists()
