"""``workbench prune``: magnitude or channel pruning with fine-tuning, and what it changes on the device."""

from __future__ import annotations

import sys

import click

from workbench.cli.common import emit_json, human_bytes, json_option, load_options, model_options, overwrite_option, table


def train_options(default_lr: float, default_epochs: int):
    """Options of the shared training loop (also used by ``workbench qat``)."""

    def deco(f):
        opts = [
            click.option("--train", "train_data", required=True, metavar="DATA",
                         help="Labelled training data: a built-in set (digits:train), .npz, IDX, image folder or MODULE:FUNCTION."),
            click.option("--val", "val_data", metavar="DATA",
                         help="Labelled data to measure accuracy on. Default: 10% of --train, held out from training."),
            click.option("--epochs", type=int, default=default_epochs, show_default=True, help="Fine-tuning epochs."),
            click.option("--lr", type=float, default=default_lr, show_default=True, help="Adam learning rate."),
            click.option("--lr-schedule", type=click.Choice(["cosine", "constant"]), default="cosine", show_default=True,
                         help="Cosine decay of the learning rate to zero over the run, or constant."),
            click.option("--batch-size", type=int, default=32, show_default=True),
            click.option("--seed", type=int, default=0, show_default=True, help="Seeds the sample order and the frameworks."),
            click.option("--loss", type=click.Choice(["cross-entropy", "mse"]), default="cross-entropy", show_default=True,
                         help="cross-entropy on logits, or mse against one-hot labels."),
            click.option("--step", metavar="MODULE:FUNCTION",
                         help="Custom training step: step(model, x, y, optimizer, loss_fn) -> loss, replacing the default."),
            click.option("--train-samples", type=int, metavar="N", help="Train on a seeded subset of N samples."),
            click.option("--resume", is_flag=True, help="Continue an interrupted run from its last checkpoint (OUT.ckpt/)."),
        ]
        for opt in reversed(opts):
            f = opt(f)
        return f

    return deco


def train_config(epochs, lr, lr_schedule, batch_size, seed, loss, step, train_samples):
    from workbench.optimize.config import TrainConfig

    return TrainConfig(epochs=epochs, lr=lr, lr_schedule=lr_schedule, batch_size=batch_size, seed=seed, loss=loss,
                       step=step, train_samples=train_samples)


class TrainProgress:
    """A progress bar over the training steps, on stderr, only when it is a terminal and --json is off."""

    def __init__(self, enabled: bool, label: str = "training"):
        self.enabled = enabled and sys.stderr.isatty()
        self.label = label
        self.bar = None

    def __call__(self, event: dict) -> None:
        if not self.enabled:
            return
        kind = event.get("event")
        if kind == "start":
            self.bar = click.progressbar(length=max(1, event["total_steps"]), label=self.label, file=sys.stderr)
            self.bar.__enter__()
            if event.get("done_steps"):
                self.bar.update(event["done_steps"])
        elif kind == "step" and self.bar is not None:
            self.bar.update(1)
        elif kind == "epoch" and self.bar is not None:
            self.bar.label = f"{self.label} (epoch {event['epoch']}/{event['epochs']}, loss {event['loss']:.4f})"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None

    def note(self, text: str) -> None:
        if self.enabled:
            click.echo(text, err=True)


def run_with_progress(step, label: str, as_json: bool, render, *args, **kw) -> None:
    """Run a fine-tuning step (prune, cluster, qat) with a progress bar, then print its report."""
    bar = TrainProgress(not as_json, label)
    try:
        report = step(*args, progress=bar, **kw)
    finally:
        bar.close()
    if as_json:
        emit_json(report.to_dict())
    else:
        render(report.to_dict())


@click.command("prune")
@click.argument("model", type=click.Path())
@model_options
@train_options(default_lr=1e-3, default_epochs=2)
@click.option("--sparsity", type=float, required=True,
              help="Fraction of weights (magnitude) or of channels per prunable group (channel) to remove, in (0, 1).")
@click.option("--method", type=click.Choice(["magnitude", "channel"]), default="magnitude", show_default=True,
              help="magnitude: unstructured zeros (only gzip shrinks); channel: removes filters (smaller, faster).")
