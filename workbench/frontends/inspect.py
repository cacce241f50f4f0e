"""``inspect``: describe a model: format, signature, parameters, per-layer MACs and ops.

.tflite and .onnx are described from their graphs with the core install; Keras and
PyTorch models from the framework objects (one row per layer with weights or compute).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from workbench.core.files import sha256_file
from workbench.frontends.handle import ModelHandle
from workbench.core.registry import Registry

LAYER_TABLES: Registry = Registry("framework")


@dataclass(frozen=True)
class LayerTable:
    """What a framework's table function returns: one row per layer, the model's parameter count,
    and, when MACs cannot be counted for this kind of model, why."""

    rows: list
    parameters: int | None  # None: the format does not say
    macs_unknown: str | None = None
    facts: dict | None = None  # more for the description (how shapes were found)


def describe(handle: ModelHandle) -> dict:
    table = LAYER_TABLES.get(handle.framework)(handle)
    layers = table.rows
    p = handle.path
    files = [p]
    if handle.format == "onnx" and handle.meta.get("graph") is not None:
        from workbench.frontends.onnx_reader import model_files

        files = model_files(p, handle.meta["graph"])  # with its external data (model.onnx.data)
    size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else sum(f.stat().st_size for f in files)
    return {
        "path": str(p),
        "format": handle.format,
        "framework": handle.framework,
        "file_bytes": size,
        **({"external_data": [f.name for f in files[1:]]} if len(files) > 1 else {}),
        "sha256": sha256_file(p),
        "inputs": [s.to_dict() for s in handle.inputs],
        "outputs": [s.to_dict() for s in handle.outputs],
        "parameters": None if table.parameters is None else int(table.parameters),
        "macs": None if table.macs_unknown else int(sum(r.get("macs") or 0 for r in layers)),
        **({"note": table.macs_unknown} if table.macs_unknown else {}),
        **({} if table.macs_unknown else _partial(layers)),
        **(table.facts or {}),
        **_hybrid(handle),
        "op_counts": dict(Counter(r["op"] for r in layers)),
        "layers": layers,
    }


def _hybrid(handle: ModelHandle) -> dict:
    """A .tflite with quantized weights under float activations: ``hybrid`` and a note saying so."""
    if handle.format != "tflite" or handle.meta.get("graph") is None:
        return {}
    from workbench.frontends.tflite_reader import hybrid_weights

    h = hybrid_weights(handle.meta["graph"])
    if h is None:
        return {}
    tflm = "; TFLite Micro has no hybrid kernels" if h["hybrid_ops"] else ""
    return {"hybrid": h, "note": f"{h['summary']} ({h['hybrid_ops']} hybrid op(s), {h['dequantize_ops']} DEQUANTIZE of "
                                 f"weights){tflm}; quantizing it again starts from its dequantized weights"}


def _partial(layers: list) -> dict:
    """When some ops' MACs are unknown (a dynamic dimension), the total is partial: say so, and which ops."""
    unknown = [r for r in layers if r.get("macs", 0) is None]
    if not unknown:
        return {}
    kinds = Counter(r["op"] for r in unknown)
    return {"macs_partial": {"unknown_ops": len(unknown), "ops": dict(kinds),
                             "reason": "their shapes are unknown (dynamic dimensions); the total counts the other ops only",
                             "hint": "Pass --input-shape (batch first, e.g. 1,3,640,640) to count them."}}


def _graph_rows(handle: ModelHandle) -> LayerTable:
    g = handle.meta.get("graph")
    if g is None:
        return LayerTable([], 0, f"the {handle.format} file's graph could not be read")
    facts = {}
    if g.format == "onnx":
        from workbench.frontends.onnx_shapes import run_shapes, unknown_dims

        opts = handle.meta.get("load_options")
        given = getattr(opts, "input_shape", None)
        if given is not None or unknown_dims(g):
            g, run = run_shapes(handle.path, g, given)
            facts["shapes_from_run"] = run
    return LayerTable(_op_rows(g), g.parameters, facts=facts or None)


