"""`workbench export` and `workbench quantize`: one path, two entry points."""

from __future__ import annotations

import warnings

import click

from workbench.cli.common import emit_json, human_bytes, json_option, load_options, model_options, overwrite_option
from workbench.core.config import CALIBRATORS, EXPORT_FORMATS, IO_DTYPES, SCHEME_HELP, SCHEMES
from workbench.evaluate.metrics import CHOICES as METRIC_CHOICES

SCHEMES_TEXT = ("; ".join(f"{k}: {v}" for k, v in SCHEME_HELP.items() if k != "float")
                + ". From a float .tflite (ai-edge-quantizer): TFLite Micro runs int8, int16x8, mixed-int16 and weight-int8 "
                "with --per-tensor; "
                "LiteRT runs all.")


def quant_options(f):
    f = click.option("--int16-layer", "int16_layers", multiple=True, metavar="REGEX",
                     help="mixed-int16: ops whose output tensor name matches REGEX get int16 activations. Repeatable.")(f)
    f = click.option("--metric", type=click.Choice(METRIC_CHOICES), default="auto", show_default=True,
                     help="Task metric for --eval: top1, top5, auc, mse, mae, psnr (auto: top1 for class labels, auc for 0/1 "
                          "labels on a score or an autoencoder, mse for targets); sqnr/cosine: fidelity only.")(f)
    f = click.option("--eval-output", "eval_output", metavar="NAME",
                     help="--eval of a model with several outputs: the one the task metric is computed on (a name or its "
                          "position, 0 first; default: the first). Every output's SQNR, cosine and max-abs error are reported.")(f)
    f = click.option("--keep-float", "keep_float", multiple=True, metavar="LAYER",
                     help="Keep this layer (its output tensor name, see debug-quant; a regex for a .tflite input) in float. Repeatable.")(f)
    f = click.option("--eval-samples", type=int, default=1000, show_default=True, help="Samples used by --eval.")(f)
    f = click.option("--eval", "eval_data", metavar="DATA", help="Measure accuracy loss: the original in its framework vs the artifact in its runtime.")(f)
    f = click.option("--seed", type=int, default=0, show_default=True, help="Seed for sample selection.")(f)
    f = click.option("--calib-samples", type=int, default=200, show_default=True, help="Calibration samples to use.")(f)
    f = click.option("--calibrator", type=click.Choice(CALIBRATORS), default="minmax", show_default=True)(f)
    f = click.option("--per-channel/--per-tensor", default=True, show_default=True, help="Weight quantization granularity.")(f)
    f = click.option("--io-dtype", type=click.Choice(IO_DTYPES), help="Input/output dtype (default: int8 for full-integer TFLite, else float32).")(f)
    f = click.option("--calib", "calib", metavar="DATA", help="Calibration data: built-in set (digits:train), .npz/.npy/IDX file, image folder, or module:function.")(f)
    return f


