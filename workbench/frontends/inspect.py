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
    parameters: int
    macs_unknown: str | None = None


def describe(handle: ModelHandle) -> dict:
    table = LAYER_TABLES.get(handle.framework)(handle)
    layers = table.rows
    p = handle.path
    size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
    return {
        "path": str(p),
        "format": handle.format,
        "framework": handle.framework,
        "file_bytes": size,
        "sha256": sha256_file(p),
        "inputs": [s.to_dict() for s in handle.inputs],
        "outputs": [s.to_dict() for s in handle.outputs],
        "parameters": int(table.parameters),
        "macs": None if table.macs_unknown else int(sum(r.get("macs", 0) for r in layers)),
        **({"note": table.macs_unknown} if table.macs_unknown else {}),
        "op_counts": dict(Counter(r["op"] for r in layers)),
        "layers": layers,
    }


def _graph_rows(handle: ModelHandle) -> LayerTable:
    g = handle.meta["graph"]
    rows = []
    for op in g.ops:
        out = g.tensor(op.outputs[0]) if op.outputs else None
        params = sum((g.tensors[i].elements or 0) for i in op.inputs if i >= 0 and g.tensors[i].const)
        rows.append({
            "name": op.name, "op": op.kind, "version": op.version,
            "shape": list(out.shape) if out is not None and out.shape is not None else None,
            "dtype": g.op_dtype(op), "params": params, "macs": g.macs(op),
        })
    return LayerTable(rows, g.parameters)


LAYER_TABLES.add("tflite", _graph_rows)
LAYER_TABLES.add("onnx", _graph_rows)


@LAYER_TABLES.register("keras")
def _keras_rows(handle: ModelHandle) -> LayerTable:
    model = handle.obj
    if model is None or not hasattr(model, "layers"):
        return LayerTable([], 0)  # a SavedModel without Keras metadata: signature only
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


def _flat_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            yield from _flat_layers(layer)
        else:
            yield layer


def _keras_macs(layer, cls: str, out_shape) -> int:
    if not out_shape:
        return 0
    out = math.prod(d for d in out_shape[1:] if d)
    if cls in ("Conv2D", "Conv1D", "Conv3D"):
        k = layer.kernel.shape  # (kh, kw, cin/groups, cout)
        return out * math.prod(k[:-1])
    if cls == "DepthwiseConv2D":
        k = layer.kernel.shape  # (kh, kw, cin, mult)
        return out * k[0] * k[1]
    if cls == "SeparableConv2D":
        return 0
    if cls == "Dense":
        return out * layer.kernel.shape[0]
    return 0


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
    for node in ep.graph.nodes:
        if node.op != "call_function" or not hasattr(node.target, "_schema"):
            continue
        val = node.meta.get("val")
        out = val[0] if isinstance(val, (tuple, list)) else val
        if not isinstance(out, torch.Tensor):
            continue
        op = node.target._schema.name.split("::")[-1]
        weights = [a for a in node.args if isinstance(a, torch.fx.Node) and a.name in params]
        n_params = sum(int(state[params[w.name]].numel()) for w in weights if params[w.name] in state)
        stack = node.meta.get("nn_module_stack") or {}
        layer = list(stack.values())[-1][0] if stack else node.name
        rows.append({"name": layer or node.name, "op": op, "shape": list(out.shape), "dtype": str(out.dtype).replace("torch.", ""),
                     "params": n_params, "macs": _aten_macs(op, node, out)})
    return LayerTable(rows, int(sum(v.numel() for k, v in state.items() if k in ep.graph_signature.parameters)))


def _aten_macs(op: str, node, out) -> int:
    per_sample = out.numel() // max(1, out.shape[0]) if out.dim() else out.numel()
    try:
        if op == "convolution" or op.startswith("conv"):
            w = node.args[1].meta["val"].shape  # [Cout, Cin/groups, kh, kw]
            return per_sample * math.prod(w[1:])
        if op == "linear":
            return per_sample * node.args[1].meta["val"].shape[-1]
        if op in ("addmm", "mm", "bmm", "matmul"):
            a = node.args[-2 if op == "addmm" else 0].meta["val"].shape
            return per_sample * a[-1]
    except (AttributeError, KeyError, IndexError, TypeError):
        return 0
    return 0
