"""PyTorch side of gradual channel pruning (:mod:`workbench.optimize.gradual`): the channel masker
over a module being trained, and the unpruned model's outputs for distillation."""

from __future__ import annotations

import numpy as np

from workbench.optimize.channel import ChannelPlan
from workbench.optimize.config import PruneConfig
from workbench.optimize.gradual import ChannelMasker
from workbench.optimize.prune_torch import _idx, channel_scores, trace_channels


def channel_masker(model, sample, plan: ChannelPlan, cfg: PruneConfig, frequency: int, where: str):
    """A :class:`workbench.optimize.gradual.ChannelMasker` over ``model`` (trained in place): dropped
    channels get zero filters, biases and batch-norm scale and shift (dimension 0 of each)."""
    import torch

    g, modules = trace_channels(model, sample, where)
    sizes = {name: int(model.get_submodule(name).weight.shape[0]) for name in list(plan.out_keep) + list(plan.same_keep)}

    def zero(out_drop: dict, same_drop: dict) -> None:
        with torch.no_grad():
            for name, idx in list(out_drop.items()) + list(same_drop.items()):
                mod = model.get_submodule(name)
                k = _idx(idx)
                for p in (mod.weight, getattr(mod, "bias", None)):
                    if p is not None:
                        p[k] = 0.0

    return ChannelMasker(config=cfg, plan_at=lambda s: g.plan(s, *channel_scores(modules), cfg.criterion, cfg.round_to),
                         zero=zero, sizes=sizes, frequency=frequency)


def teacher_outputs(model):
    """A function giving ``model``'s outputs (no gradients) for a NumPy batch of any size."""
    import torch

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return np.concatenate([model(torch.from_numpy(np.ascontiguousarray(x[i:i + 256], dtype=np.float32))).numpy()
                                   for i in range(0, len(x), 256)])

    return predict