def _op_rows(g) -> list[dict]:
    """One row per op of a Graph: its output's shape and dtype, the constants it reads, its MACs."""
    rows = []
    for op in g.ops:
        out = g.tensor(op.outputs[0]) if op.outputs else None
        params = sum((g.tensors[i].elements or 0) for i in op.inputs if i >= 0 and g.tensors[i].const)
        rows.append({
            "name": op.name, "op": op.kind, "version": op.version,
            "shape": list(out.shape) if out is not None and out.shape is not None else None,
            "dtype": out.dtype if out is not None else g.op_dtype(op), "params": params, "macs": g.macs_known(op),
        })
    return rows


LAYER_TABLES.add("tflite", _graph_rows)
LAYER_TABLES.add("onnx", _graph_rows)


@LAYER_TABLES.register("executorch")
def _pte_rows(handle: ModelHandle) -> LayerTable:
    """An ExecuTorch program: its instructions (ExecuTorch kernels and backend delegate calls) and sizes, and the
    layers of its XNNPACK delegates read from their graphs (:mod:`workbench.frontends.xnnpack_graph`), each as the
    TFLite op XNNPACK runs for it, with parameters and MACs. Another backend's blob is opaque: no layers then."""
    from workbench.core.errors import ModelFormatError
    from workbench.frontends.xnnpack_graph import program_graph

    program = handle.meta.get("program")
    method = program.method(handle.meta.get("method", "forward")) if program is not None else None
    facts = {}
    if method is not None:
        facts["program"] = {"instructions": list(method.instructions), "delegates": list(method.delegates),
                            "operators": list(method.operators), "program_bytes": program.program_bytes,
                            "segment_bytes": program.segment_bytes}
    try:
        g = program_graph(handle.path)
    except ModelFormatError as exc:
        return LayerTable([], None, f"the program's layers could not be read ({exc}); inspect the PyTorch model it "
                                    "came from", facts=facts)
    facts["layers_from"] = "the XNNPACK delegates' graphs, each node as the TFLite op XNNPACK runs for it"
    return LayerTable(_op_rows(g), g.parameters, facts=facts)


@LAYER_TABLES.register("tf1")
def _graphdef_rows(handle: ModelHandle) -> LayerTable:
    """A TF1 frozen graph, read without TensorFlow: one row per compute node (constants and the Identity
    reads of frozen variables left out), its weights counted from the constants it reads."""
    from workbench.frontends.graphdef import elements, shape_attr

    info = handle.meta["graphdef"]
    nodes = info.by_name()

    def const_size(name: str) -> int:
        n = nodes.get(name.lstrip("^").split(":")[0])
        while n is not None and n.op == "Identity" and n.inputs:
            n = nodes.get(n.inputs[0].split(":")[0])
        return elements(n.attrs.get("value_shape")) if n is not None and n.op == "Const" else 0

    rows = []
    for n in info.nodes:
        if n.op in ("Const", "NoOp") or (n.op == "Identity" and all(const_size(i) for i in n.inputs)):
            continue
        shapes = n.attrs.get("_output_shapes") if isinstance(n.attrs.get("_output_shapes"), list) else [shape_attr(n, "shape")]
        rows.append({"name": n.name, "op": n.op, "shape": list(shapes[0]) if shapes and isinstance(shapes[0], tuple) else None,
                     "dtype": str(n.attrs.get("T") or n.attrs.get("dtype") or ""),
                     "params": sum(const_size(i) for i in n.inputs if not i.startswith("^")), "macs": 0})
    return LayerTable(rows, info.parameters, "MACs are not counted for TF1 frozen graphs (read without TensorFlow, "
                      "shapes are not propagated); outputs are the nodes nothing consumes unless --outputs names them")