@click.option("--schedule", type=click.Choice(["constant", "polynomial"]),
              help="constant: full sparsity from the start; polynomial: rising to it over 75% of the steps (magnitude) "
              "or, masking channels, over 50% (channel). Default: constant for magnitude, polynomial for channel.")
@click.option("--criterion", type=click.Choice(["l1", "bn-gamma"]),
              help="Channel ranking: filter L1 norm, or the following batch norm's |gamma| (L1 where no batch norm "
              "follows). Default: bn-gamma for channel, l1 for magnitude.")
@click.option("--frequency", type=int, metavar="STEPS", help="Steps between mask updates. Default: 4 per epoch.")
@click.option("--distill/--no-distill", default=None,
              help="Channel: also learn from the unpruned model's outputs (knowledge distillation). Default: on when "
              "channels are masked gradually, off for one-shot removal.")
@click.option("--lr-restart/--no-lr-restart", default=True, show_default=True,
              help="Channel, polynomial: restart the learning-rate schedule when the final sparsity is reached.")
@click.option("--patience", type=int, default=2, show_default=True,
              help="Channel: stop after this many epochs without a better accuracy on 10% of --train held out for it, "
              "and keep the best epoch (0: train every epoch, keep the last).")
@click.option("--round-to", type=int, default=1, show_default=True, metavar="N",
              help="Channel: keep a multiple of N channels per group (rounded up). 4 or 8 keeps the counts CMSIS-NN "
              "runs on its fast paths: measured on a Cortex-M4, 6 filters of a depthwise layer took 1.9x the "
              "instructions of 8.")
@click.option("--calib-samples", type=int, default=200, show_default=True, help="Calibration samples for the int8 .tflite.")
@click.option("--no-int8", is_flag=True, help="Skip the int8 .tflite export, size and latency measurement.")
@click.option("-o", "--output", required=True, type=click.Path(), help="Pruned model: same format as MODEL (.pt2 for PyTorch channel pruning).")
@overwrite_option
@json_option
def prune_cmd(model, trust_model, factory, input_shape, train_data, val_data, epochs, lr, lr_schedule, batch_size, seed, loss, step,
              train_samples, resume, sparsity, method, schedule, criterion, frequency, distill, lr_restart, patience,
              round_to, calib_samples, no_int8, output, overwrite, as_json):
    """Prune MODEL, fine-tune it on --train and report what changed, layer by layer and on the device.

    \b
    Before and after: parameters and sparsity per layer, model file and gzip sizes, and the int8
    .tflite exported from each (size, LiteRT single-thread latency, accuracy).

    \b
    Magnitude pruning zeroes weights: files keep their size and speed, only gzip shrinks.
    Channel pruning removes filters (with the batch norms, depthwise convolutions, residual
    adds and input channels that depend on them): the deployed model gets smaller and faster.
    Keras 3 models are pruned through tf_keras (tfmot) and saved back as Keras 3.
    """
    from workbench.optimize.config import PruneConfig
    from workbench.optimize.prune import prune

    cfg = PruneConfig(method=method, sparsity=sparsity, schedule=schedule, criterion=criterion, frequency=frequency,
                      train=train_config(epochs, lr, lr_schedule, batch_size, seed, loss, step, train_samples),
                      calib_samples=calib_samples, distill=distill, lr_restart=lr_restart,
                      patience=patience if patience else None, round_to=round_to)
    run_with_progress(prune, "fine-tuning", as_json, render, model, output, cfg, train_data, val_data,
                      load_options=load_options(trust_model, factory, input_shape), overwrite=overwrite, resume=resume,
                      measure_int8=not no_int8)


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _num(v) -> str:
    return "-" if v is None else f"{v:,}"


