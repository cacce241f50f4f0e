"""Read an .onnx ModelProto into a :class:`workbench.frontends.graph.Graph` with the core install only.

Shapes come from the graph's inputs, initializers and value_info (the PyTorch exporter
records them); where an intermediate shape is missing, a few common ops are propagated.
"""

from __future__ import annotations

import math
from pathlib import Path

from workbench.core.errors import ModelFormatError
from workbench.frontends import protobuf_wire as pw
from workbench.frontends.graph import Graph, Op, Tensor

ONNX_TYPES = {
    1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 8: "string",
    9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16", 22: "int4", 21: "uint4",
}

MAX_NODES = 1_000_000


def read_onnx(path: str | Path) -> Graph:
    p = Path(path)
    g = read_onnx_bytes(p.read_bytes(), str(p))
    check_external_data(p, g.meta.get("external_extents", ()))
    return g


def check_external_data(p: Path, extents) -> None:
    """Every initializer kept outside the model must lie in a file beside it, in full: a short or
    missing .data file, or a location that leaves the model's folder, is refused naming the tensor."""
    folder = p.resolve().parent
    sizes: dict[str, int] = {}
    for tensor, location, offset, length in extents:
        f = (p.parent / location)
        if f.resolve().parent != folder and folder not in f.resolve().parents:
            raise ModelFormatError(f"'{p}': tensor '{tensor}' keeps its data in '{location}', outside the model's folder.",
                                   hint="External data must sit beside the model; re-export it with its data there.")
        if location not in sizes:
            if not f.is_file():
                raise ModelFormatError(f"'{p}': tensor '{tensor}' keeps its data in '{location}', which does not exist "
                                       f"beside the model.", hint=f"Copy '{location}' next to '{p.name}' (it travels with the model).")
            sizes[location] = f.stat().st_size
        if length is not None and offset + length > sizes[location]:
            raise ModelFormatError(f"'{p}': tensor '{tensor}' needs bytes {offset:,}-{offset + length:,} of '{location}', "
                                   f"which has {sizes[location]:,} bytes.",
                                   hint="The external data file is truncated or belongs to another export; copy it again "
                                        "from where the model was exported.")


def read_onnx_bytes(data: bytes, where: str = "<bytes>") -> Graph:
    try:
        return _read(data, where)
    except ModelFormatError:
        raise
    except (ValueError, IndexError, KeyError, TypeError, OverflowError, RecursionError, MemoryError) as exc:
        raise ModelFormatError(
            f"'{where}' is not a valid ONNX model ({type(exc).__name__}: {exc}).",
            hint="The file is probably truncated or corrupted; re-export it.",
        ) from None


