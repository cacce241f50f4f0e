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
    check_buffers(model, n_buf, size, where)
    # Every subgraph is read (WHILE loop bodies, IF branches): their tensors follow subgraph 0's in one
    # index space, their ops follow its ops, and each op records how often it runs per inference.
    tensors: list[Tensor] = []
    ops: list[Op] = []
    small_ints: dict[int, int] = {}  # tensor index -> value of a constant integer scalar (loop bounds)
    n_t = 0
    for k in range(n_sub):
        _read_subgraph(s, model, model.Subgraphs(k), k, codes, n_buf, size, tensors, ops, small_ints)
        n_t = n_t or len(tensors)  # subgraph 0's tensors: the model's inputs and outputs are among them
    sg = model.Subgraphs(0)
    repeats, unknown = _repeats(ops, n_sub, small_ints)
    if n_sub > 1:
        from dataclasses import replace

        ops = [replace(op, repeat=repeats.get(op.subgraph, 1)) for op in ops]
    inputs = tuple(int(i) for i in sg.InputsAsNumpy()) if sg.InputsLength() else ()
    outputs = tuple(int(i) for i in sg.OutputsAsNumpy()) if sg.OutputsLength() else ()
    for i in inputs + outputs:
        if not 0 <= i < n_t:
            raise ValueError(f"graph input/output {i} is not a tensor")
    desc = model.Description()
    meta = {"subgraphs": n_sub, "schema_version": model.Version(), "buffers": n_buf}
    if unknown:
        meta["loops_with_unknown_trip_count"] = unknown  # their bodies are counted once
    if desc:
        meta["description"] = desc.decode("utf-8", "replace")
    return Graph(format="tflite", tensors=tuple(tensors), ops=tuple(ops), inputs=inputs, outputs=outputs, meta=meta)


def check_buffers(model, n_buf: int, size: int, where: str) -> None:
    """Every buffer's bytes lie inside the file: its inline data vector, and the ``offset``/``size`` pair that
    models over 2 GB (and some writers) use to keep data after the flatbuffer. A buffer pointing past the end
    would otherwise be read as whatever memory follows the file."""
    for b in range(n_buf):
        buf = model.Buffers(b)
        o = buf._tab.Offset(4)  # the 'data' vector's field (generated accessors give only its length)
        if o:
            start, n = buf._tab.Vector(o), buf._tab.VectorLen(o)
            if start + n > size:
                raise ModelFormatError(
                    f"'{where}' is corrupt: buffer {b} holds {n:,} bytes from byte {start:,}, past the end of the "
                    f"file ({size:,} bytes).", hint="Re-export the model; if it came from a download, download it again.")
        off, n = buf.Offset(), buf.Size()
        if off > 1 and off + n > size:  # offset 0 (and 1, a writer's placeholder) means the data is inline
            raise ModelFormatError(
                f"'{where}' is corrupt: buffer {b} points to {n:,} bytes at offset {off:,}, beyond the end of the file "
                f"({size:,} bytes; the buffer would end at byte {off + n:,}).",
                hint="The file is truncated or was written wrongly; re-export the model, or download it again.")


