"""A framework-neutral view of a model graph: tensors, ops, MACs and parameter counts.

Built from a .tflite flatbuffer or an .onnx protobuf by the readers in
:mod:`workbench.frontends`, without TensorFlow or the onnx package. ``inspect`` prints it,
``emulate`` costs it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

DTYPE_BYTES = {
    "float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int8": 1, "uint8": 1, "int16": 2,
    "uint16": 2, "int32": 4, "uint32": 4, "int64": 8, "uint64": 8, "bool": 1, "int4": 0.5, "string": 0,
    "complex64": 8,
}


@dataclass(frozen=True)
class Tensor:
    index: int
    name: str
    shape: tuple | None  # None when unknown; dynamic dimensions appear as None
    dtype: str
    const: bool = False
    scale: tuple = ()  # quantization scales (one per channel or one)
    zero_point: tuple = ()
    buffer: int = -1  # the .tflite buffer holding a constant's data (subgraphs may share one); -1 otherwise

    @property
    def elements(self) -> int | None:
        """Element count for one inference: a dynamic leading (batch) dimension counts as 1."""
        if self.shape is None:
            return None
        dims = [1 if (i == 0 and (d is None or d < 0)) else d for i, d in enumerate(self.shape)]
        if any(d is None or d < 0 for d in dims):
            return None
        if dims != list(self.shape):
            return int(math.prod(dims))
        return int(math.prod(self.shape)) if self.shape else 1

    @property
    def nbytes(self) -> int | None:
        n = self.elements
        return None if n is None else int(math.ceil(n * DTYPE_BYTES.get(self.dtype, 4)))


@dataclass(frozen=True)
class Op:
    index: int
    kind: str  # canonical op name: TFLite builtin names for .tflite, op_type for .onnx
    version: int
    inputs: tuple[int, ...]  # tensor indices, -1 for an omitted optional input
    outputs: tuple[int, ...]
    name: str = ""  # the layer it came from, where the format records one
    options: dict = field(default_factory=dict)
    custom: bool = False
    subgraph: int = 0  # .tflite: the subgraph holding the op (WHILE bodies, IF branches follow subgraph 0's ops)
    repeat: int = 1  # how often the op runs per inference (a loop body's ops: the loop's trip count)


@dataclass(frozen=True)
class Graph:
    format: str  # "tflite" or "onnx"
    tensors: tuple[Tensor, ...]
    ops: tuple[Op, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    meta: dict = field(default_factory=dict)

    def tensor(self, i: int) -> Tensor | None:
        return self.tensors[i] if 0 <= i < len(self.tensors) else None

    def constants(self) -> list[Tensor]:
        """Constant tensors, each stored buffer once (subgraphs of a .tflite may share a buffer)."""
        seen, out = set(), []
        for t in self.tensors:
            if t.const and (t.buffer < 0 or t.buffer not in seen):
                seen.add(t.buffer)
                out.append(t)
        return out

    @property
    def parameters(self) -> int:
        return sum(t.elements or 0 for t in self.constants())

    @property
    def weight_bytes(self) -> int:
        return sum(t.nbytes or 0 for t in self.constants())

    def op_kinds(self) -> list[str]:
        seen: list[str] = []
        for op in self.ops:
            if op.kind not in seen:
                seen.append(op.kind)
        return seen

    def op_dtype(self, op: Op) -> str:
        """The dtype an op computes in: its first non-constant input's, else its output's."""
        for i in op.inputs:
            t = self.tensor(i)
            if t is not None and not t.const:
                return t.dtype
        t = self.tensor(op.outputs[0]) if op.outputs else None
        return t.dtype if t else "float32"

    def macs(self, op: Op) -> int:
        """MACs of ``op`` per inference: one execution's times ``op.repeat`` (a loop body's trip count)."""
        return self.macs_known(op) or 0

    def macs_known(self, op: Op) -> int | None:
        """As :meth:`macs`, but None when the op has MACs whose count needs a shape the graph does not know
        (a dynamic dimension): 0 means no MACs, None means not counted."""
        fn = MAC_RULES.get(op.kind)
        if fn is None:
            return 0
        try:
            n = fn(self, op)
        except (TypeError, IndexError, ValueError, AttributeError):
            return None
        return None if n is None else int(n) * op.repeat

    def total_macs(self) -> int:
        return sum(self.macs(op) for op in self.ops)

    def out_elements(self, op: Op) -> int:
        return sum((self.tensor(i).elements or 0) for i in op.outputs if self.tensor(i) is not None)


def _out(g: Graph, op: Op) -> Tensor:
    return g.tensors[op.outputs[0]]


def _in(g: Graph, op: Op, k: int) -> Tensor:
    return g.tensors[op.inputs[k]]


# --- MAC counting rules. One multiply-accumulate = one MAC; elementwise ops count 0 MACs
# and are costed per output element instead. ---

def _tfl_conv(g, op):  # filter [Cout, kh, kw, Cin]
    f = _in(g, op, 1).shape
    return _out(g, op).elements * f[1] * f[2] * f[3]


def _tfl_dwconv(g, op):  # filter [1, kh, kw, Cout]
    f = _in(g, op, 1).shape
    return _out(g, op).elements * f[1] * f[2]


def _tfl_fc(g, op):  # weights [units, in]
    return _out(g, op).elements * _in(g, op, 1).shape[-1]


def _tfl_batch_matmul(g, op):
    a = _in(g, op, 0).shape
    k = a[-1] if not op.options.get("adj_x") else a[-2]
    return _out(g, op).elements * k


def _tfl_transpose_conv(g, op):  # inputs: output_shape, weights [Cout, kh, kw, Cin], input
    w = _in(g, op, 1).shape
    x = _in(g, op, 2)
    return x.elements * w[0] * w[1] * w[2]


def _tfl_conv3d(g, op):  # filter [kd, kh, kw, Cin, Cout]
    f = _in(g, op, 1).shape
    return _out(g, op).elements * f[0] * f[1] * f[2] * f[3]


def _tfl_sequence(g, op):
    """UNIDIRECTIONAL/BIDIRECTIONAL_SEQUENCE_LSTM/RNN: every timestep multiplies the input and the recurrent
    state by each 2-D weight matrix (input-to-gate [units, in], recurrent-to-gate [units, units])."""
    x = _in(g, op, 0)
    steps_batch = x.elements // x.shape[-1]
    weights = [g.tensors[i] for i in op.inputs[1:] if i >= 0 and g.tensors[i].const and len(g.tensors[i].shape or ()) == 2]
    return steps_batch * sum(math.prod(w.shape) for w in weights)


def _pool_window(g, op):
    return _out(g, op).elements * op.options.get("filter_h", 1) * op.options.get("filter_w", 1)


def _onnx_conv(g, op):  # W [Cout, Cin/group, kh, kw, ...]
    w = _in(g, op, 1).shape
    return _out(g, op).elements * math.prod(w[1:])


def _onnx_gemm(g, op):
    a = _in(g, op, 0).shape
    k = a[0] if op.options.get("transA") else a[-1]
    return _out(g, op).elements * k


def _onnx_matmul(g, op):
    return _out(g, op).elements * _in(g, op, 0).shape[-1]


def _onnx_convtranspose(g, op):  # W [Cin, Cout/group, kh, kw]
    w = _in(g, op, 1).shape
    return _in(g, op, 0).elements * math.prod(w[1:])


MAC_RULES = {
    "CONV_2D": _tfl_conv,
    "DEPTHWISE_CONV_2D": _tfl_dwconv,
    "FULLY_CONNECTED": _tfl_fc,
    "BATCH_MATMUL": _tfl_batch_matmul,
    "TRANSPOSE_CONV": _tfl_transpose_conv,
    "CONV_3D": _tfl_conv3d,
    "UNIDIRECTIONAL_SEQUENCE_LSTM": _tfl_sequence,
    "BIDIRECTIONAL_SEQUENCE_LSTM": _tfl_sequence,
    "UNIDIRECTIONAL_SEQUENCE_RNN": _tfl_sequence,
    "BIDIRECTIONAL_SEQUENCE_RNN": _tfl_sequence,
    "AVERAGE_POOL_2D": _pool_window,
    "MAX_POOL_2D": _pool_window,
    "Conv": _onnx_conv,
    "ConvInteger": _onnx_conv,
    "QLinearConv": lambda g, op: _out(g, op).elements * math.prod(_in(g, op, 3).shape[1:]),
    "Gemm": _onnx_gemm,
    "MatMul": _onnx_matmul,
    "MatMulInteger": _onnx_matmul,
    "QLinearMatMul": lambda g, op: _out(g, op).elements * _in(g, op, 0).shape[-1],
    "ConvTranspose": _onnx_convtranspose,
    # ExecuTorch's portable kernels (ops a .pte runs outside its delegate): inputs in the aten schema's order
    "aten::convolution.out": _onnx_conv,  # weight [Cout, Cin/groups, kh, kw]
    "aten::addmm.out": lambda g, op: _out(g, op).elements * _in(g, op, 1).shape[-1],  # bias, mat1, mat2
    "aten::mm.out": lambda g, op: _out(g, op).elements * _in(g, op, 0).shape[-1],
    "aten::bmm.out": lambda g, op: _out(g, op).elements * _in(g, op, 0).shape[-1],
    "aten::linear.out": lambda g, op: _out(g, op).elements * _in(g, op, 0).shape[-1],
}
