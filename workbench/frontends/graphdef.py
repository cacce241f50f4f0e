"""TensorFlow 1.x frozen graphs (a ``.pb`` holding a GraphDef), read without TensorFlow.

The GraphDef is walked with the bounds-checked wire reader (:mod:`workbench.frontends.protobuf_wire`),
so ``inspect`` and format sniffing stay light. What is read: every node's name, op, inputs and the
attributes that tell shapes and dtypes (``dtype``, ``shape``, ``T``, ``_output_shapes``, a Const's
``value`` shape). Inputs are the graph's placeholders; candidate outputs are the nodes nothing consumes
(constants, no-ops and asserts excluded). ``--inputs NAME[:SHAPE],...`` and ``--outputs NAME,...``
(:class:`~workbench.frontends.loader.LoadOptions`) name them when the graph cannot tell.

Field numbers (tensorflow/core/framework/*.proto): GraphDef node=1 library=2 version=3 versions=4;
NodeDef name=1 op=2 input=3 device=4 attr=5; AttrValue list=1 s=2 i=3 f=4 b=5 type=6 shape=7 tensor=8;
TensorShapeProto dim=2 unknown_rank=3, Dim size=1; TensorProto dtype=1 tensor_shape=2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from workbench.core.errors import ModelFormatError
from workbench.frontends import protobuf_wire as pw
from workbench.frontends.handle import ModelHandle
from workbench.frontends.loader import LOADERS, LoadOptions, spec_from

DTYPES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string", 9: "int64",
          10: "bool", 14: "bfloat16", 17: "uint16", 19: "float16", 20: "resource", 21: "variant", 22: "uint32", 23: "uint64"}
NOT_OUTPUTS = {"Const", "NoOp", "Assert", "Placeholder", "PlaceholderWithDefault", "VariableV2", "VarHandleOp", "SaveV2",
               "RestoreV2", "Print", "PrintV2"}
PASS_SHAPE = {"Identity", "Relu", "Relu6", "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "BiasAdd", "Elu", "Selu",
              "FusedBatchNorm", "FusedBatchNormV3", "Add", "AddV2", "Mul", "Sub", "LeakyRelu", "Softplus", "StopGradient"}


@dataclass(frozen=True)
class Node:
    name: str
    op: str
    inputs: tuple[str, ...]  # as written: "x", "x:1", "^ctrl"
    attrs: dict = field(default_factory=dict, compare=False)  # the decoded attributes this module uses


@dataclass(frozen=True)
class GraphDefInfo:
    nodes: tuple[Node, ...]
    producer: int | None = None

    def by_name(self) -> dict[str, Node]:
        return {n.name: n for n in self.nodes}

    def placeholders(self) -> list[Node]:
        return [n for n in self.nodes if n.op == "Placeholder"]

    def sinks(self) -> list[Node]:
        used = {_source(i) for n in self.nodes for i in n.inputs}
        return [n for n in self.nodes if n.name not in used and n.op not in NOT_OUTPUTS]

    @property
    def parameters(self) -> int:
        return sum(elements(n.attrs.get("value_shape")) for n in self.nodes
                   if n.op == "Const" and n.attrs.get("dtype") in ("float32", "float16"))


def elements(shape) -> int:
    """Elements of a fully known shape, else 0."""
    if not isinstance(shape, tuple) or any(not isinstance(d, int) for d in shape):
        return 0
    return math.prod(shape)


def shape_attr(node: "Node", key: str) -> tuple | None:
    v = node.attrs.get(key)
    return v if isinstance(v, tuple) else None


def _source(inp: str) -> str:
    return inp.lstrip("^").split(":")[0]


def _shape(buf) -> tuple | None:
    dims = []
    for f, w, v in pw.fields(buf):
        if f == 3 and w == pw.VARINT and v:
            return None  # unknown rank
        if f == 2 and w == pw.LEN:
            size = 0  # proto3 leaves a zero out; an unknown dimension is written as -1
            for f2, w2, v2 in pw.fields(v):
                if f2 == 1 and w2 == pw.VARINT:
                    size = pw.to_signed64(v2)
            dims.append(None if size < 0 else int(size))
    return tuple(dims)


def _attr(buf) -> object:
    """The value of one AttrValue: a dtype name, a shape, an int, a string, a list of shapes, a tensor's shape."""
    for f, w, v in pw.fields(buf):
        if f == 6 and w == pw.VARINT:
            return DTYPES.get(v, f"dtype{v}")
        if f == 7 and w == pw.LEN:
            return _shape(v)
        if f == 3 and w == pw.VARINT:
            return pw.to_signed64(v)
        if f == 5 and w == pw.VARINT:
            return bool(v)
        if f == 2 and w == pw.LEN:
            return pw.text(v)
        if f == 1 and w == pw.LEN:
            shapes = [_shape(v2) for f2, w2, v2 in pw.fields(v) if f2 == 7 and w2 == pw.LEN]
            ints = [x for f2, w2, v2 in pw.fields(v) if f2 == 3 for x in pw.packed_varints(v2, w2)]
            strs = [pw.text(v2) for f2, w2, v2 in pw.fields(v) if f2 == 2 and w2 == pw.LEN]
            return shapes or ints or strs
        if f == 8 and w == pw.LEN:
            dtype, shape = None, None
            for f2, w2, v2 in pw.fields(v):
                if f2 == 1 and w2 == pw.VARINT:
                    dtype = DTYPES.get(v2, f"dtype{v2}")
                elif f2 == 2 and w2 == pw.LEN:
                    shape = _shape(v2)
            return {"tensor_dtype": dtype, "tensor_shape": shape}
    return None


