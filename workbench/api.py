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