def _read(data: bytes, where: str) -> Graph:
    graph_bytes = None
    ir_version = None
    opsets = {}
    producer = ""
    for f, w, v in pw.fields(data):
        if f == 1 and w == pw.VARINT:
            ir_version = v
        elif f == 7 and w == pw.LEN:
            graph_bytes = v
        elif f == 8 and w == pw.LEN:
            dom, ver = "", 0
            for f2, w2, v2 in pw.fields(v):
                if f2 == 1 and w2 == pw.LEN:
                    dom = pw.text(v2)
                elif f2 == 2 and w2 == pw.VARINT:
                    ver = v2
            opsets[dom or "ai.onnx"] = ver
        elif f == 2 and w == pw.LEN:
            producer = pw.text(v)
    if graph_bytes is None or ir_version is None:
        raise ModelFormatError(
            f"'{where}' is not an ONNX model: it has no {'graph' if graph_bytes is None else 'ir_version'}.",
            hint="Export the model with torch.onnx.export or another ONNX exporter.",
        )
    nodes, inits, ins, outs, vinfo = [], {}, [], [], {}
    external: list[str] = []  # files holding initializer data outside the model (torch.onnx.export's .onnx.data)
    extents: list[tuple] = []  # (tensor, file, offset, length or None) of each initializer kept outside
    for f, w, v in pw.fields(graph_bytes):
        if w != pw.LEN:
            continue
        if f == 1:
            if len(nodes) >= MAX_NODES:
                raise ValueError("too many nodes")
            nodes.append(_node(v))
        elif f == 5:
            t = _tensor_proto(v)
            inits[t[0]] = t
            ref = _external_ref(v)
            if ref is not None:
                extents.append((t[0], *ref))
                if ref[0] not in external:
                    external.append(ref[0])
        elif f == 11:
            ins.append(_value_info(v))
        elif f == 12:
            outs.append(_value_info(v))
        elif f == 13:
            vi = _value_info(v)
            vinfo[vi[0]] = vi

    nodes = _fold_constants(nodes, inits)

    tensors: list[Tensor] = []
    index: dict[str, int] = {}
    shapes: dict[str, tuple | None] = {}
    dtypes: dict[str, str] = {}

    def add(name: str, shape, dtype: str, const: bool) -> int:
        if name in index:
            return index[name]
        index[name] = len(tensors)
        tensors.append(Tensor(index=len(tensors), name=name, shape=shape, dtype=dtype, const=const))
        return index[name]

    for name, (_, dims, dt, raw) in ((n, t) for n, t in inits.items()):
        shapes[name], dtypes[name] = tuple(dims), ONNX_TYPES.get(dt, f"type{dt}")
    for name, shape, dt in ins + outs + list(vinfo.values()):
        if name not in shapes:
            shapes[name], dtypes[name] = shape, ONNX_TYPES.get(dt, f"type{dt}")
    const_values = {n: t for n, t in inits.items()}
    for nd in nodes:
        _propagate(nd, shapes, dtypes, const_values)
        _propagate_dtype(nd, dtypes)

    graph_inputs = []
    for name, _, _ in ins:
        if name in inits:
            continue  # old exporters list initializers as inputs too
        graph_inputs.append(add(name, shapes.get(name), dtypes.get(name, "float32"), False))
    for name in inits:
        add(name, shapes.get(name), dtypes.get(name, "float32"), True)
    ops = []
    for nd in nodes:
        op_type, domain, name, n_in, n_out, attrs = nd
        in_idx = tuple(add(n, shapes.get(n), dtypes.get(n, "float32"), False) if n else -1 for n in n_in)
        out_idx = tuple(add(n, shapes.get(n), dtypes.get(n, "float32"), False) for n in n_out if n)
        version = opsets.get(domain or "ai.onnx", 0)
        ops.append(Op(index=len(ops), kind=op_type, version=version, inputs=in_idx, outputs=out_idx, name=name, options=attrs,
                      custom=bool(domain) and domain not in ("ai.onnx", "com.microsoft")))
    graph_outputs = tuple(add(name, shapes.get(name), dtypes.get(name, "float32"), False) for name, _, _ in outs)
    meta = {"ir_version": ir_version, "opsets": opsets, "producer": producer}
    if external:
        meta["external_data"] = tuple(external)
        meta["external_extents"] = tuple(extents)
    return Graph(format="onnx", tensors=tuple(tensors), ops=tuple(ops), inputs=tuple(graph_inputs), outputs=graph_outputs, meta=meta)


# Constant's value attributes other than a tensor: (ONNX dtype, struct format)
_CONSTANT_SCALARS = {"value_float": (1, "f"), "value_floats": (1, "f"), "value_int": (7, "q"), "value_ints": (7, "q")}


def _fold_constants(nodes: list, inits: dict) -> list:
    """Constant nodes (default domain) become constants of the graph, as initializers are: their
    values are weights like any other (PaddlePaddle and some TensorFlow exporters keep every weight in
    one), and ONNX Runtime folds them at load. Returns the nodes left."""
    import struct

    kept = []
    for nd in nodes:
        op_type, domain, _, _, outs, attrs = nd
        if op_type != "Constant" or domain not in ("", "ai.onnx") or len(outs) != 1 or not outs[0]:
            kept.append(nd)
            continue
        value = None
        if isinstance(attrs.get("value"), tuple):
            _, dims, dt, raw = attrs["value"]
            value = (outs[0], dims, dt, raw)
        else:
            for key, (dt, fmt) in _CONSTANT_SCALARS.items():
                if key in attrs and attrs[key] is not None:
                    v = attrs[key]
                    vals = list(v) if isinstance(v, list) else [v]
                    dims = [len(vals)] if isinstance(v, list) else []
                    value = (outs[0], dims, dt, struct.pack(f"<{len(vals)}{fmt}", *vals))
                    break
        if value is None:  # sparse or string values: left as an op
            kept.append(nd)
            continue
        inits[outs[0]] = value
    return kept


def _node(buf):
    ins, outs, name, op_type, domain, attrs = [], [], "", "", "", {}
    for f, w, v in pw.fields(buf):
        if w != pw.LEN:
            continue
        if f == 1:
            ins.append(pw.text(v))
        elif f == 2:
            outs.append(pw.text(v))
        elif f == 3:
            name = pw.text(v)
        elif f == 4:
            op_type = pw.text(v)
        elif f == 7:
            domain = pw.text(v)
        elif f == 5:
            k, val = _attribute(v)
            if k:
                attrs[k] = val
    if not op_type:
        raise ValueError("a node without op_type")
    return op_type, domain, name, ins, outs, attrs


