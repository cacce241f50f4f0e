"""TensorFlow Lite Micro sources for a .tflite model: the MCU deployment artifact.

``write_tflm_project(model.tflite, out_dir)`` writes a folder with

* ``<name>_model_data.h`` / ``.cc`` (``.c`` for C): the model bytes as a 16-byte aligned
  ``const unsigned char g_<name>_model_data[]`` with its ``g_<name>_model_data_size``;
* ``<name>_model_settings.h``: the tensor arena size (measured by the TFLite Micro
  interpreter, plus a stated margin), input/output shapes, types, scales, zero points and
  the class labels;
* ``<name>_op_resolver.h``: ``RegisterOps`` adding exactly the ops the model uses to a
  ``tflite::MicroMutableOpResolver<N>`` of exactly that size;
* an example ``main.cc`` (or, with ``layout="arduino"``, an Arduino library with an
  example sketch), a README.md with the numbers, and ``manifest.json``.

Everything that comes from the model or the user (file name, tensor names, labels,
metadata) passes through :mod:`workbench.export.c_names`, so it can only ever be data.
The folder is built in a temporary folder beside ``out_dir`` and renamed into place.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

from workbench.errors import CheckFailed, ConfigError, DataError, InputFileError, OutputExistsError, UnsupportedError
from workbench.export.artifact import Artifact
from workbench.export.c_array import BYTES_PER_LINE, format_bytes
from workbench.export.c_names import c_identifier, c_string, comment_text
from workbench.export.tflm_ops import ResolverOp, resolver_ops
from workbench.files import check_input_file, check_output, sha256_bytes, write_json_atomic
from workbench.registry import Registry

__all__ = ["write_tflm_project", "TflmOptions", "ArenaMargin", "ARENA_MARGIN", "LAYOUTS", "LANGS"]

ARENA_ALIGNMENT = 16


# --------------------------------------------------------------------------- options


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
    name: str | None = None
    target: str | None = None
    layout: str = "plain"
    lang: str = "cpp"
    labels: tuple[str, ...] | None = None
    section: str | None = None
    force: bool = False
    overwrite: bool = False
    arena_bytes: int | None = None

    def __post_init__(self):
        LAYOUTS.get(self.layout)
        LANGS.get(self.lang)
        if self.section is not None and not _SECTION_RE.fullmatch(self.section):
            raise ConfigError(
                f"Section name {comment_text(self.section)!r} is not a linker section name.",
                hint="Use letters, digits, '_', '.' and '$' only, e.g. --section .rodata.model")
        if self.arena_bytes is not None and (isinstance(self.arena_bytes, bool) or not isinstance(self.arena_bytes, int)
                                             or self.arena_bytes <= 0):
            raise ConfigError(f"arena_bytes must be a positive whole number of bytes, got {self.arena_bytes!r}.")

    def to_dict(self) -> dict:
        return {"name": self.name, "target": self.target, "layout": self.layout, "lang": self.lang,
                "labels": list(self.labels) if self.labels is not None else None, "section": self.section,
                "force": self.force, "arena_bytes": self.arena_bytes}


# --------------------------------------------------------------------------- model facts

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
        from workbench.graph import DTYPE_BYTES

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

    @property
    def size(self) -> int:
        return len(self.data)


# --------------------------------------------------------------------------- naming per language


class CppNames:
    """How generated code refers to the settings when they are C++ (a namespace of constexpr)."""

    def __init__(self, name: str):
        self.name = name
        self.ns = f"{name}_model"

    def arena_size(self) -> str:
        return f"{self.ns}::kTensorArenaSize"

    def in_type(self, i: int) -> str:
        return f"{self.ns}::Input{i}Type"

    def in_elements(self, i: int) -> str:
        return f"{self.ns}::kInput{i}Elements"

    def in_zero_point(self, i: int) -> str:
        return f"{self.ns}::kInput{i}ZeroPoint"

    def out_type(self, i: int) -> str:
        return f"{self.ns}::Output{i}Type"

    def out_elements(self, i: int) -> str:
        return f"{self.ns}::kOutput{i}Elements"

    def out_scale(self, i: int) -> str:
        return f"{self.ns}::kOutput{i}Scale"

    def out_zero_point(self, i: int) -> str:
        return f"{self.ns}::kOutput{i}ZeroPoint"

    def labels(self) -> str:
        return f"{self.ns}::kLabels"


class CNames:
    """How generated code refers to the settings when they are C (prefixed macros and statics)."""

    def __init__(self, name: str):
        self.name = name
        self.prefix = name.upper()

    def arena_size(self) -> str:
        return f"{self.prefix}_TENSOR_ARENA_SIZE"

    def in_type(self, i: int) -> str:
        return f"{self.name}_input{i}_t"

    def in_elements(self, i: int) -> str:
        return f"{self.prefix}_INPUT{i}_ELEMENTS"

    def in_zero_point(self, i: int) -> str:
        return f"{self.prefix}_INPUT{i}_ZERO_POINT"

    def out_type(self, i: int) -> str:
        return f"{self.name}_output{i}_t"

    def out_elements(self, i: int) -> str:
        return f"{self.prefix}_OUTPUT{i}_ELEMENTS"

    def out_scale(self, i: int) -> str:
        return f"{self.prefix}_OUTPUT{i}_SCALE"

    def out_zero_point(self, i: int) -> str:
        return f"{self.prefix}_OUTPUT{i}_ZERO_POINT"

    def labels(self) -> str:
        return f"{self.name}_labels"


@dataclass(frozen=True)
class Lang:
    key: str
    data_ext: Callable[[str], str]  # layout -> extension of the model data source
    names: Callable[[str], object]
    render_data_header: Callable[["ModelFacts", "TflmOptions"], str]
    render_data_source: Callable[["ModelFacts", "TflmOptions"], str]
    render_settings: Callable[["ModelFacts"], str]


LANGS: Registry[Lang] = Registry("source language")


@dataclass(frozen=True)
class Layout:
    key: str
    src_dir: str  # where the model sources go inside the folder
    render_example: Callable[["ModelFacts", "TflmOptions", Lang], dict[str, str]]


LAYOUTS: Registry[Layout] = Registry("TFLM project layout")


# --------------------------------------------------------------------------- small formatting helpers


def c_float(x: float) -> str:
    import numpy as np

    v = float(np.float32(x))
    if not math.isfinite(v):
        raise UnsupportedError(f"A quantization scale is {v}: the model's quantization parameters are broken.")
    s = format(v, ".9g")
    if not any(c in s for c in ".e"):
        s += ".0"
    return s + "f"


def _banner(file: str, purpose: str, facts: ModelFacts) -> list[str]:
    return [
        f"// {file}: {purpose}",
        f"// Generated by workbench from the model file '{comment_text(facts.source_name)}'",
        f"// ({facts.size} bytes, sha256 {facts.sha256[:16]}...). Do not edit: export the model again.",
    ]


def _guard(facts: ModelFacts, what: str) -> str:
    return f"{facts.name.upper()}_{what}_H_"


def _data_name(facts: ModelFacts) -> str:
    return f"g_{facts.name}_model_data"


def _section_macro(facts: ModelFacts) -> str:
    return f"{facts.name.upper()}_MODEL_DATA_SECTION"


def _section_lines(facts: ModelFacts, opts: TflmOptions) -> list[str]:
    if not opts.section:
        return []
    return [
        f"// Placed in the linker section {comment_text(opts.section)} (GCC and Clang). Sections named .rodata*",
        "// stay in flash with the usual linker scripts; list any other name in yours.",
        "#if defined(__GNUC__)",
        f"#define {_section_macro(facts)} __attribute__((section({c_string(opts.section)})))",
        "#else",
        f"#define {_section_macro(facts)}",
        "#endif",
        "",
    ]


def _description_lines(facts: ModelFacts) -> list[str]:
    if not facts.description:
        return []
    return [f"// Model description: {comment_text(facts.description, 160)}"]


# --------------------------------------------------------------------------- C++ sources


def _cpp_data_header(facts: ModelFacts, opts: TflmOptions) -> str:
    g = _guard(facts, "MODEL_DATA")
    lines = _banner(f"{facts.name}_model_data.h", "the model as a byte array.", facts) + _description_lines(facts) + [
        f"#ifndef {g}",
        f"#define {g}",
        "",
        "// The .tflite flatbuffer, 16-byte aligned as TensorFlow Lite Micro requires.",
        f"extern const unsigned char {_data_name(facts)}[];",
        f"constexpr unsigned int {_data_name(facts)}_size = {facts.size};",
        "",
        f"#endif  // {g}",
    ]
    return "\n".join(lines) + "\n"


def _cpp_data_source(facts: ModelFacts, opts: TflmOptions) -> str:
    name = _data_name(facts)
    section = f" {_section_macro(facts)}" if opts.section else ""
    lines = _banner(f"{facts.name}_model_data.{_ext(opts)}", "the model as a byte array.", facts) + [
        f'#include "{facts.name}_model_data.h"',
        "",
        *_section_lines(facts, opts),
        f"alignas(16) const unsigned char {name}[]{section} = {{",
        format_bytes(facts.data),
        "};",
        "",
        f"static_assert(sizeof({name}) == {name}_size, {c_string('model data size mismatch')});",
    ]
    return "\n".join(lines) + "\n"


def _cpp_settings(facts: ModelFacts) -> str:
    n = CppNames(facts.name)
    g = _guard(facts, "MODEL_SETTINGS")
    a = facts.arena
    lines = _banner(f"{facts.name}_model_settings.h", "tensor arena, inputs, outputs and labels.", facts) + [
        f"#ifndef {g}",
        f"#define {g}",
        "",
        "#include <cstddef>",
        "#include <cstdint>",
        "",
        f"namespace {n.ns} {{",
        "",
        f"// Tensor arena: {a.measured} bytes {a.source}",
        f"// + {a.margin} bytes margin, rounded up to a multiple of {ARENA_ALIGNMENT}. The margin ({a.rule.fraction:.0%}, at least",
        f"// {a.rule.minimum} bytes) is there because {a.rule.reason}.",
        f"constexpr std::size_t kTensorArenaMeasured = {a.measured};",
        f"constexpr std::size_t kTensorArenaSize = {a.size};",
        f"constexpr std::size_t kTensorArenaAlignment = {ARENA_ALIGNMENT};",
        "",
        f"constexpr int kInputCount = {len(facts.inputs)};",
        f"constexpr int kOutputCount = {len(facts.outputs)};",
    ]
    for kind, tensors in (("Input", facts.inputs), ("Output", facts.outputs)):
        for t in tensors:
            i = t.position
            shape = ", ".join(str(d) for d in t.shape) if t.shape else "1"
            lines += [
                "",
                f"// {kind} {i} '{comment_text(t.name)}': {t.dtype} {list(t.shape)}"
                + (", real value = (q - zero_point) * scale" if t.quantized else ", not quantized"),
                f"using {kind}{i}Type = {CTYPES[t.dtype][0]};",
                f"constexpr int k{kind}{i}Rank = {len(t.shape)};",
                f"constexpr int k{kind}{i}Shape[] = {{{shape}}};" + ("  // a scalar" if not t.shape else ""),
                f"constexpr std::size_t k{kind}{i}Elements = {t.elements};",
                f"constexpr std::size_t k{kind}{i}Bytes = {t.nbytes};",
                f"constexpr bool k{kind}{i}Quantized = {'true' if t.quantized else 'false'};",
                f"constexpr float k{kind}{i}Scale = {c_float(t.scale)};",
                f"constexpr std::int32_t k{kind}{i}ZeroPoint = {t.zero_point};",
            ]
    if facts.labels is not None:
        lines += ["", "// Class labels, one per element of output 0."]
        lines += [f"constexpr int kLabelCount = {len(facts.labels)};",
                  "constexpr const char* kLabels[kLabelCount] = {"]
        lines += [f"    {c_string(lab)}," for lab in facts.labels]
        lines += ["};"]
    lines += ["", f"}}  // namespace {n.ns}", "", f"#endif  // {g}"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- C sources


def _c_data_header(facts: ModelFacts, opts: TflmOptions) -> str:
    g = _guard(facts, "MODEL_DATA")
    name = _data_name(facts)
    lines = _banner(f"{facts.name}_model_data.h", "the model as a byte array.", facts) + _description_lines(facts) + [
        f"#ifndef {g}",
        f"#define {g}",
        "",
        "#ifdef __cplusplus",
        'extern "C" {',
        "#endif",
        "",
        "// The .tflite flatbuffer, 16-byte aligned as TensorFlow Lite Micro requires.",
        f"#define {facts.name.upper()}_MODEL_DATA_SIZE {facts.size}u",
        f"extern const unsigned char {name}[];",
        f"extern const unsigned int {name}_size;",
        "",
        "#ifdef __cplusplus",
        "}  /* extern \"C\" */",
        "#endif",
        "",
        f"#endif  /* {g} */",
    ]
    return "\n".join(lines) + "\n"


def _c_data_source(facts: ModelFacts, opts: TflmOptions) -> str:
    name = _data_name(facts)
    size_macro = f"{facts.name.upper()}_MODEL_DATA_SIZE"
    section = f" {_section_macro(facts)}" if opts.section else ""
    lines = _banner(f"{facts.name}_model_data.c", "the model as a byte array.", facts) + [
        f'#include "{facts.name}_model_data.h"',
        "",
        *_section_lines(facts, opts),
        f"_Alignas(16) const unsigned char {name}[]{section} = {{",
        format_bytes(facts.data),
        "};",
        "",
        f"const unsigned int {name}_size = {size_macro};",
        "",
        f"_Static_assert(sizeof({name}) == {size_macro}, {c_string('model data size mismatch')});",
    ]
    return "\n".join(lines) + "\n"


def _c_settings(facts: ModelFacts) -> str:
    n = CNames(facts.name)
    p = n.prefix
    g = _guard(facts, "MODEL_SETTINGS")
    a = facts.arena
    lines = _banner(f"{facts.name}_model_settings.h", "tensor arena, inputs, outputs and labels.", facts) + [
        f"#ifndef {g}",
        f"#define {g}",
        "",
        "#include <stdbool.h>",
        "#include <stddef.h>",
        "#include <stdint.h>",
        "",
        f"// Tensor arena: {a.measured} bytes {a.source}",
        f"// + {a.margin} bytes margin, rounded up to a multiple of {ARENA_ALIGNMENT}. The margin ({a.rule.fraction:.0%}, at least",
        f"// {a.rule.minimum} bytes) is there because {a.rule.reason}.",
        f"#define {p}_TENSOR_ARENA_MEASURED {a.measured}u",
        f"#define {n.arena_size()} {a.size}u",
        f"#define {p}_TENSOR_ARENA_ALIGNMENT {ARENA_ALIGNMENT}u",
        "",
        f"#define {p}_INPUT_COUNT {len(facts.inputs)}",
        f"#define {p}_OUTPUT_COUNT {len(facts.outputs)}",
    ]
    for kind, tensors in (("input", facts.inputs), ("output", facts.outputs)):
        for t in tensors:
            i = t.position
            m = f"{p}_{kind.upper()}{i}"
            shape = ", ".join(str(d) for d in t.shape) if t.shape else "1"
            lines += [
                "",
                f"// {kind.capitalize()} {i} '{comment_text(t.name)}': {t.dtype} {list(t.shape)}"
                + (", real value = (q - zero_point) * scale" if t.quantized else ", not quantized"),
                f"typedef {CTYPES[t.dtype][1]} {facts.name}_{kind}{i}_t;",
                f"#define {m}_RANK {len(t.shape)}",
                f"static const int {facts.name}_{kind}{i}_shape[] = {{{shape}}};" + ("  // a scalar" if not t.shape else ""),
                f"#define {m}_ELEMENTS {t.elements}u",
                f"#define {m}_BYTES {t.nbytes}u",
                f"#define {m}_QUANTIZED {'1' if t.quantized else '0'}",
                f"#define {m}_SCALE {c_float(t.scale)}",
                f"#define {m}_ZERO_POINT ({t.zero_point})",
            ]
    if facts.labels is not None:
        lines += ["", "// Class labels, one per element of output 0.",
                  f"#define {p}_LABEL_COUNT {len(facts.labels)}",
                  f"static const char* const {n.labels()}[{p}_LABEL_COUNT] = {{"]
        lines += [f"    {c_string(lab)}," for lab in facts.labels]
        lines += ["};"]
    lines += ["", f"#endif  /* {g} */"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- op resolver (C++ in both languages)


def _op_resolver(facts: ModelFacts) -> str:
    g = _guard(facts, "OP_RESOLVER")
    ns = f"{facts.name}_model"
    kinds = ", ".join(comment_text(op.kind) + (" (custom)" if op.custom else "") for op in facts.ops)
    lines = _banner(f"{facts.name}_op_resolver.h", "registers exactly the ops the model uses.", facts) + [
        f"#ifndef {g}",
        f"#define {g}",
        "",
        '#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"',
        "",
        f"namespace {ns} {{",
        "",
        f"// {len(facts.ops)} distinct ops: {kinds}.",
        f"constexpr unsigned int kOpCount = {len(facts.ops)};",
        "using OpResolver = tflite::MicroMutableOpResolver<kOpCount>;",
        "",
        "// Adds every op of the model to op_resolver. Returns kTfLiteError if one cannot be added.",
        "inline TfLiteStatus RegisterOps(OpResolver& op_resolver) {",
    ]
    lines += [f"  if (op_resolver.{op.method}() != kTfLiteOk) return kTfLiteError;" for op in facts.ops]
    lines += ["  return kTfLiteOk;", "}", "", f"}}  // namespace {ns}", "", f"#endif  // {g}"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- example program (main.cc / sketch)


def _io_functions(facts: ModelFacts, names) -> list[str]:
    """FillInputs and ReportOutputs, shared by main.cc and the Arduino sketch."""
    lines = [
        "// Fills every input with the (quantized) value 0.0. Replace this with real data: camera,",
        "// microphone or sensor samples, quantized with the scale and zero point of the settings.",
        "bool FillInputs(tflite::MicroInterpreter& interpreter) {",
    ]
    for t in facts.inputs:
        i = t.position
        lines += [
            f"  {names.in_type(i)}* input{i} = interpreter.typed_input_tensor<{names.in_type(i)}>({i});",
            f"  if (input{i} == nullptr) {{",
            f'    MicroPrintf("Input {i} is missing or not of the type in the settings header.");',
            "    return false;",
            "  }",
            f"  for (std::size_t i = 0; i < {names.in_elements(i)}; ++i) {{",
            f"    input{i}[i] = static_cast<{names.in_type(i)}>({names.in_zero_point(i)});",
            "  }",
        ]
    lines += ["  return true;", "}", "",
              "// Prints, for each output, the index of its largest element and that element as a real value.",
              "bool ReportOutputs(tflite::MicroInterpreter& interpreter) {"]
    for t in facts.outputs:
        i = t.position
        value = (f"(static_cast<float>(output{i}[best{i}]) - static_cast<float>({names.out_zero_point(i)})) * {names.out_scale(i)}"
                 if t.quantized else f"static_cast<float>(output{i}[best{i}])")
        lines += [
            f"  const {names.out_type(i)}* output{i} = interpreter.typed_output_tensor<{names.out_type(i)}>({i});",
            f"  if (output{i} == nullptr) {{",
            f'    MicroPrintf("Output {i} is missing or not of the type in the settings header.");',
            "    return false;",
            "  }",
            f"  std::size_t best{i} = 0;",
        ]
        if t.elements > 1:
            lines += [
                f"  for (std::size_t i = 1; i < {names.out_elements(i)}; ++i) {{",
                f"    if (output{i}[i] > output{i}[best{i}]) best{i} = i;",
                "  }",
            ]
        lines += [f"  const float value{i} = {value};"]
        if i == 0 and facts.labels is not None:
            lines += [f'  MicroPrintf("Output {i}: best index %d (%s), value %f", static_cast<int>(best{i}), '
                      f"{names.labels()}[best{i}], static_cast<double>(value{i}));"]
        else:
            lines += [f'  MicroPrintf("Output {i}: best index %d, value %f", static_cast<int>(best{i}), '
                      f"static_cast<double>(value{i}));"]
    lines += ["  return true;", "}"]
    return lines


def _includes(facts: ModelFacts, quote: Callable[[str], str]) -> list[str]:
    return [f"#include {quote(f'{facts.name}_model_data.h')}",
            f"#include {quote(f'{facts.name}_model_settings.h')}",
            f"#include {quote(f'{facts.name}_op_resolver.h')}"]


def _main_cc(facts: ModelFacts, opts: TflmOptions, lang: Lang) -> str:
    names = lang.names(facts.name)
    ns = f"{facts.name}_model"
    lines = [
        f"// main.cc: runs '{facts.name}' once with TensorFlow Lite Micro and prints the result.",
        f"// Generated by workbench from the model file '{comment_text(facts.source_name)}'. Build it with",
        f"// {facts.name}_model_data.{_ext(opts)} and the TensorFlow Lite Micro library (see README.md).",
        "#include <cstddef>",
        "#include <cstdint>",
        "",
        '#include "tensorflow/lite/micro/micro_interpreter.h"',
        '#include "tensorflow/lite/micro/micro_log.h"',
        '#include "tensorflow/lite/micro/system_setup.h"',
        '#include "tensorflow/lite/schema/schema_generated.h"',
        "",
        *_includes(facts, lambda h: f'"{h}"'),
        "",
        "namespace {",
        "",
        "// The tensor arena holds the activations and the interpreter's own state.",
        f"alignas(16) std::uint8_t tensor_arena[{names.arena_size()}];",
        "",
        *_io_functions(facts, names),
        "",
        "}  // namespace",
        "",
        "int main() {",
        "  tflite::InitializeTarget();",
        "",
        f"  const tflite::Model* model = tflite::GetModel({_data_name(facts)});",
        "  if (model->version() != TFLITE_SCHEMA_VERSION) {",
        '    MicroPrintf("Model schema version %d is not the supported version %d.",',
        "                static_cast<int>(model->version()), TFLITE_SCHEMA_VERSION);",
        "    return 1;",
        "  }",
        "",
        f"  {ns}::OpResolver op_resolver;",
        f"  if ({ns}::RegisterOps(op_resolver) != kTfLiteOk) {{",
        '    MicroPrintf("Registering the model\'s ops failed.");',
        "    return 1;",
        "  }",
        "",
        "  tflite::MicroInterpreter interpreter(model, op_resolver, tensor_arena, sizeof(tensor_arena));",
        "  if (interpreter.AllocateTensors() != kTfLiteOk) {",
        '    MicroPrintf("AllocateTensors failed: a %u-byte arena is too small; raise the arena size.",',
        "                static_cast<unsigned>(sizeof(tensor_arena)));",
        "    return 1;",
        "  }",
        '  MicroPrintf("Arena used: %u of %u bytes.", static_cast<unsigned>(interpreter.arena_used_bytes()),',
        "              static_cast<unsigned>(sizeof(tensor_arena)));",
        "",
        "  if (!FillInputs(interpreter)) return 1;",
        "  if (interpreter.Invoke() != kTfLiteOk) {",
        '    MicroPrintf("Invoke failed.");',
        "    return 1;",
        "  }",
        "  return ReportOutputs(interpreter) ? 0 : 1;",
        "}",
    ]
    return "\n".join(lines) + "\n"


def _sketch(facts: ModelFacts, opts: TflmOptions, lang: Lang) -> str:
    names = lang.names(facts.name)
    ns = f"{facts.name}_model"
    lines = [
        f"// {facts.name}.ino: runs '{facts.name}' with TensorFlow Lite Micro once a second and prints the result.",
        f"// Generated by workbench from the model file '{comment_text(facts.source_name)}'.",
        "// Needs a TensorFlow Lite Micro Arduino library; <TensorFlowLite.h> is the header of",
        "// Arduino_TensorFlowLite (use <Chirale_TensorFlowLite.h> for that port). MicroPrintf",
        "// prints to Serial in those libraries.",
        "#include <TensorFlowLite.h>",
        "",
        "#include <stddef.h>",
        "#include <stdint.h>",
        "",
        '#include "tensorflow/lite/micro/micro_interpreter.h"',
        '#include "tensorflow/lite/micro/micro_log.h"',
        '#include "tensorflow/lite/micro/system_setup.h"',
        '#include "tensorflow/lite/schema/schema_generated.h"',
        "",
        *_includes(facts, lambda h: f"<{h}>"),
        "",
        "namespace {",
        "",
        "// The tensor arena holds the activations and the interpreter's own state.",
        f"alignas(16) uint8_t tensor_arena[{names.arena_size()}];",
        "tflite::MicroInterpreter* interpreter = nullptr;",
        "",
        *_io_functions(facts, names),
        "",
        "}  // namespace",
        "",
        "void setup() {",
        "  tflite::InitializeTarget();",
        "",
        f"  const tflite::Model* model = tflite::GetModel({_data_name(facts)});",
        "  if (model->version() != TFLITE_SCHEMA_VERSION) {",
        '    MicroPrintf("Model schema version %d is not the supported version %d.",',
        "                static_cast<int>(model->version()), TFLITE_SCHEMA_VERSION);",
        "    return;",
        "  }",
        "",
        f"  static {ns}::OpResolver op_resolver;",
        f"  if ({ns}::RegisterOps(op_resolver) != kTfLiteOk) {{",
        '    MicroPrintf("Registering the model\'s ops failed.");',
        "    return;",
        "  }",
        "",
        "  static tflite::MicroInterpreter static_interpreter(model, op_resolver, tensor_arena, sizeof(tensor_arena));",
        "  if (static_interpreter.AllocateTensors() != kTfLiteOk) {",
        '    MicroPrintf("AllocateTensors failed: a %u-byte arena is too small; raise the arena size.",',
        "                static_cast<unsigned>(sizeof(tensor_arena)));",
        "    return;",
        "  }",
        '  MicroPrintf("Arena used: %u of %u bytes.", static_cast<unsigned>(static_interpreter.arena_used_bytes()),',
        "              static_cast<unsigned>(sizeof(tensor_arena)));",
        "  interpreter = &static_interpreter;",
        "}",
        "",
        "void loop() {",
        "  if (interpreter != nullptr && FillInputs(*interpreter)) {",
        "    const unsigned long start = micros();",
        "    if (interpreter->Invoke() == kTfLiteOk) {",
        "      const unsigned long elapsed = micros() - start;",
        "      ReportOutputs(*interpreter);",
        '      MicroPrintf("Invoke took %lu us.", elapsed);',
        "    } else {",
        '      MicroPrintf("Invoke failed.");',
        "    }",
        "  }",
        "  delay(1000);",
        "}",
    ]
    return "\n".join(lines) + "\n"


def _library_properties(facts: ModelFacts, opts: TflmOptions) -> str:
    headers = ",".join(f"{facts.name}_{part}.h" for part in ("model_data", "model_settings", "op_resolver"))
    lines = [
        f"name={facts.name}",
        "version=1.0.0",
        "author=workbench export",
        "maintainer=workbench export",
        f"sentence=TensorFlow Lite Micro model {facts.name} with its op resolver and settings.",
        f"paragraph=Generated by workbench from the model file {comment_text(facts.source_name)}: {facts.size} bytes, "
        f"tensor arena {facts.arena.size} bytes, {len(facts.ops)} ops.",
        "category=Data Processing",
        "url=https://github.com/tensorflow/tflite-micro",
        "architectures=*",
        f"includes={headers}",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- README


def _md(text: str) -> str:
    """Text from outside as an inert Markdown code span."""
    return f"`{comment_text(text, 200)}`"


def _readme(facts: ModelFacts, opts: TflmOptions, lang: Lang, layout: Layout, files: Iterable[str]) -> str:
    a = facts.arena
    ops = ", ".join(f"{op.kind} ({op.method})" for op in facts.ops)
    rows = [
        ("model", f"{_md(facts.source_name)}: {facts.size:,} bytes, sha256 `{facts.sha256}`"),
        ("C name", f"`{facts.name}` (array `{_data_name(facts)}`, namespace `{facts.name}_model`)"),
        ("tensor arena", f"{a.size:,} bytes = {a.describe()}"),
        (f"ops ({len(facts.ops)})", comment_text(ops, 4000)),
    ]
    rows += [(f"input {t.position}", f"{_md(t.name)}: {t.describe()}") for t in facts.inputs]
    rows += [(f"output {t.position}", f"{_md(t.name)}: {t.describe()}") for t in facts.outputs]
    if facts.labels is not None:
        rows.append((f"labels ({len(facts.labels)})", ", ".join(_md(lab) for lab in facts.labels)))
    if facts.target is not None:
        rows += _target_rows(facts.target)
    out = [
        f"# {facts.name}: TensorFlow Lite Micro sources",
        "",
        f"Generated by `workbench export --format tflm` from {_md(facts.source_name)} "
        f"(layout `{layout.key}`, language `{lang.key}`).",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in rows],
        "",
    ]
    if facts.name_note:
        out += [facts.name_note, ""]
    out += [
        "## Tensor arena",
        "",
        f"The arena size is {a.size:,} bytes: {a.measured:,} bytes {a.source}, plus a margin of "
        f"{a.margin:,} bytes ({a.rule.fraction:.0%} of the measurement, at least {a.rule.minimum:,} bytes, then "
        f"rounded up to a multiple of {ARENA_ALIGNMENT}). The margin is there because {a.rule.reason}. "
        "If `AllocateTensors` fails on the device, raise the arena size in the settings header; "
        "`interpreter.arena_used_bytes()` after `AllocateTensors` prints what the device really needs.",
        "",
        "## Files",
        "",
        *[f"- `{f}`" for f in sorted(files)],
        "",
        "## Build",
        "",
    ]
    out += layout_build_notes(facts, opts, lang, layout)
    return "\n".join(out) + "\n"


def _target_rows(rep: dict) -> list[tuple[str, str]]:
    rows = [("target", _md(str(rep.get("target", "")))),
            ("estimated latency", f"{rep['latency_ms']:.3g} ms" if rep.get("latency_ms") is not None else "unknown")]
    fit = "yes" if rep.get("fits") else "**no**"
    detail = [f"{rep[k]:,} B {k.split('_')[0]}" for k in ("flash_bytes", "ram_bytes") if isinstance(rep.get(k), int)]
    rows.append(("fits", fit + (f" ({', '.join(detail)})" if detail else "")))
    for line in rep.get("shortfalls", ()):
        rows.append(("short by", comment_text(line, 200)))
    return rows


def layout_build_notes(facts: ModelFacts, opts: TflmOptions, lang: Lang, layout: Layout) -> list[str]:
    data_src = f"{facts.name}_model_data.{_ext(opts)}"
    if layout.key == "arduino":
        return [
            "Copy this folder into your Arduino `libraries` folder (or zip it and use *Sketch > Include Library > "
            f"Add .ZIP Library*), install a TensorFlow Lite Micro Arduino library, then open *File > Examples > "
            f"{facts.name} > {facts.name}*. The sketch prints through `MicroPrintf`.",
            "",
        ]
    return [
        "Inside a TensorFlow Lite Micro tree (or with its headers and library built for your board):",
        "",
        "```sh",
        f"g++ -std=c++17 -O2 -I$TFLM -I$TFLM/third_party/flatbuffers/include -c {data_src} main.cc",
        "```",
        "",
        f"`{facts.name}_op_resolver.h` and `main.cc` are C++ (TensorFlow Lite Micro is a C++ library)"
        + ("; the model data and settings are plain C11 and can be used from C code." if lang.key == "c" else "."),
        "",
    ]


# --------------------------------------------------------------------------- registries


def _ext(opts: TflmOptions) -> str:
    return LANGS.get(opts.lang).data_ext(opts.layout)


LANGS.add("cpp", Lang("cpp", data_ext=lambda layout: "cpp" if layout == "arduino" else "cc", names=CppNames,
                      render_data_header=_cpp_data_header, render_data_source=_cpp_data_source,
                      render_settings=_cpp_settings))
LANGS.add("c", Lang("c", data_ext=lambda layout: "c", names=CNames, render_data_header=_c_data_header,
                    render_data_source=_c_data_source, render_settings=_c_settings))

LAYOUTS.add("plain", Layout("plain", src_dir="", render_example=lambda f, o, lang: {"main.cc": _main_cc(f, o, lang)}))
LAYOUTS.add("arduino", Layout("arduino", src_dir="src", render_example=lambda f, o, lang: {
    f"examples/{f.name}/{f.name}.ino": _sketch(f, o, lang),
    "library.properties": _library_properties(f, o),
}))


def render_files(facts: ModelFacts, opts: TflmOptions) -> dict[str, str]:
    """Every generated file's text by its path inside the project folder."""
    lang, layout = LANGS.get(opts.lang), LAYOUTS.get(opts.layout)
    src = f"{layout.src_dir}/" if layout.src_dir else ""
    files = {
        f"{src}{facts.name}_model_data.h": lang.render_data_header(facts, opts),
        f"{src}{facts.name}_model_data.{_ext(opts)}": lang.render_data_source(facts, opts),
        f"{src}{facts.name}_model_settings.h": lang.render_settings(facts),
        f"{src}{facts.name}_op_resolver.h": _op_resolver(facts),
        **layout.render_example(facts, opts, lang),
    }
    files["README.md"] = _readme(facts, opts, lang, layout, [*files, "README.md", "manifest.json"])
    return files