def tflm_options(f):
    f = click.option("--compress", "compress_bits", type=click.IntRange(1, 7), flag_value=4, default=None, metavar="[BITS]",
                     is_flag=False,
                     help="tflm: LUT-compress constant weights with at most 2**BITS distinct values (a clustered model) into "
                          "BITS-bit indices plus value tables, decoded by TFLM's DECODE op; checked bit-identical in TFLM. "
                          "--compress alone means 4 bits.")(f)
    f = click.option("--strip-tflm-only", "strip_tflm_only", is_flag=True,
                     help="tflm: also cut per-channel zero-point tables of one repeated value to one entry (TFLM "
                          "broadcasts it; LiteRT refuses such a model); checked bit-identical in TFLM.")(f)
    f = click.option("--strip/--no-strip", "strip", default=True, show_default=True,
                     help="tflm: write the model without what TFLite Micro never reads (tensor names, signatures, unread "
                          "metadata, unused and duplicate buffers), checked bit-identical in TFLM and LiteRT. "
                          "--no-strip keeps the names, which help debugging (e.g. with `workbench inspect`).")(f)
    f = click.option("--tflm-dir", type=click.Path(), metavar="DIR", envvar="WORKBENCH_TFLM_DIR",
                     help="tflm --verify: the tflite-micro checkout to build with (default: `workbench firmware setup`'s).")(f)
    f = click.option("--verify", is_flag=True,
                     help="tflm: build the written project for --target with real TFLite Micro + CMSIS-NN, run one inference "
                          "on QEMU and check it matches the host interpreter and fits (exit 1 when not).")(f)
    f = click.option("--tune", is_flag=True,
                     help="tflm, tflite: with --target (a Cortex-M board), run each convolution that has two equivalent "
                          "forms (a one-channel-input CONV_2D is also a DEPTHWISE_CONV_2D) in both on the board's TFLite "
                          "Micro + CMSIS-NN firmware and keep the faster; the result is checked bit-identical.")(f)
    f = click.option("--force", is_flag=True, help="tflm: write the sources even when the model does not fit --target.")(f)
    f = click.option("--section", help="tflm: linker section for the model array (e.g. .rodata.model).")(f)
    f = click.option("--labels", type=click.Path(), help="tflm: a text file of class labels, one per line.")(f)
    f = click.option("--lang", type=click.Choice(["cpp", "c"]), default="cpp", show_default=True, help="tflm: source language.")(f)
    f = click.option("--layout", type=click.Choice(["plain", "arduino"]), default="plain", show_default=True, help="tflm: folder layout.")(f)
    f = click.option("--name", help="tflm: C identifier stem (default: from the file name).")(f)
    f = click.option("--target", help="tflm: a target profile to check fit and estimate latency for. executorch: the board "
                     "whose backend to use (Cortex-M MCUs: ExecuTorch's Cortex-M/CMSIS-NN ops, int8).")(f)
    return f


# Formats whose exporter picks its backend from --target (executorch: XNNPACK for Linux boards, the Cortex-M
# backend for Cortex-M MCUs); tflm takes --target through its own path.
TARGETED_FORMATS = ("executorch",)
OWN_WARNING = "/workbench/"  # show our own warnings; third-party ones stay in --debug territory


