"""TensorFlow Lite Micro sources (workbench.export.tflm_sources).

Checked here: the bytes in the generated array are the .tflite file and run in the TFLM
interpreter like the file itself (and like LiteRT's reference kernels); the model data
and settings compile warning-free with g++/gcc and arm-none-eabi-g++/gcc; the op resolver
and the example programs compile against a small stub of the TFLM headers, and the
resolver registers exactly the model's ops with N equal to the number of Add calls;
generated sources match golden files; hostile file names and labels stay data.

Regenerate the golden files (and the small test model under tests/golden/tflm/) with
    WORKBENCH_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_tflm_sources.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from workbench.core.errors import CheckFailed, ConfigError, DataError, OutputExistsError, UnsupportedError
from workbench.export.c_array import format_bytes, parse_c_array
from workbench.export.c_names import c_identifier, c_string, comment_text, is_c_identifier
from workbench.export.tflm_ops import BUILTIN_METHODS, CUSTOM_METHODS
from workbench.emulate.project import write_tflm_project
from workbench.export.tflm_sources import ARENA_MARGIN

GOLDEN = Path(__file__).parent / "golden" / "tflm"
UPDATE_GOLDEN = os.environ.get("WORKBENCH_UPDATE_GOLDEN") == "1"
GOLDEN_ARENA = 2352  # arena passed explicitly to the golden exports, so goldens do not move with TFLM releases

# --------------------------------------------------------------------------- deterministic test models
# Built from fixed integer formulas with the .tflite schema's object API (no TensorFlow,
# no random generator), so the same bytes come out on every machine.

TYPES = {"float32": 0, "float16": 1, "int32": 2, "uint8": 3, "int64": 4, "int16": 7, "int8": 9}


def _det(n, lo, hi, mul=37, add=11):
    return (np.arange(n, dtype=np.int64) * mul + add) % (hi - lo + 1) + lo


class _Net:
    def __init__(self):
        from workbench.frontends.tflite_reader import schema

        self.s = schema()
        self.tensors, self.buffers, self.codes, self.ops = [], [self.s.BufferT()], [], []

    def tensor(self, name, shape, dtype, data=None, scale=None, zp=None, qdim=0):
        s = self.s
        t = s.TensorT()
        t.name, t.shape, t.type, t.buffer = name.encode(), list(shape), TYPES[dtype], 0
        if data is not None:
            b = s.BufferT()
            b.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            self.buffers.append(b)
            t.buffer = len(self.buffers) - 1
        if scale is not None:
            q = s.QuantizationParametersT()
            q.scale = [float(x) for x in np.atleast_1d(scale)]
            q.zeroPoint = [int(x) for x in np.atleast_1d(0 if zp is None else zp)]
            q.quantizedDimension = qdim
            t.quantization = q
        self.tensors.append(t)
        return len(self.tensors) - 1

    def op(self, kind, inputs, outputs, options=None, custom=None):
        s = self.s
        code = getattr(s.BuiltinOperator, kind)
        key = (code, custom)
        keys = [(c.builtinCode, c.customCode) for c in self.codes]
        if key not in keys:
            c = s.OperatorCodeT()
            c.builtinCode, c.deprecatedBuiltinCode, c.version, c.customCode = code, min(code, 127), 1, custom
            self.codes.append(c)
            keys.append(key)
        o = s.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = keys.index(key), list(inputs), list(outputs)
        if options is not None:
            cls, kw = options
            opt = getattr(s, cls + "T")()
            for k, v in kw.items():
                setattr(opt, k, v)
            o.builtinOptionsType, o.builtinOptions = getattr(s.BuiltinOptions, cls), opt
        self.ops.append(o)

    def build(self, inputs, outputs, description="test model") -> bytes:
        import flatbuffers

        s = self.s
        sg = s.SubGraphT()
        sg.tensors, sg.operators, sg.inputs, sg.outputs, sg.name = self.tensors, self.ops, list(inputs), list(outputs), b"main"
        m = s.ModelT()
        m.version, m.operatorCodes, m.subgraphs, m.buffers = 3, self.codes, [sg], self.buffers
        m.description = description.encode()
        b = flatbuffers.Builder(4096)
        b.Finish(m.Pack(b), file_identifier=b"TFL3")
        return bytes(b.Output())


def tiny_int8_model(description="tiny int8 test model", in_name="input", out_name="probs") -> bytes:
    """int8 in/out: CONV_2D, DEPTHWISE_CONV_2D, MAX_POOL_2D, RESHAPE, FULLY_CONNECTED, SOFTMAX."""
    n = _Net()
    x = n.tensor(in_name, [1, 8, 8, 1], "int8", scale=1 / 128, zp=0)
    w1s = np.array([0.004, 0.005, 0.006, 0.007])
    w1 = n.tensor("conv/w", [4, 3, 3, 1], "int8", _det(36, -127, 127).astype(np.int8), scale=w1s, zp=[0] * 4)
    b1 = n.tensor("conv/b", [4], "int32", _det(4, -500, 500).astype(np.int32), scale=w1s / 128, zp=[0] * 4)
    y1 = n.tensor("conv/out", [1, 8, 8, 4], "int8", scale=0.02, zp=-128)
    n.op("CONV_2D", [x, w1, b1], [y1], ("Conv2DOptions", dict(padding=0, strideW=1, strideH=1, fusedActivationFunction=1,
                                                               dilationWFactor=1, dilationHFactor=1)))
    w2s = np.array([0.01, 0.011, 0.012, 0.013])
    w2 = n.tensor("dw/w", [1, 3, 3, 4], "int8", _det(36, -127, 127, 53, 7).astype(np.int8), scale=w2s, zp=[0] * 4, qdim=3)
    b2 = n.tensor("dw/b", [4], "int32", _det(4, -300, 300, 17, 3).astype(np.int32), scale=w2s * 0.02, zp=[0] * 4)
    y2 = n.tensor("dw/out", [1, 4, 4, 4], "int8", scale=0.03, zp=-5)
    n.op("DEPTHWISE_CONV_2D", [y1, w2, b2], [y2], ("DepthwiseConv2DOptions", dict(
        padding=0, strideW=2, strideH=2, depthMultiplier=1, dilationWFactor=1, dilationHFactor=1)))
    y3 = n.tensor("pool/out", [1, 2, 2, 4], "int8", scale=0.03, zp=-5)
    n.op("MAX_POOL_2D", [y2], [y3], ("Pool2DOptions", dict(padding=1, strideW=2, strideH=2, filterWidth=2, filterHeight=2)))
    shape = n.tensor("reshape/shape", [2], "int32", np.array([1, 16], np.int32))
    y4 = n.tensor("flat", [1, 16], "int8", scale=0.03, zp=-5)
    n.op("RESHAPE", [y3, shape], [y4], ("ReshapeOptions", dict(newShape=[1, 16])))
    w5 = n.tensor("fc/w", [3, 16], "int8", _det(48, -127, 127, 29, 5).astype(np.int8), scale=0.01, zp=0)
    b5 = n.tensor("fc/b", [3], "int32", np.array([40, -25, 10], np.int32), scale=0.0003, zp=0)
    y5 = n.tensor("logits", [1, 3], "int8", scale=0.1, zp=3)
    n.op("FULLY_CONNECTED", [y4, w5, b5], [y5], ("FullyConnectedOptions", {}))
    y6 = n.tensor(out_name, [1, 3], "int8", scale=1 / 256, zp=-128)
    n.op("SOFTMAX", [y5], [y6], ("SoftmaxOptions", dict(beta=1.0)))
    return n.build([x], [y6], description)


def tiny_float_model() -> bytes:
    """float32 in/out: MEAN, FULLY_CONNECTED, LOGISTIC."""
    n = _Net()
    x = n.tensor("features", [1, 2, 2, 4], "float32")
    axes = n.tensor("mean/axes", [2], "int32", np.array([1, 2], np.int32))
    y1 = n.tensor("mean/out", [1, 4], "float32")
    n.op("MEAN", [x, axes], [y1], ("ReducerOptions", dict(keepDims=False)))
    w = n.tensor("fc/w", [2, 4], "float32", (_det(8, -9, 9) / 10).astype(np.float32))
    b = n.tensor("fc/b", [2], "float32", np.array([0.25, -0.5], np.float32))
    y2 = n.tensor("fc/out", [1, 2], "float32")
    n.op("FULLY_CONNECTED", [y1, w, b], [y2], ("FullyConnectedOptions", {}))
    y3 = n.tensor("score", [1, 2], "float32")
    n.op("LOGISTIC", [y2], [y3])
    return n.build([x], [y3], "tiny float test model")


def float16_model() -> bytes:
    n = _Net()
    x = n.tensor("x", [1, 4], "float32")
    w16 = n.tensor("w16", [3, 4], "float16", (_det(12, -9, 9) / 10).astype(np.float16))
    w = n.tensor("w", [3, 4], "float32")
    n.op("DEQUANTIZE", [w16], [w])
    y = n.tensor("y", [1, 3], "float32")
    n.op("FULLY_CONNECTED", [x, w, -1], [y], ("FullyConnectedOptions", {}))
    return n.build([x], [y], "float16 weights")


def hybrid_model() -> bytes:
    n = _Net()
    x = n.tensor("x", [1, 4], "float32")
    w = n.tensor("w", [3, 4], "int8", _det(12, -127, 127).astype(np.int8), scale=0.01, zp=0)
    y = n.tensor("y", [1, 3], "float32")
    n.op("FULLY_CONNECTED", [x, w, -1], [y], ("FullyConnectedOptions", dict(asymmetricQuantizeInputs=False)))
    return n.build([x], [y], "dynamic-range (hybrid) model")


def unsupported_ops_model() -> bytes:
    n = _Net()
    x = n.tensor("x", [1, 4], "float32")
    k = n.tensor("k", [], "int32", np.array(2, np.int32))
    v = n.tensor("values", [1, 2], "float32")
    i = n.tensor("indices", [1, 2], "int32")
    n.op("TOPK_V2", [x, k], [v, i])
    y = n.tensor("y", [1, 2], "float32")
    n.op("CUSTOM", [v], [y], custom=b"MyCustomOp")
    return n.build([x], [y, i], "ops TFLM lacks")


MODELS = {"tiny_int8": tiny_int8_model, "tiny_float": tiny_float_model}


def _model_file(tmp_path: Path, key: str, file_name: str | None = None) -> Path:
    p = tmp_path / (file_name or f"{key}.tflite")
    p.write_bytes(MODELS[key]() if key in MODELS else BUILDERS[key]())
    return p


BUILDERS = {"float16": float16_model, "hybrid": hybrid_model, "unsupported": unsupported_ops_model}


@pytest.fixture(scope="module")
def tiny_int8(tmp_path_factory) -> Path:
    """The golden test model: read from tests/golden/tflm (rewritten there with WORKBENCH_UPDATE_GOLDEN=1)."""
    stored = GOLDEN / "tiny.tflite"
    if UPDATE_GOLDEN or not stored.exists():
        GOLDEN.mkdir(parents=True, exist_ok=True)
        stored.write_bytes(tiny_int8_model())
    p = tmp_path_factory.mktemp("tiny") / "tiny.tflite"
    shutil.copyfile(stored, p)
    return p


@pytest.fixture(scope="module")
def tiny_float(tmp_path_factory) -> Path:
    return _model_file(tmp_path_factory.mktemp("tinyf"), "tiny_float")


@pytest.fixture(scope="module")
def tiny_export(tiny_int8, tmp_path_factory):
    """One export with the real arena measurement, labels and a section, shared by several tests."""
    out = tmp_path_factory.mktemp("exp") / "tiny_tflm"
    art = write_tflm_project(tiny_int8, out, labels=["zero", "one", "two"], section=".rodata.model")
    return art


# --------------------------------------------------------------------------- TFLM in a child process

_TFLM_RUN = r"""
import sys, numpy as np
from tflite_micro import runtime
model, inp, out, arena = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
it = runtime.Interpreter.from_bytes(open(model, "rb").read(), arena_size=arena)
xs = np.load(inp)
res = []
for x in xs:
    it.set_input(x[None], 0)
    it.invoke()
    res.append(it.get_output(0)[0])
