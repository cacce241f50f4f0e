"""Read an ONNX Runtime ``.ort`` file into a :class:`workbench.frontends.graph.Graph`.

An .ort file is a flatbuffer (schema ``onnxruntime/core/flatbuffers/schema/ort.fbs``); ONNX Runtime's
wheel ships its generated Python readers as ``onnxruntime.tools.ort_format_model`` (importing that
package puts ``ort_flatbuffers_py`` on ``sys.path``), and ``flatbuffers`` is one of onnxruntime's own
dependencies, so this reads with the core install. The adapter is this one module;
``tests/test_onnx_trust.py`` reads a real .ort written by the installed ONNX Runtime and fails when
the generated readers change.

The graph is the one ONNX Runtime saved: after its basic optimizations (constant folding,
fusions), with the shapes its shape inference found, and op types as ONNX names them.
"""

from __future__ import annotations

from pathlib import Path

from workbench.core.errors import ModelFormatError
from workbench.frontends.graph import Graph, Op, Tensor
from workbench.frontends.onnx_reader import ONNX_TYPES

FBS_INTS, FBS_INT, FBS_FLOATS, FBS_FLOAT, FBS_STRING = 7, 2, 6, 1, 3  # fbs.AttributeType values read here


def _fbs():
    try:
        from onnxruntime.tools import ort_format_model  # noqa: F401  (adds ort_flatbuffers_py to sys.path)
        from ort_flatbuffers_py import fbs
    except ImportError as exc:  # pragma: no cover - an onnxruntime build without its tools
        raise ModelFormatError(f"This onnxruntime install has no .ort reader (onnxruntime.tools.ort_format_model): {exc}",
                               hint="Inspect the .onnx file the .ort was converted from.") from None
    return fbs


def _text(b) -> str:
    return b.decode("utf-8", "replace") if isinstance(b, (bytes, bytearray)) else (b or "")


def _shape(type_info) -> tuple[tuple | None, str]:
    """(shape with None for unknown dims, dtype) of a tensor's TypeInfo; (None, "") when not a tensor."""
    fbs = _fbs()
    if type_info is None or type_info.ValueType() != fbs.TypeInfoValue.TypeInfoValue.tensor_type:
        return None, ""
    tt = fbs.TensorTypeAndShape.TensorTypeAndShape()
    table = type_info.Value()
    tt.Init(table.Bytes, table.Pos)
    dtype = ONNX_TYPES.get(tt.ElemType(), f"type{tt.ElemType()}")
    shape = tt.Shape()
    if shape is None:
        return None, dtype
    dims = []
    for j in range(shape.DimLength()):
        v = shape.Dim(j).Value()
        known = v is not None and v.DimType() == fbs.DimensionValueType.DimensionValueType.VALUE
        dims.append(int(v.DimValue()) if known else None)
    return tuple(dims), dtype


def _attrs(node) -> dict:
    out = {}
    for j in range(node.AttributesLength()):
        a = node.Attributes(j)
        kind, name = a.Type(), _text(a.Name())
        if kind == FBS_INTS:
            out[name] = [int(a.Ints(k)) for k in range(a.IntsLength())]
        elif kind == FBS_INT:
            out[name] = int(a.I())
        elif kind == FBS_FLOATS:
            out[name] = [float(a.Floats(k)) for k in range(a.FloatsLength())]
        elif kind == FBS_FLOAT:
            out[name] = float(a.F())
        elif kind == FBS_STRING:
            out[name] = _text(a.S())
    return out


def read_ort(path: str | Path) -> Graph:
    p = Path(path)
    fbs = _fbs()
    buf = bytearray(p.read_bytes())
    try:
        if not fbs.InferenceSession.InferenceSession.InferenceSessionBufferHasIdentifier(buf, 0):
            raise ModelFormatError(f"'{p}' is not an ONNX Runtime .ort file (no ORTM identifier).")
        session = fbs.InferenceSession.InferenceSession.GetRootAsInferenceSession(buf, 0)
        model = session.Model()
        if model is None or model.Graph() is None:
            raise ModelFormatError(f"'{p}' is an .ort file without a model graph.")
        return _graph(model, _text(session.OrtVersion()))
    except ModelFormatError:
        raise
    except Exception as exc:  # flatbuffers raises struct/index errors on a damaged file
        raise ModelFormatError(f"'{p}' is not a valid .ort file ({type(exc).__name__}: {exc}).",
                               hint="The file is probably truncated or corrupted; convert the .onnx again.") from None


def _graph(model, ort_version: str) -> Graph:
    g = model.Graph()
    tensors: list[Tensor] = []
    index: dict[str, int] = {}

    def add(name: str, shape, dtype: str, const: bool) -> int:
        if name not in index:
            index[name] = len(tensors)
            tensors.append(Tensor(index=len(tensors), name=name, shape=shape, dtype=dtype or "float32", const=const))
        return index[name]

    for j in range(g.InitializersLength()):
        t = g.Initializers(j)
        add(_text(t.Name()), tuple(int(t.Dims(k)) for k in range(t.DimsLength())),
            ONNX_TYPES.get(t.DataType(), f"type{t.DataType()}"), True)
    args = {}
    for j in range(g.NodeArgsLength()):
        a = g.NodeArgs(j)
        args[_text(a.Name())] = _shape(a.Type())
    for name, (shape, dtype) in args.items():
        if name not in index and name:
            add(name, shape, dtype, False)
    opsets = {}
    for j in range(model.OpsetImportLength()):
        o = model.OpsetImport(j)
        opsets[_text(o.Domain()) or "ai.onnx"] = int(o.Version())
    nodes = sorted((g.Nodes(j) for j in range(g.NodesLength())), key=lambda n: n.Index())
    ops = []
    for n in nodes:
        ins = tuple(index[_text(n.Inputs(k))] if _text(n.Inputs(k)) in index else -1 for k in range(n.InputsLength()))
        outs = tuple(index[_text(n.Outputs(k))] for k in range(n.OutputsLength()) if _text(n.Outputs(k)) in index)
        domain = _text(n.Domain())
        ops.append(Op(index=len(ops), kind=_text(n.OpType()), version=int(n.SinceVersion()), inputs=ins, outputs=outs,
                      name=_text(n.Name()), options=_attrs(n), custom=bool(domain) and domain not in ("ai.onnx", "com.microsoft")))
    inputs = tuple(index[_text(g.Inputs(j))] for j in range(g.InputsLength())
                   if _text(g.Inputs(j)) in index and not tensors[index[_text(g.Inputs(j))]].const)
    outputs = tuple(index[_text(g.Outputs(j))] for j in range(g.OutputsLength()) if _text(g.Outputs(j)) in index)
    meta = {"ir_version": int(model.IrVersion()), "opsets": opsets, "producer": _text(model.ProducerName()),
            "ort_version": ort_version}
    return Graph(format="ort", tensors=tuple(tensors), ops=tuple(ops), inputs=inputs, outputs=outputs, meta=meta)
