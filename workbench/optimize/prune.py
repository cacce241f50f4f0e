"""Pruning: ``prune(model, out, PruneConfig, train=...)`` -> :class:`PruneReport`.

One handler is registered per (method, framework) in :data:`PRUNERS`; each fine-tunes with the
shared loop (:mod:`workbench.optimize.train`) and returns how to save its result. This module
checks the inputs, runs the handler, writes the output atomically in the input's own format
(PyTorch state_dict ``.pt``, or ``.pt2`` when channels were removed; Keras 3 ``.keras``;
tf_keras ``.h5``), writes a manifest beside it and measures before and after: parameters and
sparsity per layer, file and gzip sizes, and the int8 .tflite (size, LiteRT single-thread
latency, accuracy) exported from each.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from workbench.core.errors import ConfigError, UnsupportedError
from workbench.core.files import atomic_path, check_output
from workbench.frontends import ModelHandle, load
from workbench.frontends.loader import LoadOptions
from workbench.optimize.common import FineTuneReport, TrainingData, open_store, prepare_data
from workbench.optimize.config import PruneConfig
from workbench.optimize.train import CheckpointStore, ProgressFn, TrainResult
from workbench.core.registry import Registry


@dataclass(frozen=True)
class PruneJob:
    handle: ModelHandle
    config: PruneConfig
    data: TrainingData
    store: CheckpointStore | None
    resume: bool
    progress: ProgressFn | None


@dataclass
class Pruned:
    """What a handler returns: the fine-tuned model's writer and its per-layer statistics."""

    save: Callable[[Path], None]
    layers_before: list[dict]
    layers_after: list[dict]
    training: TrainResult
    output_format: str
    extra: dict = field(default_factory=dict)


PRUNERS: Registry[Callable[[PruneJob], Pruned]] = Registry("pruning path")

# Output suffixes per (input format, method): pruning writes the input's own format, except that
# a PyTorch model with channels removed no longer fits its factory and is saved as an ExportedProgram.
OUTPUTS = {
    ("state_dict", "magnitude"): (".pt", ".pth"), ("pickle", "magnitude"): (".pt", ".pth"),
    ("state_dict", "channel"): (".pt2",), ("pickle", "channel"): (".pt2",),
    ("keras", "magnitude"): (".keras",), ("keras", "channel"): (".keras",),
    ("h5", "magnitude"): (".h5", ".hdf5"), ("h5", "channel"): (".h5", ".hdf5"),
}


def _register_builtin() -> None:
    from workbench.optimize import prune_keras, prune_torch  # noqa: F401


def expected_suffixes(handle: ModelHandle, method: str) -> tuple[str, ...]:
    key = (handle.format, method)
    if key not in OUTPUTS:
        why = {"tflite": "a .tflite file cannot be fine-tuned", "onnx": "an ONNX file cannot be fine-tuned",
               "ort": "an .ort file cannot be fine-tuned", "savedmodel": "a SavedModel holds no Keras layers to prune",
               "torchscript": "TorchScript cannot be re-parametrised and fine-tuned here",
               "exported_program": "an ExportedProgram holds ATen operators, not the modules pruning works on"}
        raise UnsupportedError(f"Cannot prune '{handle.path}' ({handle.format}): {why.get(handle.format, 'unsupported format')}.",
                               hint="Prune the training model: a Keras .keras/.h5 file, or a PyTorch state_dict with --factory.")
    return OUTPUTS[key]


def check_out_suffix(handle: ModelHandle, method: str, out: Path) -> None:
    allowed = expected_suffixes(handle, method)
    if out.suffix.lower() not in allowed:
        why = ("removing channels changes the architecture, so the result is saved as an ExportedProgram"
               if allowed == (".pt2",) else f"the result keeps the input's format ({handle.format})")
        raise ConfigError(f"Output '{out}' should end in {' or '.join(allowed)}: {why}.",
                          hint=f"Use -o {out.with_suffix(allowed[0]).name}")


@dataclass(frozen=True)
class PruneReport(FineTuneReport):
    def to_dict(self) -> dict:
        return {**super().to_dict(), "ratios": ratios(self.before, self.after)}


def ratios(before: dict, after: dict) -> dict:
    def r(a, b):
        return round(a / b, 4) if a is not None and b else None

    bi, ai = before.get("int8", {}), after.get("int8", {})
    out = {"params": r(after.get("nonzero_params"), before.get("nonzero_params")),
           "file_bytes": r(after.get("file_bytes"), before.get("file_bytes")),
           "file_gzip_bytes": r(after.get("file_gzip_bytes"), before.get("file_gzip_bytes")),
           "int8_tflite_bytes": r(ai.get("tflite_bytes"), bi.get("tflite_bytes")),
           "int8_tflite_gzip_bytes": r(ai.get("tflite_gzip_bytes"), bi.get("tflite_gzip_bytes"))}
    lb, la = bi.get("latency", {}).get("median_us"), ai.get("latency", {}).get("median_us")
    out["latency_speedup"] = r(lb, la)
    lb, la = bi.get("latency_builtin_kernels", {}).get("median_us"), ai.get("latency_builtin_kernels", {}).get("median_us")
    out["latency_speedup_builtin_kernels"] = r(lb, la)
    return out


