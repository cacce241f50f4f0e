import click

from workbench.cli.common import emit_json, human_bytes, json_option, load_options, model_options, overwrite_option, table


@click.command("debug-quant")
@click.argument("model", type=click.Path())
@click.option("--calib", required=True, metavar="DATA", help="Calibration data (also the inputs compared layer by layer).")
@click.option("--scheme", type=click.Choice(["int8", "int16x8"]), default="int8", show_default=True)
@click.option("--samples", type=int, default=64, show_default=True, help="Samples compared layer by layer.")
@click.option("--calib-samples", type=int, default=200, show_default=True)
@click.option("--keep-float", multiple=True, metavar="LAYER", help="Keep this layer in float (repeatable).")
@click.option("--auto-keep-float", type=int, default=0, help="Keep the N layers with the lowest SQNR in float.")
@click.option("--eval", "eval_data", metavar="DATA", help="Measure accuracy of float, quantized and mixed models.")
@click.option("-o", "--output", "out", type=click.Path(), help="Write the mixed-precision .tflite here.")
@model_options
@overwrite_option
@json_option
def debug_quant_cmd(model, calib, scheme, samples, calib_samples, keep_float, auto_keep_float, eval_data, out,
                    trust_model, factory, input_shape, overwrite, as_json):
    """Find the layers that quantization hurts most, and keep them in float.

    Runs the float and the quantized .tflite on the same inputs in LiteRT, pairs the
    intermediate tensors, and prints per-layer SQNR, cosine and max-abs error, worst first.
    """
    from pathlib import Path

    from workbench import api
    from workbench.data import open_data
    from workbench.evaluate.debug_quant import diagnose
    from workbench.core.files import check_output

    if out:
        check_output(out, overwrite)
    handle = api.load(model, load_options(trust_model, factory, input_shape))
    res = diagnose(handle, open_data(calib, split="train"), scheme=scheme, samples=samples, keep_float=tuple(keep_float),
                   auto_keep_float=auto_keep_float, eval_data=open_data(eval_data, split="test") if eval_data else None,
                   out=Path(out) if out else None, overwrite=overwrite, calib_samples=calib_samples)
    if as_json:
        emit_json(res)
        return
    click.echo(f"{res['model']}: {scheme} vs float, {res['samples']} samples, worst layers first")
    rows = [[r["index"], r["op"], r["name"].split(";")[0][:60], f"{r['sqnr_db']:.1f}", f"{r['cosine']:.5f}", f"{r['max_abs_error']:.4g}"]
            for r in res["layers"]]
    click.echo(table(rows, ["op#", "op", "layer (output tensor)", "SQNR dB", "cosine", "max abs err"]))
    if "variants" in res:
        click.echo(f"\nkept in float: {', '.join(res['keep_float'])}")
        vrows = [[k, human_bytes(v["bytes"]), f"{v['accuracy']:.2%}" if v.get("accuracy") is not None else "-",
                  f"{v['accuracy_drop_pp']:+.2f}" if v.get("accuracy_drop_pp") is not None else "-"] for k, v in res["variants"].items()]
        click.echo(table(vrows, ["variant", "size", "accuracy", "drop (points)"]))
    if res.get("output"):
        click.echo(f"wrote {res['output']}")