np.save(out, np.stack(res))
"""


def run_tflm(model: Path, xs: np.ndarray, tmp: Path, arena: int = 64 * 1024) -> np.ndarray:
    """Outputs of the TFLM interpreter for each sample, run in a child process (TFLM can crash a process)."""
    pytest.importorskip("tflite_micro")
    inp, out = tmp / f"{model.stem}_in.npy", tmp / f"{model.stem}_out.npy"
    np.save(inp, xs)
    r = subprocess.run([sys.executable, "-c", _TFLM_RUN, str(model), str(inp), str(out), str(arena)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"TFLM child failed ({r.returncode}): {r.stderr[-2000:]}"
    return np.load(out)


def run_litert_reference(model: Path, xs: np.ndarray) -> np.ndarray:
    from ai_edge_litert import interpreter as lite

    it = lite.Interpreter(model_path=str(model), experimental_op_resolver_type=lite.OpResolverType.BUILTIN_REF)
    it.allocate_tensors()
    i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    res = []
    for x in xs:
        it.set_tensor(i, x[None])
        it.invoke()
        res.append(it.get_tensor(o)[0].copy())
    return np.stack(res)


# --------------------------------------------------------------------------- compilers and TFLM header stubs

# Every Add* method of tflite::MicroMutableOpResolver in TFLite Micro's
# micro_mutable_op_resolver.h (2026). The stub below declares only these, so a
# misspelt method in a generated resolver does not compile.
TFLM_ADD_METHODS = """
AddAbs AddAdd AddAddN AddArgMax AddArgMin AddAssignVariable AddAveragePool2D AddBatchMatMul AddBatchToSpaceNd
AddBroadcastArgs AddBroadcastTo AddCallOnce AddCast AddCeil AddCircularBuffer AddConcatenation AddConv2D
AddCos AddCumSum AddDecode AddDelay AddDepthToSpace AddDepthwiseConv2D AddDequantize AddDetectionPostprocess
AddDiv AddDynamicUpdateSlice AddEmbeddingLookup AddEnergy AddElu AddEqual AddEthosU AddExp AddExpandDims
AddFftAutoScale AddFill AddFilterBank AddFilterBankLog AddFilterBankSquareRoot
AddFilterBankSpectralSubtraction AddFloor AddFloorDiv AddFloorMod AddFramer AddFullyConnected AddGather
AddGatherNd AddGreater AddGreaterEqual AddHardSwish AddIf AddIrfft AddL2Normalization AddL2Pool2D
AddLeakyRelu AddLess AddLessEqual AddLog AddLogicalAnd AddLogicalNot AddLogicalOr AddLogistic AddLogSoftmax
AddMaximum AddMaxPool2D AddMirrorPad AddMean AddMinimum AddMul AddNeg AddNotEqual AddOverlapAdd AddPack
AddPad AddPadV2 AddPCAN AddPrelu AddQuantize AddReadVariable AddReduceAll AddReduceMax AddReduceMin AddRelu
AddRelu6 AddReshape AddResizeBilinear AddResizeNearestNeighbor AddReverseV2 AddRfft AddRound AddRsqrt
AddSelectV2 AddShape AddSin AddSlice AddSoftmax AddSpaceToBatchNd AddSpaceToDepth AddSplit AddSplitV
AddSqueeze AddSqrt AddSquare AddSquaredDifference AddStridedSlice AddStacker AddSub AddSum AddSvdf AddTanh
AddTransposeConv AddTranspose AddUnpack AddUnidirectionalSequenceLSTM AddVarHandle AddWhile AddWindow
AddZerosLike
""".split()


def _resolver_stub() -> str:
    methods = "\n".join(f'  TfLiteStatus {m}() {{ return Add("{m}"); }}' for m in TFLM_ADD_METHODS)
    return f"""// Test stub with the shape of TFLite Micro's MicroMutableOpResolver: it records Add calls.