@LAYER_TABLES.register("keras")
def _keras_rows(handle: ModelHandle) -> LayerTable:
    model = handle.obj
    if model is None or not hasattr(model, "layers"):  # a SavedModel without Keras metadata: no layers to read
        return LayerTable([], _savedmodel_parameters(handle), "MACs are not counted for a SavedModel without Keras "
                          "metadata (it has no layers to read); export it to .tflite and inspect that for per-op MACs")
    rows = []
    for layer in _flat_layers(model):
        cls = type(layer).__name__
        if cls == "InputLayer":
            continue
        try:
            out_shape = tuple(layer.output.shape)
        except (AttributeError, ValueError):
            out_shape = None
        params = int(layer.count_params()) if layer.built else 0
        macs = _keras_macs(layer, cls, out_shape)
        rows.append({"name": layer.name, "op": cls, "shape": [d for d in out_shape] if out_shape else None,
                     "dtype": str(getattr(layer, "compute_dtype", "float32")), "params": params, "macs": macs})
    return LayerTable(rows, int(model.count_params()))


def _savedmodel_parameters(handle: ModelHandle) -> int:
    """Elements of a SavedModel's variables, read from its checkpoint (optimizer slots and counters left out)."""
    from pathlib import Path

    prefix = Path(handle.path) / "variables" / "variables"
    if handle.format != "savedmodel" or not prefix.with_suffix(".index").is_file():
        return 0
    import tensorflow as tf

    skip = (".OPTIMIZER_SLOT", "optimizer/", "save_counter", "_CHECKPOINTABLE_OBJECT_GRAPH")
    return int(sum(math.prod(shape) for name, shape in tf.train.list_variables(str(prefix))
                   if not any(k in name for k in skip)))


def _flat_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            yield from _flat_layers(layer)
        else:
            yield layer


def _keras_macs(layer, cls: str, out_shape) -> int:
    if not out_shape:
        return 0
    fn = KERAS_MACS.get(cls)
    if fn is None:
        return 0
    out = math.prod(d for d in out_shape[1:] if d)
    try:
        return int(fn(layer, out))
    except (AttributeError, TypeError, ValueError, IndexError):
        return 0


def _kernel(layer, *names):
    """A weight by its name in Keras 3 or tf_keras (DepthwiseConv2D: depthwise_kernel in tf_keras, kernel in Keras 3)."""
    for n in names:
        w = getattr(layer, n, None)
        if w is not None:
            return tuple(int(d) for d in w.shape)
    raise AttributeError(f"{type(layer).__name__} has none of {names}")


def _in_shape(layer) -> tuple:
    x = layer.input
    x = x[0] if isinstance(x, (list, tuple)) else x
    return tuple(x.shape)


def _k_conv(layer, out):  # kernel (k..., cin/groups, cout): each output element sums over the kernel window
    return out * math.prod(_kernel(layer, "kernel")[:-1])


def _k_conv_transpose(layer, out):  # kernel (k..., cout, cin): each input element scatters into k... x cout outputs
    k = _kernel(layer, "kernel")
    return math.prod(d for d in _in_shape(layer)[1:] if d) * math.prod(k[:-2]) * k[-2]


def _k_depthwise(layer, out):  # depthwise kernel (k..., cin, multiplier)
    return out * math.prod(_kernel(layer, "depthwise_kernel", "kernel")[:-2])


def _k_separable(layer, out):  # depthwise (k..., cin, mult) then pointwise (1..., cin*mult, cout)
    dk = _kernel(layer, "depthwise_kernel")
    pk = _kernel(layer, "pointwise_kernel")
    positions = out // pk[-1]
    return positions * dk[-2] * dk[-1] * math.prod(dk[:-2]) + out * pk[-2]


def _k_dense(layer, out):
    return out * _kernel(layer, "kernel")[0]


GATES = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}


def _k_recurrent(layer, out):
    """Every timestep: gates x units x (input features + units) for the input and recurrent kernels."""
    cell = getattr(layer, "cell", layer)
    k = _kernel(cell, "kernel")  # (features, gates*units)
    r = _kernel(cell, "recurrent_kernel")  # (units, gates*units)
    steps = _in_shape(layer)[1]
    return int(steps) * (k[0] * k[1] + r[0] * r[1])