def render(d: dict) -> None:
    c = d["config"]
    click.echo(f"{d['model']} -> {d['output']}: {c['method']} pruning to {c['sparsity']:.0%}"
               + (f" ({c['schedule']} schedule)" if c["method"] == "magnitude" else
                  f" (ranked by {c['criterion']}, "
                  f"{'gradual' if (d.get('fine_tuning') or c)['schedule'] == 'polynomial' else 'one-shot'}"
                  + (", distilled" if (d.get("fine_tuning") or {}).get("distill") else "") + ")"))
    t = d["training"]
    data = d["data"]
    click.echo(f"fine-tuned {t['epochs']} epochs ({t['steps']} steps, {t['seconds']} s) on {data['train_samples']} samples "
               f"of {data['train']}; accuracy measured on {data['val']} ({data['val_samples']} samples)"
               + (f"; resumed after epoch {t['resumed_from_epoch']}" if t.get("resumed_from_epoch") else ""))
    rows = [[r["layer"][:40], r["kind"], _num(r["params_before"]), _num(r["params_after"]), _pct(r["sparsity_before"]),
             _pct(r["sparsity_after"]), _num(r.get("gzip_bytes_before")), _num(r.get("gzip_bytes_after")),
             "x".join(map(str, r["shape_before"] or [])), "x".join(map(str, r["shape_after"] or []))]
            for r in d["layers"]]
    click.echo()
    click.echo(table(rows, ["layer", "kind", "params", "-> after", "sparsity", "-> after", "gzip B", "-> after",
                            "shape", "-> after"]))
    b, a, q = d["before"], d["after"], d["ratios"]
    bi, ai = b.get("int8", {}), a.get("int8", {})

    def lat(x, key="latency"):
        v = x.get(key, {}).get("median_us")
        return "-" if v is None else f"{v:,.1f} us"

    def acc(v):
        return "-" if v is None else f"{100 * v:.2f}%"

    def ratio(v, speed=False):
        return "-" if v is None else (f"{v:.2f}x faster" if speed else f"{v:.2f}x")

    summary = [
        ["parameters (nonzero)", _num(b["nonzero_params"]), _num(a["nonzero_params"]), ratio(q["params"])],
        ["sparsity", _pct(b["sparsity"]), _pct(a["sparsity"]), ""],
        ["model file", human_bytes(b["file_bytes"]), human_bytes(a["file_bytes"]), ratio(q["file_bytes"])],
        ["model file, gzip", human_bytes(b["file_gzip_bytes"]), human_bytes(a["file_gzip_bytes"]), ratio(q["file_gzip_bytes"])],
        ["accuracy (float)", acc(b["accuracy"]), acc(a["accuracy"]), ""],
    ]
    if bi or ai:
        summary += [
            ["int8 .tflite", human_bytes(bi.get("tflite_bytes")), human_bytes(ai.get("tflite_bytes")), ratio(q["int8_tflite_bytes"])],
            ["int8 .tflite, gzip", human_bytes(bi.get("tflite_gzip_bytes")), human_bytes(ai.get("tflite_gzip_bytes")),
             ratio(q["int8_tflite_gzip_bytes"])],
            ["LiteRT latency, 1 thread", lat(bi), lat(ai), ratio(q["latency_speedup"], speed=True)],
            ["  without XNNPACK", lat(bi, "latency_builtin_kernels"), lat(ai, "latency_builtin_kernels"),
             ratio(q.get("latency_speedup_builtin_kernels"), speed=True)],
            ["accuracy (int8, LiteRT)", acc(bi.get("accuracy")), acc(ai.get("accuracy")), ""],
        ]
    click.echo()
    click.echo(table(summary, ["", "before", "after", "change"]))
    for side, x in (("before", bi), ("after", ai)):
        if "error" in x:
            click.echo(f"{side}: {x['error']}", err=True)
    ft = d.get("fine_tuning") or {}
    if t.get("history"):
        click.echo()
        click.echo(table([[h["epoch"], f"{h['loss']:.4f}", _pct(h.get("channel_sparsity")), acc(h.get("holdout_accuracy")),
                           acc(h.get("val_accuracy"))] for h in t["history"]],
                         ["epoch", "loss", "channels masked", "accuracy (holdout)", "accuracy (val)"]))
    es = ft.get("early_stopping") or {}
    if es.get("best_epoch"):
        click.echo(f"kept epoch {es['best_epoch']} (best on {ft['holdout_samples']} training samples held out"
                   + (f"; stopped after epoch {es['stopped_after_epoch']}" if es.get("stopped_after_epoch") else "") + ")")
    elif es.get("off"):
        click.echo(f"early stopping off: {es['off']}")
    if ft.get("note"):
        click.echo(f"note: {ft['note']}")
    for g in d.get("channel_groups", []):
        if not g.get("pruned") and g.get("reason"):
            click.echo(f"kept all {g['channels']} channels of {', '.join(g['layers'])}: {g['reason']}")
    for n in d.get("notes", []):
        click.echo(f"note: {n}")
