"""The library surface the CLI uses. Each function takes the previous step's value.

    handle = load("model.keras")
    artifact = quantize(handle, QuantConfig(scheme="int8"), calib="digits:train", out="m.tflite")
    report = emulate(artifact.path, "stm32l4r5")
"""

from __future__ import annotations

from pathlib import Path

from workbench.frontends import ModelHandle, load
from workbench.frontends.loader import LoadOptions

__all__ = ["load", "inspect", "convert", "evaluate", "export_tflm", "emulate", "profile", "profile_remote", "prune", "qat",
           "ModelHandle", "LoadOptions"]


def inspect(model: str | Path | ModelHandle, options: LoadOptions | None = None) -> dict:
    from workbench.inspect_model import describe

    handle = model if isinstance(model, ModelHandle) else load(model, options)
    return describe(handle)


def _dataset(data, split: str, limit: int | None = None, seed: int | None = None):
    from workbench.data import Dataset, open_data

    if data is None or isinstance(data, Dataset):
        return data if (data is None or limit is None) else data.take(limit, seed)
    return open_data(str(data), split=split, limit=limit, seed=seed)


def convert(model, fmt: str, out: str | Path, *, scheme: str = "float", calib=None, calib_samples: int = 200,
            io_dtype: str | None = None, per_channel: bool = True, calibrator: str = "minmax",
            keep_float: tuple[str, ...] = (), seed: int = 0, overwrite: bool = False,
            load_options: LoadOptions | None = None, write_manifest: bool = True, **export_options):
    """Export (and quantize) a model: the step `workbench export` and `workbench quantize` run.

    ``calib`` is a data spec ("digits:train", "calib.npz", a folder...) or a Dataset.
    Returns the Artifact; its manifest is written beside it.
    """
    from workbench.config import QuantConfig
    from workbench.export import convert as _convert

    handle = model if isinstance(model, ModelHandle) else load(model, load_options)
    cfg = QuantConfig(scheme=scheme, io_dtype=io_dtype, per_channel=per_channel, calibrator=calibrator,
                      calib_samples=calib_samples, keep_float=tuple(keep_float), seed=seed)
    data = _dataset(calib, "train") if cfg.needs_calibration else None
    art = _convert(handle, fmt, out, cfg, calib=data, overwrite=overwrite, **export_options)
    if write_manifest:
        art.write_manifest()
    return art


def evaluate(reference, candidate, data, *, samples: int | None = 1000, seed: int = 0, split: str = "test",
             load_options: LoadOptions | None = None, reference_runtime: str | None = None,
             candidate_runtime: str | None = None):
    """Run both models in their real runtimes on the same samples and compare (accuracy, drop, SQNR...)."""
    from workbench.evaluate import compare_runners
    from workbench.runtimes import open_runner

    ds = _dataset(data, split, limit=samples, seed=seed if samples else None)
    ref = reference if isinstance(reference, ModelHandle) else load(reference, load_options)
    cand = candidate if isinstance(candidate, ModelHandle) else load(candidate)
    return compare_runners(open_runner(ref, reference_runtime), open_runner(cand, candidate_runtime), ds,
                           ref_name=str(ref.path), cand_name=str(cand.path))


def export_tflm(model, out: str | Path, *, scheme: str | None = None, load_options: LoadOptions | None = None,
                overwrite: bool = False, target: str | None = None, name: str | None = None, layout: str = "plain",
                lang: str = "cpp", labels=None, section: str | None = None, force: bool = False, **quant):
    """TFLite Micro sources from a .tflite, or from a framework model through PTQ first (int8 by default)."""
    import tempfile

    from workbench.export.tflm_sources import write_tflm_project
    from workbench.files import check_output

    handle = model if isinstance(model, ModelHandle) else load(model, load_options)
    check_output(out, overwrite)
    label_list = None
    if labels:
        from workbench.files import check_input_file

        label_list = [ln.strip() for ln in check_input_file(labels, "labels").read_text(encoding="utf-8").splitlines() if ln.strip()]
    with tempfile.TemporaryDirectory(prefix="workbench-tflm-") as tmp:
        src = handle.path
        if handle.format != "tflite":
            src = Path(tmp) / (Path(handle.path).stem + ".tflite")
            quant = {k: v for k, v in quant.items() if k not in ("eval_data", "eval_samples")}
            convert(handle, "tflite", src, scheme=scheme or "int8", write_manifest=False, **quant)
        return write_tflm_project(src, out, name=name, target=target, layout=layout, lang=lang,
                                  labels=label_list, section=section, force=force, overwrite=overwrite)


def emulate(model: str | Path, target: str, **kw):
    """Fit, memory, op support and latency of a .tflite on a target profile (see workbench.emulate)."""
    from workbench.emulate import emulate as _emulate

    return _emulate(model, target, **kw)


def profile(model: str | Path, **kw) -> dict:
    """Measured latency, memory and per-op times on this machine (see workbench.profiling)."""
    from workbench.profiling import profile as _profile

    return _profile(model, **kw)


def profile_remote(model: str | Path, remote: str, **kw) -> dict:
    """The same, on a board over ssh: the board needs Python, numpy and a TFLite runtime."""
    from workbench.profiling import profile_remote as _profile_remote

    return _profile_remote(model, remote, **kw)


def prune(model, out: str | Path, config=None, train=None, val=None, **kw):
    """Prune and fine-tune (magnitude or channel); see workbench.optimize.prune. Returns a PruneReport."""
    from workbench.optimize.config import PruneConfig
    from workbench.optimize.prune import prune as _prune

    return _prune(model, out, config or PruneConfig(), train, val, **kw)


def qat(model, out: str | Path, config=None, train=None, val=None, **kw):
    """Quantization-aware training ending in an int8 .tflite; see workbench.optimize.qat. Returns a QATReport."""
    from workbench.optimize.config import QATConfig
    from workbench.optimize.qat import qat as _qat

    return _qat(model, out, config or QATConfig(), train, val, **kw)