def _k_bidirectional(layer, out):
    total = 0
    for sub in (layer.forward_layer, layer.backward_layer):
        fn = KERAS_MACS.get(type(sub).__name__)
        total += fn(sub, out) if fn else 0
    return total


def _k_attention(layer, out):
    """MultiHeadAttention: the query/key/value/output projections and the two attention matmuls."""
    shapes = getattr(layer, "_build_shapes_dict", None) or {}  # Keras 3; tf_keras keeps _query_shape...
    q = tuple(shapes.get("query_shape") or layer._query_shape)
    v = tuple(shapes.get("value_shape") or layer._value_shape)
    k = tuple(shapes.get("key_shape") or getattr(layer, "_key_shape", None) or v)
    heads, kd = layer.num_heads, layer.key_dim
    vd = layer.value_dim or kd
    tq, tk = math.prod(q[1:-1]), math.prod(k[1:-1])
    proj = tq * q[-1] * heads * kd + tk * k[-1] * heads * kd + tk * v[-1] * heads * vd
    attn = heads * tq * tk * (kd + vd)
    return proj + attn + out * heads * vd


KERAS_MACS = {
    "Conv1D": _k_conv, "Conv2D": _k_conv, "Conv3D": _k_conv,
    "Conv1DTranspose": _k_conv_transpose, "Conv2DTranspose": _k_conv_transpose, "Conv3DTranspose": _k_conv_transpose,
    "DepthwiseConv1D": _k_depthwise, "DepthwiseConv2D": _k_depthwise,
    "SeparableConv1D": _k_separable, "SeparableConv2D": _k_separable,
    "Dense": _k_dense, "EinsumDense": None,
    "LSTM": _k_recurrent, "GRU": _k_recurrent, "SimpleRNN": _k_recurrent, "Bidirectional": _k_bidirectional,
    "MultiHeadAttention": _k_attention,
}
KERAS_MACS = {k: v for k, v in KERAS_MACS.items() if v is not None}