# --------------------------------------------------------------------------- reading the model


def used_ops(data: bytes, where: str) -> list[tuple[str, bool]]:
    """Distinct ``(kind, custom)`` of the ops in every subgraph, in order of first use."""
    from workbench.frontends.tflite_reader import builtin_names, schema

    s = schema()
    try:
        model = s.Model.GetRootAs(data, 0)
        names = builtin_names()
        codes = []
        for k in range(model.OperatorCodesLength()):
            oc = model.OperatorCodes(k)
            code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
            if code == s.BuiltinOperator.CUSTOM:
                custom = oc.CustomCode()
                codes.append((custom.decode("utf-8", "replace") if custom else "CUSTOM", True))
            else:
                codes.append((names.get(code, f"BUILTIN_{code}"), False))
        seen: list[tuple[str, bool]] = []
        for g in range(model.SubgraphsLength()):
            sg = model.Subgraphs(g)
            for j in range(sg.OperatorsLength()):
                entry = codes[sg.Operators(j).OpcodeIndex()]
                if entry not in seen:
                    seen.append(entry)
    except (IndexError, ValueError, TypeError, OverflowError) as exc:
        from workbench.errors import ModelFormatError

        raise ModelFormatError(f"'{where}' has a corrupt operator table ({type(exc).__name__}: {exc}).",
                               hint="Re-export the model.") from None
    return seen