def _run(model, fmt, out, scheme, lo, qopts, tflm, overwrite, as_json, metric="auto", eval_output=None):
    from workbench import api

    tune = tflm.pop("tune", False)
    if tune and fmt not in TUNABLE_FORMATS:
        from workbench.core.errors import ConfigError

        raise ConfigError(f"--tune chooses op forms of a TFLite model; --format {fmt} writes none.",
                          hint="Use --format tflite or tflm with --target, or drop --tune.")
    tuner = api.tuner(tflm.get("target")) if tune else None  # refused before any work when it cannot run
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if fmt == "tflm":
            tflm["tune"] = tuner
            art = api.export_tflm(model, out, scheme=scheme, load_options=lo, overwrite=overwrite, **qopts, **tflm)
        else:
            handle = api.load(model, lo)
            api.check_convert(handle, fmt, scheme=scheme, **{k: v for k, v in qopts.items() if k not in ("eval_data", "eval_samples")})
            eval_data = None
            if qopts.get("eval_data"):  # open and check it before minutes of conversion
                from workbench.data import open_data
                from workbench.data.dataset import fit_to_input

                eval_data = open_data(qopts["eval_data"], split="test", limit=qopts["eval_samples"], seed=qopts["seed"])
                fit_to_input(eval_data.x, handle.inputs[0].shape, handle.inputs[0].layout, eval_data.name, f"'{model}'")
            from dataclasses import replace
            from pathlib import Path

            from workbench.core.files import check_output
            from workbench.export.artifact import staged

            check_output(out, overwrite)
            with staged(out) as tmp:  # the old model and manifest stay until the new pair is complete (eval included)
                targeted = {"target": tflm["target"]} if tflm.get("target") and fmt in TARGETED_FORMATS else {}
                art = api.convert(handle, fmt, tmp, scheme=scheme, overwrite=True, write_manifest=False, **targeted,
                                  **{k: v for k, v in qopts.items() if k not in ("eval_data", "eval_samples")})
                if tuner is not None:
                    tuned = tuner(art.path)
                    if tuned.changed:
                        art.path.write_bytes(tuned.data)
                    art = art.with_metrics(tune=tuned.to_dict())
                if eval_data is not None:
                    art = art.with_metrics(**api.evaluate(handle, art.path, eval_data, metric=metric, output=eval_output).to_dict())
                art.write_manifest()
            art = replace(art, path=Path(out))
    notes = [str(w.message) for w in caught if OWN_WARNING in w.filename.replace("\\", "/")]
    manifest = art.manifest()
    if as_json:
        emit_json({**manifest, "output": str(art.path), "warnings": notes})
        return
    for n in notes:
        click.echo(f"Warning: {n}", err=True)
    a = manifest["artifact"]
    src = manifest["source"]
    click.echo(f"wrote {art.path} ({fmt}{', ' + scheme if scheme else ''}): {human_bytes(a['bytes'])}"
               + (f", {a['bytes'] / src['bytes']:.0%} of the source" if src and src.get("bytes") else ""))
    m = manifest["metrics"]
    for w in m.get("warnings", ()):
        click.echo(f"Warning: {w}", err=True)
    if "accuracy" in m:
        click.echo(f"accuracy: {m['reference_accuracy']:.2%} -> {m['accuracy']:.2%} (drop {m['accuracy_drop_pp']:+.2f} points) "
                   f"on {m['samples']} samples of {m['data'] if 'data' in m else qopts.get('eval_data')}")
    elif m.get("metric"):
        from workbench.evaluate.metrics import describe

        click.echo(f"{describe(m)} on {m['samples']} samples of {m.get('data') or qopts.get('eval_data')}")
    if "sqnr_db" in m:
        argmax = f"argmax {m['argmax_agreement']:.2%}, " if m.get("argmax_agreement") is not None else ""
        click.echo(f"agreement: {argmax}SQNR {m['sqnr_db']:.1f} dB, cosine {m['cosine']:.5f}, "
                   f"max abs error {m['max_abs_error']:.4g}" + (f" (output '{m['output']}')" if len(m.get("outputs", ())) > 1 else ""))
        for o in m.get("outputs", ()) if len(m.get("outputs", ())) > 1 else ():
            click.echo(f"  output '{o['name']}': SQNR {o['sqnr_db']:.1f} dB, cosine {o['cosine']:.5f}, max abs error {o['max_abs_error']:.4g}")
    c = m.get("compression")
    if c:
        click.echo(f"compressed ({c['max_bits']}-bit LUT): {c['bytes_before']:,} -> {c['bytes_after']:,} B, "
                   f"{len(c['compressed'])} tensors, bit-identical in TFLite Micro")
        for r in c["compressed"]:
            click.echo(f"  tensor {r['tensor']} {'x'.join(map(str, r['shape']))}: {r['bytes']:,} B -> ~{r['estimated_bytes']:,} B "
                       f"({r['bits']}-bit, {r['mode']})")
        for r in c["left_alone"]:
            click.echo(f"  left alone: tensor {r['tensor']} {'x'.join(map(str, r['shape']))} ({r['bytes']:,} B): {r['reason']}")
    s = m.get("strip")
    if s:
        click.echo(f"stripped ({s['level']}): {s['bytes_before']:,} -> {s['bytes_after']:,} B model bytes "
                   f"({s['model_to_constant_ratio']:.2f}x its {s['constant_bytes']:,} B of constant data), bit-identical in "
                   + " and ".join({"litert": "LiteRT", "tflm": "TFLite Micro"}[r] for r in s["verify"]["runtimes"]))
    tu = m.get("tune")
    if tu:
        for o in tu["ops"]:
            g, x = o["given"], o["other"]
            click.echo(f"tuned op {o['op']} ({o['filters']} filters, 1 input channel) on {tu['target']}: {o['form']} "
                       f"{g['instructions']:,} / OTHER {x['instructions']:,} instructions -> kept {o['kept']}"
                       .replace("OTHER", o["other_form"]))
        if not tu["ops"]:
            click.echo("tune: no op has two forms; the model is unchanged")
        elif tu["changed"]:
            click.echo(f"tuned on {tu['target']}: {tu['given']['instructions']:,} -> {tu['tuned']['instructions']:,} "
                       f"instructions per inference, bit-identical in "
                       + " and ".join({"litert": "LiteRT", "tflm": "TFLite Micro"}[r] for r in tu["check"]["runtimes"]))
    v = m.get("verify")
    if v:
        click.echo(f"verified on QEMU {v['machine']} for {v['target']}: builds with real TFLite Micro, output matches the "
                   f"host interpreter; firmware flash {v['flash_bytes']:,} B, RAM {v['ram_bytes']:,} B, "
                   f"{v['instructions']:,} instructions")
    click.echo(f"manifest: {art.manifest_path}")


