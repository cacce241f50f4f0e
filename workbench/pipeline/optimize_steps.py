"""The prune, cluster and qat steps of a recipe (see workbench.pipeline.steps), as calls into this package's API."""

from __future__ import annotations

from pathlib import Path

from workbench.frontends import ModelHandle, load
from workbench.frontends.loader import LoadOptions
from workbench.pipeline.steps import OPTIMIZERS


def _train_config(opts: dict, data: dict, default_lr: float):
    from workbench.optimize.config import TrainConfig

    return TrainConfig(epochs=int(opts.get("epochs", 2)), lr=float(opts.get("lr", default_lr)),
                       train_samples=data.get("train_samples"))


@OPTIMIZERS.register("prune")
def prune_step(handle: ModelHandle, opts: dict, data: dict, adir: Path):
    from workbench.optimize.config import PruneConfig
    from workbench.optimize.prune import expected_suffixes, prune

    cfg = PruneConfig(method=opts.get("method", "magnitude"), sparsity=float(opts.get("sparsity", 0.5)),
                      schedule=opts.get("schedule", "constant"), train=_train_config(opts, data, 1e-3))
    out = adir / ("pruned" + expected_suffixes(handle, cfg.method)[0])
    report = prune(handle, out, cfg, data["train"], measure_int8=False)
    factory = handle.meta.get("factory") if out.suffix == ".pt" else None
    pruned = load(out, LoadOptions(factory=factory))
    return pruned, {}, {"method": cfg.method, "sparsity": cfg.sparsity, "before": report.before, "after": report.after}


@OPTIMIZERS.register("cluster")
def cluster_step(handle: ModelHandle, opts: dict, data: dict, adir: Path):
    from workbench.optimize.cluster import OUTPUTS, cluster
    from workbench.optimize.config import ClusterConfig

    layers = tuple((str(rx), int(k)) for rx, k in (opts.get("layers") or {}).items())
    cfg = ClusterConfig(clusters=int(opts.get("clusters", 16)), layers=layers, min_weights=int(opts.get("min_weights", 256)),
                        train=_train_config({"epochs": 1, **opts}, data, 1e-4))
    out = adir / ("clustered" + OUTPUTS.get(handle.format, (".keras",))[0])
    report = cluster(handle, out, cfg, data["train"], measure_int8=False)
    factory = handle.meta.get("factory") if out.suffix == ".pt" else None
    return load(out, LoadOptions(factory=factory)), {}, {"clusters": cfg.clusters, "before": report.before,
                                                         "after": report.after, "layers": report.layers}


@OPTIMIZERS.register("qat")
def qat_step(handle: ModelHandle, opts: dict, data: dict, adir: Path):
    from workbench.optimize.config import QATConfig
    from workbench.optimize.qat import qat

    out = adir / "model.tflite"
    report = qat(handle, out, QATConfig(train=_train_config(opts, data, 1e-4)), data["train"], compare=False)
    return None, {"tflite": out}, {"training": report.training if hasattr(report, "training") else None}