def _io_tensors(graph, indices: Sequence[int], where: str, what: str) -> tuple[IoTensor, ...]:
    out = []
    for pos, ti in enumerate(indices):
        t = graph.tensors[ti]
        if t.dtype not in CTYPES:
            raise UnsupportedError(
                f"'{where}': {what} {pos} ('{comment_text(t.name)}') is {t.dtype}; TensorFlow Lite Micro applications "
                f"can only use {', '.join(CTYPES)} inputs and outputs.",
                hint="Convert the model with int8 or float32 inputs and outputs.")
        scale = t.scale[0] if len(t.scale) == 1 else 0.0
        zp = (t.zero_point[0] if t.zero_point else 0) if len(t.scale) == 1 else 0
        shape = tuple(1 if d is None else int(d) for d in (t.shape or ()))
        out.append(IoTensor(position=pos, name=t.name, shape=shape, dtype=t.dtype, scale=float(scale), zero_point=int(zp)))
    return tuple(out)


def _choose_name(name: str | None, source: Path) -> tuple[str, str | None]:
    raw = name if name is not None else source.stem
    chosen = c_identifier(raw)
    what = "the name given" if name is not None else "the file name"
    if not chosen:
        raise ConfigError(
            f"Cannot make a C identifier from {what} {comment_text(raw)!r} of '{source.name}': nothing is left after "
            "keeping only letters, digits and '_'.",
            hint="Give one with --name, e.g. --name my_model")
    note = None
    if chosen != raw:
        note = (f"The C name `{chosen}` was made from {what} {_md(raw)}: C identifiers allow only letters, digits "
                "and `_`, cannot start with a digit and cannot be a keyword. Choose another with `--name`.")
    return chosen, note


