"""Pruning for PyTorch models.

* ``magnitude``: unstructured, with ``torch.nn.utils.prune`` re-parametrisation
  (``weight = weight_orig * weight_mask``) on every Conv and Linear weight (depthwise kernels
  stay dense, as tfmot does for Keras). The schedule sets
  each layer's sparsity before every mask update; a mask only grows (weights pruned once stay
  pruned). At the end ``prune.remove`` bakes the zeros into plain weights, so the result loads
  into the original factory as a state_dict.
* ``channel``: structured. The model is traced with ``torch.fx``; every Conv2d (regular or
  depthwise), BatchNorm, Linear, activation, pooling, mean, flatten and residual add is
  described to :class:`workbench.optimize.channel.ChannelGraph`; anything else is refused by
  name. The kept filters are copied into smaller modules that replace the originals, so the
  model's own ``forward`` keeps working. The result no longer fits the factory's state_dict, so
  it is saved as an ExportedProgram (``.pt2``).
"""

from __future__ import annotations

import copy
import io
import math
import operator
from pathlib import Path

import numpy as np

from workbench.core.errors import ConfigError, UnsupportedError
from workbench.optimize.channel import ChannelGraph, ChannelPlan, refuse
from workbench.optimize.config import PruneConfig
from workbench.core.registry import Registry

SUPPORTED_TEXT = ("Conv2d (regular or depthwise), BatchNorm1d/2d, Linear, ReLU-style activations, Dropout, "
                  "max/average pooling, mean over H and W, flatten and element-wise add/multiply")


# ---------------------------------------------------------------- statistics

def layer_stats(model) -> list[dict]:
    """Parameters, zeros and weight bytes (raw and gzipped) of every module that owns parameters."""
    from workbench.optimize.measure import weight_bytes

    rows = []
    for name, mod in model.named_modules():
        params = list(mod.parameters(recurse=False))
        if not params:
            continue
        n = sum(int(p.numel()) for p in params)
        zeros = sum(int((p.detach() == 0).sum()) for p in params)
        w = getattr(mod, "weight", None)
        rows.append({"layer": name, "kind": type(mod).__name__, "shape": list(w.shape) if w is not None else None,
                     "params": n, "zeros": zeros, **weight_bytes(p.detach().numpy() for p in params)})
    return rows


# ---------------------------------------------------------------- magnitude

def magnitude_targets(model) -> list[tuple[str, object]]:
    """Conv and Linear weights, except depthwise convolutions, which stay dense as in tfmot's
    registry: they hold few weights and each filter is a whole channel."""
    import torch

    kinds = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)

    def depthwise(m) -> bool:
        return getattr(m, "groups", 1) > 1 and m.groups == m.in_channels

    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, kinds) and getattr(m, "weight", None) is not None and not depthwise(m)]


class MagnitudePruner:
    """Masks through torch.nn.utils.prune; ``update(s)`` sets every target's sparsity to ``s``."""

    def __init__(self, model):
        import torch
        from torch.nn.utils import prune

        self.torch = torch
        self.prune = prune
        self.targets = magnitude_targets(model)
        if not self.targets:
            raise UnsupportedError("The model has no Conv or Linear layers: magnitude pruning has nothing to prune.")
        for _, m in self.targets:
            prune.identity(m, "weight")
        self.current = 0.0

    def update(self, sparsity: float) -> None:
        torch = self.torch
        with torch.no_grad():
            for _, m in self.targets:
                w = (m.weight_orig * m.weight_mask).abs().flatten()
                k = int(round(sparsity * w.numel()))
                mask = torch.ones_like(w)
                if k > 0:
                    mask[torch.argsort(w, stable=True)[:k]] = 0.0
                m.weight_mask.copy_(mask.view_as(m.weight_mask))
        self.current = sparsity

    def finish(self) -> None:
        for _, m in self.targets:
            self.prune.remove(m, "weight")


# ---------------------------------------------------------------- channel: tracing

def _same(g, node, args, mods, shapes):
    g.same(node.name, args[0].name, _where(node))