def _read_subgraph(s, model, sg, k: int, codes, n_buf: int, size: int, tensors: list, ops: list, small_ints: dict) -> None:
    base = len(tensors)
    n_local = _check_len(sg.TensorsLength(), size, "tensor")
    for t in range(n_local):
        tt = sg.Tensors(t)
        shape = tuple(int(d) for d in tt.ShapeAsNumpy()) if tt.ShapeLength() else ()
        sig = tt.ShapeSignatureAsNumpy() if tt.ShapeSignatureLength() else None
        if sig is not None and len(sig) == len(shape):
            shape = tuple(None if int(d_sig) < 0 else d for d, d_sig in zip(shape, sig))
        b = tt.Buffer()
        const = False
        dtype = TENSOR_TYPES.get(tt.Type(), f"type{tt.Type()}")
        if 0 < b < n_buf:
            buf = model.Buffers(b)
            const = buf.DataLength() > 0 or buf.Size() > 0
            if dtype in ("int32", "int64") and 0 < buf.DataLength() <= 8 and len(shape) <= 1:
                small_ints[base + t] = int(buf.DataAsNumpy().view("<i4" if dtype == "int32" else "<i8")[0])
        q = tt.Quantization()
        scale: tuple = ()
        zp: tuple = ()
        if q is not None and q.ScaleLength():
            _check_len(q.ScaleLength(), size, "scale")
            scale = tuple(float(x) for x in q.ScaleAsNumpy())
            zp = tuple(int(x) for x in q.ZeroPointAsNumpy()) if q.ZeroPointLength() else (0,) * len(scale)
        name = tt.Name()
        tensors.append(Tensor(index=base + t, name=name.decode("utf-8", "replace") if name else f"t{base + t}",
                              shape=shape, dtype=dtype, const=const, scale=scale, zero_point=zp,
                              buffer=b if const else -1))
    for j in range(_check_len(sg.OperatorsLength(), size, "operator")):
        o = sg.Operators(j)
        idx = o.OpcodeIndex()
        if not 0 <= idx < len(codes):
            raise ValueError(f"operator {j} names opcode {idx}, the model has {len(codes)}")
        kind, version, custom = codes[idx]
        ins = tuple(int(i) for i in o.InputsAsNumpy()) if o.InputsLength() else ()
        outs = tuple(int(i) for i in o.OutputsAsNumpy()) if o.OutputsLength() else ()
        for i in ins + outs:
            if i >= n_local or i < -1:
                raise ValueError(f"operator {j} of subgraph {k} refers to tensor {i}, the subgraph has {n_local}")
        ins = tuple(i + base if i >= 0 else -1 for i in ins)
        outs = tuple(i + base if i >= 0 else -1 for i in outs)
        options = _options(s, o, kind)
        name = tensors[outs[0]].name if outs and outs[0] >= 0 else ""
        name = torch_module_path(name) or name
        ops.append(Op(index=len(ops), kind=kind, version=version, inputs=ins, outputs=outs, name=name, options=options,
                      custom=custom, subgraph=k))


WRAPPERS = ("ChannelLastIOWrapper",)  # litert-torch's own modules around the user's model (attribute 'wrapped')


def torch_module_path(name: str) -> str | None:
    """The PyTorch module path in a tensor name written by litert-torch, else None.

    litert-torch names a tensor after the module scopes it came from:
    ``pkg.Model/torch.nn.modules.conv.Conv2d_conv1;1`` (each scope ``qualified.Class_attribute``, ';N' a counter,
    ';;' between the locations of fused ops). ``conv1`` is returned; an op of the model's own forward gets the
    model's class name. Names without that shape (Keras, TensorFlow) give None.
    """
    if "/" not in name and ";" not in name:
        return None
    best: list[str] | None = None
    root = ""
    for loc in name.split(";;"):
        loc = loc.rsplit(";", 1)[0] if ";" in loc else loc
        scopes = loc.split("/")
        if not all("." in sc for sc in scopes):
            return None
        path, parent = [], ""
        for sc in scopes:
            last = sc.rsplit(".", 1)[-1]
            cls, sep, attr = last.lstrip("_").partition("_")
            if sep and attr and parent not in WRAPPERS:
                path.append(attr)
            if not path or parent in WRAPPERS:
                root = cls if cls not in WRAPPERS else root
            parent = cls
        if best is None or len(path) > len(best):
            best = path
    if not best:
        return root or None
    return ".".join(best)


LOOP_BOUNDS = ("LESS", "LESS_EQUAL", "GREATER", "GREATER_EQUAL")


def _trip_count(ops: list, cond: int, small_ints: dict) -> int | None:
    """A WHILE loop's iterations: the smallest constant its condition compares the counters with."""
    bounds = [small_ints[i] for op in ops if op.subgraph == cond and op.kind in LOOP_BOUNDS
              for i in op.inputs if i in small_ints]
    bounds = [b for b in bounds if b > 0]
    return min(bounds) if bounds else None


def _repeats(ops: list, n_sub: int, small_ints: dict) -> tuple[dict[int, int], int]:
    """How often each subgraph runs per inference (a WHILE body: trip count x its caller's), and how many
    loops have a trip count that cannot be read (their bodies count once)."""
    repeats = {0: 1}
    unknown = 0
    todo = [0]
    while todo:
        k = todo.pop()
        for op in (o for o in ops if o.subgraph == k):
            calls = []
            if op.kind == "WHILE":
                cond, body = op.options.get("cond"), op.options.get("body")
                trips = _trip_count(ops, cond, small_ints) if cond is not None else None
                unknown += trips is None
                calls = [(cond, repeats[k] * ((trips or 1) + 1)), (body, repeats[k] * (trips or 1))]
            else:
                calls = [(sub, repeats[k]) for key in ("then", "else", "init") if (sub := op.options.get(key)) is not None]
            for sub, n in calls:
                if sub is not None and 0 < sub < n_sub and sub not in repeats:
                    repeats[sub] = n
                    todo.append(sub)
    return repeats, unknown


