from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from workbench.core.config import QuantConfig
from workbench.data.dataset import Dataset, fit_to_input
from workbench.core.errors import ConfigError, DataError, UnsupportedError, WorkbenchError
from workbench.core.isolate import ChildCrashed, run_isolated, should_isolate
from workbench.export.artifact import Artifact
from workbench.core.files import atomic_path, check_output
from workbench.frontends.handle import ModelHandle
from workbench.core.registry import Registry

MIN_CALIB_SAMPLES = 100  # below this, ranges of rare activations are often missed: warn


@dataclass(frozen=True)
class ExportJob:
    """What an exporter receives: the model, the config, calibration samples fitted to the model's input."""

    handle: ModelHandle
    config: QuantConfig
    calib: np.ndarray | None
    out: Path  # temporary path to write; renamed onto the destination afterwards
    options: dict


@dataclass(frozen=True)
class Exporter:
    run: Callable[[ExportJob], dict]  # returns extra manifest fields (e.g. the recipe actually used)
    schemes: tuple[str, ...]
    calibrators: tuple[str, ...] = ("minmax",)
    per_tensor: bool = True
    keep_float: bool = False
    io_dtypes: tuple[str, ...] = ("float32", "int8", "uint8", "int16")
    note: str = ""
    # Converters whose C++ code can kill the interpreter run in a child process (workbench.core.isolate) when
    # ``isolate(handle, config)`` says the conversion is at risk (or WORKBENCH_ISOLATION=always);
    # ``on_crash`` turns the crash into an error that names the step, the layers and what to try.
    isolate: Callable[[ModelHandle, QuantConfig], bool] | None = None  # is this conversion at risk of a crash?
    on_crash: Callable[[ExportJob, ChildCrashed], WorkbenchError] | None = None
    # What can be known before any work starts (a TorchScript file torch.export cannot trace): raises a WorkbenchError.
    precheck: Callable[[ModelHandle], None] | None = None


EXPORTERS: Registry[Exporter] = Registry("export path")
# Paths that do not exist, with the upstream reason: (family, format) -> the sentence a refusal adds.
REFUSALS: dict[tuple[str, str], str] = {}

# A model's framework family for the exporter table: "tflite", "onnx" and "ort" inputs only convert onwards.
FAMILY = {"keras": "keras", "torch": "torch", "tflite": "tflite", "onnx": "onnx", "tf1": "tf1"}


def _register_builtin():
    from workbench.export import keras_onnx, keras_tflite, onnx_quant, onnx_tflite, tf1_tflite, tflite_quant, torch_onnx, torch_tflite  # noqa: F401
    from workbench.export import torch_executorch  # noqa: F401


def exporter_for(handle: ModelHandle, fmt: str) -> Exporter:
    _register_builtin()
    key = (FAMILY.get(handle.framework, handle.framework), fmt)
    exp = EXPORTERS.find(key)
    if exp is None:
        possible = sorted(f for (fw, f) in EXPORTERS.keys() if fw == key[0])
        raise UnsupportedError(
            f"Cannot export a {handle.format} model ('{handle.path}') to {fmt}.",
            hint=(REFUSALS[key] + " " if key in REFUSALS else "")
            + f"From {handle.format} this tool exports to: {', '.join(possible) or 'nothing'}.",
        )
    return exp


def validate(handle: ModelHandle, fmt: str, cfg: QuantConfig) -> Exporter:
    exp = exporter_for(handle, fmt)
    if cfg.scheme not in exp.schemes:
        raise UnsupportedError(
            f"Scheme '{cfg.scheme}' is not available for {handle.framework} -> {fmt}.",
            hint=f"Available here: {', '.join(exp.schemes)}. {exp.note}".strip(),
        )
    if cfg.needs_calibration and cfg.calibrator not in exp.calibrators:
        raise UnsupportedError(
            f"Calibrator '{cfg.calibrator}' is not available for {handle.framework} -> {fmt}.",
            hint=f"Available here: {', '.join(exp.calibrators)}. {exp.note}".strip(),
        )
    if cfg.io_dtype and cfg.io_dtype not in exp.io_dtypes:
        raise UnsupportedError(f"--io-dtype {cfg.io_dtype} is not available for {handle.framework} -> {fmt}.",
                               hint=f"Available here: {', '.join(exp.io_dtypes)}. {exp.note}".strip())
    if not cfg.per_channel and not exp.per_tensor:
        raise UnsupportedError(f"--per-tensor is not available for {handle.framework} -> {fmt}.")
    if cfg.keep_float and not exp.keep_float:
        raise UnsupportedError(f"--keep-float is not available for {handle.framework} -> {fmt}.",
                               hint="Mixed precision is supported for Keras models exported to TFLite.")
    if exp.precheck is not None:
        exp.precheck(handle)
    return exp