def _attribute(buf):
    name, val, ints, floats = "", None, [], []
    for f, w, v in pw.fields(buf):
        if f == 1 and w == pw.LEN:
            name = pw.text(v)
        elif f == 2 and w == pw.I32:
            val = pw.fixed32_float(v)
        elif f == 3 and w == pw.VARINT:
            val = pw.to_signed64(v)
        elif f == 4 and w == pw.LEN:
            val = pw.text(v)
        elif f == 5 and w == pw.LEN:  # t: a TensorProto (Constant's value), read as (name, dims, dtype, raw)
            val = _tensor_proto(v)
        elif f == 7:
            floats.extend(pw.packed_floats(v, w))
        elif f == 8:
            ints.extend(pw.packed_varints(v, w))
    if ints:
        val = ints
    elif floats:
        val = floats
    return name, val


def _tensor_proto(buf):
    dims, dt, name, raw, int64s = [], 1, "", None, []
    for f, w, v in pw.fields(buf):
        if f == 1:
            dims.extend(pw.packed_varints(v, w))
        elif f == 2 and w == pw.VARINT:
            dt = v
        elif f == 8 and w == pw.LEN:
            name = pw.text(v)
        elif f == 9 and w == pw.LEN:
            raw = bytes(v[:4096])  # only small constants (shapes) are ever read back
        elif f == 7:
            int64s.extend(pw.packed_varints(v, w))
    if raw is None and int64s:
        import struct

        raw = struct.pack(f"<{len(int64s)}q", *int64s)
    return name, dims, dt, raw


def _external_ref(buf) -> tuple[str, int, int | None] | None:
    """``(location, offset, length)`` of a TensorProto whose data_location is EXTERNAL, else None."""
    entries, external = {}, False
    for f, w, v in pw.fields(buf):
        if f == 14 and w == pw.VARINT:
            external = v == 1
        elif f == 13 and w == pw.LEN:
            key = val = ""
            for f2, w2, v2 in pw.fields(v):
                if f2 == 1 and w2 == pw.LEN:
                    key = pw.text(v2)
                elif f2 == 2 and w2 == pw.LEN:
                    val = pw.text(v2)
            entries[key] = val
    if not external or "location" not in entries:
        return None
    offset = int(entries["offset"]) if entries.get("offset", "").isdigit() else 0
    length = int(entries["length"]) if entries.get("length", "").isdigit() else None
    return entries["location"], offset, length


def model_files(path: str | Path, graph: Graph | None = None) -> list[Path]:
    """The model file and the external data files it names (those that exist), for sizes and hashes."""
    p = Path(path)
    names = (graph.meta if graph is not None else read_onnx(p).meta).get("external_data", ())
    extra = []
    for name in names:
        f = (p.parent / name)
        if f.is_file() and f.resolve().parent == p.parent.resolve() and f not in extra:
            extra.append(f)
    return [p, *extra]


def _value_info(buf):
    name, shape, dt = "", None, 1
    for f, w, v in pw.fields(buf):
        if f == 1 and w == pw.LEN:
            name = pw.text(v)
        elif f == 2 and w == pw.LEN:
            for f2, w2, v2 in pw.fields(v):
                if f2 == 1 and w2 == pw.LEN:  # tensor_type
                    for f3, w3, v3 in pw.fields(v2):
                        if f3 == 1 and w3 == pw.VARINT:
                            dt = v3
                        elif f3 == 2 and w3 == pw.LEN:
                            shape = _shape(v3)
    return name, shape, dt


def _shape(buf):
    dims = []
    for f, w, v in pw.fields(buf):
        if f == 1 and w == pw.LEN:
            d = None
            for f2, w2, v2 in pw.fields(v):
                if f2 == 1 and w2 == pw.VARINT:
                    d = pw.to_signed64(v2)
            dims.append(d)
    return tuple(dims)


# --- light shape propagation for graphs without value_info ---

_SAME_SHAPE = {
    "Relu", "Clip", "Sigmoid", "Tanh", "Softmax", "LeakyRelu", "HardSigmoid", "HardSwish", "Identity",
    "QuantizeLinear", "DequantizeLinear", "BatchNormalization", "Dropout", "Erf", "Gelu", "Neg", "Sqrt", "Exp", "Cast",
}
_BROADCAST = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "Where"}