def _options(s, o, kind: str) -> dict:
    if kind in ("WHILE", "IF", "CALL_ONCE"):
        t = o.BuiltinOptions()
        typ = o.BuiltinOptionsType()
        if t is not None and kind == "WHILE" and typ == s.BuiltinOptions.WhileOptions:
            p = s.WhileOptions()
            p.Init(t.Bytes, t.Pos)
            return {"cond": p.CondSubgraphIndex(), "body": p.BodySubgraphIndex()}
        if t is not None and kind == "IF" and typ == s.BuiltinOptions.IfOptions:
            p = s.IfOptions()
            p.Init(t.Bytes, t.Pos)
            return {"then": p.ThenSubgraphIndex(), "else": p.ElseSubgraphIndex()}
        if t is not None and kind == "CALL_ONCE" and typ == s.BuiltinOptions.CallOnceOptions:
            p = s.CallOnceOptions()
            p.Init(t.Bytes, t.Pos)
            return {"init": p.InitSubgraphIndex()}
        return {}
    if kind in ("UNIDIRECTIONAL_SEQUENCE_LSTM", "UNIDIRECTIONAL_SEQUENCE_RNN", "BIDIRECTIONAL_SEQUENCE_LSTM",
                "BIDIRECTIONAL_SEQUENCE_RNN"):
        t = o.BuiltinOptions()
        opts = {}
        for name in ("UnidirectionalSequenceLSTMOptions", "SequenceRNNOptions", "BidirectionalSequenceLSTMOptions",
                     "BidirectionalSequenceRNNOptions"):
            if t is not None and o.BuiltinOptionsType() == getattr(s.BuiltinOptions, name, -1):
                p = getattr(s, name)()
                p.Init(t.Bytes, t.Pos)
                opts["time_major"] = bool(p.TimeMajor())
        return opts
    return _options_basic(s, o, kind)


def _options_basic(s, o, kind: str) -> dict:
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


FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")
NOT_COMPUTE = ("QUANTIZE", "DEQUANTIZE", "SHAPE")  # precision boundaries and shape reads compute nothing in float


def float_ops(rows, layers: int = 5) -> list[dict]:
    """The ops that compute in floating point, from ``(kind, dtype, layer name)`` rows (the dtype an op computes
    in, :meth:`Graph.op_dtype`): ``[{"op", "count", "layers"}]``, most frequent first. In a quantized model these
    are the ops left in float between DEQUANTIZE and QUANTIZE."""
    found: dict[str, list[str]] = {}
    for kind, dtype, name in rows:
        if dtype in FLOAT_DTYPES and kind not in NOT_COMPUTE:
            found.setdefault(kind, []).append(name)
    return [{"op": k, "count": len(v), "layers": v[:layers]}
            for k, v in sorted(found.items(), key=lambda kv: (-len(kv[1]), kv[0]))]


def graph_float_ops(g: Graph) -> list[dict]:
    return float_ops((op.kind, g.op_dtype(op), op.name) for op in g.ops)


def describe_float_ops(rows: list[dict]) -> str:
    """``ADD x9, MEAN x1`` from :func:`float_ops` rows."""
    return ", ".join(f"{r['op']} x{r['count']}" for r in rows)


INT_WEIGHTS = ("int8", "uint8", "int4", "int16")


def hybrid_weights(g: Graph) -> dict | None:
    """Quantized weights under float activations: ops computing in float that read quantized constants
    directly (dynamic-range "hybrid" ops) or through a DEQUANTIZE of a constant (weight-only models).
    None for float and fully integer models."""
    hybrid_ops, dequantized, dtypes = 0, 0, []
    for op in g.ops:
        consts = [t for i in op.inputs if (t := g.tensor(i)) is not None and t.const and t.dtype in INT_WEIGHTS and t.scale]
        if not consts:
            continue
        if op.kind == "DEQUANTIZE":
            out = g.tensor(op.outputs[0]) if op.outputs else None
            if out is None or out.dtype not in FLOAT_DTYPES:
                continue
            dequantized += 1
        elif g.op_dtype(op) in FLOAT_DTYPES:
            hybrid_ops += 1
        else:
            continue
        dtypes.extend(d for d in dict.fromkeys(t.dtype for t in consts) if d not in dtypes)
    if not hybrid_ops and not dequantized:
        return None
    return {"weights": "/".join(dtypes), "hybrid_ops": hybrid_ops, "dequantize_ops": dequantized,
            "summary": f"hybrid: {'/'.join(dtypes)} weights, float activations"}


def tensor_scale_zp(t: Tensor) -> tuple[float | None, int | None]:
    if len(t.scale) == 1:
        return t.scale[0], t.zero_point[0] if t.zero_point else 0
    return None, None

