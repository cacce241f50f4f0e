"""``workbench cluster``: weight clustering with fine-tuning, and what it does to the deployed int8 model."""

from __future__ import annotations

import click

from workbench.cli.common import human_bytes, json_option, load_options, model_options, overwrite_option, table
from workbench.cli.prune_cmd import run_with_progress, train_config, train_options


def _layer_choice(ctx, param, values):
    from workbench.core.errors import ConfigError

    out = []
    for v in values:
        rx, sep, k = v.rpartition("=")
        if not sep or not rx or not k.strip().isdigit():
            raise ConfigError(f"--layer {v!r} should be REGEX=CLUSTERS, e.g. --layer 'fc.*=32' or --layer 'conv1=0'.")
        out.append((rx, int(k)))
    return tuple(out)


@click.command("cluster")
@click.argument("model", type=click.Path())
@model_options
@train_options(default_lr=1e-4, default_epochs=1)
@click.option("--clusters", type=int, default=16, show_default=True,
              help="Shared values per layer kernel (16 fit 4-bit TFLite Micro LUT compression).")
@click.option("--layer", "layers", multiple=True, metavar="REGEX=K", callback=_layer_choice,
              help="Per-layer choice: layers whose name matches REGEX get K clusters (0: left alone). Repeatable; first match wins.")
@click.option("--min-weights", type=int, default=256, show_default=True,
              help="Layers with fewer weights are left alone (their tables would cost more than they save).")
@click.option("--calib-samples", type=int, default=200, show_default=True, help="Calibration samples for the int8 .tflite.")
@click.option("--no-int8", is_flag=True, help="Skip the int8 .tflite export, sizes and accuracy.")
@click.option("-o", "--output", required=True, type=click.Path(), help="Clustered model: same format as MODEL.")
@overwrite_option
@json_option
def cluster_cmd(model, trust_model, factory, input_shape, train_data, val_data, epochs, lr, lr_schedule, batch_size, seed, loss,
                step, train_samples, resume, clusters, layers, min_weights, calib_samples, no_int8, output, overwrite, as_json):
    """Cluster MODEL's weights (k shared values per layer), fine-tune on --train, report accuracy and sizes.

    \b
    Keras models are clustered by tfmot (through tf_keras, saved back as Keras 3); PyTorch models by
    k-means per layer with the shared values kept while fine-tuning. The file keeps its size: the
    gain comes at deployment, where the int8 kernels hold at most k values per channel and
    `workbench export --format tflm --compress` stores them as log2(k)-bit indices.

    \b
    Examples:
      workbench cluster model.keras --clusters 16 --train fashion-mnist:train --val fashion-mnist:test -o clustered.keras
      workbench cluster model.pt --factory pkg.mod:build --clusters 16 --layer 'fc=32' --train data.npz -o clustered.pt
    """
    from workbench import api
    from workbench.optimize.config import ClusterConfig

    cfg = ClusterConfig(clusters=clusters, layers=layers, min_weights=min_weights, calib_samples=calib_samples,
                        train=train_config(epochs, lr, lr_schedule, batch_size, seed, loss, step, train_samples))
    run_with_progress(api.cluster, "fine-tuning", as_json, render, model, output, cfg, train_data, val_data,
                      load_options=load_options(trust_model, factory, input_shape), overwrite=overwrite, resume=resume,
                      measure_int8=not no_int8)


def _acc(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def render(d: dict) -> None:
    click.echo(f"{d['model']} -> {d['output']}: {d['config']['clusters']} clusters per layer ({d['route']})")
    rows = [[r["layer"][:40], r["kind"], f"{r['weights']:,}", r.get("clusters") or "-", f"{r['distinct_before']:,}",
             f"{r['distinct_after']:,}" if "distinct_after" in r else r.get("reason", "-")] for r in d["layers"]]
    click.echo(table(rows, ["layer", "kind", "weights", "clusters", "distinct", "-> after"]))
    b, a = d["before"], d["after"]
    bi, ai = b.get("int8", {}), a.get("int8", {})
    summary = [["accuracy (framework)", _acc(b.get("accuracy")), _acc(a.get("accuracy"))],
               ["accuracy (int8, LiteRT)", _acc(bi.get("accuracy")), _acc(ai.get("accuracy"))],
               ["int8 .tflite", human_bytes(bi.get("tflite_bytes")), human_bytes(ai.get("tflite_bytes"))],
               ["int8, stripped", human_bytes(bi.get("stripped_bytes")), human_bytes(ai.get("stripped_bytes"))],
               ["int8, 4-bit LUT + stripped", human_bytes(bi.get("compressed_stripped_bytes")),
                human_bytes(ai.get("compressed_stripped_bytes"))]]
    click.echo()
    click.echo(table(summary, ["", "before", "after"]))
    if d.get("accuracy_drop_pp") is not None:
        click.echo(f"accuracy drop: {d['accuracy_drop_pp']:+.2f} points (framework)"
                   + (f", {d['int8_accuracy_drop_pp']:+.2f} points (int8)" if d.get("int8_accuracy_drop_pp") is not None else ""))
    if d.get("compressed_to_stripped_int8_ratio") is not None:
        click.echo(f"deployed TFLM model: {d['compressed_to_stripped_int8_ratio']:.2f}x the stripped int8 model before clustering")
