"""``inspect``: describe a model: format, signature, parameters, per-layer MACs and ops.

.tflite and .onnx are described from their graphs with the core install; Keras and
PyTorch models from the framework objects (one row per layer with weights or compute).
"""

from __future__ import annotations

import math
from collections import Counter

from workbench.files import sha256_file
from workbench.frontends.handle import ModelHandle
from workbench.registry import Registry

LAYER_TABLES: Registry = Registry("framework")


def describe(handle: ModelHandle) -> dict:
    layers = LAYER_TABLES.get(handle.framework)(handle)
    p = handle.path
    size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
    params = handle.meta.get("parameters")
    if params is None:
        params = sum(r.get("params", 0) for r in layers)
    return {
        "path": str(p),
        "format": handle.format,
        "framework": handle.framework,
        "file_bytes": size,
        "sha256": sha256_file(p),
        "inputs": [s.to_dict() for s in handle.inputs],
        "outputs": [s.to_dict() for s in handle.outputs],
        "parameters": int(params),
        "macs": int(sum(r.get("macs", 0) for r in layers)),
        "op_counts": dict(Counter(r["op"] for r in layers)),
        "layers": layers,
    }


def _graph_rows(handle: ModelHandle) -> list[dict]:
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
    handle.meta["parameters"] = g.parameters
    return rows


LAYER_TABLES.add("tflite", _graph_rows)
LAYER_TABLES.add("onnx", _graph_rows)


@LAYER_TABLES.register("keras")
def _keras_rows(handle: ModelHandle) -> list[dict]:
    model = handle.obj
    if model is None or not hasattr(model, "layers"):
        return []  # a SavedModel without Keras metadata: signature only
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
    handle.meta["parameters"] = int(model.count_params())
    return rows


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
def _torch_rows(handle: ModelHandle) -> list[dict]:
    import torch

    model = handle.obj
    if not handle.inputs or handle.inputs[0].shape is None:
        return []
    shape = [d or 1 for d in handle.inputs[0].shape]
    rows: list[dict] = []
    hooks = []

    def hook(mod, inp, out, name):
        o = out[0] if isinstance(out, (tuple, list)) else out
        n_out = o.numel() // max(1, o.shape[0])
        macs = 0
        if isinstance(mod, torch.nn.Conv2d | torch.nn.Conv1d):
            macs = n_out * (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)
        elif isinstance(mod, torch.nn.Linear):
            macs = n_out * mod.in_features
        params = sum(p.numel() for p in mod.parameters(recurse=False))
        rows.append({"name": name, "op": type(mod).__name__, "shape": [1, *o.shape[1:]], "dtype": str(o.dtype).replace("torch.", ""),
                     "params": int(params), "macs": int(macs)})

    if isinstance(model, torch.nn.Module) and not isinstance(model, torch.jit.ScriptModule):
        for name, mod in model.named_modules():
            if not list(mod.children()):
                hooks.append(mod.register_forward_hook(lambda m, i, o, n=name: hook(m, i, o, n)))
    try:
        with torch.no_grad():
            model(torch.zeros(*shape))
    finally:
        for h in hooks:
            h.remove()
    handle.meta["parameters"] = int(sum(p.numel() for p in model.parameters()))
    return rows
