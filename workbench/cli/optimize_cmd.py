"""`workbench optimize MODEL --target T [budgets]`: the best variant that fits, found and measured."""

from __future__ import annotations

import sys

import click

from workbench.cli.common import emit_json, json_option, model_options, table


@click.command("optimize")
@click.argument("model", type=click.Path())
@click.option("--target", "target_name", required=True, metavar="NAME", help="Target profile (workbench targets list) or YAML file.")
@click.option("--max-latency-ms", type=click.FloatRange(min=0, min_open=True), help="Latency budget on the target.")
@click.option("--max-ram", type=click.IntRange(min=1), metavar="BYTES", help="RAM budget (the target's own RAM is always checked).")
@click.option("--max-flash", type=click.IntRange(min=1), metavar="BYTES", help="Flash budget.")
@click.option("--max-drop", type=click.FloatRange(min=0), metavar="PP", help="Accuracy loss budget in percentage points.")
@click.option("--calib", required=True, metavar="DATA", help="Calibration data (e.g. digits:train).")
@click.option("--eval", "eval_data", required=True, metavar="DATA", help="Evaluation data with labels (e.g. digits:test).")
@click.option("--train", metavar="DATA", help="Training data: adds channel-pruning candidates with fine-tuning.")
@click.option("--eval-samples", type=click.IntRange(min=10), default=500, show_default=True)
@click.option("--calib-samples", type=click.IntRange(min=10), default=200, show_default=True)
@click.option("--prune-ratios", default="0.25,0.5,0.75", show_default=True, metavar="R,R,...",
              help="With --train: the channel-pruning ratios tried.")
@click.option("--prune-epochs", default="1,3", show_default=True, metavar="SHORT,LONG",
              help="Successive halving: every ratio fine-tuned SHORT epochs, the better half LONG epochs.")
@click.option("--budget-minutes", type=click.FloatRange(min=0, min_open=True),
              help="Stop starting new stages after this long; what was skipped is listed.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, help="Candidates run in parallel worker processes.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: candidates run as Ray tasks (pip install 'workbench[ray]').")
@click.option("-o", "--output", "out", type=click.Path(), default="workbench-optimize", show_default=True,
              help="Output folder: best.tflite, its manifest, best.recipe.yaml, optimize.json, optimize.html; the cache.")
@model_options
@json_option
def optimize_cmd(model, target_name, max_latency_ms, max_ram, max_flash, max_drop, calib, eval_data, train, eval_samples,
                 calib_samples, prune_ratios, prune_epochs, budget_minutes, seed, jobs, executor, out, trust_model, factory, input_shape, as_json):
    """Find the variant of MODEL that fits the target's budgets, with every candidate measured.

    Candidates, cheapest first: int8 (per-channel, per-tensor, a larger calibration set when
    the calibration data holds more samples than --calib-samples),
    int16x8, fp16 and dynamic where the target's runtime runs them, and on an MCU int8
    stripped of what TFLite Micro never reads; int8 with its worst layers kept in float
    when int8 loses too much accuracy; with --train, clustering + LUT compression when int8
    breaks an MCU's flash budget, and channel pruning at several ratios by successive halving. Accuracy is measured on the target's runtime
    (the firmware's kernels on an MCU), flash, RAM and latency by `workbench emulate`.
    Resolution or width variants are not searched: build them with your own factory and
    optimize each. Runs are cached in OUT, so a re-run measures only what is new.

    Exit codes: 0 a variant fits every budget (written to OUT/best.tflite), 1 nothing fits
    (the closest candidates are listed, nothing is written as best), 2 bad input.
    """
    from pathlib import Path

    from workbench.emulate import load_target
    from workbench.pipeline.recipe import ModelRef
    from workbench.pipeline.search import Budgets, SearchConfig, optimize, to_doc

    load_target(target_name)  # an unknown target fails now, not after minutes of work
    try:
        ratios = tuple(float(x) for x in prune_ratios.split(",") if x.strip())
        epochs = tuple(int(x) for x in prune_epochs.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter("--prune-ratios takes numbers like 0.25,0.5 and --prune-epochs two whole numbers like 1,3.") from None
    if len(epochs) != 2 or min(epochs) < 1:
        raise click.BadParameter(f"--prune-epochs takes two whole numbers >= 1 (SHORT,LONG), got '{prune_epochs}'.")
    from workbench.data import open_data

    for spec, split in ((calib, "train"), (eval_data, "test")) + (((train, "train"),) if train else ()):
        open_data(spec, split=split, limit=2)  # bad data fails before any conversion
    cfg = SearchConfig(model=ModelRef(name=Path(model).stem, path=Path(model), factory=factory,
                                      input_shape=input_shape, trust_model=trust_model),
                       target=target_name, budgets=Budgets(max_latency_ms, max_ram, max_flash, max_drop),
                       calib=calib, eval=eval_data, train=train, eval_samples=eval_samples, calib_samples=calib_samples,
                       prune_ratios=ratios, prune_epochs=epochs, budget_minutes=budget_minutes, seed=seed, jobs=jobs, executor=executor)
    quiet = as_json or not sys.stderr.isatty()
    res = optimize(cfg, out, say=None if quiet else (lambda s: click.echo(s, err=True)))
    doc = to_doc(res, cfg)
    if as_json:
        emit_json(doc)
    else:
        def fmt(c):
            return [c["variant"], c["stage"], "-" if c["drop_pp"] is None else f"{c['drop_pp']:+.2f}",
                    "-" if c["latency_ms"] is None else f"{c['latency_ms']:.3g}",
                    "-" if c["ram_bytes"] is None else f"{c['ram_bytes']:,}",
                    "-" if c["flash_bytes"] is None else f"{c['flash_bytes']:,}",
                    ", ".join(c["broken_budgets"] or []) or ("-" if c["broken_budgets"] is not None else f"not built: {c['error']}")]

        click.echo(table([fmt(c) for c in doc["candidates"]], ["variant", "stage", "loss pp", "latency ms", "RAM", "flash", "breaks"]))
        click.echo("\nPareto front (loss, latency, RAM, flash): " + ", ".join(c["variant"] for c in doc["pareto"]))
        for s in doc["skipped"]:
            click.echo(f"skipped: {s}")
        click.echo(f"{doc['measured_candidates']} measured, {doc['cached_candidates']} from the cache, {doc['seconds']:.0f} s")
        if res.chosen:
            click.echo(f"best: {res.chosen.variant.name} -> {Path(out) / 'best.tflite'} (recipe: {Path(out) / 'best.recipe.yaml'})")
        else:
            click.echo("nothing fits every budget; closest: " + ", ".join(
                f"{c['variant']} (breaks {', '.join(c['broken_budgets'])})" for c in doc["closest"]))
    if res.chosen is None:
        click.get_current_context().exit(1)
