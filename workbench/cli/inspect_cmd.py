import click

from workbench.cli.common import emit_json, human_bytes, json_option, load_options, model_options, table


@click.command("inspect")
@click.argument("model", type=click.Path())
@model_options
@json_option
def inspect_cmd(model, trust_model, factory, input_shape, as_json):
    """Describe MODEL: format, inputs and outputs, parameters, per-layer MACs and ops.

    Reads .tflite, .onnx, .ort, Keras (.keras, .h5, SavedModel), TF1 frozen graphs (.pb) and
    PyTorch (TorchScript, .pt2, state_dict with --factory) models; the format is detected from the content.
    """
    from workbench import api

    info = api.inspect(model, load_options(trust_model, factory, input_shape))
    if as_json:
        emit_json(info)
        return
    click.echo(f"{info['path']}: {info['format']} ({info['framework']}), {human_bytes(info['file_bytes'])}")
    macs = f"{info['macs']:,}" if info["macs"] is not None else "unknown"
    partial = info.get("macs_partial")
    if partial:
        macs += f" (partial: {partial['unknown_ops']} op(s) of unknown shape not counted)"
    params = f"{info['parameters']:,}" if info["parameters"] is not None else "unknown"
    click.echo(f"parameters: {params}   MACs per inference: {macs}")
    if info.get("note"):
        click.echo(f"note: {info['note']}")
    if info.get("program"):  # an ExecuTorch program
        from collections import Counter

        calls = Counter(info["program"]["instructions"])
        click.echo(f"program: {len(info['program']['instructions'])} instruction(s): "
                   + ", ".join(f"{k} x{v}" for k, v in calls.items()))
    run = info.get("shapes_from_run") or {}
    if run.get("ran"):
        given = ", ".join(f"{k} {v}" for k, v in run["inputs"].items())
        click.echo(f"shapes: from one {run['runtime']} run on zeros of {given}")
    elif run and not partial:
        click.echo(f"shapes: as the file records them; --input-shape was not used ({run['reason']})")
    if partial:
        why = f" (could not run it to find them: {run['reason']})" if run.get("reason") else ""
        click.echo(f"partial: MACs of {', '.join(f'{k} x{v}' for k, v in partial['ops'].items())} are unknown{why}. "
                   f"{partial['hint']}")
    for kind in ("inputs", "outputs"):
        for s in info[kind]:
            q = f" scale={s['scale']:.6g} zero_point={s['zero_point']}" if "scale" in s else ""
            lay = f" {s['layout']}" if s.get("layout") else ""
            click.echo(f"{kind[:-1]:>6}: {s['name']} {s['shape']} {s['dtype']}{lay}{q}")
    rows = [[r["name"][:48], r["op"], r.get("shape"), r.get("dtype", ""), f"{r.get('params', 0):,}",
             "?" if r.get("macs", 0) is None else f"{r.get('macs', 0):,}"] for r in info["layers"]]
    if rows:
        click.echo()
        click.echo(table(rows, ["layer", "op", "output shape", "dtype", "params", "MACs"]))
    if info["op_counts"]:
        click.echo()
        click.echo("ops: " + ", ".join(f"{k} x{v}" for k, v in sorted(info["op_counts"].items())))
    ex = info.get("exports_to") or {}
    if ex.get("paths"):
        click.echo("exports to: " + "; ".join(f"{fmt} ({', '.join(sch)})" for fmt, sch in ex["paths"].items()))
    for fmt, reason in (ex.get("refused") or {}).items():
        click.echo(f"not to {fmt}: {reason}")
