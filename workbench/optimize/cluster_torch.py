"""Weight clustering for PyTorch: per-layer k-means of Conv2d / Linear weights, weight sharing kept
while fine-tuning with the shared loop (each weight reset to its cluster's mean before every step)."""

from __future__ import annotations

import copy

import numpy as np

from workbench.optimize.cluster import CLUSTERERS, Clustered, kmeans_1d


class Sharing:
    """Fixed cluster assignments per layer; ``snap()`` sets every weight to its cluster's current mean."""

    def __init__(self, model, cfg):
        import torch

        self.entries, self.rows = [], []
        for name, mod in model.named_modules():
            if not isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
                continue
            w = mod.weight.detach().cpu().numpy()
            row = {"layer": name, "kind": type(mod).__name__, "weights": int(w.size),
                   "distinct_before": int(len(np.unique(w)))}
            k = cfg.clusters_for(name)
            if k == 0:
                self.rows.append({**row, "clusters": None, "reason": "left alone by --layer"})
                continue
            if w.size < cfg.min_weights:
                self.rows.append({**row, "clusters": None, "reason": f"{w.size} weights, fewer than {cfg.min_weights}"})
                continue
            _, assign = kmeans_1d(w, k)
            self.entries.append((mod, torch.as_tensor(assign.reshape(w.shape)), k))
            self.rows.append({**row, "clusters": k})
        self.snap()

    def snap(self) -> None:
        import torch

        with torch.no_grad():
            for mod, assign, k in self.entries:
                w = mod.weight
                a = assign.to(w.device).reshape(-1)
                flat = w.reshape(-1)
                sums = torch.zeros(k, dtype=w.dtype, device=w.device).index_add_(0, a, flat)
                counts = torch.bincount(a, minlength=k).clamp(min=1).to(w.dtype)
                w.copy_((sums / counts)[a].reshape(w.shape))


@CLUSTERERS.register("torch")
def torch_cluster(job) -> Clustered:
    from workbench.optimize.common import n_outputs
    from workbench.optimize.prune_torch import check_torch_model, save_state_dict
    from workbench.optimize.train import Hooks, TorchBackend, TrainResult, fit

    check_torch_model(job.handle)
    model = copy.deepcopy(job.handle.obj)
    sharing = Sharing(model, job.config)
    if not sharing.entries:
        from workbench.core.errors import UnsupportedError

        raise UnsupportedError(f"'{job.handle.path}' has no Conv2d or Linear layer to cluster (with "
                               f"{job.config.min_weights}+ weights, not excluded by --layer).")
    if job.config.train.epochs > 0:
        backend = TorchBackend(model, job.config.train, n_outputs(job.handle) or 1)
        d = job.data
        training = fit(backend, d.x, d.y, job.config.train, hooks=Hooks(before_step=lambda s, t: sharing.snap()),
                       store=job.store, resume=job.resume, val=(d.x_val, d.y_val), progress=job.progress)
    else:
        training = TrainResult(epochs=0, steps=0, resumed_from=None)
    sharing.snap()  # the final shared values (the last step moved the weights)
    model.eval()
    layers = [{**row, "distinct_after": int(len(np.unique(mod.weight.detach().cpu().numpy())))}
              if row.get("clusters") else row
              for row, mod in _rows_with_modules(model, sharing.rows)]
    return Clustered(save=lambda p: save_state_dict(model, p), layers=layers, training=training, output_format="state_dict",
                     extra={"route": "PyTorch: k-means per layer, weight sharing during fine-tuning"})


def _rows_with_modules(model, rows):
    mods = dict(model.named_modules())
    return [(row, mods.get(row["layer"])) for row in rows]
