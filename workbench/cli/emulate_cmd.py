import click

from workbench.cli.common import emit_json, json_option
from workbench.evaluate.metrics import CHOICES as METRIC_CHOICES


@click.command("emulate")
@click.argument("model", type=click.Path())
@click.option("--target", "target_name", metavar="NAME", help="A built-in profile (workbench targets list).")
@click.option("--target-file", type=click.Path(), metavar="FILE", help="A target profile YAML file instead of a built-in one.")
@click.option("--eval", "eval_spec", metavar="DATA", help="Also run the model in the target's runtime on DATA (test split) and report accuracy.")
@click.option("--eval-samples", type=click.IntRange(min=1), default=500, show_default=True, help="Samples of DATA to evaluate.")
@click.option("--reference", metavar="MODEL", help="A float reference model to compare the accuracy with (needs --eval).")
@click.option("--metric", type=click.Choice(METRIC_CHOICES), default="auto", show_default=True,
              help="Task metric for --eval: top1, top5, auc, mse, mae, psnr (auto: top1 for class labels, auc for 0/1 labels "
                   "on a score or an autoencoder, mse for targets).")
@click.option("--threads", type=click.IntRange(min=1), help="Threads of the runtime on multi-core boards (default: the profile's).")
@click.option("--firmware/--no-firmware", default=None,
              help="MCU targets: build and run the real firmware (TFLite Micro + CMSIS-NN on QEMU). Default: whenever "
                   "the toolchain, QEMU and a TFLM tree are here; --firmware requires it, --no-firmware gives the estimate.")
@click.option("--tflm-dir", type=click.Path(), metavar="DIR", envvar="WORKBENCH_TFLM_DIR",
              help="A tflite-micro checkout with its downloads (default: $WORKBENCH_TFLM_DIR, then `workbench firmware setup`'s clone).")
@click.option("--opt-level", type=click.Choice(["-Os", "-O1", "-O2", "-O3", "-Ofast"]), metavar="LEVEL",
              help="MCU firmware: compile every TFLite Micro and CMSIS-NN source at LEVEL (-Os, -O1, -O2, -O3, -Ofast), "
                   "as your build system does (mbed-os, the Arduino Mbed core and Zephyr use -Os). Default: TFLM's own "
                   "Makefile levels (-Os framework, -O2 kernels).")
@json_option
def emulate_cmd(model, target_name, target_file, eval_spec, eval_samples, reference, metric, threads, firmware, tflm_dir,
                opt_level, as_json):
    """Will MODEL (.tflite; .onnx, .ort or .pte on Linux boards) fit the target, how fast will it run, and at what accuracy?

    MCU targets run the model's real firmware where it can be built here: flash is the
    linked image's text + data, RAM its data + bss with the arena the 32-bit build uses and
    the stack's high-water mark, latency the instructions QEMU counts x the core's fitted
    CPI, and --eval runs the samples on the CMSIS-NN kernels ("method": "firmware" in the
    JSON). Otherwise flash and RAM are measured with the host TFLite Micro arena and the
    profile's constants, and latency is the profile's documented cost model ("method":
    "estimate"). Linux boards: resident memory measured with LiteRT (ONNX Runtime for an .onnx or
    .ort model, ExecuTorch with XNNPACK for a .pte program), latency estimated.

    Exit codes: 0 fits, 1 does not fit or cannot run there (the verdict and the numbers are
    still printed), 2 bad input, 3 a missing tool, 4 a tool failed while building or running the
    firmware (no verdict: the estimates are printed, "fits" is null and "tool_failure" says why).
    """
    from workbench.emulate import emulate, render_text

    if bool(target_name) == bool(target_file):
        raise click.UsageError("Give exactly one of --target NAME or --target-file FILE (workbench targets list shows the names).")
    if reference and not eval_spec:
        raise click.UsageError("--reference needs --eval DATA to compare on.")
    report = emulate(model, target_file or target_name, eval_data=eval_spec, reference=reference, threads=threads,
                     eval_samples=eval_samples, firmware=firmware, tflm_dir=tflm_dir, metric=metric, opt_level=opt_level)
    if as_json:
        emit_json(report.to_dict())
    else:
        click.echo(render_text(report))
    if report.tool_failure is not None:  # no verdict: a tool failed, not the model
        click.echo(f"Error: {report.tool_failure['message'].splitlines()[0]}", err=True)
        click.get_current_context().exit(report.tool_failure["exit_code"])
    if not report.fits:  # a verdict, already printed with its reasons: exit 1, not an error
        click.get_current_context().exit(1)