def _merge(g, node, args, mods, shapes):
    import torch

    tensors = [a for a in args[:2] if hasattr(a, "name") and isinstance(shapes.get(a.name), torch.Size)]
    if len(tensors) == 2:
        a, b = (shapes[t.name] for t in tensors)
        if len(a) >= 2 and len(b) >= 2 and a[1] != b[1] and 1 in (a[1], b[1]):
            raise refuse(_where(node), "a broadcast over channels", g.where, SUPPORTED_TEXT)
        g.merge(node.name, [t.name for t in tensors], _where(node))
    elif len(tensors) == 1:
        g.same(node.name, tensors[0].name, _where(node))
    else:
        raise refuse(_where(node), "an operation without tensor inputs", g.where, SUPPORTED_TEXT)


def _flatten(g, node, args, mods, shapes, start=None, end=None):
    src = args[0]
    shape = shapes[src.name]
    start = node.kwargs.get("start_dim", args[1] if len(args) > 1 else 0) if start is None else start
    end = node.kwargs.get("end_dim", args[2] if len(args) > 2 else -1) if end is None else end
    if start != 1 or end not in (-1, len(shape) - 1):
        raise refuse(_where(node), f"flatten(start_dim={start}, end_dim={end})", g.where,
                     "flatten from dimension 1 to the end (torch.flatten(x, 1))")
    g.flatten(node.name, src.name, _where(node), spatial=int(np.prod(shape[2:])) if len(shape) > 2 else 1,
              channels_last=False)


def _mean(g, node, args, mods, shapes):
    src = args[0]
    rank = len(shapes[src.name])
    dims = node.kwargs.get("dim", args[1] if len(args) > 1 else None)
    dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
    dims = {d % rank for d in dims}
    if not dims or 1 in dims or 0 in dims:
        raise refuse(_where(node), f"a mean over dimensions {sorted(dims) or 'all'}", g.where,
                     "means over the spatial dimensions only (dim=(2, 3))")
    g.same(node.name, src.name, _where(node))


def _conv(g, node, mod, shapes):
    name = node.target
    x = node.args[0].name
    if len(shapes[x]) != 4:
        raise refuse(name, f"Conv2d on a rank-{len(shapes[x])} tensor", g.where, SUPPORTED_TEXT)
    if mod.groups == 1:
        g.consume(x, name)
        g.source(node.name, name, mod.out_channels)
    elif mod.groups == mod.in_channels == mod.out_channels:
        g.same(node.name, x, name, role="dw")
    else:
        raise refuse(name, f"a grouped Conv2d (groups={mod.groups}, {mod.in_channels} -> {mod.out_channels} channels)",
                     g.where, SUPPORTED_TEXT)


def _linear(g, node, mod, shapes):
    name = node.target
    x = node.args[0].name
    if len(shapes[x]) != 2:
        raise refuse(name, f"Linear on a rank-{len(shapes[x])} tensor", g.where,
                     "Linear on (batch, features) after a flatten or a mean")
    g.consume(x, name)
    g.source(node.name, name, mod.out_features)


def _bn(g, node, mod, shapes):
    g.same(node.name, node.args[0].name, node.target, role="bn")


def _same_module(g, node, mod, shapes):
    g.same(node.name, node.args[0].name, node.target)


def _flatten_module(g, node, mod, shapes):
    _flatten(g, node, node.args, None, shapes, start=mod.start_dim, end=mod.end_dim)


MODULE_RULES: Registry = Registry("module kind for channel pruning")
FUNCTION_RULES: dict = {}
METHOD_RULES: dict = {}


