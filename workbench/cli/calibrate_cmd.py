"""``workbench targets calibrate``: fit a target's cost model to profiles measured on the board."""

from __future__ import annotations

from pathlib import Path

import click

from workbench.cli.common import emit_json, json_option, overwrite_option, table


@click.command("calibrate")
@click.argument("name")
@click.option("--from", "profiles", multiple=True, required=True, type=click.Path(), metavar="PROFILE.json",
              help="A report of `workbench profile` measured on the board (repeatable; more models fit more coefficients).")
@click.option("--model", "models", multiple=True, type=click.Path(), metavar="FILE",
              help="A profiled .tflite, when it is no longer at the path its report recorded (matched by sha256).")
@click.option("--name", "new_name", metavar="NAME", help="Name of the new profile. Default: the output file's name.")
@click.option("-o", "--output", required=True, type=click.Path(), help="The new target profile (YAML).")
@overwrite_option
@json_option
def calibrate_cmd(name, profiles, models, new_name, output, overwrite, as_json):
    """Fit target NAME's cost coefficients to latencies measured on the real board, and write
    the result as a new target profile.

    NAME is a built-in profile (workbench targets list) or a profile YAML file. One
    measurement gives one common scale; measurements of several models (float and int8,
    small and large) let each coefficient group get its own. The estimate error before and
    after is printed for every measurement.

    \b
    Example:
      workbench profile model.tflite --remote pi@pi4 -o pi4.json
      workbench targets calibrate raspberry-pi-4 --from pi4.json -o my_pi4.yaml
      workbench emulate model.tflite --target-file my_pi4.yaml
    """
    from workbench.profile.calibrate import calibrate, write_target
    from workbench.core.files import check_output
    from workbench.profile import load_report

    check_output(output, overwrite)
    reports = [(Path(p).name, load_report(p)) for p in profiles]
    result = calibrate(name, reports, models=list(models), name=new_name or Path(output).stem)
    write_target(result.target, output)
    if as_json:
        emit_json(dict(result.to_dict(), output=str(output)))
        return
    click.echo(f"calibrated {result.base.name} -> {result.target.name}: {result.method}")
    rows = [[r["report"], r["model"], r["threads"], f"{r['measured_ms']:.4g}", f"{r['before_ms']:.4g}",
             f"{100 * r['before_error']:+.1f}%", f"{r['after_ms']:.4g}", f"{100 * r['after_error']:+.1f}%"]
            for r in result.rows]
    click.echo(table(rows, ["report", "model", "threads", "measured ms", "estimate before", "error", "estimate after",
                            "error"]))
    click.echo(f"\nrms error (what the fit minimises): {100 * result.error_before:.1f}% before, "
               f"{100 * result.error_after:.1f}% after")
    if len(result.rows) > 1 and result.error_after > 0.1:
        click.echo("The measurements disagree more than one scale can fix; profile more models (float and int8, "
                   "small and large) so that each coefficient group gets its own scale.")
    click.echo(f"wrote {output}; use it with: workbench emulate MODEL --target-file {output}")