KEEP_ATTRS = {"dtype", "shape", "T", "_output_shapes", "value", "is_training", "transpose_a", "transpose_b", "out_type", "DstT"}


def _node(buf) -> Node:
    name, op, inputs, attrs = "", "", [], {}
    for f, w, v in pw.fields(buf):
        if w != pw.LEN:
            continue
        if f == 1:
            name = pw.text(v)
        elif f == 2:
            op = pw.text(v)
        elif f == 3:
            inputs.append(pw.text(v))
        elif f == 5:
            key, val = "", None
            for f2, w2, v2 in pw.fields(v):
                if f2 == 1 and w2 == pw.LEN:
                    key = pw.text(v2)
                elif f2 == 2 and w2 == pw.LEN:
                    val = v2
            if key in KEEP_ATTRS and val is not None:
                decoded = _attr(val)
                if key == "value" and isinstance(decoded, dict):
                    attrs["value_shape"] = decoded["tensor_shape"]
                    attrs.setdefault("dtype", decoded["tensor_dtype"])
                else:
                    attrs[key] = decoded
    if not name or not op:
        raise ValueError("a node without a name or an op")
    return Node(name=name, op=op, inputs=tuple(inputs), attrs=attrs)


def parse_graphdef(buf) -> GraphDefInfo:
    """Raises ValueError on anything that is not a well-formed GraphDef."""
    nodes, producer = [], None
    for f, w, v in pw.fields(buf):
        if f == 1 and w == pw.LEN:
            nodes.append(_node(v))
        elif f == 4 and w == pw.LEN:
            for f2, w2, v2 in pw.fields(v):
                if f2 == 1 and w2 == pw.VARINT:
                    producer = int(v2)
        elif f not in (2, 3):
            raise ValueError(f"unexpected GraphDef field {f}")
    if not nodes:
        raise ValueError("no nodes")
    return GraphDefInfo(nodes=tuple(nodes), producer=producer)


def read_graphdef(path: Path) -> GraphDefInfo:
    try:
        return parse_graphdef(path.read_bytes())
    except (ValueError, OSError) as exc:
        raise ModelFormatError(f"'{path}' starts like a TensorFlow GraphDef (a frozen .pb) but cannot be read: {exc}.",
                               hint="The file is probably truncated or corrupted; freeze the graph again "
                                    "(tf.compat.v1.graph_util.convert_variables_to_constants).") from None


# --- shapes of the candidate outputs: what the graph records, else a small propagation -------------------

MAX_DEPTH = 64  # how far back a candidate output's shape is looked for


def _known_shape(node: Node, nodes: dict, seen: set) -> tuple | None:
    shapes = node.attrs.get("_output_shapes")
    if isinstance(shapes, list) and shapes and isinstance(shapes[0], tuple):
        return shapes[0]
    if node.op == "Placeholder":
        return shape_attr(node, "shape")
    if node.op == "Const":
        return shape_attr(node, "value_shape")
    if node.name in seen or len(seen) > MAX_DEPTH:
        return None
    seen.add(node.name)
    data = [nodes.get(_source(i)) for i in node.inputs if not i.startswith("^")]
    if not data or data[0] is None:
        return None
    first = _known_shape(data[0], nodes, seen)
    if node.op in PASS_SHAPE:
        return first
    if node.op == "MatMul" and len(data) > 1 and data[1] is not None:
        second = _known_shape(data[1], nodes, seen)
        if not (first is None or isinstance(first, tuple)) or not isinstance(second, tuple):
            return None
        if second is None or len(second) != 2 or (first is not None and len(first) != 2):
            return None
        if first is None:
            return (None, second[0] if node.attrs.get("transpose_b") else second[1])
        rows = first[1] if node.attrs.get("transpose_a") else first[0]
        cols = second[0] if node.attrs.get("transpose_b") else second[1]
        return (rows, cols)
    return None


def _dtype(node: Node) -> str:
    for key in ("T", "dtype", "out_type", "DstT"):
        if isinstance(node.attrs.get(key), str):
            return node.attrs[key]
    return "float32"


