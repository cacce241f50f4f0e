import click

from workbench.cli.common import emit_json, json_option


@click.command("emulate")
@click.argument("model", type=click.Path())
@click.option("--target", "target_name", metavar="NAME", help="A built-in profile (workbench targets list).")
@click.option("--target-file", type=click.Path(), metavar="FILE", help="A target profile YAML file instead of a built-in one.")
@click.option("--eval", "eval_spec", metavar="DATA", help="Also run the model in the target's runtime on DATA (test split) and report accuracy.")
@click.option("--eval-samples", type=click.IntRange(min=1), default=500, show_default=True, help="Samples of DATA to evaluate.")
@click.option("--reference", metavar="MODEL", help="A float reference model to compare the accuracy with (needs --eval).")
@click.option("--threads", type=click.IntRange(min=1), help="Threads of the runtime on multi-core boards (default: the profile's).")
@json_option
def emulate_cmd(model, target_name, target_file, eval_spec, eval_samples, reference, threads, as_json):
    """Will MODEL (.tflite) fit the target, how fast will it run, and at what accuracy?

    Flash and RAM are measured (the exact TFLite Micro arena for MCUs, resident memory with
    LiteRT for Linux boards), op support comes from the target runtime's op set, latency is
    an estimate from the profile's documented cost model (kind "estimate" in the JSON).

    Exit codes: 0 fits, 1 does not fit or uses unsupported ops, 2 bad input.
    """
    from workbench.emulate import emulate, render_text
    from workbench.core.errors import CheckFailed

    if bool(target_name) == bool(target_file):
        raise click.UsageError("Give exactly one of --target NAME or --target-file FILE (workbench targets list shows the names).")
    if reference and not eval_spec:
        raise click.UsageError("--reference needs --eval DATA to compare on.")
    report = emulate(model, target_file or target_name, eval_data=eval_spec, reference=reference, threads=threads,
                     eval_samples=eval_samples)
    if as_json:
        emit_json(report.to_dict())
    else:
        click.echo(render_text(report))
    if not report.fits:
        reasons = report.reasons()
        raise CheckFailed(f"'{model}' does not fit {report.target.name}: " + "; ".join(reasons[:4])
                          + ("" if len(reasons) <= 4 else f" (and {len(reasons) - 4} more)"))