QUANT_KEYS = ("calib", "io_dtype", "per_channel", "calibrator", "calib_samples", "seed", "eval_data", "eval_samples", "keep_float",
              "int16_layers")
TFLM_KEYS = ("target", "name", "layout", "lang", "labels", "section", "force", "verify", "tflm_dir", "compress_bits", "tune")
TUNABLE_FORMATS = ("tflm", "tflite")


def strip_level(strip: bool, tflm_only: bool) -> str:
    """The export's strip level (see workbench.export.tflm_facts.STRIP_LEVELS) from the two flags."""
    if tflm_only and not strip:
        from workbench.core.errors import ConfigError

        raise ConfigError("--strip-tflm-only strips more than --strip; it cannot go with --no-strip.",
                          hint="Drop one of the two options.")
    return "none" if not strip else "tflm" if tflm_only else "portable"


def _dispatch(model, fmt, out, scheme, kw):
    lo = load_options(kw["trust_model"], kw["factory"], kw["input_shape"])
    tflm = {k: kw[k] for k in TFLM_KEYS}
    tflm["strip"] = strip_level(kw["strip"], kw["strip_tflm_only"])
    _run(model, fmt, out, scheme, lo, {k: kw[k] for k in QUANT_KEYS}, tflm, kw["overwrite"], kw["as_json"],
         metric=kw["metric"], eval_output=kw["eval_output"])


def shared_options(f):
    for deco in (json_option, overwrite_option, model_options, tflm_options, quant_options):
        f = deco(f)
    return f


@click.command("quantize")
@click.argument("model", type=click.Path())
@click.option("--scheme", type=click.Choice(SCHEMES), required=True, help=SCHEMES_TEXT)
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), default="tflite", show_default=True)
@click.option("-o", "--output", "out", type=click.Path(), required=True)
@shared_options
def quantize_cmd(model, scheme, fmt, out, **kw):
    """Quantize MODEL after training and export it, measuring what it costs.

    \b
    Examples:
      workbench quantize model.keras --scheme int8 --calib digits:train --eval digits:test -o model_int8.tflite
      workbench quantize model.pt --factory pkg.mod:build --scheme int8 --calib calib.npz --format onnx -o m.onnx
      workbench quantize model.pt --factory pkg.mod:build --scheme int8 --calib calib.npz --format executorch -o m.pte
      workbench quantize float.tflite --scheme int8 --calib calib.npz --eval test.npz -o model_int8.tflite
      workbench quantize ae.tflite --scheme int8 --calib normal.npz --eval test.npz --metric auc -o ae_int8.tflite
    """
    _dispatch(model, fmt, out, scheme, kw)


@click.command("export")
@click.argument("model", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), required=True)
@click.option("-o", "--output", "out", type=click.Path(), required=True)
@click.option("--scheme", type=click.Choice(SCHEMES), default=None, help="Quantize first (default: float; int8 for tflm from a framework model).")
@shared_options
def export_cmd(model, fmt, out, scheme, **kw):
    """Export MODEL to TFLite, ONNX, ONNX Runtime (.ort), ExecuTorch (.pte, XNNPACK) or TFLite Micro C/C++ sources.

    \b
    Examples:
      workbench export model.keras --format tflite -o model.tflite
      workbench export model_int8.tflite --format tflm --target stm32l4r5 -o firmware/model
      workbench export model.pt --factory pkg.mod:build --format onnx -o model.onnx
      workbench export model.pt --factory pkg.mod:build --format executorch -o model.pte
    """
    _dispatch(model, fmt, out, scheme if scheme or fmt == "tflm" else "float", kw)
