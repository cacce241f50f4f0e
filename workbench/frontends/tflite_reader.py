"""Read a .tflite flatbuffer into a :class:`workbench.frontends.graph.Graph` without TensorFlow.

Uses the schema module that ships with ai-edge-litert (or tflite-micro / tensorflow as
fallbacks). Every length read from the file is checked against the file's size, and any
decoding failure becomes a ModelFormatError, so a corrupt file cannot crash or hang us.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from pathlib import Path

from workbench.core.errors import ModelFormatError
from workbench.frontends.graph import Graph, Op, Tensor

TENSOR_TYPES = {
    0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 5: "string", 6: "bool", 7: "int16",
    8: "complex64", 9: "int8", 10: "float64", 11: "complex128", 12: "uint64", 13: "resource",
    14: "variant", 15: "uint32", 16: "uint16", 17: "int4", 18: "bfloat16",
}


@lru_cache(maxsize=1)
def schema():
    for mod in (
        "ai_edge_litert.schema_py_generated",
        "tflite_micro.tensorflow.lite.python.schema_py_generated",
        "tensorflow.lite.python.schema_py_generated",
    ):
        try:
            import importlib

            return importlib.import_module(mod)
        except ImportError:
            continue
    from workbench.core.errors import MissingDependencyError

    raise MissingDependencyError("ai_edge_litert", "all", "Reading .tflite files")


@lru_cache(maxsize=1)
def builtin_names() -> dict[int, str]:
    s = schema()
    return {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)}


def read_tflite(path: str | Path) -> Graph:
    data = Path(path).read_bytes()
    return read_tflite_bytes(data, str(path))


def read_tflite_bytes(data: bytes, where: str = "<bytes>") -> Graph:
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelFormatError(f"'{where}' is not a TFLite flatbuffer (no 'TFL3' identifier at byte 4).")
    try:
        return _read(data, where)
    except ModelFormatError:
        raise
    except (IndexError, struct.error, ValueError, TypeError, UnicodeDecodeError, OverflowError, RecursionError, MemoryError) as exc:
        raise ModelFormatError(
            f"'{where}' is a corrupt or truncated TFLite flatbuffer ({type(exc).__name__}: {exc}).",
            hint="Re-export the model; if it came from a download, download it again.",
        ) from None


def _check_len(n: int, size: int, what: str) -> int:
    if n < 0 or n > size:
        raise ValueError(f"{what} count {n} exceeds the file size")
    return n


def _read(data: bytes, where: str) -> Graph:
    s = schema()
    size = len(data)
    model = s.Model.GetRootAs(data, 0)
    n_sub = _check_len(model.SubgraphsLength(), size, "subgraph")
    if n_sub < 1:
        raise ModelFormatError(f"'{where}' has no subgraph: it holds no model.")
    names = builtin_names()
    codes = []
    for k in range(_check_len(model.OperatorCodesLength(), size, "operator code")):
        oc = model.OperatorCodes(k)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        custom = oc.CustomCode()
        if code == s.BuiltinOperator.CUSTOM:
            codes.append((custom.decode("utf-8", "replace") if custom else "CUSTOM", oc.Version(), True))
        else:
            codes.append((names.get(code, f"BUILTIN_{code}"), oc.Version(), False))
    n_buf = _check_len(model.BuffersLength(), size, "buffer")
    sg = model.Subgraphs(0)
    tensors = []
    for t in range(_check_len(sg.TensorsLength(), size, "tensor")):
        tt = sg.Tensors(t)
        shape = tuple(int(d) for d in tt.ShapeAsNumpy()) if tt.ShapeLength() else ()
        sig = tt.ShapeSignatureAsNumpy() if tt.ShapeSignatureLength() else None
        if sig is not None and len(sig) == len(shape):
            shape = tuple(None if int(d_sig) < 0 else d for d, d_sig in zip(shape, sig))
        b = tt.Buffer()
        const = False
        if 0 < b < n_buf:
            buf = model.Buffers(b)
            const = buf.DataLength() > 0 or buf.Size() > 0
        q = tt.Quantization()
        scale: tuple = ()
        zp: tuple = ()
        if q is not None and q.ScaleLength():
            _check_len(q.ScaleLength(), size, "scale")
            scale = tuple(float(x) for x in q.ScaleAsNumpy())
            zp = tuple(int(x) for x in q.ZeroPointAsNumpy()) if q.ZeroPointLength() else (0,) * len(scale)
        name = tt.Name()
        tensors.append(
            Tensor(
                index=t,
                name=name.decode("utf-8", "replace") if name else f"t{t}",
                shape=shape,
                dtype=TENSOR_TYPES.get(tt.Type(), f"type{tt.Type()}"),
                const=const,
                scale=scale,
                zero_point=zp,
            )
        )
    ops = []
    n_t = len(tensors)
    for j in range(_check_len(sg.OperatorsLength(), size, "operator")):
        o = sg.Operators(j)
        idx = o.OpcodeIndex()
        if not 0 <= idx < len(codes):
            raise ValueError(f"operator {j} names opcode {idx}, the model has {len(codes)}")
        kind, version, custom = codes[idx]
        ins = tuple(int(i) for i in o.InputsAsNumpy()) if o.InputsLength() else ()
        outs = tuple(int(i) for i in o.OutputsAsNumpy()) if o.OutputsLength() else ()
        for i in ins + outs:
            if i >= n_t or i < -1:
                raise ValueError(f"operator {j} refers to tensor {i}, the model has {n_t}")
        options = _options(s, o, kind)
        name = tensors[outs[0]].name if outs and outs[0] >= 0 else ""
        ops.append(Op(index=j, kind=kind, version=version, inputs=ins, outputs=outs, name=name, options=options, custom=custom))
    inputs = tuple(int(i) for i in sg.InputsAsNumpy()) if sg.InputsLength() else ()
    outputs = tuple(int(i) for i in sg.OutputsAsNumpy()) if sg.OutputsLength() else ()
    for i in inputs + outputs:
        if not 0 <= i < n_t:
            raise ValueError(f"graph input/output {i} is not a tensor")
    desc = model.Description()
    meta = {"subgraphs": n_sub, "schema_version": model.Version(), "buffers": n_buf}
    if desc:
        meta["description"] = desc.decode("utf-8", "replace")
    return Graph(format="tflite", tensors=tuple(tensors), ops=tuple(ops), inputs=inputs, outputs=outputs, meta=meta)


def _options(s, o, kind: str) -> dict:
    if kind in ("AVERAGE_POOL_2D", "MAX_POOL_2D", "L2_POOL_2D"):
        t = o.BuiltinOptions()
        if t is not None and o.BuiltinOptionsType() == s.BuiltinOptions.Pool2DOptions:
            p = s.Pool2DOptions()
            p.Init(t.Bytes, t.Pos)
            return {"filter_h": p.FilterHeight(), "filter_w": p.FilterWidth(), "stride_h": p.StrideH(), "stride_w": p.StrideW()}
    if kind == "BATCH_MATMUL":
        t = o.BuiltinOptions()
        if t is not None and o.BuiltinOptionsType() == s.BuiltinOptions.BatchMatMulOptions:
            p = s.BatchMatMulOptions()
            p.Init(t.Bytes, t.Pos)
            return {"adj_x": bool(p.AdjX()), "adj_y": bool(p.AdjY())}
    return {}


def tensor_scale_zp(t: Tensor) -> tuple[float | None, int | None]:
    if len(t.scale) == 1:
        return t.scale[0], t.zero_point[0] if t.zero_point else 0
    return None, None

