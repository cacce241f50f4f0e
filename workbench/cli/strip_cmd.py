"""``workbench strip``: a .tflite without what TensorFlow Lite Micro never reads, checked bit-identical."""

from __future__ import annotations

import click

from workbench.cli.common import emit_json, json_option, overwrite_option, table

RUNTIME_NAMES = {"litert": "LiteRT (builtin kernels)", "tflm": "TensorFlow Lite Micro"}


@click.command("strip")
@click.argument("model", type=click.Path())
@click.option("-o", "--output", "out", type=click.Path(), required=True, help="The stripped .tflite.")
@click.option("--tflm-only", is_flag=True,
              help="Also cut per-channel zero-point tables of one repeated value to one entry: TFLite Micro broadcasts it, "
                   "LiteRT refuses such a model. Checked bit-identical in TFLite Micro only.")
@click.option("--no-verify", is_flag=True, help="Skip running both models and comparing their outputs.")
@overwrite_option
@json_option
def strip_cmd(model, out, tflm_only, no_verify, overwrite, as_json):
    """Rewrite the .tflite MODEL without what TFLite Micro never reads, and prove it runs the same.

    \b
    Removed: tensor and subgraph names, signature definitions, the description, metadata TFLM does not
    read (min_runtime_version, CONVERSION_METADATA), calibration min/max tables, unused operator codes
    and buffers, duplicate constant buffers. Kept: everything TFLM reads, incl. the OfflineMemoryAllocation
    and COMPRESSION_METADATA metadata, the schema version and 16-byte aligned weights. Models whose
    structure cannot be proven kept (data outside the flatbuffer, sparse tensors, fields this schema
    does not know) are refused. Names help debugging: keep the original beside the stripped model.

    \b
    Examples:
      workbench strip model_int8.tflite -o model_int8_stripped.tflite
      workbench strip model_int8.tflite --tflm-only -o model_mcu.tflite
    """
    from workbench import api

    art = api.strip(model, out, level="tflm" if tflm_only else "portable", overwrite=overwrite, verify=not no_verify)
    m = art.metrics
    if as_json:
        emit_json({**art.manifest(), "output": str(art.path)})
        return
    removed = m["removed"]
    rows = [[k.replace("_", " "), ", ".join(v) if isinstance(v, list) else f"{v:,}"] for k, v in removed.items()
            if v not in (0, [], None)]
    click.echo(f"wrote {art.path}: {m['bytes_before']:,} -> {m['bytes_after']:,} B ({m['saved_bytes']:,} B saved, "
               f"{m['model_to_constant_ratio']:.2f}x its {m['constant_bytes']:,} B of constant data)")
    if rows:
        click.echo(table(rows, ["removed", "count"]))
    if m.get("kept_metadata"):
        click.echo(f"kept metadata TFLM reads: {', '.join(m['kept_metadata'])}")
    v = m.get("verify")
    if v:
        click.echo(f"bit-identical outputs on {v['samples']} random inputs in "
                   + " and ".join(RUNTIME_NAMES[r] for r in v["runtimes"]))
        for r, why in v.get("skipped", {}).items():
            click.echo(f"not checked in {RUNTIME_NAMES[r]}: {why}")
    click.echo(f"manifest: {art.manifest_path}")
