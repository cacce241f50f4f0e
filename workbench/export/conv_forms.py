"""Two forms of one convolution: a CONV_2D whose input has one channel is also a DEPTHWISE_CONV_2D.

With one input channel, a convolution with O filters of KHxKW and a depthwise convolution with depth
multiplier O compute the same sums: filter ``[O, KH, KW, 1]`` read as ``[1, KH, KW, O]``. The two are
run by different kernels: in CMSIS-NN a 1-channel ``arm_convolve_s8`` pays an im2col step per output
pixel, while ``arm_depthwise_conv_s8`` with a multiplier walks the kernel per output channel without
SIMD. Which is faster depends on the layer (few filters favour depthwise, many favour convolution), so
the form is chosen by measurement on the target (:mod:`workbench.emulate.tune`), not by rule.
Converters differ here: litert-torch writes such a PyTorch ``Conv2d`` as DEPTHWISE_CONV_2D, the
TensorFlow converter writes a Keras ``Conv2D`` as CONV_2D.

:func:`candidates` lists the ops that have both forms; :func:`flip` writes the other form of the chosen
ops (weights re-laid, per-channel quantization moved from dimension 0 to 3 or back, same scales and
biases) and leaves every other byte's meaning unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workbench.core.errors import ModelFormatError

CONV_2D, DEPTHWISE_CONV_2D = 3, 4
FLOAT32, INT8 = 0, 9
# (activation, filter): full-integer int8 only. Its kernels are bit-exact integer arithmetic, so both forms give
# the same bytes; float kernels may sum in another order.
SAME_TYPES = {(INT8, INT8)}
OTHER = {CONV_2D: DEPTHWISE_CONV_2D, DEPTHWISE_CONV_2D: CONV_2D}
NAMES = {CONV_2D: "CONV_2D", DEPTHWISE_CONV_2D: "DEPTHWISE_CONV_2D"}
# Operator versions a converter writes for these forms (TensorFlow lite/tools/versioning/op_version.cc):
# per-channel int8 CONV_2D and DEPTHWISE_CONV_2D are version 3; float is 1, or 2 for a dilated depthwise.
INT8_VERSION = 3


@dataclass(frozen=True)
class Candidate:
    op: int  # operator index in subgraph 0
    form: str  # its form now: CONV_2D or DEPTHWISE_CONV_2D
    filters: int
    kernel: tuple[int, int]
    output: str  # the op's output tensor name, for reports

    def to_dict(self) -> dict:
        return {"op": self.op, "form": self.form, "other_form": NAMES[OTHER[_code(self.form)]],
                "filters": self.filters, "kernel": list(self.kernel), "output": self.output}


def _code(name: str) -> int:
    return CONV_2D if name == "CONV_2D" else DEPTHWISE_CONV_2D


def _read(data: bytes, where: str):
    from ai_edge_litert import schema_py_generated as s

    try:
        return s, s.ModelT.InitFromObj(s.Model.GetRootAsModel(data, 0))
    except Exception as exc:
        raise ModelFormatError(f"{where} could not be read as a .tflite model: {exc}") from None


def _builtin(model, op) -> int:
    oc = model.operatorCodes[op.opcodeIndex]
    return max(int(oc.builtinCode or 0), int(oc.deprecatedBuiltinCode or 0))


def _name(t) -> str:
    n = t.name
    return n.decode() if isinstance(n, bytes) else (n or "")


def _two_forms(model, index: int, op) -> Candidate | None:
    """The op as a Candidate when it has both forms: one input channel, one output channel per filter, a
    constant int8 filter over int8 activations, no sparsity."""
    sg = model.subgraphs[0]
    code = _builtin(model, op)
    if code not in OTHER or len(op.inputs) < 2:
        return None
    x, w, y = (sg.tensors[i] for i in (op.inputs[0], op.inputs[1], op.outputs[0]))
    if (int(x.type), int(w.type)) not in SAME_TYPES or w.sparsity is not None:
        return None
    xs, ws, ys = (list(t.shape) if t.shape is not None else [] for t in (x, w, y))
    if len(xs) != 4 or len(ws) != 4 or len(ys) != 4 or xs[3] != 1:
        return None
    buf = model.buffers[w.buffer] if w.buffer < len(model.buffers) else None
    if buf is None or buf.data is None or len(buf.data) == 0:
        return None  # a filter computed at run time has no layout to change
    if code == CONV_2D:
        if ws[3] != 1:
            return None
        filters = ws[0]
    else:
        if ws[0] != 1:
            return None
        filters = ws[3]
    if filters != ys[3]:
        return None
    q = w.quantization
    scales = len(q.scale) if q is not None and q.scale is not None else 0
    if scales not in (0, 1, filters):
        return None
    return Candidate(index, NAMES[code], int(filters), (int(ws[1]), int(ws[2])), _name(y))


def candidates(data: bytes, where: str = "the model") -> list[Candidate]:
    """Ops of subgraph 0 that have both forms (see the module docstring)."""
    _s, model = _read(data, where)
    if not model.subgraphs:
        return []
    ops = model.subgraphs[0].operators or []
    return [c for c in (_two_forms(model, i, op) for i, op in enumerate(ops)) if c is not None]


def _opcode(s, model, code: int, version: int) -> int:
    for i, oc in enumerate(model.operatorCodes):
        if max(int(oc.builtinCode or 0), int(oc.deprecatedBuiltinCode or 0)) == code and oc.version == version:
            return i
    oc = s.OperatorCodeT()
    oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, code, version
    model.operatorCodes.append(oc)
    return len(model.operatorCodes) - 1


def _options(s, old, to: int, filters: int):
    if to == DEPTHWISE_CONV_2D:
        o = s.DepthwiseConv2DOptionsT()
        o.depthMultiplier = filters
        kind = s.BuiltinOptions.DepthwiseConv2DOptions
    else:
        o = s.Conv2DOptionsT()
        kind = s.BuiltinOptions.Conv2DOptions
    for f in ("padding", "strideW", "strideH", "fusedActivationFunction", "dilationWFactor", "dilationHFactor"):
        setattr(o, f, getattr(old, f))
    return o, kind


def _version(w_type: int, to: int, opts) -> int:
    if w_type == INT8:
        return INT8_VERSION
    dilated = (opts.dilationWFactor or 1) != 1 or (opts.dilationHFactor or 1) != 1
    return 2 if to == DEPTHWISE_CONV_2D and dilated else 1


def _relayout(s, model, w, to: int, filters: int, kh: int, kw: int) -> None:
    """The filter's bytes in the other form's layout, in a buffer of its own."""
    dtype = np.int8 if int(w.type) == INT8 else np.float32
    raw = np.frombuffer(bytes(bytearray(model.buffers[w.buffer].data)), dtype=dtype)
    if to == DEPTHWISE_CONV_2D:  # [O, KH, KW, 1] -> [1, KH, KW, O]
        new = raw.reshape(filters, kh, kw).transpose(1, 2, 0)
        shape = [1, kh, kw, filters]
    else:  # [1, KH, KW, O] -> [O, KH, KW, 1]
        new = raw.reshape(kh, kw, filters).transpose(2, 0, 1)
        shape = [filters, kh, kw, 1]
    sg = model.subgraphs[0]
    shared = sum(1 for t in sg.tensors if t.buffer == w.buffer) > 1
    if shared:
        model.buffers.append(s.BufferT())
        w.buffer = len(model.buffers) - 1
    model.buffers[w.buffer].data = np.frombuffer(np.ascontiguousarray(new).tobytes(), dtype=np.uint8)
    w.shape = np.array(shape, dtype=np.int32)
    if w.shapeSignature is not None and len(w.shapeSignature):
        w.shapeSignature = np.array(shape, dtype=np.int32)
    q = w.quantization
    if q is not None and q.scale is not None and len(q.scale) > 1:
        q.quantizedDimension = 3 if to == DEPTHWISE_CONV_2D else 0


def _drop_unused_opcodes(model) -> None:
    """Operator codes no op uses any more are removed (a TFLM resolver built from them would link the kernel)."""
    used = sorted({op.opcodeIndex for sg in model.subgraphs for op in sg.operators or []})
    remap = {old: new for new, old in enumerate(used)}
    model.operatorCodes = [model.operatorCodes[i] for i in used]
    for sg in model.subgraphs:
        for op in sg.operators or []:
            op.opcodeIndex = remap[op.opcodeIndex]


def flip(data: bytes, ops, where: str = "the model") -> bytes:
    """The model with each op index in ``ops`` written in its other form; every op must be a candidate."""
    import flatbuffers

    s, model = _read(data, where)
    by_op = {c.op: c for c in candidates(data, where)}
    sg = model.subgraphs[0]
    for i in sorted(set(ops)):
        c = by_op.get(i)
        if c is None:
            raise ValueError(f"op {i} of {where} has only one form")
        op = sg.operators[i]
        to = OTHER[_code(c.form)]
        w = sg.tensors[op.inputs[1]]
        opts, kind = _options(s, op.builtinOptions, to, c.filters)
        _relayout(s, model, w, to, c.filters, *c.kernel)
        op.builtinOptions, op.builtinOptionsType = opts, kind
        op.opcodeIndex = _opcode(s, model, to, _version(int(w.type), to, opts))
    _drop_unused_opcodes(model)
    b = flatbuffers.Builder(len(data) + 1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())
