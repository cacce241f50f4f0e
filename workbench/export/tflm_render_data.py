"""The model data (header and source) and the settings header, in C++ and in C."""

from __future__ import annotations


from workbench.export.c_array import format_bytes
from workbench.export.c_names import c_string, comment_text
from workbench.export.tflm_facts import ARENA_ALIGNMENT, CTYPES, ModelFacts, TflmOptions
from workbench.export.tflm_text import (
    _ext,
    CNames,
    CppNames,
    _arena_comment,
    _banner,
    _data_name,
    _description_lines,
    _guard,
    _section_lines,
    _section_macro,
    c_float,
)


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
        *_arena_comment(facts),
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
        *_arena_comment(facts),
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
