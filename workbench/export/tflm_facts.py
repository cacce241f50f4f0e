"""The facts a TensorFlow Lite Micro project is generated from, and its options.

Frozen values only: :mod:`workbench.export.tflm_sources` fills them from the model, the
TFLM interpreter and the user's options; :mod:`workbench.export.tflm_render` turns them
into source text.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass, field

from workbench.core.errors import ConfigError
from workbench.export.c_names import comment_text
from workbench.export.tflm_ops import ResolverOp

ARENA_ALIGNMENT = 16


@dataclass(frozen=True)
class ArenaMargin:
    """How much is added to the arena the TFLite Micro interpreter measured on this machine.

    The measurement runs TFLite Micro's reference kernels. On the device, optimized
    kernels (CMSIS-NN on Arm Cortex-M, ESP-NN on ESP32) ask the arena for scratch
    buffers the reference kernels do not use (im2col and accumulator buffers for
    convolutions), and another TFLite Micro release can change the interpreter's own
    bookkeeping. The margin covers both; the 64-bit host over-estimates the pointer-sized
    part of that bookkeeping, which only adds to the safety on a 32-bit MCU.
    """

    fraction: float = 0.10
    minimum: int = 1024
    reason: str = ("optimized kernels (CMSIS-NN, ESP-NN) request scratch buffers that the reference kernels "
                   "used for the measurement do not, and the interpreter's bookkeeping differs between "
                   "TFLite Micro releases")

    def __post_init__(self):
        if not 0 <= self.fraction <= 4 or self.minimum < 0:
            raise ConfigError(f"Arena margin must have 0 <= fraction <= 4 and minimum >= 0, got {self.fraction}, {self.minimum}.")

    def plan(self, measured: int, source: str) -> "ArenaPlan":
        measured = int(measured)
        margin = max(self.minimum, math.ceil(measured * self.fraction))
        size = -(-(measured + margin) // ARENA_ALIGNMENT) * ARENA_ALIGNMENT
        return ArenaPlan(measured=measured, margin=size - measured, size=size, source=source, rule=self)


ARENA_MARGIN = ArenaMargin()


@dataclass(frozen=True)
class ArenaPlan:
    measured: int
    margin: int  # everything added on top of the measurement, alignment included
    size: int
    source: str  # how ``measured`` was obtained
    rule: ArenaMargin

    def describe(self) -> str:
        return (f"{self.measured:,} bytes {self.source} + {self.margin:,} bytes margin "
                f"(max({self.rule.minimum:,} B, {self.rule.fraction:.0%}), rounded up to a multiple of {ARENA_ALIGNMENT})")


_SECTION_RE = re.compile(r"[.A-Za-z_][A-Za-z0-9_.$]{0,62}")


@dataclass(frozen=True)
class TflmOptions:
    """The user's choices for one TFLM export (see ``write_tflm_project``), checked on construction."""

    name: str | None = None
    target: str | None = None
    layout: str = "plain"
    lang: str = "cpp"
    labels: tuple[str, ...] | None = None
    section: str | None = None
    force: bool = False
    overwrite: bool = False
    arena_bytes: int | None = None
    strip: str = "none"  # one of STRIP_LEVELS
    compress_bits: int | None = None  # LUT index width for TFLM weight compression, or None

    def __post_init__(self):
        from workbench.export.tflm_render import LANGS, LAYOUTS

        LAYOUTS.get(self.layout)
        LANGS.get(self.lang)
        if self.compress_bits is not None and (isinstance(self.compress_bits, bool) or not isinstance(self.compress_bits, int)
                                               or not 1 <= self.compress_bits <= 7):
            raise ConfigError(f"compress_bits must be a whole number from 1 to 7, got {self.compress_bits!r}.",
                              hint="4 bits hold the 16 values of a model clustered to 16 centroids.")
        if self.strip not in STRIP_LEVELS:
            raise ConfigError(f"strip must be one of {', '.join(STRIP_LEVELS)}, got {self.strip!r}.",
                              hint="; ".join(f"{k}: {v}" for k, v in STRIP_LEVELS.items()))
        if self.section is not None and not _SECTION_RE.fullmatch(self.section):
            raise ConfigError(
                f"Section name {comment_text(self.section)!r} is not a linker section name.",
                hint="Use letters, digits, '_', '.' and '$' only, e.g. --section .rodata.model")
        if self.arena_bytes is not None and (isinstance(self.arena_bytes, bool)
                                             or not isinstance(self.arena_bytes, numbers.Integral)
                                             or self.arena_bytes <= 0):
            raise ConfigError(f"arena_bytes must be a positive whole number of bytes, got {self.arena_bytes!r}.")

    def to_dict(self) -> dict:
        return {"name": self.name, "target": self.target, "layout": self.layout, "lang": self.lang,
                "labels": list(self.labels) if self.labels is not None else None, "section": self.section,
                "force": self.force, "arena_bytes": self.arena_bytes, "strip": self.strip,
                "compress_bits": self.compress_bits}


STRIP_LEVELS = {
    "none": "the model bytes as given (tensor names kept: they help debugging)",
    "portable": "without what TFLM and LiteRT never read (names, signatures, unread metadata, unused and duplicate "
                "buffers); bit-identical in both",
    "tflm": "portable, and per-channel zero-point tables of one repeated value cut to one entry (TFLM broadcasts it; "
            "LiteRT refuses such a model); bit-identical in TFLM",
}


# dtype -> (C++ type, C type). Tensor types TFLite Micro can hand to an application.
CTYPES: dict[str, tuple[str, str]] = {
    "float32": ("float", "float"),
    "int8": ("std::int8_t", "int8_t"),
    "uint8": ("std::uint8_t", "uint8_t"),
    "int16": ("std::int16_t", "int16_t"),
    "int32": ("std::int32_t", "int32_t"),
    "int64": ("std::int64_t", "int64_t"),
    "bool": ("bool", "bool"),
}


@dataclass(frozen=True)
class IoTensor:
    position: int  # index among the model's inputs (or outputs)
    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float  # 0.0 when not quantized
    zero_point: int

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0

    @property
    def elements(self) -> int:
        return int(math.prod(self.shape)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        from workbench.frontends.graph import DTYPE_BYTES

        return int(self.elements * DTYPE_BYTES[self.dtype])

    def describe(self) -> str:
        q = f", scale {self.scale:.9g}, zero point {self.zero_point}" if self.quantized else ""
        return f"{self.dtype} {list(self.shape)}{q}"


@dataclass(frozen=True)
class ModelFacts:
    name: str
    name_note: str | None  # set when the name had to be changed to be a C identifier
    source_name: str
    data: bytes = field(repr=False)
    sha256: str
    description: str
    ops: tuple[ResolverOp, ...]
    inputs: tuple[IoTensor, ...]
    outputs: tuple[IoTensor, ...]
    labels: tuple[str, ...] | None
    arena: ArenaPlan
    target: dict | None
    resource_variables: int = 0  # VAR_HANDLE ops: the MicroResourceVariables a stateful model needs

    @property
    def size(self) -> int:
        return len(self.data)


