"""Carry a Keras model between Keras 3 and tf_keras (Keras 2), and rebuild it with changes.

Why: tensorflow-model-optimization (tfmot: pruning, quantization-aware training) accepts only
tf_keras models, while TensorFlow 2.16+ gives users Keras 3 models, which tfmot refuses and
tf_keras cannot even load (tensorflow/model-optimization#1119). This module closes that gap
without either library's private internals:

1. Read the model's functional graph from its public ``get_config()``: every layer's class,
   its own config and the tensors each call consumes (Keras 3 writes ``inbound_nodes`` as
   ``{"args": [...keras_history...]}``, Keras 2 as ``[[name, node, tensor, kwargs]]``; both are
   parsed into one neutral :class:`KerasGraph`).
2. Translate each layer config to the other API. Only standard layers on a tested whitelist
   are carried over; keys the target does not know are dropped only when they hold the
   target's implicit default (``lora_rank=None``, ``quantization_config=None``...), otherwise
   the layer is refused. Initializers are dropped on purpose: every weight is copied.
3. Re-create each layer in the target API, call it on the translated input tensors in
   topological order, and copy the weights with ``get_weights``/``set_weights`` (the weight
   order of every whitelisted layer is the same in both APIs; shapes are checked).

Anything else (custom and Lambda layers, nested models, subclassed models, layers called
with tensor keyword arguments) is refused with an error naming every such layer, before any
work is done. :func:`rebuild` is also what structured (channel) pruning uses to build the
same graph with fewer filters.

``import keras`` and ``import tf_keras`` are always explicit: importing tfmot sets
``TF_USE_LEGACY_KERAS=1`` for the whole process, after which ``tf.keras`` means tf_keras.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from workbench.core.errors import UnsupportedError

# Standard layers whose config and weight order match between Keras 3 and tf_keras.
SUPPORTED = frozenset({
    "InputLayer", "Conv1D", "Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose", "Dense",
    "BatchNormalization", "LayerNormalization", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax", "Activation",
    "Dropout", "SpatialDropout2D", "GaussianNoise", "Flatten", "Reshape", "Permute", "ZeroPadding2D", "Cropping2D",
    "UpSampling2D", "MaxPooling2D", "AveragePooling2D", "MaxPooling1D", "AveragePooling1D",
    "GlobalAveragePooling2D", "GlobalMaxPooling2D", "GlobalAveragePooling1D", "GlobalMaxPooling1D",
    "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate", "Rescaling",
})

# Config keys one API has and the other lacks, with the value that means "not used".
BENIGN_DEFAULTS = {
    "lora_rank": None, "lora_alpha": None, "quantization_config": None, "optional": False, "rms_scaling": False,
    "synchronized": False, "build_config": None, "sparse": False, "ragged": False, "seed": None,
    "input_axes": None, "output_axes": None, "axis_order": None, "data_format": None, "groups": 1,
}
# Renamed keys: (class, Keras 3 name) <-> tf_keras name.
RENAMES = {("LeakyReLU", "negative_slope"): "alpha"}
DROP_ALWAYS = ("kernel_initializer", "bias_initializer", "depthwise_initializer", "pointwise_initializer",
               "beta_initializer", "gamma_initializer", "moving_mean_initializer", "moving_variance_initializer",
               "alpha_initializer")


@dataclass(frozen=True)
class Ref:
    """One tensor: output ``tensor`` of call number ``node`` of layer ``layer``."""

    layer: str
    node: int = 0
    tensor: int = 0


@dataclass(frozen=True)
class Call:
    inputs: tuple[Ref, ...]
    as_list: bool  # the layer takes a list of tensors (Add, Concatenate...)
    kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class LayerNode:
    name: str
    class_name: str
    config: dict  # neutral: plain values, dtype as a string, no initializers
    calls: tuple[Call, ...]
    output_shape: tuple | None = None  # of the first call, from the live model
    input_shape: tuple | None = None


@dataclass(frozen=True)
class KerasGraph:
    name: str
    layers: tuple[LayerNode, ...]
    inputs: tuple[Ref, ...]
    outputs: tuple[Ref, ...]
    api: int  # 3 for Keras 3, 2 for tf_keras

    def layer(self, name: str) -> LayerNode:
        for node in self.layers:
            if node.name == name:
                return node
        raise KeyError(name)

    def consumers(self, name: str) -> list[LayerNode]:
        return [n for n in self.layers if any(r.layer == name for c in n.calls for r in c.inputs)]


def keras_module(api: int):
    """The Keras package for an API level, imported explicitly (never through tf.keras)."""
    from workbench.frontends.keras_models import import_keras3, import_tf_keras

    return import_keras3() if api == 3 else import_tf_keras()


def api_of(model) -> int:
    """3 for a Keras 3 model, 2 for a tf_keras one (subclasses included)."""
    for klass in type(model).__mro__:
        mod = klass.__module__
        if mod.startswith(("tf_keras", "tensorflow_model_optimization")):
            return 2
        if mod.startswith("keras"):
            return 3
    raise UnsupportedError(f"'{type(model).__name__}' is not a Keras model.")


# ---------------------------------------------------------------- reading a graph

def read_graph(model, where: str = "the model") -> KerasGraph:
    """The neutral graph of a functional or Sequential Keras 3 / tf_keras model."""
    api = api_of(model)
    cls = type(model).__name__
    try:
        cfg = model.get_config()
    except NotImplementedError:
        cfg = None
    if not isinstance(cfg, dict) or "layers" not in cfg:
        raise UnsupportedError(
            f"{where} is a subclassed Keras model ({cls}) without a layer graph in its config.",
            hint="Build it with the functional API (keras.Model(inputs, outputs)) or keras.Sequential.")
    layer_cfgs = cfg["layers"]
    sequential = "input_layers" not in cfg
    problems = []
    nodes = []
    for i, lc in enumerate(layer_cfgs):
        name = lc.get("name") or lc.get("config", {}).get("name")
        klass = lc.get("class_name", "?")
        problem = _unsupported_reason(lc, klass)
        if problem:
            problems.append(f"'{name}' ({klass}: {problem})")
            continue
        if sequential:
            prev = nodes[-1].name if nodes else None
            calls = () if klass == "InputLayer" else ((Call((Ref(prev),), False),) if prev else ())
        else:
            try:
                calls = tuple(_parse_inbound(node, api) for node in lc.get("inbound_nodes", []))
            except ValueError as exc:
                problems.append(f"'{name}' ({klass}: {exc})")
                continue
        nodes.append(LayerNode(name=name, class_name=klass, config=_neutral_config(lc.get("config", {})), calls=calls))
    if problems:
        raise UnsupportedError(
            f"{where} has layers that cannot be carried between Keras 3 and tf_keras: " + "; ".join(problems) + ".",
            hint="Supported: standard layers (" + ", ".join(sorted(SUPPORTED)) + "). Replace custom or Lambda layers "
            "with standard ones, or prune/train the model in its own framework.")
    if sequential:
        if not nodes or nodes[0].class_name != "InputLayer":
            shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else None
            if shape is None:
                raise UnsupportedError(f"{where} is a Sequential model without a known input shape.",
                                       hint="Build it with keras.Input(shape) as its first layer.")
            inp = LayerNode(name=f"{cfg.get('name', 'model')}_input", class_name="InputLayer",
                            config={"batch_shape": list(shape), "dtype": "float32"}, calls=())
            first = replace(nodes[0], calls=(Call((Ref(inp.name),), False),)) if nodes else None
            nodes = [inp] + ([first] if first else []) + nodes[1:]
        inputs, outputs = (Ref(nodes[0].name),), (Ref(nodes[-1].name),)
    else:
        inputs, outputs = _refs(cfg["input_layers"]), _refs(cfg["output_layers"])
    nodes = _with_shapes(model, nodes)
    return KerasGraph(name=cfg.get("name", "model"), layers=tuple(nodes), inputs=inputs, outputs=outputs, api=api)


def _unsupported_reason(lc: dict, klass: str) -> str | None:
    if klass in ("Functional", "Model", "Sequential"):
        return "a nested model; flatten it into one functional model"
    if klass == "Lambda":
        return "a Lambda layer holds Python code"
    if klass == "TFOpLambda" or klass.startswith("TFOp"):
        return "a raw TensorFlow op; use the matching Keras layer"
    reg = lc.get("registered_name")
    module = lc.get("module")
    if (reg and reg != klass) or (module and not str(module).startswith(("keras.layers", "keras.src.layers", "tf_keras"))):
        return "a custom layer"
    if klass not in SUPPORTED:
        return "not on the list of standard layers this bridge carries over"
    return None


def _parse_inbound(node, api: int) -> Call:
    if isinstance(node, dict):  # Keras 3
        args, kwargs = node.get("args", []), dict(node.get("kwargs", {}))
        if any(_has_tensor(v) for v in kwargs.values()):
            raise ValueError("called with tensor keyword arguments")
        if len(args) != 1:
            raise ValueError(f"called with {len(args)} positional arguments")
        arg = args[0]
        if isinstance(arg, list):
            return Call(tuple(_keras3_ref(a) for a in arg), True, kwargs)
        return Call((_keras3_ref(arg),), False, kwargs)
    # Keras 2: [[name, node, tensor, kwargs], ...]
    refs, kwargs = [], {}
    for item in node:
        refs.append(Ref(item[0], int(item[1]), int(item[2])))
        if len(item) > 3 and item[3]:
            if any(_has_tensor(v) for v in item[3].values()):
                raise ValueError("called with tensor keyword arguments")
            kwargs.update(item[3])
    return Call(tuple(refs), len(refs) > 1, kwargs)


def _has_tensor(v) -> bool:
    if isinstance(v, dict):
        return v.get("class_name") == "__keras_tensor__" or any(_has_tensor(x) for x in v.values())
    if isinstance(v, (list, tuple)):
        return any(_has_tensor(x) for x in v)
    return False


def _keras3_ref(a) -> Ref:
    if not (isinstance(a, dict) and a.get("class_name") == "__keras_tensor__"):
        raise ValueError("called with a non-tensor positional argument")
    name, node, idx = a["config"]["keras_history"]
    return Ref(name, int(node), int(idx))


def _refs(spec) -> tuple[Ref, ...]:
    if spec and isinstance(spec[0], str):  # Keras 3 writes a single input as a flat [name, node, tensor]
        spec = [spec]
    return tuple(Ref(s[0], int(s[1]), int(s[2])) for s in spec)


def _neutral_config(cfg: dict) -> dict:
    out = {}
    for k, v in cfg.items():
        if k in DROP_ALWAYS:
            continue
        if k == "dtype" and isinstance(v, dict):  # Keras 3 DTypePolicy
            v = v.get("config", {}).get("name", "float32")
        elif isinstance(v, dict) and "class_name" in v:  # regularizers, constraints
            v = {"class_name": v["class_name"], "config": v.get("config", {})}
        out[k] = v
    return out


def _with_shapes(model, nodes: list[LayerNode]) -> list[LayerNode]:
    out = []
    for n in nodes:
        try:
            layer = model.get_layer(n.name)
        except ValueError:
            out.append(n)
            continue
        out.append(replace(n, output_shape=_shape_of(layer, "output"), input_shape=_shape_of(layer, "input")))
    return out


def _shape_of(layer, attr: str) -> tuple | None:
    try:
        t = getattr(layer, attr)
    except (ValueError, AttributeError, RuntimeError):
        return None
    if isinstance(t, (list, tuple)):
        if not t:
            return None
        t = t[0]
    shape = getattr(t, "shape", None)
    return None if shape is None else tuple(None if d is None else int(d) for d in shape)


# ---------------------------------------------------------------- building a graph

def layer_config_for(node: LayerNode, api: int, keras) -> dict:
    """Translate a neutral layer config to what ``api``'s layer class accepts, or refuse."""
    cls = getattr(keras.layers, node.class_name)
    params = _init_params(cls)
    cfg = {}
    for k, v in node.config.items():
        key = k
        if api == 2 and (node.class_name, k) in RENAMES:
            key = RENAMES[(node.class_name, k)]
        elif api == 3:
            back = {v2: k3 for (c, k3), v2 in RENAMES.items() if c == node.class_name}
            key = back.get(k, k)
        if node.class_name == "BatchNormalization" and key == "axis" and isinstance(v, (list, tuple)) and len(v) == 1:
            v = int(v[0])  # tf_keras writes [3], Keras 3 wants an int
        if key in params or key in ("name", "trainable", "dtype"):
            cfg[key] = v
        elif key in BENIGN_DEFAULTS and BENIGN_DEFAULTS[key] == v:
            continue
        else:
            raise UnsupportedError(
                f"Layer '{node.name}' ({node.class_name}) sets '{k}={v!r}', which the "
                f"{'tf_keras' if api == 2 else 'Keras 3'} {node.class_name} does not have.",
                hint="Use the default for that option, or train the model in its own Keras version.")
    return cfg


