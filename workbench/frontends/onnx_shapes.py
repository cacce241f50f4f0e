"""Shapes of every tensor of an .onnx graph from one ONNX Runtime run, for graphs with dynamic dims.

A file exported with dynamic axes records ``[N, 3, H, W]`` and, through the graph, little else
that is known; MACs cannot be counted from it. Given the input shape (``--input-shape``), ONNX
Runtime runs the model once on zeros of that shape with every node output made a graph output,
and the shapes (and dtypes) it produces replace the unknown ones. ONNX Runtime is part of the
core install, so this needs neither the ``onnx`` package nor a framework.

The extra outputs are added without re-serializing the model: protobuf merges repeated
occurrences of an embedded message field, so a second ``graph`` field holding only the extra
``output`` entries, appended to the file's bytes, extends the graph.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from workbench.frontends.graph import Graph

ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16", "tensor(uint16)": "uint16",
              "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(bool)": "bool"}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def with_outputs(model: bytes, names: list[str]) -> bytes:
    """``model`` (ModelProto bytes) with ``names`` added as graph outputs (ValueInfoProto with a name only)."""
    extra = b"".join(_field(12, _field(1, n.encode("utf-8"))) for n in names)
    return model + _field(7, extra)


def unknown_dims(graph: Graph) -> bool:
    """Whether a tensor an op reads or writes has an unknown shape or dimension (besides a batch of None)."""
    for op in graph.ops:
        for i in (*op.inputs, *op.outputs):
            t = graph.tensor(i)
            if t is not None and not t.const and t.elements is None:
                return True
    return False


def input_feeds(sess, first_shape: tuple | None) -> tuple[dict | None, str | None]:
    """Zeros for every input: the first one of ``first_shape`` when given; a dynamic batch is 1.
    (None, why) when a non-batch dimension stays unknown."""
    feeds = {}
    for k, i in enumerate(sess.get_inputs()):
        dt = ORT_DTYPES.get(i.type)
        if dt is None:
            return None, f"input '{i.name}' has type {i.type}"
        declared = list(i.shape or [])
        given = list(first_shape) if k == 0 and first_shape is not None else None
        if given is not None and len(given) != len(declared):
            return None, f"--input-shape {tuple(given)} has {len(given)} dims; input '{i.name}' has {len(declared)}"
        dims = []
        for j, d in enumerate(declared):
            g = given[j] if given is not None else None
            if g is not None:
                dims.append(int(g))
            elif isinstance(d, int) and d > 0:
                dims.append(d)
            elif j == 0:
                dims.append(1)
            else:
                return None, f"input '{i.name}' has the dynamic dimension {j} ('{d}')"
        feeds[i.name] = np.zeros(dims, dtype=dt)
    return feeds, None


def run_shapes(path: Path, graph: Graph, first_shape: tuple | None) -> tuple[Graph, dict]:
    """``graph`` with the shapes and dtypes one ONNX Runtime run gives to every node output, and a
    record of the run. When it cannot run (an input dimension unknown, a runtime error), ``graph``
    unchanged and the reason in the record."""
    import onnxruntime as ort

    names = [graph.tensors[i].name for op in graph.ops for i in op.outputs if graph.tensor(i) is not None]
    outputs = {graph.tensors[i].name for i in graph.outputs}
    extra = [n for n in dict.fromkeys(names) if n not in outputs]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # every node stays as written
    try:
        with tempfile.TemporaryDirectory(prefix="workbench-shapes-") as tmp:
            model = Path(tmp) / "model.onnx"
            model.write_bytes(with_outputs(Path(path).read_bytes(), extra))
            for name in graph.meta.get("external_data", ()):  # the weights beside the file
                src = Path(path).parent / name
                if src.is_file():
                    os.symlink(src.resolve(), Path(tmp) / name)
            sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
            feeds, why = input_feeds(sess, first_shape)
            if feeds is None:
                return graph, {"ran": False, "reason": why, "cause": "input_shape"}
            values = sess.run(None, feeds)
            out_names = [o.name for o in sess.get_outputs()]
    except Exception as exc:  # onnxruntime raises its own types; the static shapes still stand
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        return graph, {"ran": False, "reason": f"ONNX Runtime could not run it: {(lines[0] if lines else type(exc).__name__)[:300]}",
                       "cause": "runtime"}
    found = {n: v for n, v in zip(out_names, values) if isinstance(v, np.ndarray)}
    tensors = tuple(replace(t, shape=tuple(int(d) for d in found[t.name].shape), dtype=found[t.name].dtype.name)
                    if t.name in found and not t.const else t for t in graph.tensors)
    shapes = {name: list(v.shape) for name, v in feeds.items()}
    for i in graph.inputs:
        t = tensors[i]
        if t.name in shapes:
            tensors = tensors[:i] + (replace(t, shape=tuple(shapes[t.name])),) + tensors[i + 1:]
    info = {"ran": True, "inputs": shapes, "runtime": f"onnxruntime {ort.__version__}"}
    return replace(graph, tensors=tensors, meta={**graph.meta, "shapes_from_run": info}), info
