"""Pruning for Keras models: Keras 3 (``.keras``) and tf_keras (``.h5``).

* ``magnitude``: tfmot's ``prune_low_magnitude`` with a ``ConstantSparsity`` or
  ``PolynomialDecay`` schedule, fine-tuned with the shared loop (``UpdatePruningStep`` driven by
  hand, as tfmot documents for custom loops), then ``strip_pruning``. tfmot accepts only tf_keras
  models, so a Keras 3 model goes through :mod:`workbench.optimize.keras_bridge` to tf_keras and
  the pruned result comes back to Keras 3 and is saved as ``.keras``; a tf_keras model stays in
  tf_keras and is saved as ``.h5``. The final masks are made exact (every pruned layer at the
  requested sparsity) after stripping. As tfmot's registry decides, depthwise kernels stay dense
  (few weights, each filter a whole channel); the report lists the pruned layers.
* ``channel``: the functional graph (read by the bridge) is described to
  :class:`workbench.optimize.channel.ChannelGraph`; the model is rebuilt in its own Keras
  version with fewer filters/units and the kept weights, then fine-tuned. No tfmot needed.
"""

from __future__ import annotations

import numpy as np

from workbench.core.errors import UnsupportedError
from workbench.optimize import keras_bridge as kb
from workbench.optimize.channel import ChannelGraph, ChannelPlan, refuse
from workbench.optimize.config import POLYNOMIAL_RAMP, PruneConfig
from workbench.core.quiet import captured_output

SUPPORTED_TEXT = ("Conv2D, DepthwiseConv2D (depth_multiplier 1), Dense, BatchNormalization, activations, Dropout, "
                  "pooling, global pooling, ZeroPadding2D, Flatten and Add/Subtract/Multiply/Average/Maximum/Minimum")


def import_tfmot():
    """tfmot, imported without changing what ``tf.keras`` means for the rest of the process.

    Importing tfmot sets ``TF_USE_LEGACY_KERAS=1``, which would turn ``tf.keras`` into tf_keras for
    any code that resolves it later. ``tf.keras`` is resolved first (TensorFlow caches it) and the
    variable is put back afterwards; tfmot keeps its own tf_keras binding."""
    import os

    from workbench.core.errors import require
    from workbench.core.quiet import quiet_frameworks

    quiet_frameworks()
    with captured_output(python_streams=False):
        tf = require("tensorflow", "tf", "Pruning and QAT of Keras models")
        before = os.environ.get("TF_USE_LEGACY_KERAS")
        try:
            getattr(tf.keras, "__name__", None)
        except ImportError:  # pragma: no cover - no Keras at all; tfmot will say what is missing
            pass
        try:
            return require("tensorflow_model_optimization", "tf", "Pruning and QAT of Keras models")
        finally:
            if before is None:
                os.environ.pop("TF_USE_LEGACY_KERAS", None)
            else:
                os.environ["TF_USE_LEGACY_KERAS"] = before


def layer_stats(model) -> list[dict]:
    """Trainable parameters, zeros and weight bytes (raw and gzipped) of every layer that has them."""
    from workbench.optimize.measure import weight_bytes

    rows = []
    for layer in model.layers:
        ws = [np.asarray(w) for w in layer.trainable_weights]
        if not ws:
            continue
        n = sum(int(w.size) for w in ws)
        rows.append({"layer": layer.name, "kind": type(layer).__name__, "shape": list(ws[0].shape), "params": n,
                     "zeros": sum(int((w == 0).sum()) for w in ws), **weight_bytes(ws)})
    return rows


def keras_of(handle):
    return kb.keras_module(handle.meta.get("keras_api", kb.api_of(handle.obj)))