def _init_params(cls) -> set[str]:
    """Keyword arguments a layer class accepts, including those its __init__ passes to base classes."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            names.update(p.name for p in inspect.signature(init).parameters.values()
                         if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        except (TypeError, ValueError):
            continue
    names.discard("self")
    return names


def rebuild(graph: KerasGraph, api: int, weights: dict[str, list[np.ndarray]] | None = None,
            configs: dict[str, dict] | None = None, where: str = "the model"):
    """Build ``graph`` as a Keras model of API ``api`` (3 or 2), with optional per-layer config
    overrides (``configs[name]`` merged into the layer's config) and weights to set."""
    keras = keras_module(api)
    configs = configs or {}
    tensors: dict[Ref, Any] = {}
    layers: dict[str, Any] = {}
    pending = [(n, i) for n in graph.layers for i in range(max(1, len(n.calls)))]
    next_call = {n.name: 0 for n in graph.layers}
    progress = True
    while pending and progress:
        progress = False
        rest = []
        for node, i in pending:
            if node.class_name == "InputLayer":
                cfg = {**node.config, **configs.get(node.name, {})}
                shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
                t = keras.Input(batch_shape=tuple(shape), dtype=cfg.get("dtype", "float32"), name=node.name)
                tensors[Ref(node.name, 0, 0)] = t
                progress = True
                continue
            call = node.calls[i] if node.calls else None
            if call is None or next_call[node.name] != i or any(r not in tensors for r in call.inputs):
                rest.append((node, i))
                continue
            if node.name not in layers:
                merged = replace(node, config={**node.config, **configs.get(node.name, {})})
                cfg = layer_config_for(merged, api, keras)
                try:
                    layers[node.name] = getattr(keras.layers, node.class_name).from_config(cfg)
                except (TypeError, ValueError) as exc:
                    raise UnsupportedError(f"Layer '{node.name}' ({node.class_name}) of {where} cannot be re-created in "
                                           f"{'tf_keras' if api == 2 else 'Keras 3'}: {str(exc).splitlines()[0]}") from None
            args = [tensors[r] for r in call.inputs]
            out = layers[node.name](args if call.as_list else args[0], **call.kwargs)
            outs = out if isinstance(out, (list, tuple)) else [out]
            for k, t in enumerate(outs):
                tensors[Ref(node.name, i, k)] = t
            next_call[node.name] += 1
            progress = True
        pending = rest
    if pending:
        names = sorted({n.name for n, _ in pending})
        raise UnsupportedError(f"The graph of {where} could not be rebuilt: layers {', '.join(names)} wait for inputs that "
                               "are never produced.")
    ins = [tensors[r] for r in graph.inputs]
    outs = [tensors[r] for r in graph.outputs]
    model = keras.Model(ins if len(ins) > 1 else ins[0], outs if len(outs) > 1 else outs[0], name=graph.name)
    if weights:
        set_weights(model, weights, where)
    return model


def set_weights(model, weights: dict[str, list[np.ndarray]], where: str = "the model") -> None:
    for name, ws in weights.items():
        if not ws:
            continue
        layer = model.get_layer(name)
        have = [tuple(w.shape) for w in layer.get_weights()]
        want = [tuple(np.shape(w)) for w in ws]
        if have != want:
            raise UnsupportedError(f"Weights of layer '{name}' in {where} do not fit after the rebuild: "
                                   f"expected shapes {have}, got {want}.",
                                   hint="This layer stores its weights differently in the two Keras versions.")
        layer.set_weights(ws)


def layer_weights(model) -> dict[str, list[np.ndarray]]:
    return {layer.name: [np.asarray(w) for w in layer.get_weights()] for layer in model.layers}


def convert(model, api: int, where: str = "the model"):
    """``model`` rebuilt in Keras API ``api`` (3 or 2) with the same weights."""
    if api_of(model) == api:
        return model
    graph = read_graph(model, where)
    return rebuild(graph, api, layer_weights(model), where=where)


def to_tf_keras(model, where: str = "the model"):
    return convert(model, 2, where)


def to_keras3(model, where: str = "the model"):
    return convert(model, 3, where)
