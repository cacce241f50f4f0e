"""`workbench run RECIPE` and `workbench demo`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from workbench.cli.common import emit_json, table

fail_on_option = click.option("--fail-on", "fail_on", multiple=True, metavar="EXPR",
                              help="Exit 1 when a result breaks this budget, e.g. 'accuracy_drop_pp>1.0', 'arena_bytes>200000'. Repeatable.")


def _execute(recipe_path: Path, out: Path, jobs: int, fail_on: tuple[str, ...], as_json: bool,
             executor: str = "local", address: str | None = None):
    from workbench.pipeline.budgets import check, parse_budget
    from workbench.pipeline.run import run_recipe
    from workbench.pipeline.recipe import load_recipe
    from workbench.report import write_reports

    budgets = [parse_budget(b) for b in fail_on]  # parse first: a typo fails before minutes of work
    recipe = load_recipe(recipe_path)
    budgets += [parse_budget(b) for b in recipe.budgets]
    from workbench.emulate import load_target

    for t in recipe.targets:  # an unknown target fails now, not after minutes of work
        load_target(t)
    quiet = as_json or not sys.stderr.isatty()
    say = (lambda s: None) if as_json else (lambda s: click.echo(s, err=True))
    if not quiet:
        say(f"running recipe '{recipe.name}' into {out} ...")
    doc = run_recipe(recipe, out, jobs=jobs, on_event=say, executor=executor, address=address)
    broken = check(doc["rows"], budgets)
    paths = write_reports(doc, out, broken)
    if as_json:
        emit_json({**doc, "budgets_broken": broken, "reports": {k: str(v) for k, v in paths.items()}})
    else:
        rows = [[r["model"], r["variant"], r["format"], r.get("target") or "-", f"{r['bytes']:,}",
                 f"{r['accuracy']:.2%}" if r.get("accuracy") is not None else "-",
                 f"{r['accuracy_drop_pp']:+.2f}" if r.get("accuracy_drop_pp") is not None else "-",
                 f"{r['ram_bytes']:,}" if r.get("ram_bytes") else "-",
                 f"{r['latency_ms']:.3g}" if r.get("latency_ms") is not None else "-",
                 {True: "yes", False: "NO", None: "-"}[r.get("fits")]] for r in doc["rows"]]
        click.echo(table(rows, ["model", "variant", "format", "target", "bytes", "accuracy", "drop", "RAM", "latency ms", "fits"]))
        for k, j in doc["jobs"].items():
            for err in j.get("errors", []):
                click.echo(f"not built: {k} {err}")
        for r in doc["rows"]:
            if r.get("tool_failure"):
                click.echo(f"tool failure (no verdict): {r['model']}/{r['variant']} on {r.get('target')}: {r['tool_failure']}")
        click.echo(f"\nreports: {paths['markdown']}  {paths['html']}  {out / 'results.json'}")
        for b in broken:
            click.echo(f"budget broken: {b['model']}/{b['variant']} on {b['target'] or '-'}: {b['budget']} (value {b['value']})")
    sys.exit(exit_code(doc, broken))


def exit_code(doc: dict, broken: list) -> int:
    """4 when a tool failed while measuring (results are missing, not judged), 1 when a variant could
    not be built or a budget broke, else 0. Neither kind of job is cached."""
    from workbench.core.errors import ToolFailure

    if any(r.get("tool_failure") for r in doc["rows"]):
        return ToolFailure.exit_code
    if broken or any(j.get("errors") for j in doc["jobs"].values()):
        return 1
    return 0


@click.command("run")
@click.argument("recipe", type=click.Path())
@click.option("-o", "--output", "out", type=click.Path(), default="workbench-run", show_default=True, help="Output folder.")
@click.option("--jobs", type=int, default=1, show_default=True, help="Variants run in parallel worker processes.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local worker processes, or a Ray cluster (pip install 'workbench[ray]').")
@click.option("--address", help="Ray cluster address (default: start a local Ray instance).")
@fail_on_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def run_cmd(recipe, out, jobs, executor, address, fail_on, as_json):
    """Run a recipe: every variant of every model, exported, evaluated and emulated on every target.

    Finished variants are cached in OUTPUT/.cache by content hash: a re-run only redoes what
    changed, and an interrupted run resumes. Writes results.json, report.md and report.html.
    """
    _execute(Path(recipe), Path(out), jobs, fail_on, as_json, executor, address)


@click.command("demo")
@click.option("-o", "--output", "out", type=click.Path(), default="workbench-demo", show_default=True)
@click.option("--jobs", type=int, default=2, show_default=True)
@fail_on_option
@click.option("--json", "as_json", is_flag=True)
def demo_cmd(out, jobs, fail_on, as_json):
    """The built-in recipe on the reference models (digits, Keras and PyTorch): float, fp16, dynamic,
    int8 PTQ, QAT and channel-pruned int8, as TFLite, ONNX and TFLite Micro, on four targets."""
    from workbench.builtin.models import reference

    _execute(reference.HERE / "demo.yaml", Path(out), jobs, fail_on, as_json)