def _labels(labels, expected: int | None, where: str) -> tuple[str, ...] | None:
    if labels is None:
        return None
    source = "the labels given"
    if isinstance(labels, (str, os.PathLike)):
        p = check_input_file(labels, "labels")
        try:
            text = Path(p).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError) as exc:
            raise InputFileError(f"Labels file '{p}' cannot be read as UTF-8 text ({exc}).",
                                 hint="Write one label per line, UTF-8.") from None
        labels = [line.strip() for line in text.splitlines()]
        while labels and not labels[-1]:
            labels.pop()
        source = f"labels file '{p}'"
    labels = tuple(str(x) for x in labels)
    if expected is not None and len(labels) != expected:
        raise DataError(
            f"{source.capitalize()} has {len(labels)} labels; output 0 of '{where}' has {expected} elements.",
            hint="Give exactly one label per class, one per line, in the model's output order.")
    return labels


def _measure_arena(path: Path, given: int | None) -> tuple[int, str]:
    if given is not None:
        return given, "given by the caller (arena_bytes)"
    from workbench.runtimes.tflm import measure_arena_details

    m = measure_arena_details(path)
    version = f" {m.tflite_micro}" if m.tflite_micro else ""
    return int(m.arena_bytes), f"measured by the TensorFlow Lite Micro{version} interpreter on this machine"