def parse_io_names(spec) -> tuple:
    """``--inputs NAME[:SHAPE]`` entries as (name, shape or None); "x:0" tensor names are accepted too."""
    out = []
    for name, shape in spec:
        out.append((name.split(":")[0] if name.endswith(":0") else name, shape))
    return tuple(out)


def signature(info: GraphDefInfo, opts: LoadOptions, path: Path) -> tuple[tuple, tuple]:
    nodes = info.by_name()
    wanted_in = parse_io_names(opts.graph_inputs)
    for name, _ in wanted_in:
        if name not in nodes:
            raise ModelFormatError(f"--inputs names '{name}', which is not a node of '{path}'.",
                                   hint="Placeholders in this graph: " + (", ".join(n.name for n in info.placeholders()) or "none") + ".")
    chosen = [(nodes[n], s) for n, s in wanted_in] or [(n, None) for n in info.placeholders()]
    ins = tuple(spec_from(n.name, s if s is not None else (shape_attr(n, "shape") or ()), _dtype(n)) for n, s in chosen)
    out_names = [o.split(":")[0] for o in opts.graph_outputs]
    for name in out_names:
        if name not in nodes:
            raise ModelFormatError(f"--outputs names '{name}', which is not a node of '{path}'.",
                                   hint="Candidate outputs (nodes nothing consumes): "
                                        + (", ".join(n.name for n in info.sinks()) or "none") + ".")
    out_nodes = [nodes[n] for n in out_names] or info.sinks()
    outs = tuple(spec_from(n.name, _known_shape(n, nodes, set()) or (), _dtype(n)) for n in out_nodes)
    return ins, outs


@LOADERS.register("frozen_graph")
def load_frozen_graph(path: Path, opts: LoadOptions) -> ModelHandle:
    info = read_graphdef(path)
    ins, outs = signature(info, opts, path)
    return ModelHandle(path=path, format="frozen_graph", framework="tf1", inputs=ins, outputs=outs,
                       meta={"graphdef": info, "outputs_named": bool(opts.graph_outputs)})


# --- what cannot be converted, named before any work starts ----------------------------------------------

TRAINING_EXACT = {"Assign", "AssignAdd", "AssignSub", "AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp",
                  "SaveV2", "RestoreV2", "SaveSlices", "MergeV2Checkpoints", "BroadcastGradientArgs"}
VARIABLE_OPS = {"VariableV2", "Variable", "VarHandleOp", "ReadVariableOp", "VarIsInitializedOp"}
PYTHON_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc"}
PIPELINE_OPS = {"IteratorGetNext", "IteratorV2", "OneShotIterator", "MakeIterator", "QueueDequeueV2", "QueueDequeueManyV2",
                "QueueDequeueUpToV2", "FIFOQueueV2", "RandomShuffleQueueV2", "ReaderReadV2", "TFRecordReaderV2"}


def _training_only(node: Node) -> bool:
    op = node.op
    return (op in TRAINING_EXACT or op.startswith(("Apply", "ResourceApply", "SparseApply", "ResourceSparseApply"))
            or op.endswith(("Grad", "GradV2", "GradV3", "GradGrad")) or "Backprop" in op)


def _why(node: Node) -> str | None:
    if _training_only(node):
        return "training only (gradients, optimizer updates, checkpoint saving)"
    if node.op.startswith("FusedBatchNorm") and node.attrs.get("is_training"):
        return "batch normalization in training mode (is_training=True: batch statistics instead of the moving averages)"
    if node.op in VARIABLE_OPS:
        return "a variable: the graph is not frozen"
    if node.op in PYTHON_OPS:
        return "Python code called from the graph, which no converter can carry"
    if node.op in PIPELINE_OPS:
        return "an input pipeline (queues, iterators, readers) rather than a placeholder"
    return None


def ancestors(info: GraphDefInfo, names) -> set[str]:
    nodes = info.by_name()
    todo, seen = list(names), set()
    while todo:
        n = todo.pop()
        if n in seen or n not in nodes:
            continue
        seen.add(n)
        todo.extend(_source(i) for i in nodes[n].inputs)
    return seen


def unconvertible(info: GraphDefInfo, outputs: tuple[str, ...], whole_graph: bool) -> dict[str, list[str]]:
    """{reason: [op (node), ...]} for the nodes that stop a conversion: those computing ``outputs``, or with
    ``whole_graph`` every node (the outputs were guessed, so a training step beside them counts too)."""
    keep = None if whole_graph else ancestors(info, outputs)
    found: dict[str, list[str]] = {}
    for n in info.nodes:
        if keep is not None and n.name not in keep:
            continue
        why = _why(n)
        if why:
            found.setdefault(why, [])
            if len(found[why]) < 6:
                found[why].append(f"{n.op} ({n.name})")
    return found
