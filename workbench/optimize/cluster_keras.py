"""Weight clustering for Keras: tfmot's ``cluster_weights`` per layer (k-means++ centroids), fine-tuned
with the shared loop, then ``strip_clustering``. tfmot takes only tf_keras models, so a Keras 3 model
goes through :mod:`workbench.optimize.keras_bridge` (as pruning does) and comes back as Keras 3."""

from __future__ import annotations

import numpy as np

from workbench.core.errors import UnsupportedError
from workbench.optimize import keras_bridge as kb
from workbench.optimize.cluster import CLUSTERERS, Clustered

KINDS = ("Conv2D", "DepthwiseConv2D", "Dense")


def _kernel(layer):
    for attr in ("depthwise_kernel", "kernel"):
        w = getattr(layer, attr, None)
        if w is not None:
            return np.asarray(w.numpy() if hasattr(w, "numpy") else w)
    return None


@CLUSTERERS.register("keras")
def keras_cluster(job) -> Clustered:
    from workbench.optimize.common import n_outputs
    from workbench.optimize.prune_keras import _copy, import_tfmot, save_model
    from workbench.optimize.train import Hooks, KerasBackend, TrainResult, fit

    cfg = job.config
    handle = job.handle
    where = f"'{handle.path}'"
    api = handle.meta.get("keras_api", kb.api_of(handle.obj))
    tfmot = import_tfmot()
    tfk = kb.keras_module(2)
    model2 = kb.to_tf_keras(handle.obj, where) if api == 3 else _copy(handle.obj, 2, where)
    rows, chosen = [], {}
    for layer in model2.layers:
        w = _kernel(layer)
        if type(layer).__name__ not in KINDS or w is None:
            continue
        row = {"layer": layer.name, "kind": type(layer).__name__, "weights": int(w.size),
               "distinct_before": int(len(np.unique(w)))}
        k = cfg.clusters_for(layer.name)
        if k == 0:
            rows.append({**row, "clusters": None, "reason": "left alone by --layer"})
        elif w.size < cfg.min_weights:
            rows.append({**row, "clusters": None, "reason": f"{w.size} weights, fewer than {cfg.min_weights}"})
        else:
            chosen[layer.name] = k
            rows.append({**row, "clusters": k})
    if not chosen:
        raise UnsupportedError(f"{where} has no Conv2D, DepthwiseConv2D or Dense layer to cluster (with "
                               f"{cfg.min_weights}+ weights, not excluded by --layer).")
    ck = tfmot.clustering.keras
    init = ck.CentroidInitialization.KMEANS_PLUS_PLUS

    def wrap(layer):
        if layer.name in chosen:
            return ck.cluster_weights(layer, number_of_clusters=chosen[layer.name], cluster_centroids_init=init)
        return layer

    try:
        wrapped = tfk.models.clone_model(model2, clone_function=wrap)
    except (ValueError, TypeError) as exc:
        raise UnsupportedError(f"tfmot cannot cluster {where}: {str(exc).splitlines()[0]}",
                               hint="Leave the layer it names alone with --layer 'NAME=0'.") from None
    if cfg.train.epochs > 0:
        backend = KerasBackend(wrapped, tfk, cfg.train, n_outputs(handle) or 1)
        d = job.data
        training = fit(backend, d.x, d.y, cfg.train, hooks=Hooks(), store=job.store, resume=job.resume,
                       val=(d.x_val, d.y_val), progress=job.progress)
    else:
        training = TrainResult(epochs=0, steps=0, resumed_from=None)
    stripped = ck.strip_clustering(wrapped)
    after = {layer.name: _kernel(layer) for layer in stripped.layers}
    rows = [{**r, "distinct_after": int(len(np.unique(after[r["layer"]])))} if r.get("clusters") and
            after.get(r["layer"]) is not None else r for r in rows]
    result = kb.to_keras3(stripped, where) if api == 3 else stripped
    return Clustered(save=lambda p: save_model(result, p), layers=rows, training=training,
                     output_format="keras" if api == 3 else "h5",
                     extra={"route": "Keras 3 -> tf_keras (bridge) -> tfmot cluster_weights -> Keras 3" if api == 3
                            else "tf_keras -> tfmot cluster_weights"})