def calibration_samples(handle: ModelHandle, data: Dataset, cfg: QuantConfig) -> np.ndarray:
    data = data.take(cfg.calib_samples, seed=cfg.seed) if len(data) > cfg.calib_samples else data
    spec = handle.inputs[0] if handle.inputs else None
    if spec is None:
        raise ConfigError(f"The input shape of '{handle.path}' is unknown.", hint="Pass --input-shape.")
    x = fit_to_input(data.x, spec.shape, spec.layout, data.name, f"'{handle.path.name}'")
    if float(np.ptp(x)) == 0.0:
        raise DataError(f"Calibration data '{data.name}' is constant (every value is {float(x.flat[0])}).",
                        hint="Quantization ranges cannot be learned from constant data; use real samples.")
    if len(x) < MIN_CALIB_SAMPLES:
        warnings.warn(f"Only {len(x)} calibration samples (fewer than {MIN_CALIB_SAMPLES}): activation ranges may be "
                      "too narrow and accuracy may suffer.", stacklevel=2)
    return x


@dataclass(frozen=True)
class ChildJob:
    """An ExportJob as a child process receives it: the model by path and load options, not as an object."""

    fmt: str
    path: Path
    load_options: object
    inputs: tuple
    config: QuantConfig
    calib: np.ndarray | None
    out: Path
    options: dict


def run_child(spec: ChildJob) -> dict:
    """In the child (workbench.core.isolate): load the model again and run its exporter."""
    from workbench.frontends.loader import load

    handle = load(spec.path, spec.load_options).with_inputs(spec.inputs)
    exp = exporter_for(handle, spec.fmt)
    return exp.run(ExportJob(handle=handle, config=spec.config, calib=spec.calib, out=spec.out, options=spec.options))


def convert(handle: ModelHandle, fmt: str, out: str | Path, config: QuantConfig | None = None,
            calib: Dataset | None = None, overwrite: bool = False, **options) -> Artifact:
    cfg = config or QuantConfig()
    out = Path(out)
    exp = validate(handle, fmt, cfg)
    check_output(out, overwrite)
    x = None
    if cfg.needs_calibration:
        if calib is None:
            raise ConfigError(f"Scheme '{cfg.scheme}' needs calibration data.",
                              hint="Pass --calib DATA (e.g. digits:train, a .npz file or an image folder).")
        x = calibration_samples(handle, calib, cfg)
    from workbench.core.progress import stage

    with atomic_path(out) as tmp, stage(f"Converting '{Path(handle.path).name}' ({handle.framework} -> {fmt}, {cfg.scheme})"):
        job = ExportJob(handle=handle, config=cfg, calib=x, out=tmp, options=options)
        at_risk = exp.isolate is not None and exp.isolate(handle, cfg)
        if exp.isolate is not None and should_isolate(at_risk) and "load_options" in handle.meta:
            on_crash = (lambda err: exp.on_crash(job, err)) if exp.on_crash else None
            spec = ChildJob(fmt=fmt, path=handle.path, load_options=handle.meta["load_options"], inputs=handle.inputs,
                            config=cfg, calib=x, out=tmp, options=options)
            extra = run_isolated("workbench.export.engine:run_child", spec,
                                 phase=f"{handle.framework} -> {fmt} conversion ({cfg.scheme})", on_crash=on_crash) or {}
        else:
            extra = exp.run(job) or {}
    art = Artifact(path=out, format=fmt, source=handle.path, config={"format": fmt, **cfg.to_dict(),
                   "calib": None if calib is None else calib.name, "calib_used": None if x is None else int(len(x))},
                   extra={"recipe": extra})
    return art


def exports_from(handle: ModelHandle) -> dict:
    """Where this model can go: {format: [schemes]} for every registered path, plus "tflm" (TFLite Micro
    sources), and the refused paths with their upstream reasons (for `inspect`)."""
    _register_builtin()
    family = FAMILY.get(handle.framework, handle.framework)
    paths = {fmt: list(EXPORTERS.get((fw, fmt)).schemes) for (fw, fmt) in sorted(EXPORTERS.keys()) if fw == family}
    refused = {fmt: reason for (fw, fmt), reason in REFUSALS.items() if fw == family}
    for fmt in list(paths):  # what this very model cannot take (a TorchScript file with state, a graph with training ops)
        precheck = EXPORTERS.get((family, fmt)).precheck
        try:
            if precheck is not None:
                precheck(handle)
        except UnsupportedError as exc:
            refused[fmt] = exc.message
            del paths[fmt]
        except WorkbenchError:
            pass  # a missing option (an input shape), not a missing path
    if "tflite" in paths or handle.format == "tflite":
        paths["tflm"] = ["float", "int8", "int16x8"] if handle.format != "tflite" else ["as is (float, int8, int16x8 models)"]
    return {"paths": paths, "refused": refused}