def _rules():
    if MODULE_RULES.keys():
        return
    import torch
    import torch.nn.functional as F
    from torch import nn

    MODULE_RULES.add(nn.Conv2d, _conv)
    MODULE_RULES.add(nn.Linear, _linear)
    MODULE_RULES.add(nn.BatchNorm2d, _bn)
    MODULE_RULES.add(nn.BatchNorm1d, _bn)
    MODULE_RULES.add(nn.Flatten, _flatten_module)
    for kind in (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU,
                 nn.Sigmoid, nn.Tanh, nn.ELU, nn.Dropout, nn.Dropout2d, nn.Identity, nn.MaxPool2d, nn.AvgPool2d,
                 nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d):
        MODULE_RULES.add(kind, _same_module)
    for fn in (torch.relu, torch.relu_, F.relu, F.relu6, F.leaky_relu, F.hardtanh, F.hardswish, F.silu, F.gelu,
               torch.sigmoid, F.sigmoid, torch.tanh, F.dropout, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
               F.adaptive_max_pool2d):
        FUNCTION_RULES[fn] = _same
    for fn in (operator.add, operator.iadd, torch.add, operator.mul, operator.imul, torch.mul, operator.sub, torch.sub):
        FUNCTION_RULES[fn] = _merge
    FUNCTION_RULES[torch.flatten] = _flatten
    FUNCTION_RULES[torch.mean] = _mean
    for m in ("relu", "relu_", "sigmoid", "tanh", "contiguous", "clone"):
        METHOD_RULES[m] = _same
    for m in ("add", "add_", "mul", "mul_", "sub"):
        METHOD_RULES[m] = _merge
    METHOD_RULES["flatten"] = _flatten
    METHOD_RULES["mean"] = _mean


def _where(node) -> str:
    return str(node.target) if node.op == "call_module" else node.name


def _describe(node) -> str:
    if node.op == "call_function":
        return f"{getattr(node.target, '__module__', '')}.{getattr(node.target, '__name__', node.target)}".lstrip(".")
    if node.op == "call_method":
        return f"tensor method .{node.target}()"
    if node.op == "get_attr":
        return f"a parameter used directly ('{node.target}')"
    return node.op


def trace_channels(model, sample, where: str = "the model"):
    """Describe ``model``'s channel flow; refuse any node it cannot follow, naming it."""
    import torch
    from torch.fx.passes.shape_prop import ShapeProp

    _rules()
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as exc:
        raise UnsupportedError(f"Channel pruning traces the model with torch.fx, which failed on {where}: "
                               f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}.",
                               hint="Data-dependent control flow cannot be traced; use --method magnitude.") from None
    ShapeProp(gm).propagate(sample)
    shapes = {n.name: n.meta["tensor_meta"].shape for n in gm.graph.nodes if hasattr(n.meta.get("tensor_meta"), "shape")}
    g = ChannelGraph(where)
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            shape = shapes.get(node.name)
            g.input(node.name, int(shape[1]) if shape is not None and len(shape) > 1 else 1, node.name)
        elif node.op == "call_module":
            mod = modules[node.target]
            calls[node.target] = calls.get(node.target, 0) + 1
            if calls[node.target] > 1 and any(True for _ in mod.parameters(recurse=False)):
                raise refuse(node.target, "a module with weights called more than once", where, SUPPORTED_TEXT)
            rule = MODULE_RULES.find(type(mod))
            if rule is None:
                raise refuse(node.target, type(mod).__name__, where, SUPPORTED_TEXT)
            rule(g, node, mod, shapes)
        elif node.op in ("call_function", "call_method"):
            table = FUNCTION_RULES if node.op == "call_function" else METHOD_RULES
            rule = table.get(node.target)
            if rule is None:
                raise refuse(node.name, _describe(node), where, SUPPORTED_TEXT)
            rule(g, node, node.args, None, shapes)
        elif node.op == "output":
            outs = node.args[0]
            for o in (outs if isinstance(outs, (tuple, list)) else (outs,)):
                if hasattr(o, "name"):
                    g.output(o.name, o.name)
        else:
            raise refuse(node.name, _describe(node), where, SUPPORTED_TEXT)
    return g, modules


def channel_scores(modules: dict) -> tuple[dict, dict]:
    """Filter L1 norms of every convolution/linear layer and batch-norm gammas, from the current weights."""
    l1, gamma = {}, {}
    for name, mod in modules.items():
        w = getattr(mod, "weight", None)
        if w is None:
            continue
        kind = type(mod).__name__
        if kind.startswith("Conv") or kind == "Linear":
            l1[name] = w.detach().abs().reshape(w.shape[0], -1).sum(1).numpy()
        elif kind.startswith("BatchNorm"):
            gamma[name] = w.detach().numpy()
    return l1, gamma


