"""``convert_model``: the keyword-argument form of :func:`workbench.export.engine.convert` that
``workbench export`` and ``workbench quantize`` run, and that later stages (optimize, evaluate,
pipeline) call to build a deployable file."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from workbench.core.config import QuantConfig
from workbench.data import as_dataset
from workbench.frontends import ModelHandle, load
from workbench.frontends.loader import LoadOptions


def as_handle(model, options: LoadOptions | None = None) -> ModelHandle:
    return model if isinstance(model, ModelHandle) else load(model, options)


def convert_model(model, fmt: str, out: str | Path, *, scheme: str = "float", calib=None, calib_samples: int = 200,
                  io_dtype: str | None = None, per_channel: bool = True, calibrator: str = "minmax",
                  keep_float: tuple[str, ...] = (), seed: int = 0, overwrite: bool = False,
                  load_options: LoadOptions | None = None, write_manifest: bool = True, int16_layers: tuple[str, ...] = (),
                  **export_options):
    """Export (and quantize) a model. ``calib`` is a data spec ("digits:train", "calib.npz", a
    folder...) or a Dataset. Returns the Artifact; its manifest is written beside it."""
    from dataclasses import replace

    from workbench.core.files import check_output
    from workbench.export.artifact import staged
    from workbench.export.engine import convert

    handle = as_handle(model, load_options)
    cfg = QuantConfig(scheme=scheme, io_dtype=io_dtype, per_channel=per_channel, calibrator=calibrator,
                      calib_samples=calib_samples, keep_float=tuple(keep_float), seed=seed,
                      int16_layers=tuple(int16_layers))
    check_output(out, overwrite)
    data = as_dataset(calib, "train") if cfg.needs_calibration else None
    with staged(out) as tmp:  # the artifact and its manifest replace the old pair together
        art = convert(handle, fmt, tmp, cfg, calib=data, overwrite=True, **export_options)
        if write_manifest:
            art.write_manifest()
    return replace(art, path=Path(out))


def check_convert(model, fmt: str, *, scheme: str = "float", io_dtype: str | None = None, per_channel: bool = True,
                  calibrator: str = "minmax", keep_float: tuple[str, ...] = (), load_options: LoadOptions | None = None,
                  int16_layers: tuple[str, ...] = (), **_ignored) -> ModelHandle:
    """What can be refused before any work starts (a scheme the path lacks, a TorchScript file that cannot be
    traced, an unknown input shape): raises the error convert_model would raise later. Returns the handle."""
    from workbench.core.errors import ConfigError
    from workbench.export.engine import validate

    handle = as_handle(model, load_options)
    cfg = QuantConfig(scheme=scheme, io_dtype=io_dtype, per_channel=per_channel, calibrator=calibrator,
                      keep_float=tuple(keep_float), int16_layers=tuple(int16_layers))
    validate(handle, fmt, cfg)
    if handle.format != "tflite" and (not handle.inputs or handle.inputs[0].shape is None):
        raise ConfigError(f"The input shape of '{handle.path}' is unknown.", hint="Pass --input-shape, batch first (e.g. 1,1,28,28).")
    return handle


def export_tflm(model, out: str | Path, *, scheme: str | None = None, load_options: LoadOptions | None = None,
                overwrite: bool = False, target: str | None = None, name: str | None = None, layout: str = "plain",
                lang: str = "cpp", labels=None, section: str | None = None, force: bool = False,
                assess: Callable[[Path], dict] | None = None, verify: Callable[[Path, object], dict] | None = None,
                strip: str = "portable", compress_bits: int | None = None,
                npu: Callable[[Path], tuple[bytes, dict]] | None = None, tune: Callable[[Path], object] | None = None,
                **quant):
    """TFLite Micro sources from a .tflite, or from a framework model through PTQ first (int8 by default).
    ``assess`` checks the fit on ``target`` (see :func:`~workbench.export.tflm_sources.write_tflm_project`);
    ``verify(tflite_path, artifact)`` checks the written project (it builds and runs it) and its
    result joins the manifest's metrics as ``verify``. ``strip``: "portable" (the default), "tflm" or "none"
    (see :data:`~workbench.export.tflm_facts.STRIP_LEVELS`); the sources hold the stripped model.
    ``compress_bits``: LUT-compress the weights (see :mod:`workbench.export.compress`) first.
    ``npu(tflite) -> (compiled bytes, facts)``: an NPU board's compiler (Vela for Ethos-U); the sources
    then hold the compiled model, whose ``ethos-u`` operator the resolver registers with ``AddEthosU()``.
    ``tune(tflite) -> result``: chooses equivalent op forms by measuring them on the target (see
    :mod:`workbench.emulate.tune`); the sources hold ``result.data`` and the manifest ``result.to_dict()``."""
    import tempfile

    from workbench.core.files import check_input_file, check_output
    from workbench.export.tflm_sources import write_tflm_project

    handle = as_handle(model, load_options)
    check_output(out, overwrite, folder=True)
    label_list = None
    if labels:
        label_list = [ln.strip() for ln in check_input_file(labels, "labels").read_text(encoding="utf-8").splitlines() if ln.strip()]
    with tempfile.TemporaryDirectory(prefix="workbench-tflm-") as tmp:
        src = handle.path
        if handle.format != "tflite":
            src = Path(tmp) / (Path(handle.path).stem + ".tflite")
            quant = {k: v for k, v in quant.items() if k not in ("eval_data", "eval_samples")}
            convert_model(handle, "tflite", src, scheme=scheme or "int8", write_manifest=False, **quant)
        tuned = None
        if tune is not None:
            tuned = tune(Path(src))
            if tuned.changed:
                (Path(tmp) / "tuned").mkdir()
                src = Path(tmp) / "tuned" / Path(src).name  # the same name, so the same C identifiers
                src.write_bytes(tuned.data)
        npu_facts = None
        if npu is not None:
            compiled, npu_facts = npu(Path(src))
            original = Path(src)
            src = Path(tmp) / (original.stem + "_vela.tflite")
            src.write_bytes(compiled)
            if assess is not None:  # the board is judged on the model it is given, which the emulator compiles itself
                judged = assess
                assess = lambda _compiled: judged(original)  # noqa: E731
            strip, compress_bits = "none", None  # Vela's output is kept as Vela wrote it
        art = write_tflm_project(src, out, name=name, target=target, layout=layout, lang=lang,
                                 labels=label_list, section=section, force=force, overwrite=overwrite,
                                 assess=assess, strip=strip, compress_bits=compress_bits, npu=npu_facts,
                                 arena_bytes=(npu_facts or {}).get("arena_bytes"))
        if npu is not None or Path(src) != Path(handle.path):  # the artifact's source is the user's model, not the
            from dataclasses import replace  # compiled or converted .tflite in the temporary folder (gone after this)

            art = replace(art, source=Path(handle.path))
        if tuned is not None:
            art = _record(art, "tune", tuned.to_dict())
        if verify is not None:
            deployed = Path(src)
            if strip != "none" or compress_bits:  # the firmware is built from the bytes the sources hold
                from workbench.export.tflm_sources import _deployed

                deployed = Path(tmp) / "deployed" / Path(src).name
                deployed.parent.mkdir()
                with _deployed(Path(src), Path(src).read_bytes(), strip, compress_bits) as (path, _s, _c):
                    deployed.write_bytes(path.read_bytes())
            art = _record(art, "verify", verify(deployed, art))
        return art


def _record(art, key: str, value: dict):
    """The artifact with ``value`` added to its metrics, and to the manifest already written beside it."""
    import json

    from workbench.core.files import write_json_atomic

    art = art.with_metrics(**{key: value})
    manifest = json.loads(art.manifest_path.read_text(encoding="utf-8"))
    manifest.setdefault("metrics", {})[key] = value
    write_json_atomic(art.manifest_path, manifest)
    return art