def _measure(handle: ModelHandle, layers: list[dict], data: TrainingData, cfg: PruneConfig, tflite: Path | None) -> dict:
    from workbench.optimize.measure import accuracy_of, deployed_metrics, file_sizes, totals

    sizes = file_sizes(handle.path)
    out = {"file_bytes": sizes["bytes"], "file_gzip_bytes": sizes["gzip_bytes"], **totals(layers),
           "accuracy": accuracy_of(handle, data.val)}
    if tflite is not None:
        out["int8"] = deployed_metrics(handle, data.train, data.val, cfg.calib_samples, tflite)
    return out


def _latencies(cfg: PruneConfig, before: dict, after: dict, paths: list[Path]) -> None:
    from workbench.optimize.measure import latency_us

    sides = [(d, p) for d, p in zip((before, after), paths) if "int8" in d and "error" not in d["int8"]]
    if sides:
        files = [p for _, p in sides]
        for (d, _), lat in zip(sides, latency_us(files, runs=cfg.latency_runs)):
            d["int8"]["latency"] = lat
        for (d, _), lat in zip(sides, latency_us(files, runs=cfg.latency_runs, kernels="builtin")):
            d["int8"]["latency_builtin_kernels"] = lat


def prune(model: str | Path | ModelHandle, out: str | Path, config: PruneConfig, train, val=None, *,
          load_options: LoadOptions | None = None, overwrite: bool = False, resume: bool = False,
          progress: ProgressFn | None = None, measure_int8: bool = True) -> PruneReport:
    """Prune and fine-tune ``model`` on ``train`` (a data spec or Dataset), write it to ``out``.

    ``val`` (spec or Dataset) is where accuracy is measured; without it 10% of ``train`` is
    held out. Checkpoints go to ``OUT.ckpt/`` after every epoch and are removed on success;
    ``resume=True`` continues an interrupted run from there.
    """
    out = Path(out)
    handle = model if isinstance(model, ModelHandle) else load(model, load_options)
    check_out_suffix(handle, config.method, out)
    check_output(out, overwrite)
    _register_builtin()
    handler = PRUNERS.get((config.method, handle.framework))
    data = prepare_data(handle, train, val, config.train)
    technique = {"prune": {**config.to_dict(), "train": {k: v for k, v in config.train.to_dict().items() if k != "epochs"}}}
    store = open_store(out, handle, technique, data, resume, overwrite)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="workbench-prune-") as tmpdir:
        tfl = [Path(tmpdir) / "before.tflite", Path(tmpdir) / "after.tflite"] if measure_int8 else [None, None]
        before = _measure(handle, _layer_stats(handle), data, config, tfl[0])
        job = PruneJob(handle=handle, config=config, data=data, store=store, resume=resume, progress=progress)
        result = handler(job)
        with atomic_path(out) as tmp:
            result.save(tmp)
        store.clear()
        after = _measure(_load_output(out, result.output_format, handle, load_options), result.layers_after, data,
                         config, tfl[1])
        if measure_int8:
            _latencies(config, before, after, tfl)
    from workbench.optimize.measure import layer_table

    extra = dict(result.extra)
    if config.method == "magnitude":
        extra.setdefault("notes", []).append(
            "Unstructured sparsity leaves every weight in the file (as a zero): the model and .tflite sizes and the "
            "latency do not change; only the compressed (gzip) size shrinks.")
    extra["seconds"] = round(time.perf_counter() - t0, 2)
    report = PruneReport(model=str(handle.path), output=str(out), config=config.to_dict(), data=data.describe(),
                         training=result.training.to_dict(), before=before, after=after,
                         layers=layer_table(result.layers_before, result.layers_after), extra=extra)
    _manifest(out, handle, result.output_format, report)
    return report


def _load_output(out: Path, fmt: str, source: ModelHandle, load_options: LoadOptions | None) -> ModelHandle:
    opts = load_options or LoadOptions()
    if fmt == "state_dict":  # loads into the same factory as the input
        return load(out, replace(opts, factory=opts.factory or source.meta.get("factory")))
    return load(out, LoadOptions(trust_model=opts.trust_model))


def _layer_stats(handle: ModelHandle) -> list[dict]:
    if handle.framework == "torch":
        from workbench.optimize.prune_torch import layer_stats

        return layer_stats(handle.obj)
    from workbench.optimize.prune_keras import layer_stats

    return layer_stats(handle.obj)


def _manifest(out: Path, handle: ModelHandle, fmt: str, report: PruneReport) -> None:
    from workbench.export.artifact import Artifact

    d = report.to_dict()
    Artifact(path=out, format=fmt, source=Path(handle.path), config={"prune": report.config},
             metrics={"before": d["before"], "after": d["after"], "ratios": d["ratios"]},
             extra={"training": report.training, "data": report.data}).write_manifest()
