import click

from workbench.cli.common import emit_json, human_bytes, json_option, load_options, model_options, table


@click.command("benchmark")
@click.argument("model", type=click.Path())
@click.option("--data", metavar="DATA", help="Labelled samples: accuracy and agreement per stack (default: agreement on calibration samples).")
@click.option("--calib", metavar="DATA", required=True, help="Calibration data for the int8 stacks.")
@click.option("--samples", type=int, default=500, show_default=True, help="Samples from --data.")
@click.option("--threads", type=int, default=1, show_default=True)
@click.option("--runs", type=int, default=200, show_default=True, help="Single-sample runs timed per stack.")
@click.option("--stack", "only", multiple=True, help="Only these stacks (repeatable), e.g. 'litert int8'.")
@model_options
@json_option
def benchmark_cmd(model, data, calib, samples, threads, runs, only, trust_model, factory, input_shape, as_json):
    """Run MODEL on every deployment stack and compare size, load time, latency and accuracy on this machine.

    PyTorch eager, torch.export, TorchScript, ONNX Runtime, LiteRT, TFLite Micro and ExecuTorch
    (XNNPACK) for a PyTorch model; Keras, LiteRT and TFLite Micro for a Keras model; ONNX Runtime
    (as given, fp16, dynamic, int8) for an .onnx model; ExecuTorch for a .pte program.
    """
    from workbench import api
    from workbench.evaluate.benchmark import benchmark
    from workbench.data import open_data

    handle = api.load(model, load_options(trust_model, factory, input_shape))
    ds = open_data(data, split="test", limit=samples, seed=0) if data else None
    say = None if as_json else (lambda r: click.echo(f"  measured {r['stack']}", err=True))
    res = benchmark(handle, ds, open_data(calib, split="train", limit=200, seed=0), threads=threads, runs=runs,
                    only=tuple(only), on_row=say)
    if res["rows"] and all("error" in r for r in res["rows"]):  # nothing ran: a failure, not a table of dashes
        from workbench.core.errors import UnsupportedError

        raise UnsupportedError(f"No stack could run '{model}': " + "; ".join(f"{r['stack']}: {r['error']}" for r in res["rows"]))
    if as_json:
        emit_json(res)
        return
    rows = []
    for r in res["rows"]:
        if "error" in r:
            rows.append([r["stack"], "-", "-", "-", "-", "-", f"not available: {r['error'][:60]}"])
            continue
        rows.append([r["stack"], human_bytes(r["bytes"]), f"{r['load_ms']:.1f}", f"{r['latency_ms']:.3f}",
                     f"{r['accuracy']:.2%}" if r.get("accuracy") is not None else "-",
                     f"{r['argmax_agreement']:.2%}" if r.get("argmax_agreement") is not None else "-",
                     f"{r['sqnr_db']:.1f}" if r.get("sqnr_db") not in (None, float("inf")) else "exact"])
    click.echo(f"{res['model']} ({res['framework']}), {res['samples']} samples, {res['threads']} thread(s)")
    click.echo(table(rows, ["stack", "size", "load ms", "latency ms", "accuracy", "agreement", "SQNR dB"]))
