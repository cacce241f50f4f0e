import click

from workbench.cli.common import emit_json, json_option, load_options, model_options, table
from workbench.evaluate.metrics import CHOICES as METRIC_CHOICES


@click.command("compare")
@click.argument("reference", type=click.Path())
@click.argument("candidate", type=click.Path())
@click.option("--data", required=True, metavar="DATA", help="Samples to run both on (labels give accuracy).")
@click.option("--samples", type=int, default=1000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--reference-runtime", help="Runtime for REFERENCE (default: its own: keras, torch, litert, ort).")
@click.option("--candidate-runtime", help="Runtime for CANDIDATE (e.g. tflm to run a .tflite in TFLite Micro).")
@click.option("--metric", type=click.Choice(METRIC_CHOICES), default="auto", show_default=True,
              help="Task metric: top1, top5, auc, mse, mae, psnr (auto: top1 for class labels, auc for 0/1 labels on a score "
                   "or an autoencoder, mse for targets); sqnr/cosine: fidelity only (always reported).")
@click.option("--output", "output", metavar="NAME",
              help="A model with several outputs: the one the task metric is computed on (a name either model gives it, "
                   "or its position, 0 first; default: the reference's first). Every output's SQNR, cosine and max-abs "
                   "error are reported, outputs paired by name.")
@model_options
@json_option
def compare_cmd(reference, candidate, data, samples, seed, reference_runtime, candidate_runtime, metric, output, trust_model,
                factory, input_shape, as_json):
    """Compare two models or artifacts on the same samples: the task metric and its loss, argmax agreement, SQNR, cosine, max-abs error.

    Each runs in its real runtime (Keras/PyTorch for framework models, LiteRT for .tflite,
    ONNX Runtime for .onnx/.ort, ExecuTorch for .pte). --factory and --input-shape apply to REFERENCE.
    """
    from workbench import api

    cmp = api.evaluate(reference, candidate, data, samples=samples, seed=seed,
                       load_options=load_options(trust_model, factory, input_shape),
                       reference_runtime=reference_runtime, candidate_runtime=candidate_runtime, metric=metric,
                       output=output)
    d = cmp.to_dict()
    if as_json:
        emit_json(d)
        return
    click.echo(f"reference: {d['reference']} ({d['reference_runtime']['runtime']})")
    click.echo(f"candidate: {d['candidate']} ({d['candidate_runtime']['runtime']})")
    click.echo(f"data: {d['data']}, {d['samples']} samples")
    if "accuracy" in d:
        click.echo(f"accuracy: {d['reference_accuracy']:.2%} -> {d['accuracy']:.2%} (drop {d['accuracy_drop_pp']:+.2f} points)")
    elif d.get("metric"):
        from workbench.evaluate.metrics import describe

        click.echo(describe(d))
    if d.get("argmax_agreement") is not None:
        click.echo(f"argmax agreement: {d['argmax_agreement']:.2%}")
    outs = d.get("outputs") or []
    if len(outs) > 1:
        click.echo(f"task metric on output '{d['output']}'; outputs paired by {d['pairing']}:")
        click.echo(table([[o["name"] + ("" if o["candidate_name"] == o["name"] else f" = {o['candidate_name']}"),
                           "x".join(map(str, o["shape"])), f"{o['sqnr_db']:.2f}", f"{o['cosine']:.6f}", f"{o['max_abs_error']:.5g}",
                           _slices(o["range_loss"])] for o in outs],
                         ["output", "shape", "SQNR dB", "cosine", "max abs error", "slices collapsed/coarse"]))
    else:
        click.echo(f"SQNR: {d['sqnr_db']:.2f} dB   cosine: {d['cosine']:.6f}   max abs error: {d['max_abs_error']:.5g}")
        if outs and (outs[0]["range_loss"].get("collapsed") or outs[0]["range_loss"].get("coarse")):
            click.echo(f"slices along the last axis collapsed/coarse: {_slices(outs[0]['range_loss'])}")
    for w in d.get("warnings", ()):
        click.echo(f"Warning: {w}", err=True)


def _slices(loss: dict) -> str:
    collapsed, coarse = loss.get("collapsed") or [], loss.get("coarse") or []
    if not collapsed and not coarse:
        return "-"
    return f"{','.join(map(str, collapsed)) or '-'} / {','.join(map(str, coarse)) or '-'} of {loss['channels']}"