def plan_channels(model, sample, cfg: PruneConfig, where: str = "the model") -> ChannelPlan:
    g, modules = trace_channels(model, sample, where)
    plan = g.plan(cfg.sparsity, *channel_scores(modules), cfg.criterion, cfg.round_to)
    if not plan.changed:
        raise UnsupportedError(f"Channel pruning found nothing to prune in {where}: every channel group is pinned "
                               "(model inputs and outputs keep their channels) or would keep all channels at "
                               f"--sparsity {cfg.sparsity}.", hint="Raise --sparsity, or use --method magnitude.")
    return plan


# ---------------------------------------------------------------- channel: rebuilding

def _idx(keep):
    import torch

    return torch.as_tensor(np.asarray(keep, dtype=np.int64))


def _new_conv(mod, out_keep, in_keep, depthwise_keep):
    import torch

    w = mod.weight.detach()
    b = mod.bias.detach() if mod.bias is not None else None
    if depthwise_keep is not None:
        k = _idx(depthwise_keep)
        w, b = w[k], (b[k] if b is not None else None)
        cin = cout = groups = len(depthwise_keep)
    else:
        if out_keep is not None:
            w, b = w[_idx(out_keep)], (b[_idx(out_keep)] if b is not None else None)
        if in_keep is not None:
            w = w[:, _idx(in_keep)]
        cout, cin, groups = w.shape[0], w.shape[1], 1
    new = torch.nn.Conv2d(cin, cout, mod.kernel_size, stride=mod.stride, padding=mod.padding, dilation=mod.dilation,
                          groups=groups, bias=b is not None, padding_mode=mod.padding_mode)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new


def _new_linear(mod, out_keep, in_keep):
    import torch

    w = mod.weight.detach()
    b = mod.bias.detach() if mod.bias is not None else None
    if out_keep is not None:
        w, b = w[_idx(out_keep)], (b[_idx(out_keep)] if b is not None else None)
    if in_keep is not None:
        w = w[:, _idx(in_keep)]
    new = torch.nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new


def _new_bn(mod, keep):
    k = _idx(keep)
    new = type(mod)(len(keep), eps=mod.eps, momentum=mod.momentum, affine=mod.affine,
                    track_running_stats=mod.track_running_stats)
    state = {key: (v[k] if v.dim() == 1 else v) for key, v in mod.state_dict().items()}
    new.load_state_dict(state)
    return new


