import click

from workbench.cli.common import emit_json, json_option


@click.group("firmware")
def firmware_cmd():
    """The TFLite Micro tree, toolchain and QEMU that MCU emulation builds real firmware with."""


@firmware_cmd.command("setup")
@click.option("--dest", type=click.Path(), help="Where to clone tflite-micro (default: the user cache).")
@click.option("--link", "link_dir", type=click.Path(), metavar="DIR",
              help="Offline: use this tflite-micro tree (its downloads in place) instead of cloning; it is validated and linked.")
@json_option
def firmware_setup(dest, link_dir, as_json):
    """Clone tflite-micro at the pinned commit and let its Makefile fetch its third-party sources.

    Prints what was downloaded and from where; no prompts. An existing tree is left alone.
    Offline machines: --link DIR (or --tflm-dir / WORKBENCH_TFLM_DIR on each command) with a
    checkout whose downloads are in place.
    """
    from workbench.emulate.firmware import link, setup

    result = link(link_dir, dest) if link_dir else setup(dest)
    if as_json:
        emit_json(result.to_dict())
        return
    for line in result.actions:
        click.echo(line)
    click.echo(f"TFLite Micro tree ready: {result.dest} ({result.tree.content_key})")


@firmware_cmd.command("check")
@click.option("--target", "target_name", default="stm32l4r5", show_default=True, metavar="NAME", help="The target to check for.")
@click.option("--tflm-dir", type=click.Path(), metavar="DIR", envvar="WORKBENCH_TFLM_DIR", help="A tflite-micro checkout.")
@json_option
def firmware_check(target_name, tflm_dir, as_json):
    """Say whether emulate can build and run firmware for a target here, and if not, why.

    Exit codes: 0 it can, 1 it cannot (the reason is printed).
    """
    from workbench.emulate.firmware import firmware_support

    why_not = firmware_support(target_name, tflm_dir=tflm_dir)
    if as_json:
        emit_json({"target": target_name, "firmware": why_not is None, "reason": why_not})
    else:
        click.echo(f"{target_name}: firmware emulation available." if why_not is None else f"{target_name}: {why_not}")
    if why_not is not None:
        click.get_current_context().exit(1)
