"""The library surface the CLI uses. Each function takes the previous step's value.

    handle = load("model.keras")
    artifact = quantize(handle, QuantConfig(scheme="int8"), calib="digits:train", out="m.tflite")
    report = emulate(artifact.path, "stm32l4r5")
"""

from __future__ import annotations

from pathlib import Path

from workbench.frontends import ModelHandle, load
from workbench.frontends.loader import LoadOptions

__all__ = ["load", "inspect", "ModelHandle", "LoadOptions"]


def inspect(model: str | Path | ModelHandle, options: LoadOptions | None = None) -> dict:
    from workbench.inspect_model import describe

    handle = model if isinstance(model, ModelHandle) else load(model, options)
    return describe(handle)


def _dataset(data, split: str, limit: int | None = None, seed: int | None = None):
    from workbench.data import Dataset, open_data

    if data is None or isinstance(data, Dataset):
        return data if (data is None or limit is None) else data.take(limit, seed)
    return open_data(str(data), split=split, limit=limit, seed=seed)


def convert(model, fmt: str, out: str | Path, *, scheme: str = "float", calib=None, calib_samples: int = 200,
            io_dtype: str | None = None, per_channel: bool = True, calibrator: str = "minmax",
            keep_float: tuple[str, ...] = (), seed: int = 0, overwrite: bool = False,
            load_options: LoadOptions | None = None, write_manifest: bool = True, **export_options):
    """Export (and quantize) a model: the step `workbench export` and `workbench quantize` run.

    ``calib`` is a data spec ("digits:train", "calib.npz", a folder...) or a Dataset.
    Returns the Artifact; its manifest is written beside it.
    """
    from workbench.config import QuantConfig
    from workbench.export import convert as _convert

    handle = model if isinstance(model, ModelHandle) else load(model, load_options)
    cfg = QuantConfig(scheme=scheme, io_dtype=io_dtype, per_channel=per_channel, calibrator=calibrator,
                      calib_samples=calib_samples, keep_float=tuple(keep_float), seed=seed)
    data = _dataset(calib, "train") if cfg.needs_calibration else None
    art = _convert(handle, fmt, out, cfg, calib=data, overwrite=overwrite, **export_options)
    if write_manifest:
        art.write_manifest()
    return art