def save_model(model, path) -> None:
    import warnings

    with captured_output(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf_keras calls .h5 "legacy"; it is the format the user gave
        model.save(str(path))


# ---------------------------------------------------------------- magnitude

def one_shot(model, sparsity: float, names: list[str]) -> None:
    """Zero the smallest-magnitude kernel weights of the layers ``names`` to exactly ``sparsity``
    (a no-op for layers tfmot already pruned to it)."""
    for layer in model.layers:
        if layer.name not in names:
            continue
        ws = layer.get_weights()
        if not ws:
            continue
        k = ws[0]
        n = int(round(sparsity * k.size))
        if n > 0:
            flat = k.reshape(-1).copy()
            flat[np.argsort(np.abs(flat), kind="stable")[:n]] = 0.0
            ws[0] = flat.reshape(k.shape)
            layer.set_weights(ws)


def _schedule(tfmot, cfg: PruneConfig, total: int, freq: int):
    sp = tfmot.sparsity.keras
    if cfg.schedule == "constant":
        return sp.ConstantSparsity(cfg.sparsity, begin_step=0, frequency=freq)
    end = freq * max(1, int(round(total * POLYNOMIAL_RAMP / freq)))
    if end > total - 1:
        end = max(freq, freq * ((total - 1) // freq))
    return sp.PolynomialDecay(initial_sparsity=0.0, final_sparsity=cfg.sparsity, begin_step=0, end_step=end,
                              power=3, frequency=freq)


def _fit(job, model, keras, **hooks):
    from workbench.optimize.common import n_outputs
    from workbench.optimize.train import Hooks, KerasBackend, fit

    backend = KerasBackend(model, keras, job.config.train, n_outputs(job.handle) or 1)
    d = job.data
    return fit(backend, d.x, d.y, job.config.train, hooks=Hooks(**hooks), store=job.store, resume=job.resume,
               val=(d.x_val, d.y_val), progress=job.progress)


def _copy(model, api: int, where: str):
    graph = kb.read_graph(model, where)
    return kb.rebuild(graph, api, kb.layer_weights(model), where=where)


# ---------------------------------------------------------------- channel

def _input(g, node, ref):
    shape = node.config.get("batch_shape") or node.config.get("batch_input_shape") or node.output_shape
    g.input(ref, int(shape[-1]) if shape else 1, node.name)


def _conv(g, node, ref, ins):
    if node.config.get("data_format", "channels_last") not in (None, "channels_last"):
        raise refuse(node.name, "Conv2D with data_format channels_first", g.where, SUPPORTED_TEXT)
    if int(node.config.get("groups", 1)) != 1:
        raise refuse(node.name, f"a grouped Conv2D (groups={node.config['groups']})", g.where, SUPPORTED_TEXT)
    g.consume(ins[0], node.name)
    g.source(ref, node.name, int(node.config["filters"]))


def _depthwise(g, node, ref, ins):
    if int(node.config.get("depth_multiplier", 1)) != 1:
        raise refuse(node.name, f"DepthwiseConv2D with depth_multiplier={node.config['depth_multiplier']}", g.where,
                     SUPPORTED_TEXT)
    g.same(ref, ins[0], node.name, role="dw")


def _dense(g, node, ref, ins):
    g.consume(ins[0], node.name)
    g.source(ref, node.name, int(node.config["units"]))


def _bn(g, node, ref, ins):
    axis = node.config.get("axis", -1)
    axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
    rank = len(node.output_shape) if node.output_shape else 4
    if axis not in (-1, rank - 1):
        raise refuse(node.name, f"BatchNormalization over axis {axis}", g.where, SUPPORTED_TEXT)
    g.same(ref, ins[0], node.name, role="bn")


def _same(g, node, ref, ins):
    g.same(ref, ins[0], node.name)


def _activation(g, node, ref, ins):
    act = node.config.get("activation")
    g.same(ref, ins[0], node.name, pin=f"softmax in '{node.name}'" if act == "softmax" else None)


def _softmax(g, node, ref, ins):
    g.same(ref, ins[0], node.name, pin=f"softmax in '{node.name}'")


def _merge(g, node, ref, ins):
    g.merge(ref, list(ins), node.name)


def _flatten(g, node, ref, ins):
    shape = node.input_shape
    if node.config.get("data_format") == "channels_first":
        raise refuse(node.name, "Flatten with data_format channels_first", g.where, SUPPORTED_TEXT)
    if shape is None or any(d is None for d in shape[1:]):
        raise refuse(node.name, "Flatten of a tensor with unknown spatial size", g.where, SUPPORTED_TEXT)
    g.flatten(ref, ins[0], node.name, spatial=int(np.prod(shape[1:-1])) if len(shape) > 2 else 1, channels_last=True)


RULES = {"InputLayer": None, "Conv2D": _conv, "DepthwiseConv2D": _depthwise, "Dense": _dense,
         "BatchNormalization": _bn, "Activation": _activation, "Softmax": _softmax, "Flatten": _flatten}
for _k in ("ReLU", "LeakyReLU", "ELU", "PReLU", "Dropout", "SpatialDropout2D", "GaussianNoise", "MaxPooling2D",
           "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D", "ZeroPadding2D", "Cropping2D",
           "UpSampling2D"):
    RULES[_k] = _same
for _k in ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"):
    RULES[_k] = _merge


def trace_channels(graph: kb.KerasGraph, where: str) -> ChannelGraph:
    g = ChannelGraph(where)
    for node in graph.layers:
        if node.class_name not in RULES:
            raise refuse(node.name, node.class_name, where, SUPPORTED_TEXT)
        if node.class_name == "InputLayer":
            _input(g, node, kb.Ref(node.name, 0, 0))
            continue
        if len(node.calls) > 1 and node.class_name in ("Conv2D", "DepthwiseConv2D", "Dense", "BatchNormalization"):
            raise refuse(node.name, "a layer with weights called more than once", where, SUPPORTED_TEXT)
        for i, call in enumerate(node.calls):
            RULES[node.class_name](g, node, kb.Ref(node.name, i, 0), list(call.inputs))
    for ref in graph.outputs:
        g.output(ref, ref.layer)
    return g


def channel_scores(model, graph: kb.KerasGraph) -> tuple[dict, dict]:
    """Filter L1 norms of every Conv2D/Dense and batch-norm gammas, from the current weights."""
    l1, gamma = {}, {}
    for node in graph.layers:
        if node.class_name == "InputLayer":  # a Keras 3 Sequential lists no InputLayer in model.layers
            continue
        ws = model.get_layer(node.name).get_weights()
        if node.class_name == "Conv2D":
            l1[node.name] = np.abs(ws[0]).reshape(-1, ws[0].shape[-1]).sum(0)
        elif node.class_name == "Dense":
            l1[node.name] = np.abs(ws[0]).sum(0)
        elif node.class_name == "BatchNormalization" and node.config.get("scale", True):
            gamma[node.name] = ws[0]
    return l1, gamma


def plan_channels(model, cfg: PruneConfig, where: str) -> tuple[kb.KerasGraph, ChannelPlan]:
    graph = kb.read_graph(model, where)
    g = trace_channels(graph, where)
    plan = g.plan(cfg.sparsity, *channel_scores(model, graph), cfg.criterion, cfg.round_to)
    if not plan.changed:
        raise UnsupportedError(f"Channel pruning found nothing to prune in {where}: every channel group is pinned "
                               "(model inputs and outputs keep their channels) or would keep all channels at "
                               f"--sparsity {cfg.sparsity}.", hint="Raise --sparsity, or use --method magnitude.")
    return graph, plan


def channel_masker(model, graph: kb.KerasGraph, plan: ChannelPlan, cfg: PruneConfig, frequency: int, where: str):
    """A :class:`workbench.optimize.gradual.ChannelMasker` over ``model`` (trained in place)."""
    from workbench.optimize.gradual import ChannelMasker

    g = trace_channels(graph, where)
    kinds = {n.name: n.class_name for n in graph.layers}
    sizes = {}
    for name in list(plan.out_keep) + list(plan.same_keep):
        w = model.get_layer(name).weights[0]
        sizes[name] = int(w.shape[2] if kinds[name] == "DepthwiseConv2D" else w.shape[-1])

    cache: dict = {}

    def zero(out_drop: dict, same_drop: dict) -> None:
        if cache.get("drop") is not out_drop or cache.get("same") is not same_drop:  # a new plan: new 0/1 masks
            masks = []
            for name, idx in list(out_drop.items()) + list(same_drop.items()):
                for var in model.get_layer(name).trainable_weights:
                    m = np.ones(tuple(var.shape), dtype=np.float32)
                    if kinds[name] == "DepthwiseConv2D" and m.ndim == 4:
                        m[:, :, idx, :] = 0.0
                    else:
                        m[..., idx] = 0.0
                    masks.append((var, m))
            cache.update(drop=out_drop, same=same_drop, masks=masks)
        for var, m in cache["masks"]:
            var.assign(np.asarray(var.numpy()) * m)

    return ChannelMasker(config=cfg, plan_at=lambda s: g.plan(s, *channel_scores(model, graph), cfg.criterion, cfg.round_to),
                         zero=zero, sizes=sizes, frequency=frequency)


def apply_plan(model, graph: kb.KerasGraph, plan: ChannelPlan, where: str):
    weights = kb.layer_weights(model)
    configs = {}
    for node in graph.layers:
        name = node.name
        ws = weights.get(name, [])
        out_k, in_k, same_k = plan.out_keep.get(name), plan.in_keep.get(name), plan.same_keep.get(name)
        if node.class_name == "Conv2D":
            kernel = ws[0]
            if in_k is not None:
                kernel = kernel[:, :, in_k, :]
            if out_k is not None:
                kernel = kernel[..., out_k]
                configs[name] = {"filters": int(len(out_k))}
            ws = [kernel] + [b[out_k] if out_k is not None else b for b in ws[1:]]
        elif node.class_name == "Dense":
            kernel = ws[0]
            if in_k is not None:
                kernel = kernel[in_k, :]
            if out_k is not None:
                kernel = kernel[:, out_k]
                configs[name] = {"units": int(len(out_k))}
            ws = [kernel] + [b[out_k] if out_k is not None else b for b in ws[1:]]
        elif node.class_name == "DepthwiseConv2D" and same_k is not None:
            ws = [ws[0][:, :, same_k, :]] + [b[same_k] for b in ws[1:]]
        elif node.class_name == "BatchNormalization" and same_k is not None:
            ws = [w[same_k] for w in ws]
        weights[name] = ws
    return kb.rebuild(graph, graph.api, weights, configs, where)


# ---------------------------------------------------------------- handlers

def _register():
    from workbench.optimize.prune import PRUNERS, Pruned

    @PRUNERS.register(("magnitude", "keras"))
    def keras_magnitude(job) -> Pruned:
        from workbench.optimize.train import batch_bounds

        cfg = job.config
        handle = job.handle
        where = f"'{handle.path}'"
        api = handle.meta.get("keras_api", kb.api_of(handle.obj))
        tfmot = import_tfmot()
        tfk = kb.keras_module(2)
        before = layer_stats(handle.obj)
        model2 = kb.to_tf_keras(handle.obj, where) if api == 3 else _copy(handle.obj, 2, where)
        per_epoch = len(batch_bounds(len(job.data.x), cfg.train.batch_size))
        total = per_epoch * cfg.train.epochs
        freq = cfg.frequency or max(1, per_epoch // 4)
        try:
            wrapped = tfmot.sparsity.keras.prune_low_magnitude(model2, pruning_schedule=_schedule(tfmot, cfg, max(total, 2), freq))
        except ValueError as exc:
            raise UnsupportedError(f"tfmot cannot prune {where}: {str(exc).splitlines()[0]}") from None
        # The layers tfmot prunes (its registry leaves DepthwiseConv2D, normalization and the like dense).
        names = [w.layer.name for w in wrapped.layers if getattr(w, "prunable_weights", None)]
        if cfg.train.epochs > 0:
            step_cb = tfmot.sparsity.keras.UpdatePruningStep()
            step_cb.set_model(wrapped)
            training = _fit(job, wrapped, tfk, on_train_begin=step_cb.on_train_begin,
                            on_epoch_end=lambda epoch: step_cb.on_epoch_end(epoch))
            model2 = tfmot.sparsity.keras.strip_pruning(wrapped)
        else:
            from workbench.optimize.train import TrainResult

            training = TrainResult(epochs=0, steps=0, resumed_from=None)
        one_shot(model2, cfg.sparsity, names)
        result = kb.to_keras3(model2, where) if api == 3 else model2
        return Pruned(save=lambda p: save_model(result, p), layers_before=before, layers_after=layer_stats(result),
                      training=training, output_format="keras" if api == 3 else "h5",
                      extra={"mask_update_every_steps": freq, "pruned_layers": names,
                             "route": "Keras 3 -> tf_keras (bridge) -> tfmot -> Keras 3" if api == 3 else "tf_keras -> tfmot"})

    @PRUNERS.register(("channel", "keras"))
    def keras_channel(job) -> Pruned:
        from workbench.optimize.common import n_outputs
        from workbench.optimize.config import DISTILL_ALPHA, DISTILL_TEMPERATURE
        from workbench.optimize.gradual import fit_channels, gradual
        from workbench.optimize.train import KerasBackend, batch_bounds

        cfg, handle = job.config, job.handle
        where = f"'{handle.path}'"
        api = handle.meta.get("keras_api", kb.api_of(handle.obj))
        graph, plan = plan_channels(handle.obj, cfg, where)
        masked, note = gradual(cfg, len(job.data.x))
        if masked:  # masked gradually in a copy, removed at the end
            model = _copy(handle.obj, api, where)
            graph = kb.read_graph(model, where)
            per_epoch = len(batch_bounds(len(job.data.x), cfg.train.batch_size))
            masker = channel_masker(model, graph, plan, cfg, cfg.frequency or max(1, per_epoch // 4), where)
        else:
            model, masker = apply_plan(handle.obj, graph, plan, where), None
        backend = KerasBackend(model, kb.keras_module(api), cfg.train, n_outputs(handle) or 1,
                               distill=(DISTILL_ALPHA, DISTILL_TEMPERATURE))

        def teacher(x):
            return np.concatenate([np.asarray(handle.obj(np.asarray(x[i:i + 256], dtype=np.float32), training=False))
                                   for i in range(0, len(x), 256)])

        training, info = fit_channels(job, backend, masker, teacher, note)
        if masker is not None:
            plan = masker.final()
            model = apply_plan(model, graph, plan, where)
        pruned = model
        return Pruned(save=lambda p: save_model(pruned, p), layers_before=layer_stats(handle.obj),
                      layers_after=layer_stats(pruned), training=training, output_format="keras" if api == 3 else "h5",
                      extra={"channel_groups": list(plan.groups), "fine_tuning": info})


_register()