def _check_tflm(graph, where: str) -> None:
    """Float16, hybrid, Flex and custom ops, ops the installed TFLM lacks: refused with what would work."""
    from workbench.runtimes.tflm import check_tflm, raise_for_problems

    raise_for_problems(check_tflm(graph), where)


def _target_report(path: Path, target: str | None) -> dict | None:
    if target is None:
        return None
    from workbench.emulate import emulate

    rep = emulate(path, target)
    d = rep.to_dict() if hasattr(rep, "to_dict") else dict(rep)
    d.setdefault("target", target)
    return d


def _check_fit(rep: dict | None, force: bool, where: str) -> dict | None:
    if rep is None:
        return None
    shortfalls = list(rep.get("shortfalls", ()))
    if not shortfalls:
        shortfalls = _shortfalls(rep)
    rep = {**rep, "shortfalls": shortfalls}
    if not rep.get("fits", True) and not force:
        by = "; ".join(shortfalls) or "see `workbench emulate`"
        raise CheckFailed(f"'{where}' does not fit target '{rep.get('target')}': {by}.",
                          hint="Choose a bigger target, make the model smaller (int8, pruning), or pass --force "
                               "to write the sources anyway.")
    return rep


def _shortfalls(rep: dict) -> list[str]:
    """'flash: needs N B, has M B (short by K B)' for each budget the report says is exceeded."""
    out = []
    for res in ("flash", "ram"):
        need = rep.get(f"{res}_bytes")
        have = next((rep[k] for k in (f"{res}_budget", f"{res}_capacity", f"{res}_available", f"{res}_limit")
                     if isinstance(rep.get(k), (int, float))), None)
        if isinstance(need, (int, float)) and have is not None and need > have:
            out.append(f"{res} needs {int(need):,} B, the target has {int(have):,} B (short by {int(need - have):,} B)")
    return out