def apply_plan(model, plan: ChannelPlan):
    """A copy of ``model`` whose modules are replaced by smaller ones holding the kept channels."""
    import torch

    pruned = copy.deepcopy(model)
    names = set(plan.out_keep) | set(plan.in_keep) | set(plan.same_keep)
    for name in sorted(names):
        mod = pruned.get_submodule(name)
        if isinstance(mod, torch.nn.Conv2d):
            new = _new_conv(mod, plan.out_keep.get(name), plan.in_keep.get(name), plan.same_keep.get(name))
        elif isinstance(mod, torch.nn.Linear):
            new = _new_linear(mod, plan.out_keep.get(name), plan.in_keep.get(name))
        elif isinstance(mod, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            new = _new_bn(mod, plan.same_keep[name])
        else:  # pragma: no cover - the tracer only plans the kinds above
            raise UnsupportedError(f"Internal error: no rebuild rule for '{name}' ({type(mod).__name__}).")
        parent_name, _, attr = name.rpartition(".")
        parent = pruned.get_submodule(parent_name) if parent_name else pruned
        setattr(parent, attr, new)
    return pruned


# ---------------------------------------------------------------- saving

def save_state_dict(model, path: Path) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    Path(path).write_bytes(buf.getvalue())


def save_exported(model, sample, path: Path) -> None:
    import torch

    model.eval()
    ep = torch.export.export(model, (sample,))
    torch.export.save(ep, str(path))


def check_torch_model(handle) -> None:
    import torch

    if isinstance(handle.obj, torch.jit.ScriptModule):
        raise UnsupportedError(f"'{handle.path}' is TorchScript, which cannot be pruned and fine-tuned here.",
                               hint="Give the Python model instead: a state_dict with --factory, or an ExportedProgram (.pt2).")
    if not handle.inputs or handle.inputs[0].shape is None or None in handle.inputs[0].shape:
        raise ConfigError(f"The input shape of '{handle.path}' is unknown.", hint="Pass --input-shape, batch first.")


def sample_input(handle):
    import torch

    return torch.zeros(*handle.inputs[0].shape)


def total_params(model) -> int:
    return int(sum(math.prod(p.shape) for p in model.parameters()))


# ---------------------------------------------------------------- handlers

def _fit(job, model, **hooks):
    from workbench.optimize.common import n_outputs
    from workbench.optimize.train import Hooks, TorchBackend, fit

    backend = TorchBackend(model, job.config.train, n_outputs(job.handle) or 1)
    d = job.data
    return fit(backend, d.x, d.y, job.config.train, hooks=Hooks(**hooks), store=job.store, resume=job.resume,
               val=(d.x_val, d.y_val), progress=job.progress)


def _register():
    from workbench.optimize.prune import PRUNERS, Pruned

    @PRUNERS.register(("magnitude", "torch"))
    def torch_magnitude(job) -> Pruned:
        from workbench.optimize.train import batch_bounds

        check_torch_model(job.handle)
        cfg = job.config
        model = copy.deepcopy(job.handle.obj)
        before = layer_stats(model)
        pruner = MagnitudePruner(model)
        per_epoch = len(batch_bounds(len(job.data.x), cfg.train.batch_size))
        freq = cfg.frequency or max(1, per_epoch // 4)

        def before_step(step: int, total: int) -> None:
            if step % freq == 0:
                pruner.update(cfg.sparsity_at(step, total))

        training = _fit(job, model, before_step=before_step)
        pruner.update(cfg.sparsity)  # the final masks, also for --epochs 0 (one-shot pruning)
        pruner.finish()
        model.eval()
        return Pruned(save=lambda p: save_state_dict(model, p), layers_before=before, layers_after=layer_stats(model),
                      training=training, output_format="state_dict",
                      extra={"pruned_layers": [n for n, _ in pruner.targets], "mask_update_every_steps": freq})

    @PRUNERS.register(("channel", "torch"))
    def torch_channel(job) -> Pruned:
        from workbench.optimize.common import n_outputs
        from workbench.optimize.config import DISTILL_ALPHA, DISTILL_TEMPERATURE
        from workbench.optimize.gradual import fit_channels, gradual
        from workbench.optimize.mask_torch import channel_masker, teacher_outputs
        from workbench.optimize.train import TorchBackend, batch_bounds

        check_torch_model(job.handle)
        cfg, where = job.config, f"'{job.handle.path}'"
        model = copy.deepcopy(job.handle.obj).eval()
        teacher_model = copy.deepcopy(model).eval()
        sample = sample_input(job.handle)
        plan = plan_channels(model, sample, cfg, where)
        masked, note = gradual(cfg, len(job.data.x))
        if masked:  # masked gradually, removed at the end
            per_epoch = len(batch_bounds(len(job.data.x), cfg.train.batch_size))
            masker = channel_masker(model, sample, plan, cfg, cfg.frequency or max(1, per_epoch // 4), where)
            trained = model
        else:
            masker, trained = None, apply_plan(model, plan)
        backend = TorchBackend(trained, cfg.train, n_outputs(job.handle) or 1,
                               distill=(DISTILL_ALPHA, DISTILL_TEMPERATURE))
        training, info = fit_channels(job, backend, masker, teacher_outputs(teacher_model), note)
        if masker is not None:
            plan = masker.final()
            trained = apply_plan(trained, plan)
        pruned = trained.eval()
        return Pruned(save=lambda p: save_exported(pruned, sample, p), layers_before=layer_stats(job.handle.obj),
                      layers_after=layer_stats(pruned), training=training, output_format="exported_program",
                      extra={"channel_groups": list(plan.groups), "fine_tuning": info})


_register()
