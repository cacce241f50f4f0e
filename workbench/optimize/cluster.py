"""Weight clustering: ``cluster(model, out, ClusterConfig, train=...)`` -> :class:`ClusterReport`.

Each clusterable layer's kernel is reduced to ``k`` shared values (k-means), fine-tuned with the
shared loop (:mod:`workbench.optimize.train`), and written in the input's own format. A clustered
kernel quantized per channel to int8 holds at most ``k`` distinct values per channel, which TFLite
Micro's LUT compression stores as ``log2(k)``-bit indices (``export --format tflm --compress``).

One handler per framework in :data:`CLUSTERERS`: Keras through tfmot's ``cluster_weights`` (tf_keras,
via the Keras 3 bridge pruning uses), PyTorch with per-layer k-means and weight sharing kept during
fine-tuning (every weight is reset to its cluster's mean before each step, so the gradient moves the
centroids). The report gives per-layer clusters and distinct values, accuracy before and after (the
framework model, and the int8 .tflite in LiteRT), and the int8 model's bytes plain, stripped, and
LUT-compressed + stripped.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from workbench.core.errors import UnsupportedError, WorkbenchError
from workbench.core.files import atomic_path, check_output
from workbench.core.registry import Registry
from workbench.frontends import ModelHandle, load
from workbench.frontends.loader import LoadOptions
from workbench.optimize.common import FineTuneReport, TrainingData, open_store, prepare_data
from workbench.optimize.config import ClusterConfig
from workbench.optimize.train import CheckpointStore, ProgressFn, TrainResult


@dataclass(frozen=True)
class ClusterJob:
    handle: ModelHandle
    config: ClusterConfig
    data: TrainingData
    store: CheckpointStore | None
    resume: bool
    progress: ProgressFn | None


@dataclass
class Clustered:
    save: Callable[[Path], None]
    layers: list[dict]  # name, kind, weights, clusters, distinct_before, distinct_after (or reason left alone)
    training: TrainResult
    output_format: str
    extra: dict = field(default_factory=dict)


CLUSTERERS: Registry[Callable[[ClusterJob], Clustered]] = Registry("clustering path")
OUTPUTS = {"state_dict": (".pt", ".pth"), "pickle": (".pt", ".pth"), "keras": (".keras",), "h5": (".h5", ".hdf5")}


def _register_builtin() -> None:
    from workbench.optimize import cluster_keras, cluster_torch  # noqa: F401


def kmeans_1d(values: np.ndarray, k: int, iters: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Centroids and assignments of 1-D k-means with linear initialisation (deterministic)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    k = int(min(k, max(1, len(np.unique(v)))))
    c = np.linspace(v.min(), v.max(), k)
    for _ in range(iters):
        a = np.abs(v[:, None] - c[None, :]).argmin(1)
        sums = np.bincount(a, weights=v, minlength=k)
        counts = np.bincount(a, minlength=k)
        new = np.where(counts > 0, sums / np.maximum(counts, 1), c)
        if np.allclose(new, c):
            break
        c = new
    a = np.abs(v[:, None] - c[None, :]).argmin(1)
    return c, a


@dataclass(frozen=True)
class ClusterReport(FineTuneReport):
    pass


def _check_suffix(handle: ModelHandle, out: Path) -> None:
    from workbench.core.errors import ConfigError

    allowed = OUTPUTS.get(handle.format)
    if allowed is None:
        raise UnsupportedError(f"Cannot cluster '{handle.path}' ({handle.format}): only a training model can be fine-tuned.",
                               hint="Cluster the Keras .keras/.h5 file, or the PyTorch state_dict with --factory.")
    if out.suffix.lower() not in allowed:
        raise ConfigError(f"Output '{out}' should end in {' or '.join(allowed)}: the result keeps the input's format "
                          f"({handle.format}).", hint=f"Use -o {out.with_suffix(allowed[0]).name}")


def _deployed(handle: ModelHandle, data: TrainingData, cfg: ClusterConfig, path: Path | None) -> dict:
    """Accuracy of the framework model, and of its int8 .tflite (plain, stripped, compressed + stripped)."""
    from workbench.optimize.measure import accuracy_of, deployed_metrics

    out = {"accuracy": accuracy_of(handle, data.val)}
    if path is None:
        return out
    out["int8"] = m = deployed_metrics(handle, data.train, data.val, cfg.calib_samples, path)
    if "error" in m:
        return out
    from workbench.export.strip import strip_tflite

    raw = path.read_bytes()
    m["stripped_bytes"] = len(strip_tflite(raw, path.name)[0])
    try:
        from workbench.export.compress import compress_tflite

        comp, rep = compress_tflite(raw, path.name, max_bits=4)
        m["compressed_stripped_bytes"] = len(strip_tflite(comp, path.name)[0])
        m["compressed_tensors"] = len(rep.tensors)
    except WorkbenchError as exc:
        m["compressed_stripped_bytes"] = None
        m["compression_note"] = exc.message
    return out


def cluster(model: str | Path | ModelHandle, out: str | Path, config: ClusterConfig, train, val=None, *,
            load_options: LoadOptions | None = None, overwrite: bool = False, resume: bool = False,
            progress: ProgressFn | None = None, measure_int8: bool = True) -> ClusterReport:
    """Cluster and fine-tune ``model`` on ``train``, write it to ``out`` in the input's format."""
    out = Path(out)
    handle = model if isinstance(model, ModelHandle) else load(model, load_options)
    _check_suffix(handle, out)
    check_output(out, overwrite)
    _register_builtin()
    handler = CLUSTERERS.get(handle.framework)
    data = prepare_data(handle, train, val, config.train)
    store = open_store(out, handle, {"cluster": config.to_dict()}, data, resume, overwrite)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="workbench-cluster-") as tmpdir:
        paths = [Path(tmpdir) / "before.tflite", Path(tmpdir) / "after.tflite"] if measure_int8 else [None, None]
        before = _deployed(handle, data, config, paths[0])
        job = ClusterJob(handle=handle, config=config, data=data, store=store, resume=resume, progress=progress)
        result = handler(job)
        with atomic_path(out) as tmp:
            result.save(tmp)
        store.clear()
        opts = load_options or LoadOptions()
        if result.output_format == "state_dict":
            from dataclasses import replace

            opts = replace(opts, factory=opts.factory or handle.meta.get("factory"))
        after = _deployed(load(out, opts), data, config, paths[1])
    drop = None
    if before.get("accuracy") is not None and after.get("accuracy") is not None:
        drop = round(100 * (before["accuracy"] - after["accuracy"]), 3)
    bi, ai = before.get("int8", {}), after.get("int8", {})
    extra = {**result.extra, "seconds": round(time.perf_counter() - t0, 2), "accuracy_drop_pp": drop}
    if bi.get("accuracy") is not None and ai.get("accuracy") is not None:
        extra["int8_accuracy_drop_pp"] = round(100 * (bi["accuracy"] - ai["accuracy"]), 3)
    if bi.get("stripped_bytes") and ai.get("compressed_stripped_bytes"):
        extra["compressed_to_stripped_int8_ratio"] = round(ai["compressed_stripped_bytes"] / bi["stripped_bytes"], 4)
    report = ClusterReport(model=str(handle.path), output=str(out), config=config.to_dict(), data=data.describe(),
                           training=result.training.to_dict(), before=before, after=after, layers=result.layers, extra=extra)
    from workbench.export.artifact import Artifact

    Artifact(path=out, format=result.output_format, source=Path(handle.path), config={"cluster": report.config},
             metrics={"before": before, "after": after, **{k: v for k, v in extra.items() if k != "seconds"}},
             extra={"training": report.training, "data": report.data}).write_manifest()
    return report
