"""``workbench qat``: quantization-aware training to an int8 .tflite, compared with float and PTQ."""

from __future__ import annotations

import click

from workbench.cli.common import human_bytes, json_option, load_options, model_options, overwrite_option, table
from workbench.cli.prune_cmd import run_with_progress, train_config, train_options


@click.command("qat")
@click.argument("model", type=click.Path())
@model_options
@train_options(default_lr=1e-4, default_epochs=2)
@click.option("--per-tensor", is_flag=True, help="One scale per weight tensor instead of one per output channel.")
@click.option("--strict", is_flag=True, help="Refuse a model with layers QAT cannot wrap, instead of leaving them in float.")
@click.option("--onnx", "write_onnx", is_flag=True, help="PyTorch: also write the QAT model as an int8 (QDQ) ONNX file beside OUT.")
@click.option("--calib-samples", type=int, default=200, show_default=True, help="Calibration samples for the PTQ model it is compared with.")
@click.option("-o", "--output", required=True, type=click.Path(), help="The int8 .tflite to write.")
@overwrite_option
@json_option
def qat_cmd(model, trust_model, factory, input_shape, train_data, val_data, epochs, lr, lr_schedule, batch_size, seed, loss, step,
            train_samples, resume, per_tensor, strict, write_onnx, calib_samples, output, overwrite, as_json):
    """Fine-tune MODEL with fake quantization on --train and write an int8 .tflite.

    \b
    Keras (3 or tf_keras): tfmot quantize_model (Keras 3 models go through tf_keras and back).
    PyTorch: PT2E QAT (prepare_qat_pt2e, train, convert_pt2e) converted by litert-torch.
    Reports float, post-training int8 (PTQ) and QAT int8 accuracy side by side, each run in its
    real runtime, and names any operator that is still computed in float.
    """
    from workbench.optimize.config import QATConfig
    from workbench.optimize.qat import qat

    cfg = QATConfig(train=train_config(epochs, lr, lr_schedule, batch_size, seed, loss, step, train_samples), per_channel=not per_tensor,
                    on_unsupported="error" if strict else "float", calib_samples=calib_samples, onnx=write_onnx)
    run_with_progress(qat, "QAT", as_json, render, model, output, cfg, train_data, val_data,
                      load_options=load_options(trust_model, factory, input_shape), overwrite=overwrite, resume=resume)


def render(d: dict) -> None:
    t, data = d["training"], d["data"]
    click.echo(f"{d['model']} -> {d['output']}: quantization-aware training, int8")
    click.echo(f"route: {d.get('route', '')}")
    if d.get("train_batch", "dynamic") != "dynamic":
        click.echo(f"training batch: {d['train_batch']}")
    click.echo(f"trained {t['epochs']} epochs ({t['steps']} steps, {t['seconds']} s) on {data['train_samples']} samples "
               f"of {data['train']}; accuracy on {data['val']} ({data['val_samples']} samples)"
               + (f"; resumed after epoch {t['resumed_from_epoch']}" if t.get("resumed_from_epoch") else ""))

    def acc(v):
        return "-" if v is None else f"{100 * v:.2f}%"

    def drop(side):
        v = side.get("drop_points")
        return "-" if v is None else f"{v:+.2f}"

    rows = [["float", acc(d["float"].get("accuracy")), "-", d["float"].get("runtime", ""), "-"]]
    p = d["ptq"]
    if "error" in p:
        rows.append(["PTQ int8", "failed", "-", "", p["error"][:60]])
    elif p:
        rows.append(["PTQ int8", acc(p.get("accuracy")), drop(p), "litert", human_bytes(p.get("tflite_bytes"))])
    q = d["qat"]
    rows.append(["QAT int8", acc(q.get("accuracy")), drop(q), "litert", human_bytes(q.get("tflite_bytes"))])
    o = d.get("onnx")
    if o and "error" not in o:
        rows.append(["QAT int8 ONNX", acc(o.get("accuracy")), "", "ort", human_bytes(o.get("bytes"))])
    click.echo()
    click.echo(table(rows, ["model", "accuracy", "drop (points)", "runtime", "size"]))
    if o and "error" in o:
        click.echo(f"ONNX: {o['error']}", err=True)
    if q.get("unwrapped_layers"):
        click.echo(f"left in float (QAT cannot wrap them): {', '.join(q['unwrapped_layers'])}")
    if q.get("float_ops"):
        ops = ", ".join(f"{x['op']}#{x['index']}" for x in q["float_ops"])
        click.echo(f"operators still computed in float in the QAT model: {ops}")
