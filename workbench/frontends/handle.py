"""The value every step passes on: a loaded model with its framework tag and signature."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple  # ints, with None for a dynamic dimension
    dtype: str  # numpy dtype name: float32, int8, uint8, int16, ...
    layout: str | None = None  # "NCHW", "NHWC" or None when not an image tensor
    scale: float | None = None  # quantization parameters (per-tensor) when quantized
    zero_point: int | None = None

    @property
    def quantized(self) -> bool:
        return self.scale is not None and self.scale != 0.0

    def to_dict(self) -> dict:
        d = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.layout:
            d["layout"] = self.layout
        if self.quantized:
            d["scale"] = self.scale
            d["zero_point"] = self.zero_point
        return d


@dataclass(frozen=True)
class ModelHandle:
    """A loaded model. ``obj`` is the framework object (None for formats read as bytes)."""

    path: Path
    format: str  # keras, h5, savedmodel, torchscript, exported_program, state_dict, onnx, tflite
    framework: str  # keras | torch | onnx | tflite
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    obj: Any = field(default=None, compare=False, repr=False)
    meta: dict = field(default_factory=dict, compare=False)

    def with_inputs(self, inputs: tuple[TensorSpec, ...]) -> "ModelHandle":
        return replace(self, inputs=inputs)

    @property
    def input(self) -> TensorSpec:
        return self.inputs[0]


def guess_layout(shape: tuple) -> str | None:
    """Image-like rank-4 tensors: channels are the small dimension (1, 3 or 4)."""
    if len(shape) != 4:
        return None
    c_first, c_last = shape[1], shape[3]
    if c_last in (1, 3, 4) and c_first not in (1, 3, 4):
        return "NHWC"
    if c_first in (1, 3, 4) and c_last not in (1, 3, 4):
        return "NCHW"
    return None
