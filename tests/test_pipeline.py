"""Recipes, the cached pipeline, budgets and reports (HTML checked in a real headless browser)."""

import json
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from workbench.cli import main
from workbench.core.errors import ConfigError
from workbench.pipeline.recipe import load_recipe

RECIPE = """name: small
models:
  - {{name: digits-keras, path: {model}}}
data: {{calib: digits:train, eval: digits:test, eval_samples: 200, calib_samples: 100}}
variants:
  - {{name: float, scheme: float, formats: [tflite]}}
  - {{name: int8, scheme: int8, formats: [tflite, tflm]}}
targets: [stm32l4r5, raspberry-pi-4]
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, digits_keras_path):
    d = tmp_path_factory.mktemp("run")
    recipe = d / "r.yaml"
    recipe.write_text(RECIPE.format(model=digits_keras_path))
    r = CliRunner().invoke(main, ["run", str(recipe), "-o", str(d / "out"), "--json"])
    assert r.exit_code == 0, r.output
    return d, json.loads(r.stdout)


def test_run_emulates_every_variant_on_every_target(run_dir):
    _, doc = run_dir
    rows = doc["rows"]
    tfl = [r for r in rows if r["format"] == "tflite"]
    assert {(r["variant"], r["target"]) for r in tfl} == {(v, t) for v in ("float", "int8") for t in ("stm32l4r5", "raspberry-pi-4")}
    for r in tfl:
        assert r["fits"] is True and r["latency_ms"] > 0 and r["accuracy"] > 0.9
    mcu = [r for r in tfl if r["target"] == "stm32l4r5"]
    assert all(r["arena_bytes"] > 0 for r in mcu)
    f32 = next(r for r in mcu if r["variant"] == "float")
    i8 = next(r for r in mcu if r["variant"] == "int8")
    assert i8["bytes"] < f32["bytes"] and i8["arena_bytes"] < f32["arena_bytes"]
    assert any(r["format"] == "tflm" for r in rows)


def test_rerun_uses_the_cache_and_budgets_fail_the_run(run_dir):
    d, _ = run_dir
    r = CliRunner().invoke(main, ["run", str(d / "r.yaml"), "-o", str(d / "out"), "--fail-on", "arena_bytes>1000"])
    assert r.exit_code == 1
    assert "cached" in r.stderr and "done" not in r.stderr  # nothing was recomputed
    assert "budget broken" in r.stdout


def test_reports_are_written(run_dir):
    d, _ = run_dir
    md = (d / "out" / "report.md").read_text()
    assert "| digits-keras | int8 | tflite | stm32l4r5 |" in md
    html = (d / "out" / "report.html").read_text()
    assert "data:image/png;base64," in html and "<script" not in html and "http" not in html.split("<body>")[1]


def test_html_report_renders_in_headless_chromium(run_dir, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        pytest.skip("needs Debian's chromium (apt-get install chromium); .ci/run installs it")
    d, _ = run_dir
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                    f"--screenshot={shot}", "--window-size=1400,2400", f"file://{d / 'out' / 'report.html'}"],
                   capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 20_000  # a blank page is a few KB; tables and plots are not
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          f"--user-data-dir={tmp_path / 'profile2'}", "--dump-dom", f"file://{d / 'out' / 'report.html'}"],
                         capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<img") >= 2 and "id=\"results\"" in dom


@pytest.mark.parametrize("text,expected", [
    ("name: x\nmodels: [{path: m.keras}]\nvariants: [{name: a, sheme: int8}]\n", "line 3: unknown key 'sheme'"),
    ("name: x\nmodelz: []\n", "line 2: unknown key 'modelz'"),
    ("name: x\nmodels: [{path: m.keras}]\nvariants: [{name: a, scheme: int8}]\n", "need data.calib"),
    ("name: x\nmodels: [{path: m.keras}]\nvariants: [{name: a, prune: {sparsity: 0.5}}]\n", "need data.train"),
    ("name: x\nmodels: [{path: m.keras}]\nvariants: [{name: a, formats: [coreml]}]\n", "unknown format"),
    ("name: x\nmodels: [{path: m.keras}]\nvariants: [{name: a}]\nbudgets: ['latency >> 3']\n", "does not parse"),
])
def test_bad_recipes(tmp_path, text, expected):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_recipe(p)
    assert expected in str(e.value)


def test_unknown_target_in_recipe_is_reported(tmp_path, digits_keras_path):
    p = tmp_path / "r.yaml"
    p.write_text(RECIPE.format(model=digits_keras_path).replace("raspberry-pi-4", "raspberry-pi-9"))
    r = CliRunner().invoke(main, ["run", str(p), "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "raspberry-pi-9" in r.output


def test_bad_budget_expression_fails_before_work(tmp_path, digits_keras_path):
    p = tmp_path / "r.yaml"
    p.write_text(RECIPE.format(model=digits_keras_path))
    r = CliRunner().invoke(main, ["run", str(p), "-o", str(tmp_path / "o"), "--fail-on", "accuracy_drop_pp>>1"])
    assert r.exit_code == 2 and "does not parse" in r.output and not (tmp_path / "o").exists()


def test_ray_executor_gives_the_same_results(tmp_path, digits_keras_path, run_dir):
    pytest.importorskip("ray", reason="needs the ray extra (pip install 'workbench[ray]'); make test installs it")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(model=digits_keras_path).replace("[tflite, tflm]", "[tflite]"))
    r = CliRunner().invoke(main, ["run", str(recipe), "-o", str(tmp_path / "ray-out"), "--executor", "ray", "--jobs", "2", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    _, local = run_dir
    key = lambda row: (row["variant"], row["format"], row.get("target"))  # noqa: E731
    same = {key(x): (x["bytes"], x.get("accuracy"), x.get("arena_bytes")) for x in local["rows"] if x["format"] == "tflite"}
    got = {key(x): (x["bytes"], x.get("accuracy"), x.get("arena_bytes")) for x in doc["rows"]}
    assert got == same  # byte-identical artifacts, same accuracy and arena whichever executor ran them


def test_reports_draw_rows_whose_ram_is_unknown(tmp_path):
    """A variant the target's runtime cannot allocate has no RAM figure: the report still renders, naming it."""
    from workbench.report import write_reports

    base = {"model": "m", "format": "tflite", "scheme": "int8", "bytes": 1000, "target": "stm32l4r5", "target_kind": "mcu",
            "flash_limit_bytes": 2_097_152, "ram_limit_bytes": 655_360, "accuracy": 0.9, "latency_ms": 2.0}
    rows = [{**base, "variant": "int8", "flash_bytes": 90_000, "ram_bytes": 5_000, "fits": True},
            {**base, "variant": "int16x8", "flash_bytes": 60_000, "ram_bytes": None, "fits": False}]
    doc = {"recipe": "r", "rows": rows, "jobs": {}}
    paths = write_reports(doc, tmp_path, [])
    html = paths["html"].read_text()
    assert "int16x8" in html and "data:image/png;base64," in html
