"""A float ``.tflite`` made ready for ai-edge-quantizer, and the ops its int8 form would break.

ai-edge-quantizer reads a model as a recent converter writes it. Three kinds of real files differ:

* **old schema**: operator codes only in ``deprecated_builtin_code`` (``builtin_code`` 0, which is ADD), as
  the MLPerf Tiny float models and other pre-2.4 converters wrote them. The quantizer then treats every op as
  ADD (int8 biases that LiteRT rejects). Codes are normalised to ``max(builtin_code, deprecated_builtin_code)``,
  the rule LiteRT itself applies.
* **hybrid** (dynamic-range: int8 weights read directly by float ops) and **weight-only** models (int8 or
  float16 weights through DEQUANTIZE): the weights are dequantized back to float32 constants and the
  DEQUANTIZE ops removed, so the quantizer starts from a float model. The int8 rounding of those weights
  stays in the result.
* **no signature**: a ``serving_default`` signature over subgraph 0's inputs and outputs is added, as the
  quantizer calibrates through a signature runner.

:func:`risky_divisions` finds DIV ops whose divisor can quantize to its zero point on ordinary inputs
(``div_no_nan`` over a ReLU, a difference of activations): int8 DIV then divides by zero, which LiteRT
refuses at run time and other kernels turn into a crash or inf. They are kept in float.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from workbench.core.errors import ModelFormatError, UnsupportedError

SIGNATURE = "serving_default"
FLOAT32, FLOAT16, INT8, UINT8, INT16, INT4 = 0, 1, 9, 3, 7, 17
WEIGHT_TYPES = {INT8: np.int8, UINT8: np.uint8, INT16: np.int16, INT4: np.int8}  # int4: two per byte, low nibble first


@dataclass(frozen=True)
class Prepared:
    data: bytes
    inputs: dict  # signature input name -> tensor index
    signature_added: bool
    opcodes_normalised: int = 0  # operator codes rewritten from the old schema
    dequantized: dict | None = None  # hybrid / weight-only weights turned back into float32

    def notes(self) -> list[str]:
        out = []
        if self.opcodes_normalised:
            out.append(f"{self.opcodes_normalised} operator code(s) were read from the old schema's "
                       "deprecated_builtin_code (builtin_code was 0) before quantizing")
        d = self.dequantized
        if d:
            out.append(f"the model is hybrid ({'/'.join(d['dtypes'])} weights, float activations): {d['tensors']} weight "
                       f"tensor(s) were dequantized to float32 ({d['dequantize_ops_removed']} DEQUANTIZE op(s) removed) "
                       "before quantizing; their earlier rounding stays in the result")
        return out


def name_text(n) -> str:
    return n.decode() if isinstance(n, bytes) else (n or "")


def prepare(data: bytes, where: str) -> Prepared:
    """The model as ai-edge-quantizer needs it (see the module docstring); the original bytes when nothing changes."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    try:
        model = s.ModelT.InitFromObj(s.Model.GetRootAsModel(data, 0))
    except Exception as exc:
        raise ModelFormatError(f"{where} could not be read as a .tflite model: {exc}") from None
    fixed = normalise_opcodes(model)
    deq = dequantize_weights(s, model, where)
    inputs, added = ensure_signature(s, model)
    if not (fixed or deq or added):
        return Prepared(data, inputs, False)
    b = flatbuffers.Builder(len(data) + 1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return Prepared(bytes(b.Output()), inputs, added, fixed, deq)


def normalise_opcodes(model) -> int:
    """builtin_code = max(builtin_code, deprecated_builtin_code) on every operator code; returns how many changed."""
    n = 0
    for oc in model.operatorCodes or []:
        code = max(int(oc.builtinCode or 0), int(oc.deprecatedBuiltinCode or 0))
        if code != oc.builtinCode:
            oc.builtinCode = code
            n += 1
    return n


def ensure_signature(s, model) -> tuple[dict, bool]:
    """{input name: tensor index} of the first signature, adding one over subgraph 0 when there is none."""
    if model.signatureDefs:
        return {name_text(t.name): t.tensorIndex for t in model.signatureDefs[0].inputs}, False
    sg = model.subgraphs[0]

    def tmap(indices, stem):
        out = []
        for i, idx in enumerate(indices):
            t = s.TensorMapT()
            t.name = (name_text(sg.tensors[idx].name) or f"{stem}_{i}").encode()
            t.tensorIndex = int(idx)
            out.append(t)
        return out

    sd = s.SignatureDefT()
    sd.signatureKey, sd.subgraphIndex = SIGNATURE.encode(), 0
    sd.inputs, sd.outputs = tmap(sg.inputs, "input"), tmap(sg.outputs, "output")
    model.signatureDefs = [sd]
    return {name_text(t.name): t.tensorIndex for t in sd.inputs}, True


def _data(model, t) -> np.ndarray | None:
    if not t.buffer or t.buffer >= len(model.buffers or []):
        return None
    d = model.buffers[t.buffer].data
    return None if d is None or len(d) == 0 else np.asarray(d, dtype=np.uint8)


def _dequantized(model, t, where: str) -> np.ndarray:
    raw = _data(model, t).tobytes()
    shape = tuple(int(d) for d in (t.shape if t.shape is not None else ()))
    if t.type == FLOAT16:
        return np.frombuffer(raw, "<f2").astype(np.float32).reshape(shape)
    q = t.quantization
    scale = np.asarray(q.scale, dtype=np.float64)
    zp = np.asarray(q.zeroPoint if q.zeroPoint is not None and len(q.zeroPoint) else np.zeros(len(scale)), dtype=np.float64)
    if t.type == INT4:
        packed = np.frombuffer(raw, np.uint8)
        nibbles = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(-1)[: int(np.prod(shape))].astype(np.int8)
        values = np.where(nibbles > 7, nibbles - 16, nibbles).astype(np.float64).reshape(shape)
    else:
        values = np.frombuffer(raw, WEIGHT_TYPES[t.type]).astype(np.float64).reshape(shape)
    if len(scale) > 1:
        axis = int(q.quantizedDimension or 0)
        if not shape or axis >= len(shape) or shape[axis] != len(scale):
            raise ModelFormatError(f"{where}: weight tensor '{name_text(t.name)}' has {len(scale)} scales for shape {shape} "
                                   f"(axis {axis}).")
        bshape = [1] * len(shape)
        bshape[axis] = len(scale)
        scale, zp = scale.reshape(bshape), zp.reshape(bshape)
    return ((values - zp) * scale).astype(np.float32)


def _set_float(s, model, t, values: np.ndarray) -> None:
    buf = s.BufferT()
    buf.data = np.frombuffer(np.ascontiguousarray(values, dtype="<f4").tobytes(), np.uint8)
    model.buffers.append(buf)
    t.buffer, t.type, t.quantization = len(model.buffers) - 1, FLOAT32, None


def dequantize_weights(s, model, where: str) -> dict | None:
    """Quantized weights under float activations back to float32 constants (see the module docstring)."""
    codes = [max(int(oc.builtinCode or 0), int(oc.deprecatedBuiltinCode or 0)) for oc in model.operatorCodes or []]
    dequantize, quantize = s.BuiltinOperator.DEQUANTIZE, s.BuiltinOperator.QUANTIZE
    tensors_done, removed, dtypes, detached = 0, 0, [], set()
    for sg in model.subgraphs or []:
        keep = []
        for op in sg.operators or []:
            ins = [i for i in (op.inputs if op.inputs is not None else []) if i >= 0]
            outs = [i for i in (op.outputs if op.outputs is not None else []) if i >= 0]
            code = codes[op.opcodeIndex]
            if code == dequantize and len(ins) == 1 and len(outs) == 1:
                t, out = sg.tensors[ins[0]], sg.tensors[outs[0]]
                if _data(model, t) is not None and out.type == FLOAT32 and (t.type == FLOAT16 or _quantized(t)):
                    detached.add(t.buffer)
                    _set_float(s, model, out, _dequantized(model, t, where))
                    dtypes.append(_dtype_name(t.type))
                    tensors_done, removed = tensors_done + 1, removed + 1
                    continue
            elif code != quantize:
                acts = [sg.tensors[i] for i in ins if _data(model, sg.tensors[i]) is None]
                if acts and acts[0].type == FLOAT32:
                    for i in ins:
                        t = sg.tensors[i]
                        if _data(model, t) is not None and _quantized(t):
                            detached.add(t.buffer)
                            dtypes.append(_dtype_name(t.type))
                            _set_float(s, model, t, _dequantized(model, t, where))
                            tensors_done += 1
            keep.append(op)
        sg.operators = keep
    if not tensors_done:
        return None
    for k, sg in enumerate(model.subgraphs):
        _drop_unused_tensors(model, sg, k)
    used = {t.buffer for sg in model.subgraphs for t in sg.tensors} | {m.buffer for m in model.metadata or []}
    for b in detached - used:
        model.buffers[b].data = None
    return {"tensors": tensors_done, "dequantize_ops_removed": removed, "dtypes": sorted(set(dtypes))}


def _dtype_name(tensor_type: int) -> str:
    return {FLOAT16: "float16", INT4: "int4"}.get(tensor_type) or np.dtype(WEIGHT_TYPES[tensor_type]).name


def _quantized(t) -> bool:
    q = t.quantization
    if t.type not in WEIGHT_TYPES:
        if t.type not in (FLOAT32, FLOAT16) and q is not None and q.scale is not None and len(q.scale):
            raise UnsupportedError(f"A weight tensor ('{name_text(t.name)}') has tensor type {t.type}, which cannot be "
                                   "dequantized here (int4, int8, uint8, int16 and float16 weights can).",
                                   hint="Quantize the float .tflite the model was made from.")
        return False
    return q is not None and q.scale is not None and len(q.scale) > 0


def _drop_unused_tensors(model, sg, k: int) -> None:
    """Remove tensors nothing refers to any more (the quantized originals of dequantized weights), renumbering."""
    used = set(sg.inputs if sg.inputs is not None else []) | set(sg.outputs if sg.outputs is not None else [])
    for op in sg.operators:
        for field in (op.inputs, op.outputs, op.intermediates):
            used |= set(field if field is not None else [])
    sigs = [t for sd in model.signatureDefs or [] if sd.subgraphIndex == k for t in (sd.inputs or []) + (sd.outputs or [])]
    used |= {t.tensorIndex for t in sigs}
    used.discard(-1)
    if len(used) == len(sg.tensors):
        return
    new = {old: i for i, old in enumerate(sorted(used))}

    def remap(seq):
        return None if seq is None else [new[i] if i >= 0 else -1 for i in seq]

    sg.tensors = [sg.tensors[i] for i in sorted(used)]
    sg.inputs, sg.outputs = remap(sg.inputs), remap(sg.outputs)
    for op in sg.operators:
        op.inputs, op.outputs, op.intermediates = remap(op.inputs), remap(op.outputs), remap(op.intermediates)
    for t in sigs:
        t.tensorIndex = new[t.tensorIndex]


def risky_divisions(path, calib: np.ndarray, bits: int = 8) -> list[dict]:
    """DIV ops of the float model at ``path`` whose divisor, over the calibration samples, crosses or touches
    zero or has a value within half a quantization step of it: quantized, it reaches its zero point.
    Each: {op, layer, tensor, min, max, keep_float (an ai-edge-quantizer scope regex)}."""
    from workbench.frontends import load
    from workbench.runtimes.litert import LiteRTRunner

    handle = load(path)
    g = handle.meta["graph"]
    divs = [op for op in g.ops if op.kind == "DIV" and op.subgraph == 0 and len(op.inputs) == 2
            and g.tensor(op.inputs[1]) is not None and not g.tensor(op.inputs[1]).const]
    if not divs or calib is None or not len(calib):
        return []
    runner = LiteRTRunner(handle, kernels="builtin", preserve_all=True)
    seen = {op.index: [np.inf, -np.inf, np.inf] for op in divs}  # min, max, min |v|
    try:
        dtype = np.dtype(runner.inputs[0].dtype)
        for sample in calib:
            runner.invoke_raw(np.asarray(sample[None], dtype=dtype))
            for op in divs:
                v = np.asarray(runner.interp.get_tensor(op.inputs[1]), dtype=np.float64)
                m = seen[op.index]
                m[0], m[1], m[2] = min(m[0], v.min()), max(m[1], v.max()), min(m[2], np.abs(v).min())
    finally:
        runner.close()
    out = []
    for op in divs:
        lo, hi, amin = seen[op.index]
        step = (max(hi, 0.0) - min(lo, 0.0)) / (2 ** bits - 1)
        if lo <= 0.0 <= hi or amin < step / 2:
            name = g.tensor(op.outputs[0]).name
            out.append({"op": "DIV", "layer": op.name, "tensor": name, "min": float(lo), "max": float(hi),
                        "keep_float": "^" + re.escape(name) + ";"})
    return out
