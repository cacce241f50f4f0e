import click

from workbench.cli.common import emit_json, human_bytes, json_option, table


@click.group("targets")
def targets_cmd():
    """Device profiles that `workbench emulate` checks models against."""


@targets_cmd.command("list")
@json_option
def targets_list(as_json):
    """List the built-in target profiles."""
    from workbench.emulate import list_targets, load_target

    targets = [load_target(n) for n in list_targets()]
    if as_json:
        emit_json([{"name": t.name, "title": t.title, "kind": t.kind, "core": t.core, "clock_mhz": t.clock_mhz,
                    "cores": t.cores, "flash_bytes": t.flash_bytes, "ram_bytes": t.ram_bytes,
                    "runtime": f"{t.runtime.name}+{t.runtime.kernels}"} for t in targets])
        return
    rows = [[t.name, t.kind, t.core, f"{t.clock_mhz:g} MHz", "SD card" if t.flash_bytes is None else human_bytes(t.flash_bytes),
             human_bytes(t.ram_bytes), f"{t.runtime.name}+{t.runtime.kernels}"] for t in targets]
    click.echo(table(rows, ["name", "kind", "core", "clock", "flash", "RAM", "runtime"]))
    click.echo("\nDetails and sources: workbench targets show NAME")


@targets_cmd.command("show")
@click.argument("name")
@json_option
def targets_show(name, as_json):
    """Show a target profile: hardware, runtime, cost model and the sources of every number.

    NAME is a built-in profile (see `workbench targets list`) or a profile YAML file.
    """
    from workbench.emulate import load_target

    t = load_target(name)
    if as_json:
        emit_json(t.to_dict())
        return
    flash = "external storage (SD card)" if t.flash_bytes is None else f"{t.flash_bytes:,} B ({human_bytes(t.flash_bytes)})"
    click.echo(f"{t.name}: {t.title}")
    click.echo(f"  kind     {t.kind}")
    click.echo(f"  core     {t.core} x{t.cores} @ {t.clock_mhz:g} MHz, runtime uses {t.threads} thread(s)")
    click.echo(f"  flash    {flash}")
    click.echo(f"  RAM      {t.ram_bytes:,} B ({human_bytes(t.ram_bytes)})")
    rt = t.runtime
    click.echo(f"  runtime  {rt.name}+{rt.kernels}: code {human_bytes(rt.code_bytes)}, RAM besides the model "
               f"{human_bytes(rt.ram_overhead_bytes)}" + (f" (emulated with {rt.package})" if rt.package else ""))
    c = t.cost
    rows = [[k, f"{v.cycles_per_mac:g}", f"{v.cycles_per_byte:g}"] for k, v in c.dtypes.items()]
    click.echo(f"\ncost model: {c.op_overhead_cycles:g} cycles per op + cycles/MAC x MACs + cycles/byte x activation bytes")
    click.echo(table(rows, ["dtype", "cycles/MAC", "cycles/byte"]))
    extras = [f"{k} x{v:g}" for k, v in c.class_factors.items()]
    if t.runtime.name == "litert":
        extras += [f"parallel efficiency {c.parallel_efficiency:g}", f"ops XNNPACK does not take x{c.undelegated_factor:g}"]
    if c.parallel_grain:
        extras.append(f"ops under {c.parallel_grain:g} MACs + output elements get under half the thread speed-up")
    if extras:
        click.echo("factors: " + ", ".join(extras))
    if c.element_cycles:
        click.echo("cycles per activation element: " + ", ".join(f"{k} {v:g}" for k, v in c.element_cycles.items()))
    if c.calibration:
        click.echo(f"calibration: {c.calibration}")
    if t.kind == "mcu":
        _firmware_lines(t)
    click.echo("\nsources:")
    for s in t.sources:
        click.echo(f"  - {s.fact}\n    {s.url}")
    if t.assumptions:
        click.echo("assumptions:")
        for a in t.assumptions:
            click.echo(f"  - {a}")


def _firmware_lines(t) -> None:
    """How emulate builds and times this target's firmware: the QEMU machine, the flags, the CPI fit."""
    from workbench.emulate.firmware.cpi import fit_summary
    from workbench.emulate.firmware.machines import machine_for_core, machine_problem

    problem = machine_problem(t.core)
    if problem:
        click.echo(f"\nfirmware: none ({problem}); emulate gives the cost-model estimate")
        return
    m = machine_for_core(t.core)
    click.echo(f"\nfirmware: TFLite Micro + CMSIS-NN built with {' '.join(m.cflags)} (TFLM TARGET_ARCH {m.tflm_arch}), "
               f"run on QEMU {m.qemu_machine} with -icount shift=0")
    fit = fit_summary(t.core)
    if fit:
        cpi = ", ".join(f"{k} {v:g}" for k, v in fit["cpi"].items())
        errs = ", ".join(f"{k} {v:+.1%}" for k, v in fit["held_out_errors"].items())
        click.echo(f"  CPI {cpi}; leave-one-out errors {errs} ({fit['regenerate']})")
        click.echo(f"  {fit['how']}")


from workbench.cli.calibrate_cmd import calibrate_cmd  # noqa: E402

targets_cmd.add_command(calibrate_cmd)
