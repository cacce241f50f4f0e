from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from workbench.core.config import QuantConfig
from workbench.data.dataset import Dataset, fit_to_input
from workbench.core.errors import ConfigError, DataError, UnsupportedError
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


EXPORTERS: Registry[Exporter] = Registry("export path")

# A model's framework family for the exporter table: "tflite", "onnx" and "ort" inputs only convert onwards.
FAMILY = {"keras": "keras", "torch": "torch", "tflite": "tflite", "onnx": "onnx"}


def _register_builtin():
    from workbench.export import keras_tflite, onnx_quant, torch_onnx, torch_tflite  # noqa: F401


def exporter_for(handle: ModelHandle, fmt: str) -> Exporter:
    _register_builtin()
    key = (FAMILY.get(handle.framework, handle.framework), fmt)
    exp = EXPORTERS.find(key)
    if exp is None:
        possible = sorted(f for (fw, f) in EXPORTERS.keys() if fw == key[0])
        raise UnsupportedError(
            f"Cannot export a {handle.format} model ('{handle.path}') to {fmt}.",
            hint=f"From {handle.format} this tool exports to: {', '.join(possible) or 'nothing'}."
            + (" A Keras model to ONNX needs tf2onnx, which does not install with the pinned TensorFlow 2.21 / protobuf 7 set;"
               " export the PyTorch version of the model, or go through --format tflite." if key == ("keras", "onnx") else ""),
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
    with atomic_path(out) as tmp:
        extra = exp.run(ExportJob(handle=handle, config=cfg, calib=x, out=tmp, options=options)) or {}
    art = Artifact(path=out, format=fmt, source=handle.path, config={"format": fmt, **cfg.to_dict(),
                   "calib": None if calib is None else calib.name, "calib_used": None if x is None else int(len(x))},
                   extra={"recipe": extra})
    return art