def _propagate(nd, shapes, dtypes, consts):
    op_type, _, _, ins, outs, attrs = nd
    if not outs or outs[0] in shapes and shapes[outs[0]] is not None:
        return
    x = shapes.get(ins[0]) if ins else None
    out = None
    try:
        if op_type in _SAME_SHAPE:
            out = x
        elif op_type in _BROADCAST and x is not None:
            others = [shapes.get(i) for i in ins if i]
            if all(o is not None for o in others):
                rank = max(len(o) for o in others)
                padded = [(1,) * (rank - len(o)) + tuple(o) for o in others]
                out = tuple(max(d) if all(v is not None for v in d) else None for d in zip(*padded))
        elif op_type in ("Conv", "MaxPool", "AveragePool", "QLinearConv", "ConvInteger") and x is not None:
            k = attrs.get("kernel_shape")
            if op_type in ("Conv", "ConvInteger", "QLinearConv"):
                w = shapes.get(ins[3 if op_type == "QLinearConv" else 1])
                k = k or (list(w[2:]) if w else None)
                cout = w[0] if w else None
            else:
                cout = x[1]
            if k:
                nsp = len(k)
                strides = attrs.get("strides", [1] * nsp)
                pads = attrs.get("pads", [0] * 2 * nsp)
                dil = attrs.get("dilations", [1] * nsp)
                sp = []
                for i in range(nsp):
                    size = x[2 + i]
                    if size is None:
                        sp.append(None)
                        continue
                    if attrs.get("auto_pad") in ("SAME_UPPER", "SAME_LOWER"):
                        sp.append(math.ceil(size / strides[i]))
                    else:
                        eff = dil[i] * (k[i] - 1) + 1
                        sp.append((size + pads[i] + pads[i + nsp] - eff) // strides[i] + 1)
                out = (x[0], cout, *sp)
        elif op_type == "GlobalAveragePool" and x is not None:
            out = (*x[:2], *([1] * (len(x) - 2)))
        elif op_type == "Flatten" and x is not None:
            ax = attrs.get("axis", 1)
            out = (math.prod(x[:ax]) if None not in x[:ax] else None, math.prod(x[ax:]) if None not in x[ax:] else None)
        elif op_type in ("Gemm", "MatMul") and x is not None:
            w = shapes.get(ins[1])
            if w is not None:
                n = w[0] if attrs.get("transB") else w[-1]
                out = (*x[:-1], n)
        elif op_type == "Reshape" and x is not None and ins[1] in consts:
            raw = consts[ins[1]][3]
            if raw:
                import struct

                tgt = list(struct.unpack(f"<{len(raw) // 8}q", raw[: len(raw) // 8 * 8]))
                if None not in x:
                    total = math.prod(x)
                    tgt = [x[i] if d == 0 else d for i, d in enumerate(tgt)]
                    if -1 in tgt:
                        known = math.prod(d for d in tgt if d != -1)
                        tgt[tgt.index(-1)] = total // known if known else 0
                out = tuple(tgt)
        elif op_type == "Transpose" and x is not None:
            perm = attrs.get("perm", list(reversed(range(len(x)))))
            out = tuple(x[p] for p in perm)
    except (TypeError, IndexError, ValueError, ZeroDivisionError):
        out = None
    if out is not None:
        shapes[outs[0]] = tuple(out)


# Output dtypes that are not the first input's.
_FIXED_DTYPE = {
    "Shape": "int64", "Size": "int64", "NonZero": "int64", "ArgMax": "int64", "ArgMin": "int64", "NonMaxSuppression": "int64",
    "Equal": "bool", "Less": "bool", "Greater": "bool", "LessOrEqual": "bool", "GreaterOrEqual": "bool", "Not": "bool",
    "And": "bool", "Or": "bool", "Xor": "bool", "IsNaN": "bool", "IsInf": "bool",
    "ConvInteger": "int32", "MatMulInteger": "int32", "DynamicQuantizeLinear": "uint8",
}
# The input whose dtype an op's output takes: a zero point for the quantizing ops, Where's values.
_DTYPE_FROM_INPUT = {"QuantizeLinear": 2, "QLinearConv": 7, "QLinearMatMul": 7, "QLinearAdd": 7, "QLinearMul": 7,
                     "DequantizeLinear": 1, "Where": 1}
_DTYPE_DEFAULT = {"QuantizeLinear": "uint8", "QLinearConv": "uint8", "QLinearMatMul": "uint8", "DequantizeLinear": "float32"}


def _propagate_dtype(nd, dtypes):
    """The dtype of an op's first output when the file does not record it (value_info)."""
    op_type, _, _, ins, outs, attrs = nd
    if not outs or not outs[0] or outs[0] in dtypes:
        return
    from_input = _DTYPE_FROM_INPUT.get(op_type)
    if op_type in _FIXED_DTYPE:
        dt = _FIXED_DTYPE[op_type]
    elif op_type == "Cast" and isinstance(attrs.get("to"), int):
        dt = ONNX_TYPES.get(attrs["to"])
    elif from_input is not None:
        src = ins[from_input] if len(ins) > from_input and ins[from_input] else None
        dt = dtypes.get(src) if src else None
        dt = dt or _DTYPE_DEFAULT.get(op_type)
    else:
        dt = next((dtypes[i] for i in ins if i and i in dtypes), None)
    if dt:
        dtypes[outs[0]] = dt