# --------------------------------------------------------------------------- entry point


def write_tflm_project(tflite_path, out_dir, *, name: str | None = None, target: str | None = None,
                       layout: str = "plain", lang: str = "cpp", labels=None, section: str | None = None,
                       force: bool = False, overwrite: bool = False, arena_bytes: int | None = None,
                       margin: ArenaMargin = ARENA_MARGIN) -> Artifact:
    """Write TensorFlow Lite Micro sources for ``tflite_path`` into the folder ``out_dir``.

    ``labels``: class labels for output 0, as a sequence of strings or a path to a UTF-8
    file with one label per line. ``arena_bytes``: the interpreter's arena need, if it is
    already known (skips the measurement; the margin is still added). ``target``: a
    target profile for ``workbench.emulate``; a model that does not fit raises
    CheckFailed unless ``force``. Returns an Artifact of format "tflm" whose manifest
    (``manifest.json`` in the folder) is already written.
    """
    src = check_input_file(tflite_path)
    opts = TflmOptions(name=name, target=target, layout=layout, lang=lang,
                       labels=None if labels is None or isinstance(labels, (str, os.PathLike)) else tuple(labels),
                       section=section, force=force, overwrite=overwrite, arena_bytes=arena_bytes)
    out = Path(out_dir)
    _check_out_dir(out, overwrite)

    from workbench.frontends.tflite_reader import read_tflite_bytes

    data = src.read_bytes()
    where = src.name
    graph = read_tflite_bytes(data, str(src))
    c_name, note = _choose_name(name, src)
    _check_tflm(graph, where)
    ops = resolver_ops(used_ops(data, where), where)
    inputs = _io_tensors(graph, graph.inputs, where, "input")
    outputs = _io_tensors(graph, graph.outputs, where, "output")
    label_list = _labels(labels, outputs[0].elements if outputs else None, where)
    opts = replace(opts, labels=label_list)
    measured, how = _measure_arena(src, arena_bytes)
    arena = margin.plan(measured, how)
    report = _check_fit(_target_report(src, target), force, where)

    facts = ModelFacts(name=c_name, name_note=note, source_name=src.name, data=data, sha256=sha256_bytes(data),
                       description=str(graph.meta.get("description", "")), ops=ops, inputs=inputs, outputs=outputs,
                       labels=label_list, arena=arena, target=report)
    files = render_files(facts, opts)
    metrics = {"model_bytes": facts.size, "arena_bytes": arena.size, "arena_measured_bytes": arena.measured,
               "arena_margin_bytes": arena.margin, "op_count": len(ops), "ops": [op.kind for op in ops]}
    if report is not None:
        metrics.update({k: report.get(k) for k in ("latency_ms", "fits", "flash_bytes", "ram_bytes")})
    config = {"format": "tflm", **opts.to_dict(), "c_name": c_name, "arena_margin": {
        "fraction": margin.fraction, "minimum": margin.minimum, "reason": margin.reason}}

    from workbench.files import atomic_path

    with atomic_path(out, suffix="") as tmp:
        tmp.mkdir()
        for rel, text in files.items():
            p = tmp / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text, encoding="utf-8", newline="\n")
        artifact = Artifact(path=tmp, format="tflm", source=src, config=config, metrics=metrics,
                            extra={"files": sorted(files)})
        manifest = artifact.manifest()
        manifest["artifact"]["path"] = out.name
        write_json_atomic(tmp / "manifest.json", manifest)
    return replace(artifact, path=out)


def _check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse an existing output unless --overwrite, and never replace a folder we did not write."""
    check_output(out, overwrite)
    if out.is_dir() and any(out.iterdir()):
        import json

        try:
            ours = json.loads((out / "manifest.json").read_text())["artifact"]["format"] == "tflm"
        except (OSError, ValueError, KeyError, TypeError):
            ours = False
        if not ours:
            raise OutputExistsError(
                f"Output folder '{out}' exists and was not written by `workbench export --format tflm` "
                "(no manifest.json of format tflm in it); refusing to replace it.",
                hint="Choose a new folder with -o; --overwrite only replaces a previous TFLM export.")