@LAYER_TABLES.register("torch")
def _torch_rows(handle: ModelHandle) -> LayerTable:
    """One row per ATen op of the model traced with torch.export; MACs from the traced shapes."""
    import torch

    model = handle.obj
    if isinstance(model, torch.jit.ScriptModule):
        # TorchScript cannot be re-traced by torch.export: list layers with their parameters; MACs stay unknown.
        rows = [{"name": n, "op": m.original_name, "shape": None, "dtype": "", "params": int(sum(p.numel() for p in m.parameters(recurse=False))),
                 "macs": 0} for n, m in model.named_modules() if n and not list(m.children())]
        return LayerTable(rows, int(sum(p.numel() for p in model.parameters())),
                          "TorchScript cannot be traced by torch.export; save an ExportedProgram (.pt2) for per-layer MACs")
    if not handle.inputs or handle.inputs[0].shape is None:
        return LayerTable([], int(sum(p.numel() for p in model.parameters())), "the input shape is unknown; pass --input-shape")
    ep = handle.meta.get("exported_program")
    if ep is None:
        ep = torch.export.export(model, (torch.zeros(*[d or 1 for d in handle.inputs[0].shape]),))
    params = {**ep.graph_signature.inputs_to_parameters, **ep.graph_signature.inputs_to_buffers}
    state = ep.state_dict
    rows = []
    batch = max(1, int(handle.inputs[0].shape[0] or 1))  # MACs per inference: the traced graph runs `batch` samples
    for node in ep.graph.nodes:
        if node.op != "call_function" or not hasattr(node.target, "_schema"):
            continue
        val = node.meta.get("val")
        out = val[0] if isinstance(val, (tuple, list)) else val
        if not isinstance(out, torch.Tensor):
            continue
        op = node.target._schema.name.split("::")[-1]
        args = [b for a in node.args for b in (a if isinstance(a, (list, tuple)) else (a,))]  # rnn weights come as a list
        weights = [a for a in args if isinstance(a, torch.fx.Node) and a.name in params]
        n_params = sum(int(state[params[w.name]].numel()) for w in weights if params[w.name] in state)
        stack = node.meta.get("nn_module_stack") or {}
        layer = list(stack.values())[-1][0] if stack else node.name
        rows.append({"name": layer or node.name, "op": op, "shape": list(out.shape), "dtype": str(out.dtype).replace("torch.", ""),
                     "params": n_params, "macs": _aten_macs(op, node, out) // batch})
    return LayerTable(rows, int(sum(v.numel() for k, v in state.items() if k in ep.graph_signature.parameters)))


def _shape(arg) -> tuple:
    return tuple(int(d) for d in arg.meta["val"].shape)


def _a_conv(node, out):  # weight [Cout, Cin/groups, k...]; aten.convolution(..., transposed=True) as conv_transpose
    if node.target._schema.name.split("::")[-1] == "convolution" and len(node.args) > 6 and node.args[6]:
        return _a_conv_transpose(node, out)
    return out.numel() * math.prod(_shape(node.args[1])[1:])


def _a_conv_transpose(node, out):  # weight [Cin, Cout/groups, k...]: each input element scatters into Cout/groups x k outputs
    return math.prod(_shape(node.args[0])) * math.prod(_shape(node.args[1])[1:])


def _a_linear(node, out):  # weight [out, in]
    return out.numel() * _shape(node.args[1])[-1]


def _a_matmul(node, out, a_index=0):  # [..., M, K] @ [..., K, N]
    return out.numel() * _shape(node.args[a_index])[-1]


def _a_sdpa(node, out):  # q [..., L, E], k [..., S, E], v [..., S, Ev]: q k^T, then softmax(.) v
    q, k, v = _shape(node.args[0]), _shape(node.args[1]), _shape(node.args[2])
    lead = math.prod(q[:-2])
    return lead * q[-2] * k[-2] * (q[-1] + v[-1])


RNN_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


def _a_rnn(node, out, gates):
    """aten.lstm/gru(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first):
    every timestep and direction, gates x hidden x (input + hidden), summed over the weight matrices."""
    x = _shape(node.args[0])
    steps_batch = math.prod(x[:-1])  # batch x timesteps, either order
    weights = [w for w in node.args[2] if len(_shape(w)) == 2]  # w_ih [gates*H, in], w_hh [gates*H, H] per layer/direction
    return steps_batch * sum(math.prod(_shape(w)) for w in weights)


ATEN_MACS = {
    "convolution": _a_conv, "conv1d": _a_conv, "conv2d": _a_conv, "conv3d": _a_conv,
    "conv_transpose1d": _a_conv_transpose, "conv_transpose2d": _a_conv_transpose, "conv_transpose3d": _a_conv_transpose,
    "linear": _a_linear,
    "mm": _a_matmul, "bmm": _a_matmul, "matmul": _a_matmul,
    "addmm": lambda node, out: _a_matmul(node, out, 1), "baddbmm": lambda node, out: _a_matmul(node, out, 1),
    "scaled_dot_product_attention": _a_sdpa, "_scaled_dot_product_flash_attention_for_cpu": _a_sdpa,
    "_scaled_dot_product_efficient_attention": _a_sdpa, "_scaled_dot_product_flash_attention": _a_sdpa,
    **{k: (lambda g: lambda node, out: _a_rnn(node, out, g))(g) for k, g in RNN_GATES.items()},
}


def _aten_macs(op: str, node, out) -> int:
    """MACs of one ATen op over the traced batch (the caller divides by the batch)."""
    fn = ATEN_MACS.get(op)
    if fn is None:
        return 0
    try:
        return int(fn(node, out))
    except (AttributeError, KeyError, IndexError, TypeError):
        return 0
