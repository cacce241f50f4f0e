"""The graph an ExecuTorch program (.pte) runs, read without torch: the XNNPACK delegate's own graph
(XNNGraph) for the delegated parts, ExecuTorch's operators for the rest, as one :class:`Graph`.

An XNNPACK delegate payload (``executorch/backends/xnnpack/serialization``) starts with a header:
4 zero bytes, the magic "XH00", its length (uint16), the XNNGraph flatbuffer's offset and size
(uint32 each), the constant data's offset (uint32) and size (uint64), all little-endian; an older
payload is the bare flatbuffer (identifier "XN01" at byte 4). The XNNGraph (``schema.fbs``) lists
values (tensors: XNNPACK datatype, dims, a constant-buffer index that is 0 for activations) and
nodes (one union member per XNNPACK operator, naming value ids). XNNPACK tensors are NHWC, its
convolution filters OHWI [Cout, kh, kw, Cin/groups], depthwise filters [1, kh, kw, Cout] and
fully connected weights [out, in]: TFLite's layouts, so each node becomes the TFLite op XNNPACK
runs for it in LiteRT (XNNConv2d -> CONV_2D, XNNFullyConnected -> FULLY_CONNECTED, ...) and
:data:`workbench.frontends.graph.MAC_RULES` count its MACs.

Ops ExecuTorch runs outside the delegate (its portable CPU kernels) keep their operator name
("aten::addmm.out"), count 0 MACs and are marked in ``Graph.meta["outside_delegate"]``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from workbench.core.errors import ModelFormatError
from workbench.frontends.graph import Graph, Op, Tensor
from workbench.frontends.pte_reader import PteCalls, _Buf, read_calls

XNNPACK_BACKEND = "XnnpackBackend"

# XNNDatatype -> the dtype name Graph uses (quantized types by their storage).
DATATYPES = {1: "float32", 2: "float16", 3: "int8", 4: "uint8", 5: "int32", 6: "int8", 7: "int32", 8: "int4",
             9: "int8", 10: "int4", 11: "int8", 12: "int32", 13: "float32", 14: "bfloat16"}

# XNodeUnion members, in the schema's order (the union's type codes start at 1), with the TFLite op
# XNNPACK runs for the same computation in LiteRT ("" when the name is kept as it is).
NODES = ("XNNAdd:ADD", "XNNFullyConnected:FULLY_CONNECTED", "XNNSoftmax:SOFTMAX", "XNNSigmoid:LOGISTIC",
         "XNNStaticTranspose:TRANSPOSE", "XNNClamp:", "XNNConv2d:CONV_2D", "XNNDiv:DIV",
         "XNNStaticResizeBilinear2D:RESIZE_BILINEAR", "XNNStaticConstantPad:PAD", "XNNAvgPooling2d:AVERAGE_POOL_2D",
         "XNNMinimum:MINIMUM", "XNNDepthwiseConv2d:DEPTHWISE_CONV_2D", "XNNMaxPooling2d:MAX_POOL_2D",
         "XNNMultiply:MUL", "XNNSubtract:SUB", "XNNFloor:FLOOR", "XNNConvert:", "XNNGlobalAvgPooling2d:MEAN",
         "XNNStaticReshape:RESHAPE", "XNNArgMaxPooling2d:", "XNNSquareRoot:SQRT", "XNNCeiling:CEIL",
         "XNNHardswish:HARD_SWISH", "XNNLeakyReLU:LEAKY_RELU", "XNNMaximum:MAXIMUM", "XNNNegate:NEG",
         "XNNSquare:SQUARE", "XNNELU:ELU", "XNNAbs:ABS", "XNNPReLU:PRELU", "XNNConcatenate2:CONCATENATION",
         "XNNConcatenate3:CONCATENATION", "XNNConcatenate4:CONCATENATION", "XNNStaticSlice:SLICE",
         "XNNScaledDotProductAttention:", "XNNBatchMatrixMultiply:BATCH_MATMUL", "XNNConcatenate5:CONCATENATION",
         "XNNConvTranspose2d:TRANSPOSE_CONV", "XNNReciprocalSquareRoot:RSQRT", "XNNLog:LOG", "XNNGelu:GELU",
         "XNNTanh:TANH", "XNNExp:EXP", "XNNSin:SIN", "XNNCopy:", "XNNCos:COS")

# Field slots (vtable indices) of the node tables: (inputs, outputs, options as name -> slot).
_1X1 = ((0,), (1,), {})
_2X1 = ((0, 1), (2,), {})
_CONV = ((15, 16, 17), (18,), {"padding_top": 0, "kernel_h": 4, "kernel_w": 5, "stride_h": 6, "stride_w": 7,
                                "dilation_h": 8, "dilation_w": 9, "group_input_channels": 10,
                                "group_output_channels": 11, "groups": 12})
_POOL = ((10,), (11,), {"filter_h": 4, "filter_w": 5, "stride_h": 6, "stride_w": 7})
_CAT = ((1, 2, 3, 4, 7), (5,), {"axis": 0})
LAYOUTS = {
    "XNNFullyConnected": ((0, 1, 2), (3,), {"flags": 4}),
    "XNNStaticTranspose": ((2,), (3,), {}), "XNNStaticResizeBilinear2D": ((2,), (3,), {}),
    "XNNStaticConstantPad": ((3,), (4,), {}), "XNNStaticReshape": ((2,), (3,), {}),
    "XNNStaticSlice": ((3,), (4,), {}), "XNNELU": ((1,), (2,), {}), "XNNLeakyReLU": ((1,), (2,), {}),
    "XNNArgMaxPooling2d": ((6,), (7, 8), {}), "XNNScaledDotProductAttention": ((0, 1, 2, 3, 4), (5,), {}),
    "XNNConv2d": _CONV, "XNNDepthwiseConv2d": _CONV, "XNNConvTranspose2d": _CONV,
    "XNNAvgPooling2d": _POOL, "XNNMaxPooling2d": _POOL,
    "XNNConcatenate2": _CAT, "XNNConcatenate3": _CAT, "XNNConcatenate4": _CAT, "XNNConcatenate5": _CAT,
    **{n: _2X1 for n in ("XNNAdd", "XNNDiv", "XNNMinimum", "XNNMultiply", "XNNSubtract", "XNNMaximum", "XNNPReLU",
                         "XNNBatchMatrixMultiply")},
}
XNN_FLAG_TRANSPOSE_WEIGHTS = 0x1  # xnnpack.h: a fully connected filter stored [in, out]
INVALID_ID = 0xFFFFFFFF
HEADER_MAGIC = b"XH00"


@dataclass(frozen=True)
class XnnValue:
    id: int
    dims: tuple[int, ...]
    dtype: str
    const: bool
    scale: tuple = ()
    zero_point: tuple = ()


@dataclass(frozen=True)
class XnnNode:
    node: str  # the XNodeUnion member, e.g. "XNNConv2d"
    kind: str  # the TFLite op it corresponds to
    inputs: tuple[int, ...]  # value ids (INVALID_ID for an absent bias)
    outputs: tuple[int, ...]
    options: dict
    debug_handle: int
    output_range: tuple[float, float] | None


@dataclass(frozen=True)
class XnnGraph:
    version: str
    values: tuple[XnnValue, ...]
    nodes: tuple[XnnNode, ...]
    input_ids: tuple[int, ...]
    output_ids: tuple[int, ...]


def _flatbuffer(payload: bytes, where: str, path: Path) -> bytes:
    """The XNNGraph flatbuffer inside a delegate payload (after the "XH00" header, or the whole payload)."""
    if payload[4:8] == HEADER_MAGIC:
        if len(payload) < 30:
            raise ModelFormatError(f"'{path}': the XNNPACK payload of {where} is cut inside its header.",
                                   hint="The file is probably truncated or corrupted; export it again.")
        offset, size = struct.unpack_from("<II", payload, 10)
        if offset + size > len(payload) or size < 8:
            raise ModelFormatError(f"'{path}': the XNNPACK payload of {where} claims a graph of {size} bytes at {offset}, "
                                   f"past its end ({len(payload)} bytes).",
                                   hint="The file is probably truncated or corrupted; export it again.")
        return payload[offset:offset + size]
    if payload[4:8] == b"XN01":
        return payload
    raise ModelFormatError(f"'{path}': {where} is not an XNNPACK graph (found {payload[4:8]!r} at byte 4).",
                           hint="The program may come from an ExecuTorch version whose XNNPACK format this reader does not know.")


def _value(buf: _Buf, v: int) -> XnnValue:
    kind, table = buf.scalar(v, 0, "<B"), buf.table(v, 1)
    scale: tuple = ()
    zero: tuple = ()
    if kind == 2:  # XNNQuantizedTensorValue: tensor_value, quant_params (type, table)
        qtype, q = buf.scalar(table, 1, "<B"), buf.table(table, 2)
        if qtype == 2 and q:  # PerTensorQuant
            scale, zero = (buf.scalar(q, 0, "<f", 0.0),), (buf.scalar(q, 1, "<i"),)
        elif qtype == 1 and q:  # PerChannelQuant
            start, n = buf.vector(q, 0)
            scale = tuple(buf.unpack("<f", start + 4 * i) for i in range(n))
        table = buf.table(table, 0)
    elif kind != 1:
        raise buf.bad(f"an XNNPACK value of unknown kind {kind}")
    code = buf.scalar(table, 0, "<h")
    return XnnValue(id=buf.scalar(table, 6, "<I"), dims=tuple(buf.ints(table, 2, "<I")),
                    dtype=DATATYPES.get(code, f"xnn_datatype_{code}"), const=buf.scalar(table, 3, "<I") != 0,
                    scale=scale, zero_point=zero)


def _node(buf: _Buf, x: int) -> XnnNode:
    code, table = buf.scalar(x, 0, "<B"), buf.table(x, 1)
    if not 1 <= code <= len(NODES):
        raise buf.bad(f"an XNNPACK node of unknown type {code}")
    name, kind = NODES[code - 1].split(":")
    ins, outs, opts = LAYOUTS.get(name, _1X1)
    inputs = tuple(buf.scalar(table, s, "<I") for s in ins)  # an absent field is its default, 0
    if name.startswith("XNNConcatenate"):
        inputs = inputs[:int(name[-1])]
    options = {key: buf.scalar(table, s, "<I") for key, s in opts.items()}
    mm = buf.table(x, 3)
    rng = (buf.scalar(mm, 0, "<f", float("-inf")), buf.scalar(mm, 1, "<f", float("inf"))) if mm else None
    return XnnNode(node=name, kind=kind or name, inputs=inputs, outputs=tuple(buf.scalar(table, s, "<I") for s in outs),
                   options=options, debug_handle=buf.scalar(x, 2, "<I"), output_range=rng)


def read_xnn_graph(payload: bytes, path: str | Path = "", where: str = "the delegate") -> XnnGraph:
    """Parse one XNNPACK delegate payload; every offset bounds-checked (a corrupt one is a ModelFormatError)."""
    path = Path(path)
    buf = _Buf(_flatbuffer(payload, where, path), path)
    root = buf.ref(0)
    return XnnGraph(version=buf.string(root, 0), values=tuple(_value(buf, v) for v in buf.tables(root, 2)),
                    nodes=tuple(_node(buf, x) for x in buf.tables(root, 1)),
                    input_ids=tuple(buf.ints(root, 4, "<I")), output_ids=tuple(buf.ints(root, 5, "<I")))


def _kind(node: XnnNode, dtype_of) -> str:
    """The TFLite op of the nodes whose TFLite name depends on their tensors or range."""
    if node.node == "XNNConvert":
        src, dst = dtype_of(node.inputs[0]), dtype_of(node.outputs[0])
        return "DEQUANTIZE" if dst.startswith("float") and not src.startswith("float") else (
            "QUANTIZE" if not dst.startswith("float") else "CAST")
    if node.node == "XNNClamp":
        return {(0.0, float("inf")): "RELU", (0.0, 6.0): "RELU6", (-1.0, 1.0): "RELU_N1_TO_1"}.get(node.output_range or (), "CLAMP")
    if node.node == "XNNCopy":
        return "RESHAPE"  # a copy into a new shape (squeeze/unsqueeze, channel-order changes of a dim-1 tensor)
    return node.kind


def program_graph(path: str | Path, calls: PteCalls | None = None) -> Graph:
    """The ``forward`` method of a .pte as one Graph: each XNNPACK delegate's nodes (TFLite op names, NHWC
    tensors), then ExecuTorch's own operators, in execution order. ``meta["delegated"]`` holds the indices of
    the ops XNNPACK runs, ``meta["outside_delegate"]`` the operator names ExecuTorch runs itself."""
    path = Path(path)
    calls = calls or read_calls(path)
    tensors: list[Tensor] = []
    ops: list[Op] = []
    delegated: list[int] = []
    outside: list[str] = []
    value_tensor: dict[int, int] = {}  # program value index -> tensor index

    def program_tensor(v: int) -> int | None:
        t = calls.values[v] if 0 <= v < len(calls.values) else None
        if t is None:
            return None
        if v not in value_tensor:
            value_tensor[v] = len(tensors)
            tensors.append(Tensor(index=len(tensors), name=f"value_{v}", shape=t.shape, dtype=t.dtype, const=t.const))
        return value_tensor[v]

    n_delegate = 0
    for call in calls.calls:
        if call.kind == "kernel":
            args = [a for a in (program_tensor(v) for v in call.args) if a is not None]
            args = list(dict.fromkeys(args))  # an out-variant names its out tensor twice (out= and the return)
            if not args:
                continue
            ops.append(Op(index=len(ops), kind=call.name, version=1, inputs=tuple(args[:-1]), outputs=(args[-1],),
                          name=call.name, options={"runtime": "executorch portable"}))
            outside.append(call.name)
            continue
        where = f"delegate call {n_delegate} ({call.name})"
        n_delegate += 1
        if call.name != XNNPACK_BACKEND:
            raise ModelFormatError(f"'{path}': {where} runs in the {call.name} backend; emulate reads XNNPACK's graphs only.",
                                   hint="Export with the XNNPACK backend (workbench export MODEL --format executorch).")
        xg = read_xnn_graph(call.payload or b"", path, where)
        base = len(tensors)
        ids = {v.id: base + k for k, v in enumerate(xg.values)}
        for k, v in enumerate(xg.values):
            tensors.append(Tensor(index=base + k, name=f"xnn{n_delegate - 1}_value_{v.id}", shape=v.dims, dtype=v.dtype,
                                  const=v.const, scale=v.scale, zero_point=v.zero_point))
        by_id = {v.id: v for v in xg.values}

        def dtype_of(i: int) -> str:
            return by_id[i].dtype if i in by_id else "float32"

        for node in xg.nodes:
            refs = [ids.get(i, -1) for i in node.inputs]
            if any(i not in ids for i in node.inputs + node.outputs if i != INVALID_ID):
                raise ModelFormatError(f"'{path}': in {where}, the {node.node} node names a value the graph does not hold.",
                                       hint="The file is probably corrupted; export it again.")
            kind = _kind(node, dtype_of)
            if kind == "FULLY_CONNECTED" and node.options.get("flags", 0) & XNN_FLAG_TRANSPOSE_WEIGHTS and refs[1] >= 0:
                w = tensors[refs[1]]  # stored [in, out]: given TFLite's [out, in] so the MAC rule reads `in` last
                tensors[refs[1]] = Tensor(index=w.index, name=w.name, shape=tuple(reversed(w.shape)), dtype=w.dtype,
                                          const=w.const, scale=w.scale, zero_point=w.zero_point)
            if kind == "TRANSPOSE_CONV":  # TFLite's input order: output shape, weights, input, bias
                refs = [-1, refs[1], refs[0], refs[2]]
            options = dict(node.options)
            options.update({"xnnpack_node": node.node, "debug_handle": node.debug_handle})
            delegated.append(len(ops))
            ops.append(Op(index=len(ops), kind=kind, version=1, inputs=tuple(refs),
                          outputs=tuple(ids[i] for i in node.outputs), name=node.node if node.debug_handle in (0, 0xFFFF) else f"{node.node} #{node.debug_handle}",
                          options=options))
    inputs = tuple(i for i in map(program_tensor, calls.inputs) if i is not None)
    outputs = tuple(i for i in map(program_tensor, calls.outputs) if i is not None)
    return Graph(format="pte", tensors=tuple(tensors), ops=tuple(ops), inputs=inputs, outputs=outputs,
                 meta={"delegated": tuple(delegated), "outside_delegate": tuple(outside),
                       "xnnpack_delegates": n_delegate})

