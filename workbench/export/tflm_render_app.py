"""The op resolver and the example program: main.cc for a plain folder, a sketch and
library.properties for an Arduino library."""

from __future__ import annotations

from typing import Callable

from workbench.export.c_names import comment_text
from workbench.export.tflm_facts import ModelFacts, TflmOptions
from workbench.export.tflm_text import (
    Lang,
    _ext,
    _banner,
    _data_name,
    _guard,
)


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
    lines += ["  return kTfLiteOk;", "}", ""]
    if facts.resource_variables:
        lines += ["// The model keeps state in resource variables (VAR_HANDLE / ASSIGN_VARIABLE / READ_VARIABLE):",
                  "// the interpreter needs a tflite::MicroResourceVariables with room for this many (one per",
                  "// VAR_HANDLE op), or AllocateTensors fails.",
                  f"constexpr int kResourceVariableCount = {facts.resource_variables};", ""]
    lines += [f"}}  // namespace {ns}", "", f"#endif  // {g}"]
    return "\n".join(lines) + "\n"


def _interpreter_lines(facts: ModelFacts, indent: str, decl: str, fail: str, plain: list[str]) -> list[str]:
    """The statements creating the interpreter ``decl`` names over tensor_arena: ``plain`` for a model
    without state, else with the model's resource variables (made in the same arena)."""
    ns = f"{facts.name}_model"
    if not facts.resource_variables:
        return plain
    return [
        f"{indent}// A stateful model: its resource variables live in the arena, beside the tensors.",
        f"{indent}tflite::MicroAllocator* allocator = tflite::MicroAllocator::Create(tensor_arena, sizeof(tensor_arena));",
        f"{indent}tflite::MicroResourceVariables* resource_variables =",
        f"{indent}    allocator == nullptr ? nullptr",
        f"{indent}                         : tflite::MicroResourceVariables::Create(allocator, {ns}::kResourceVariableCount);",
        f"{indent}if (resource_variables == nullptr) {{",
        f'{indent}  MicroPrintf("Creating %d resource variables failed: raise the arena size.", {ns}::kResourceVariableCount);',
        f"{indent}  {fail}",
        f"{indent}}}",
        f"{indent}{decl}(model, op_resolver, allocator, resource_variables);",
    ]


def _rv_includes(facts: ModelFacts) -> list[str]:
    if not facts.resource_variables:
        return []
    return ['#include "tensorflow/lite/micro/micro_allocator.h"',
            '#include "tensorflow/lite/micro/micro_resource_variable.h"']


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
            f"  auto* input{i} = interpreter.typed_input_tensor<{names.in_type(i)}>({i});",
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
        lines += [
            f"  const auto* output{i} = interpreter.typed_output_tensor<{names.out_type(i)}>({i});",
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
        if t.quantized:
            lines += [f"  const float zero_point{i} = static_cast<float>({names.out_zero_point(i)});",
                      f"  const float value{i} = (static_cast<float>(output{i}[best{i}]) - zero_point{i}) * {names.out_scale(i)};"]
        else:
            lines += [f"  const float value{i} = static_cast<float>(output{i}[best{i}]);"]
        if i == 0 and facts.labels is not None:
            lines += [f'  MicroPrintf("Output {i}: best index %d (%s), value %f", static_cast<int>(best{i}),',
                      f"              {names.labels()}[best{i}], static_cast<double>(value{i}));"]
        else:
            lines += [f'  MicroPrintf("Output {i}: best index %d, value %f", static_cast<int>(best{i}),',
                      f"              static_cast<double>(value{i}));"]
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
        *_rv_includes(facts),
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
        *_interpreter_lines(facts, "  ", "tflite::MicroInterpreter interpreter", "return 1;", [
            "  tflite::MicroInterpreter interpreter(model, op_resolver, tensor_arena, sizeof(tensor_arena));"]),
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
        "#include <cstddef>",
        "#include <cstdint>",
        "",
        *_rv_includes(facts),
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
        f"alignas(16) std::uint8_t tensor_arena[{names.arena_size()}];",
        "tflite::MicroInterpreter* g_interpreter = nullptr;",
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
        *_interpreter_lines(facts, "  ", "static tflite::MicroInterpreter static_interpreter", "return;", [
            "  static tflite::MicroInterpreter static_interpreter(model, op_resolver, tensor_arena,",
            "                                                     sizeof(tensor_arena));"]),
        "  if (static_interpreter.AllocateTensors() != kTfLiteOk) {",
        '    MicroPrintf("AllocateTensors failed: a %u-byte arena is too small; raise the arena size.",',
        "                static_cast<unsigned>(sizeof(tensor_arena)));",
        "    return;",
        "  }",
        '  MicroPrintf("Arena used: %u of %u bytes.",',
        "              static_cast<unsigned>(static_interpreter.arena_used_bytes()),",
        "              static_cast<unsigned>(sizeof(tensor_arena)));",
        "  g_interpreter = &static_interpreter;",
        "}",
        "",
        "void loop() {",
        "  if (g_interpreter != nullptr && FillInputs(*g_interpreter)) {",
        "    const unsigned long start = micros();",
        "    if (g_interpreter->Invoke() == kTfLiteOk) {",
        "      const unsigned long elapsed = micros() - start;",
        "      ReportOutputs(*g_interpreter);",
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