#ifndef STUB_MICRO_MUTABLE_OP_RESOLVER_H_
#define STUB_MICRO_MUTABLE_OP_RESOLVER_H_
#include "tensorflow/lite/c/common.h"
namespace tflite {{
class MicroOpResolver {{
 public:
  virtual ~MicroOpResolver() {{}}
}};
template <unsigned int tOpCount>
class MicroMutableOpResolver : public MicroOpResolver {{
 public:
  explicit MicroMutableOpResolver() {{}}
{methods}
  unsigned int count() const {{ return count_; }}
  const char* name(unsigned int i) const {{ return names_[i]; }}
 private:
  TfLiteStatus Add(const char* name) {{
    if (count_ >= tOpCount) return kTfLiteError;
    names_[count_++] = name;
    return kTfLiteOk;
  }}
  const char* names_[tOpCount] = {{}};
  unsigned int count_ = 0;
}};
}}  // namespace tflite
#endif
"""


STUBS = {
    "tensorflow/lite/c/common.h": """#ifndef STUB_COMMON_H_
#define STUB_COMMON_H_
#include <stddef.h>
#include <stdint.h>
typedef enum TfLiteStatus { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;
typedef struct TfLiteTensor TfLiteTensor;
#endif
""",
    "tensorflow/lite/micro/micro_interpreter.h": """#ifndef STUB_MICRO_INTERPRETER_H_
#define STUB_MICRO_INTERPRETER_H_
#include <cstddef>
#include <cstdint>
#include "tensorflow/lite/c/common.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"
namespace tflite {
class MicroResourceVariables;
class MicroProfilerInterface;
class MicroInterpreter {
 public:
  MicroInterpreter(const Model* model, const MicroOpResolver& op_resolver, uint8_t* tensor_arena,
                   size_t tensor_arena_size, MicroResourceVariables* resource_variables = nullptr,
                   MicroProfilerInterface* profiler = nullptr, bool preserve_all_tensors = false);
  ~MicroInterpreter();
  TfLiteStatus AllocateTensors();
  TfLiteStatus Invoke();
  TfLiteTensor* input(size_t index);
  TfLiteTensor* output(size_t index);
  size_t inputs_size() const;
  size_t outputs_size() const;
  template <class T> T* typed_input_tensor(int tensor_index);
  template <class T> T* typed_output_tensor(int tensor_index);
  size_t arena_used_bytes() const;
};
}  // namespace tflite
#endif
""",
    "tensorflow/lite/micro/micro_log.h": """#ifndef STUB_MICRO_LOG_H_
#define STUB_MICRO_LOG_H_
#include <cstdarg>
#include <cstddef>
void MicroPrintf(const char* format, ...) __attribute__((format(printf, 1, 2)));
#endif
""",
    "tensorflow/lite/micro/system_setup.h": """#ifndef STUB_SYSTEM_SETUP_H_
#define STUB_SYSTEM_SETUP_H_
namespace tflite { void InitializeTarget(); }
#endif
""",
    "tensorflow/lite/schema/schema_generated.h": """#ifndef STUB_SCHEMA_GENERATED_H_
#define STUB_SCHEMA_GENERATED_H_
#include <cstdint>
#define TFLITE_SCHEMA_VERSION (3)
namespace tflite {
struct Model { uint32_t version() const; };
const Model* GetModel(const void* buf);
}  // namespace tflite
#endif
""",
    "TensorFlowLite.h": "// stub of the Arduino TFLM library header\n",
    "Arduino.h": """// stub of the Arduino core header
#ifndef STUB_ARDUINO_H_
#define STUB_ARDUINO_H_
unsigned long micros(void);
void delay(unsigned long ms);
#endif
""",
}


def write_stubs(root: Path) -> Path:
    files = {**STUBS, "tensorflow/lite/micro/micro_mutable_op_resolver.h": _resolver_stub()}
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def need(compiler: str) -> str:
    path = shutil.which(compiler)
    if path is None:
        pytest.skip(f"compiler '{compiler}' is not installed")
    return path


CPP_COMPILERS = {
    "g++": ["g++", "-std=c++17"],
    "arm-none-eabi-g++": ["arm-none-eabi-g++", "-mcpu=cortex-m4", "-mthumb", "-std=c++17"],
}
C_COMPILERS = {
    "gcc": ["gcc", "-std=c11"],
    "arm-none-eabi-gcc": ["arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb", "-std=c11"],
}
WARN = ["-Wall", "-Wextra", "-Werror"]


def compile_ok(cmd: list[str], cwd: Path) -> None:
    need(cmd[0])
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and not r.stderr.strip(), f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}"


def code_tokens(source: str) -> str:
    """``source`` without comments, string literals and character literals: what the compiler sees as code."""
    pattern = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'', re.S)
    return pattern.sub(" ", source)


# --------------------------------------------------------------------------- unit tests: names, arrays, op table


@pytest.mark.parametrize("raw,expected", [
    ("tiny", "tiny"),
    ("digits-int8 v2", "digits_int8_v2"),
    ("3d_net", "m3d_net"),
    ("int", "int_model"),
    ("class", "class_model"),
    ("main", "main_model"),
    ("__weird__name__", "weird_name"),
    ("modèle", "modele"),
    ("x*/ evil(); /*", "x_evil"),
    ("a\nb", "a_b"),
    ("!!!", ""),
    ("___", ""),
    ("ünï", "uni"),
    ("日本語", ""),
])
def test_c_identifier(raw, expected):
    got = c_identifier(raw)
    assert got == expected
    if got:
        assert is_c_identifier(got)


def test_comment_text_and_c_string_are_inert():
    hostile = 'x*/ evil(); /* \\\n??/ `md` <b> "q" %'
    c = comment_text(hostile)
    for bad in ("*/", "/*", "\\", "\n", "?", "`", "<", '"'):
        assert bad not in c
    assert c.startswith("x%2A%2F evil()")
    assert len(comment_text("a" * 500)) == 120
    assert comment_text("ab\u00e9" * 100, 20).endswith("...")
    lit = c_string(hostile)
    assert lit.startswith('"') and lit.endswith('"')
    inner = lit[1:-1]
    assert '"' not in inner.replace('\\042', '') and "?" not in inner and "\n" not in inner
    # Octal escapes decode back to the original text.
    decoded = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), inner)
    assert decoded == hostile


def test_c_array_round_trip():
    data = bytes(range(256)) * 3 + b"\x00\x01"
    text = format_bytes(data)
    lines = text.splitlines()
    assert all(len(line.split(",")) - (1 if line.endswith(",") else 0) == 12 for line in lines[:-1])
    src = "const unsigned char g_x[] = {\n" + text + "\n};\n"
    assert parse_c_array(src, "g_x") == data
    assert parse_c_array("alignas(16) const unsigned char g_y[] /* c */ = {1, 2, 0x10};", "g_y") == b"\x01\x02\x10"


def test_op_table_uses_real_tflm_method_names():
    from workbench.frontends.tflite_reader import schema

    s = schema()
    methods = list(BUILTIN_METHODS.values()) + list(CUSTOM_METHODS.values())
    assert set(methods) <= set(TFLM_ADD_METHODS), set(methods) - set(TFLM_ADD_METHODS)
    assert len(set(methods)) == len(methods)
    assert not [k for k in BUILTIN_METHODS if not hasattr(s.BuiltinOperator, k)]
    for kind, method in {"CONV_2D": "AddConv2D", "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D", "FULLY_CONNECTED":
                         "AddFullyConnected", "SOFTMAX": "AddSoftmax", "RESHAPE": "AddReshape", "ADD": "AddAdd",
                         "MEAN": "AddMean", "QUANTIZE": "AddQuantize", "DEQUANTIZE": "AddDequantize",
                         "AVERAGE_POOL_2D": "AddAveragePool2D", "MAX_POOL_2D": "AddMaxPool2D"}.items():
        assert BUILTIN_METHODS[kind] == method


def test_arena_margin_rule():
    plan = ARENA_MARGIN.plan(2352, "measured")
    assert plan.size % 16 == 0 and plan.size >= 2352 + 1024 and plan.size - 2352 - 1024 < 16
    big = ARENA_MARGIN.plan(100_001, "measured")
    assert big.size % 16 == 0 and big.size >= 110_002 and big.margin == big.size - 100_001


# --------------------------------------------------------------------------- the export itself


def test_files_bytes_and_readme(tiny_export, tiny_int8):
    out = tiny_export.path
    assert tiny_export.format == "tflm"
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert names == ["README.md", "main.cc", "manifest.json", "tiny_model_data.cc", "tiny_model_data.h",
                     "tiny_model_settings.h", "tiny_op_resolver.h"]
    source = (out / "tiny_model_data.cc").read_text()
    assert parse_c_array(source, "g_tiny_model_data") == tiny_int8.read_bytes()
    assert "alignas(16) const unsigned char g_tiny_model_data[] TINY_MODEL_DATA_SECTION = {" in source
    assert '__attribute__((section(".rodata.model")))' in source
    assert f"g_tiny_model_data_size = {tiny_int8.stat().st_size};" in (out / "tiny_model_data.h").read_text()

    m = tiny_export.metrics
    assert m["model_bytes"] == tiny_int8.stat().st_size == 2448
    assert m["arena_bytes"] % 16 == 0 and m["arena_bytes"] >= m["arena_measured_bytes"] + 1024
    settings = (out / "tiny_model_settings.h").read_text()
    assert f"constexpr std::size_t kTensorArenaSize = {m['arena_bytes']};" in settings
    assert f"kTensorArenaMeasured = {m['arena_measured_bytes']};" in settings
    assert "kInput0Shape[] = {1, 8, 8, 1};" in settings and "using Input0Type = std::int8_t;" in settings
    assert "kOutput0Scale = 0.00390625f;" in settings and "kOutput0ZeroPoint = -128;" in settings
    assert '"zero",' in settings and "kLabelCount = 3;" in settings

    declared = []  # names each file declares (a macro defined in both #if branches counts once)
    for f in ("tiny_model_data.h", "tiny_model_settings.h", "tiny_op_resolver.h", "tiny_model_data.cc"):
        text = code_tokens((out / f).read_text())
        names = re.findall(r"#define (\w+)", text)
        names += re.findall(r"(?:constexpr|using)\s+(?:[\w:]+\s+)*?(\w+)\s*(?:\[\w*\])?\s*=", text)
        declared += sorted(set(names))
    assert len(declared) == len(set(declared)) > 20, "generated identifiers are not unique"

    readme = (out / "README.md").read_text()
    assert "2,448 bytes" in readme and f"{m['arena_bytes']:,} bytes" in readme
    assert "CONV_2D (AddConv2D)" in readme and "SOFTMAX (AddSoftmax)" in readme
    assert "margin" in readme and "CMSIS-NN" in readme

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["artifact"]["format"] == "tflm" and manifest["artifact"]["path"] == "tiny_tflm"
    assert manifest["metrics"]["ops"] == ["CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D", "RESHAPE",
                                          "FULLY_CONNECTED", "SOFTMAX"]
    assert manifest["source"]["sha256"] == tiny_export.manifest()["source"]["sha256"]
    assert not list(out.parent.glob(".tiny_tflm*")), "temporary folders were left behind"


def test_measured_arena_runs_the_model(tiny_export, tiny_int8, tmp_path):
    """The measured arena is enough for TFLM, and the written arena is that plus the margin."""
    m = tiny_export.metrics
    xs = (_det(64, -128, 127, 41, 3).reshape(1, 8, 8, 1)).astype(np.int8)
    y = run_tflm(tiny_int8, xs, tmp_path, arena=m["arena_measured_bytes"])
    assert y.shape == (1, 3)
    assert m["arena_bytes"] == ARENA_MARGIN.plan(m["arena_measured_bytes"], "").size


def _samples(shape, dtype, n=6):
    k = int(np.prod(shape))
    if dtype == np.int8:
        return np.stack([_det(k, -128, 127, 31 + 2 * j, j).reshape(shape) for j in range(n)]).astype(np.int8)
    return np.stack([(_det(k, -50, 50, 7 + j, j) / 25).reshape(shape) for j in range(n)]).astype(np.float32)


@pytest.mark.parametrize("key,shape,dtype", [("tiny_int8", (8, 8, 1), np.int8), ("tiny_float", (2, 2, 4), np.float32)])
def test_model_rebuilt_from_sources_runs_like_the_file(key, shape, dtype, tmp_path):
    src = _model_file(tmp_path, key)
    art = write_tflm_project(src, tmp_path / "out", lang="c" if key == "tiny_float" else "cpp", arena_bytes=4096)
    ext = "c" if key == "tiny_float" else "cc"
    rebuilt = tmp_path / "rebuilt.tflite"
    rebuilt.write_bytes(parse_c_array((art.path / f"{key}_model_data.{ext}").read_text(), f"g_{key}_model_data"))
    assert rebuilt.read_bytes() == src.read_bytes()
    xs = _samples(shape, dtype)
    from_sources = run_tflm(rebuilt, xs, tmp_path)
    direct = run_tflm(src, xs, tmp_path)
    reference = run_litert_reference(src, xs)
    np.testing.assert_array_equal(from_sources, direct)
    if dtype == np.int8:
        assert np.abs(from_sources.astype(int) - reference.astype(int)).max() <= 1
    else:
        np.testing.assert_allclose(from_sources, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("compiler", list(CPP_COMPILERS))
def test_cpp_data_and_settings_compile(tiny_export, compiler, tmp_path):
    out = tiny_export.path
    (tmp_path / "use_settings.cc").write_text(
        '#include "tiny_model_data.h"\n#include "tiny_model_settings.h"\n'
        "unsigned int total() { return g_tiny_model_data_size + tiny_model::kTensorArenaSize"
        " + tiny_model::kInput0Bytes + static_cast<unsigned>(tiny_model::kLabelCount); }\n")
    base = CPP_COMPILERS[compiler] + WARN + ["-Wpedantic", f"-I{out}"]
    compile_ok(base + ["-c", str(out / "tiny_model_data.cc"), "-o", str(tmp_path / "data.o")], tmp_path)
    compile_ok(base + ["-c", "use_settings.cc", "-o", str(tmp_path / "settings.o")], tmp_path)


@pytest.mark.parametrize("compiler", list(C_COMPILERS))
def test_c_data_and_settings_compile(tiny_int8, compiler, tmp_path):
    art = write_tflm_project(tiny_int8, tmp_path / "c_out", lang="c", section=".rodata.model",
                             labels=["zero", "one", "two"], arena_bytes=GOLDEN_ARENA)
    out = art.path
    (tmp_path / "use_settings.c").write_text(
        '#include "tiny_model_data.h"\n#include "tiny_model_settings.h"\n'
        "unsigned int total(void);\n"
        "unsigned int total(void) { return g_tiny_model_data_size + TINY_TENSOR_ARENA_SIZE + TINY_INPUT0_BYTES"
        " + (unsigned)TINY_LABEL_COUNT + (unsigned)sizeof(tiny_labels); }\n")
    base = C_COMPILERS[compiler] + WARN + ["-Wpedantic", f"-I{out}"]
    compile_ok(base + ["-c", str(out / "tiny_model_data.c"), "-o", str(tmp_path / "data.o")], tmp_path)
    compile_ok(base + ["-c", "use_settings.c", "-o", str(tmp_path / "settings.o")], tmp_path)
    # The C settings header is usable from the C++ example too.
    stubs = write_stubs(tmp_path / "stubs")
    compile_ok(CPP_COMPILERS["g++"] + WARN + [f"-I{out}", f"-I{stubs}", "-c", str(out / "main.cc"), "-o",
                                              str(tmp_path / "main.o")], tmp_path)


RESOLVER_HARNESS = """#include <cstdio>
#include "{name}_op_resolver.h"
int main() {{
  {name}_model::OpResolver resolver;
  if ({name}_model::RegisterOps(resolver) != kTfLiteOk) return 2;
  for (unsigned int i = 0; i < resolver.count(); ++i) std::printf("%s\\n", resolver.name(i));
  return resolver.count() == {name}_model::kOpCount ? 0 : 3;
}}
"""


@pytest.mark.parametrize("key", ["tiny_int8", "tiny_float"])
def test_op_resolver_registers_exactly_the_models_ops(key, tmp_path):
    from workbench.frontends.tflite_reader import read_tflite

    need("g++")
    src = _model_file(tmp_path, key)
    art = write_tflm_project(src, tmp_path / "out", arena_bytes=4096)
    stubs = write_stubs(tmp_path / "stubs")
    (tmp_path / "harness.cc").write_text(RESOLVER_HARNESS.format(name=key))
    exe = tmp_path / "harness"
    compile_ok(["g++", "-std=c++17", *WARN, f"-I{art.path}", f"-I{stubs}", "harness.cc", "-o", str(exe)], tmp_path)
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"N in MicroMutableOpResolver<N> differs from the number of Add calls ({r.returncode})"
    added = r.stdout.split()
    expected = [BUILTIN_METHODS[k] for k in read_tflite(src).op_kinds()]
    assert added == expected
    assert f"constexpr unsigned int kOpCount = {len(expected)};" in (art.path / f"{key}_op_resolver.h").read_text()


@pytest.mark.parametrize("compiler", list(CPP_COMPILERS))
def test_main_and_sketch_compile_against_tflm_stubs(tiny_export, compiler, tiny_int8, tmp_path):
    stubs = write_stubs(tmp_path / "stubs")
    base = CPP_COMPILERS[compiler] + WARN + [f"-I{stubs}"]
    compile_ok(base + [f"-I{tiny_export.path}", "-c", str(tiny_export.path / "main.cc"), "-o", "main.o"], tmp_path)
    ard = write_tflm_project(tiny_int8, tmp_path / "ard", layout="arduino", labels=["a", "b", "c"],
                             arena_bytes=GOLDEN_ARENA).path
    sketch = ard / "examples" / "tiny" / "tiny.ino"
    assert sketch.exists() and (ard / "library.properties").exists() and (ard / "src" / "tiny_model_data.cpp").exists()
    compile_ok(base + [f"-I{ard / 'src'}", "-include", "Arduino.h", "-x", "c++", "-c", str(sketch), "-o", "ino.o"],
               tmp_path)
    compile_ok(base + [f"-I{ard / 'src'}", "-c", str(ard / "src" / "tiny_model_data.cpp"), "-o", "d.o"], tmp_path)


# --------------------------------------------------------------------------- golden files

GOLDEN_CASES = {
    "plain_cpp": dict(layout="plain", lang="cpp", labels=["zero", "one", "two"], section=".rodata.model"),
    "plain_c": dict(layout="plain", lang="c"),
    "arduino_cpp": dict(layout="arduino", lang="cpp", labels=["zero", "one", "two"]),
}


@pytest.mark.parametrize("case", list(GOLDEN_CASES))
def test_golden_sources(case, tiny_int8, tmp_path):
    art = write_tflm_project(tiny_int8, tmp_path / "tiny", arena_bytes=GOLDEN_ARENA, **GOLDEN_CASES[case])
    got = {str(p.relative_to(art.path)): p.read_text() for p in sorted(art.path.rglob("*"))
           if p.is_file() and p.name != "manifest.json"}
    gdir = GOLDEN / case
    if UPDATE_GOLDEN:
        shutil.rmtree(gdir, ignore_errors=True)
        for rel, text in got.items():
            (gdir / rel).parent.mkdir(parents=True, exist_ok=True)
            (gdir / rel).write_text(text)
    want = {str(p.relative_to(gdir)): p.read_text() for p in sorted(gdir.rglob("*")) if p.is_file()}
    assert sorted(got) == sorted(want), "file list changed; regenerate with WORKBENCH_UPDATE_GOLDEN=1"
    for rel in want:
        assert got[rel] == want[rel], f"{case}/{rel} differs from the golden file; regenerate with WORKBENCH_UPDATE_GOLDEN=1"


# --------------------------------------------------------------------------- hostile input stays data

HOSTILE_LABELS = ['a*/ evil1(); /* b"; evil2(); "', "c\\\nevil3(); d??/\nevil4();", "e\n#include <evil5>"]


@pytest.mark.parametrize("lang", ["cpp", "c"])
def test_hostile_names_and_labels_stay_data(lang, tmp_path):
    hostile_name = 'x*\\ evil0(); "\n#define evil6 ??\\.tflite'  # a file name cannot hold '/'
    src = tmp_path / hostile_name
    src.write_bytes(tiny_int8_model(description="*/ int evil7; /*\n#error evil8 \\",
                                    in_name="in*/ evil9(); /*", out_name="out\\\nevil10();"))
    art = write_tflm_project(src, tmp_path / "out", lang=lang, labels=HOSTILE_LABELS, arena_bytes=GOLDEN_ARENA)
    out = art.path
    name = "x_evil0_define_evil6"  # the sanitized identifier is the only place the words may reach code
    readme = (out / "README.md").read_text()
    assert f"The C name `{name}`" in readme
    for p in out.rglob("*"):
        if p.suffix in (".h", ".c", ".cc", ".cpp", ".ino"):
            text = p.read_text()
            code = re.sub(name, "NAME", code_tokens(text), flags=re.I)
            assert "evil" not in code, f"{p.name} has code made from hostile input"
            assert all(not line.startswith("#") or line.startswith(("#if", "#define", "#endif", "#else", "#include"))
                       for line in text.splitlines())
    stubs = write_stubs(tmp_path / "stubs")
    if lang == "cpp":
        compile_ok(["g++", "-std=c++17", *WARN, f"-I{out}", "-c", str(out / f"{name}_model_data.cc"), "-o", "d.o"],
                   tmp_path)
    else:
        compile_ok(["gcc", "-std=c11", *WARN, f"-I{out}", "-c", str(out / f"{name}_model_data.c"), "-o", "d.o"],
                   tmp_path)
    compile_ok(["g++", "-std=c++17", *WARN, f"-I{out}", f"-I{stubs}", "-c", str(out / "main.cc"), "-o", "m.o"], tmp_path)
    # The labels survive as data: the compiled string table holds them byte for byte.
    settings = (out / f"{name}_model_settings.h").read_text()
    lits = re.findall(r'^    ("(?:\\[0-7]{3}|[^"\\])*"),$', settings, re.M)
    decoded = [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s[1:-1]) for s in lits]
    assert decoded == HOSTILE_LABELS


# --------------------------------------------------------------------------- bad input


def test_name_from_file_name_is_sanitized_and_reported(tmp_path):
    src = _model_file(tmp_path, "tiny_int8", "3d-net v2.tflite")
    art = write_tflm_project(src, tmp_path / "out", arena_bytes=GOLDEN_ARENA)
    assert (art.path / "m3d_net_v2_model_data.cc").exists()
    assert "The C name `m3d_net_v2` was made from the file name `3d-net v2`" in (art.path / "README.md").read_text()
    art2 = write_tflm_project(src, tmp_path / "out2", name="kws", arena_bytes=GOLDEN_ARENA)
    assert (art2.path / "kws_op_resolver.h").exists() and "was made from" not in (art2.path / "README.md").read_text()


def test_empty_name_asks_for_name(tmp_path):
    src = _model_file(tmp_path, "tiny_int8", "!!!.tflite")
    with pytest.raises(ConfigError, match="--name"):
        write_tflm_project(src, tmp_path / "out", arena_bytes=GOLDEN_ARENA)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("key", ["float16", "hybrid"])
def test_float16_and_hybrid_models_are_refused_with_a_scheme(key, tmp_path):
    src = _model_file(tmp_path, key)
    with pytest.raises(UnsupportedError) as e:
        write_tflm_project(src, tmp_path / "out", arena_bytes=GOLDEN_ARENA)
    assert "int8" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_ops_tflm_lacks_are_named(tmp_path):
    src = _model_file(tmp_path, "unsupported")
    with pytest.raises(UnsupportedError) as e:
        write_tflm_project(src, tmp_path / "out", arena_bytes=GOLDEN_ARENA)
    assert "TOPK_V2" in str(e.value) and "MyCustomOp" in str(e.value)


def test_resolver_table_names_ops_without_kernel():
    from workbench.export.tflm_ops import resolver_ops

    with pytest.raises(UnsupportedError, match=r"TOPK_V2, MyOp \(custom\)"):
        resolver_ops([("CONV_2D", False), ("TOPK_V2", False), ("MyOp", True)], "m.tflite")
    ok = resolver_ops([("CONV_2D", False), ("TFLite_Detection_PostProcess", True)], "m.tflite")
    assert [o.method for o in ok] == ["AddConv2D", "AddDetectionPostprocess"]


def test_labels_must_match_the_output(tiny_int8, tmp_path):
    with pytest.raises(DataError, match="2 labels.*3 elements"):
        write_tflm_project(tiny_int8, tmp_path / "out", labels=["a", "b"], arena_bytes=GOLDEN_ARENA)
    f = tmp_path / "labels.txt"
    f.write_text("cat\ndog\nbird\n\n")
    art = write_tflm_project(tiny_int8, tmp_path / "out", labels=f, arena_bytes=GOLDEN_ARENA)
    assert '"bird",' in (art.path / "tiny_model_settings.h").read_text()


def test_output_exists_overwrite_and_foreign_folders(tiny_int8, tmp_path):
    out = tmp_path / "out"
    write_tflm_project(tiny_int8, out, arena_bytes=GOLDEN_ARENA)
    with pytest.raises(OutputExistsError):
        write_tflm_project(tiny_int8, out, arena_bytes=GOLDEN_ARENA)
    art = write_tflm_project(tiny_int8, out, arena_bytes=4000, overwrite=True, name="again")
    assert sorted(p.name for p in out.iterdir())[0] == "README.md" and (out / "again_model_data.cc").exists()
    assert not (out / "tiny_model_data.cc").exists()
    assert art.metrics["arena_measured_bytes"] == 4000
    foreign = tmp_path / "project"
    foreign.mkdir()
    (foreign / "precious.c").write_text("int keep;\n")
    with pytest.raises(OutputExistsError, match="refusing"):
        write_tflm_project(tiny_int8, foreign, arena_bytes=GOLDEN_ARENA, overwrite=True)
    assert (foreign / "precious.c").exists()


@pytest.mark.parametrize("kwargs,match", [
    (dict(layout="zephyr"), "layout"),
    (dict(lang="rust"), "language"),
    (dict(section='.x"); evil(); ("'), "section"),
    (dict(arena_bytes=0), "arena_bytes"),
])
def test_bad_options(tiny_int8, tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        write_tflm_project(tiny_int8, tmp_path / "out", **{"arena_bytes": GOLDEN_ARENA, **kwargs})


class _FakeReport:
    """The shape of workbench.emulate's TargetReport.to_dict() that the export reads."""

    def __init__(self, target, fits, flash=200_000, ram=40_000, arena=GOLDEN_ARENA, reasons=()):
        self.d = {"kind": "estimate", "target": target, "latency_ms": 12.5, "fits": fits, "flash_bytes": flash,
                  "flash_budget_bytes": 1_048_576, "ram_bytes": ram, "ram_budget_bytes": 262_144,
                  "arena_bytes": arena, "reasons": list(reasons)}

    def to_dict(self):
        return dict(self.d)


def _fake_emulate(monkeypatch, **kw):
    import workbench.emulate as emulate_pkg

    monkeypatch.setattr(emulate_pkg, "emulate", lambda path, target: _FakeReport(str(target), **kw))


def test_target_that_does_not_fit_needs_force(tiny_int8, tmp_path, monkeypatch):
    _fake_emulate(monkeypatch, fits=False, flash=2_000_000, reasons=[
        "flash: needs 2,000,000 B, nrf52840 has 1,048,576 B (short by 951,424 B)"])
    with pytest.raises(CheckFailed) as e:
        write_tflm_project(tiny_int8, tmp_path / "out", target="nrf52840", arena_bytes=GOLDEN_ARENA)
    assert "does not fit target 'nrf52840'" in str(e.value) and "short by 951,424 B" in str(e.value)
    assert e.value.exit_code == 1 and not (tmp_path / "out").exists()
    art = write_tflm_project(tiny_int8, tmp_path / "out", target="nrf52840", arena_bytes=GOLDEN_ARENA, force=True)
    readme = (art.path / "README.md").read_text()
    assert "| fits | **no**" in readme and "12.5 ms" in readme and "short by 951,424 B" in readme
    assert art.metrics["fits"] is False and art.metrics["latency_ms"] == 12.5


def test_arena_margin_can_break_the_fit(tiny_int8, tmp_path, monkeypatch):
    """emulate counts the exact arena; the sources reserve the margin too, and that is checked."""
    _fake_emulate(monkeypatch, fits=True, ram=262_000)
    with pytest.raises(CheckFailed, match=r"RAM with the 1,024 B arena margin: needs 263,024 B.*short by 880 B"):
        write_tflm_project(tiny_int8, tmp_path / "out", target="nrf52840", arena_bytes=GOLDEN_ARENA)


def test_target_that_fits(tiny_int8, tmp_path, monkeypatch):
    _fake_emulate(monkeypatch, fits=True)
    art = write_tflm_project(tiny_int8, tmp_path / "out", target="stm32l4r5", arena_bytes=GOLDEN_ARENA)
    readme = (art.path / "README.md").read_text()
    assert "| target | `stm32l4r5` |" in readme and "12.5 ms" in readme
    assert "| fits | yes (flash 200,000 B of 1,048,576 B, RAM 41,024 B of 262,144 B) |" in readme


def big_fc_model() -> bytes:
    """One int8 FULLY_CONNECTED with 1.2 MB of weights: more flash than an nRF52840 has."""
    n = _Net()
    x = n.tensor("x", [1, 2000], "int8", scale=0.05, zp=0)
    w = n.tensor("w", [600, 2000], "int8", _det(1_200_000, -127, 127).astype(np.int8), scale=0.001, zp=0)
    y = n.tensor("y", [1, 600], "int8", scale=0.5, zp=0)
    n.op("FULLY_CONNECTED", [x, w, -1], [y], ("FullyConnectedOptions", {}))
    return n.build([x], [y], "too big for small MCUs")


def _real_target(name: str) -> str:
    from workbench.emulate import list_targets

    if name not in list_targets():
        pytest.skip(f"target profile '{name}' is not available")
    return name


def test_real_target_fit_and_shortfall(tiny_int8, tmp_path):
    """With workbench.emulate and the built-in profiles: latency and fit in the README, refusal by how much."""
    tgt = _real_target("nrf52840")
    art = write_tflm_project(tiny_int8, tmp_path / "ok", target=tgt, firmware=False)  # the estimate's arithmetic
    assert art.metrics["fits"] is True and art.metrics["latency_ms"] > 0
    assert art.metrics["ram_bytes_with_arena_margin"] == art.metrics["ram_bytes"] + art.metrics["arena_margin_bytes"]
    readme = (art.path / "README.md").read_text()
    assert f"| target | `{tgt}` |" in readme and "| fits | yes (flash " in readme and "estimated latency" in readme

    big = tmp_path / "big.tflite"
    big.write_bytes(big_fc_model())
    with pytest.raises(CheckFailed, match=r"flash.*short by [\d,]+ B"):
        write_tflm_project(big, tmp_path / "big", target=tgt)
    assert not (tmp_path / "big").exists()
    forced = write_tflm_project(big, tmp_path / "big", target=tgt, force=True)
    assert forced.metrics["fits"] is False and "| fits | **no**" in (forced.path / "README.md").read_text()


# --------------------------------------------------------------------------- a converter-made model


@pytest.mark.slow
def test_digits_int8_export_runs_in_tflm(digits_tflite_int8, digits_test, tmp_path):
    """The reference digits CNN, converted by workbench itself: sources, arena and TFLM outputs."""
    from workbench.frontends.tflite_reader import read_tflite

    art = write_tflm_project(digits_tflite_int8, tmp_path / "digits", labels=[str(d) for d in range(10)])
    graph = read_tflite(digits_tflite_int8)
    assert art.metrics["ops"] == graph.op_kinds()
    rebuilt = tmp_path / "rebuilt.tflite"
    rebuilt.write_bytes(parse_c_array((art.path / "digits_int8_model_data.cc").read_text(), "g_digits_int8_model_data"))
    assert rebuilt.read_bytes() == digits_tflite_int8.read_bytes()
    t = graph.tensors[graph.inputs[0]]
    x = np.asarray(digits_test.x[:20], np.float32).reshape((-1, *t.shape[1:]))
    q = np.clip(np.round(x / t.scale[0] + t.zero_point[0]), -128, 127).astype(np.int8)
    from_sources = run_tflm(rebuilt, q, tmp_path, arena=art.metrics["arena_measured_bytes"])
    np.testing.assert_array_equal(from_sources, run_tflm(digits_tflite_int8, q, tmp_path))
    assert np.abs(from_sources.astype(int) - run_litert_reference(digits_tflite_int8, q).astype(int)).max() <= 1
