"""The library surface the CLI uses. Each function takes the previous step's value.

    handle = load("model.keras")
    artifact = quantize(handle, QuantConfig(scheme="int8"), calib="digits:train", out="m.tflite")
    report = emulate(artifact.path, "stm32l4r5")
"""

from __future__ import annotations

from pathlib import Path

from workbench.frontends import ModelHandle, load
from workbench.frontends.loader import LoadOptions

__all__ = ["load", "inspect", "convert", "check_convert", "evaluate", "export_tflm", "strip", "emulate", "profile", "profile_remote",
           "prune", "cluster", "qat", "ModelHandle", "LoadOptions"]


def inspect(model: str | Path | ModelHandle, options: LoadOptions | None = None) -> dict:
    from workbench.export.engine import exports_from
    from workbench.frontends.inspect import describe

    handle = model if isinstance(model, ModelHandle) else load(model, options)
    return {**describe(handle), "exports_to": exports_from(handle)}


def convert(model, fmt: str, out: str | Path, **kw):
    """Export (and quantize) a model: the step `workbench export` and `workbench quantize` run.

    Keywords as :func:`workbench.export.convert.convert_model` (scheme, calib, calib_samples,
    io_dtype, per_channel, calibrator, keep_float, seed, overwrite, load_options, write_manifest).
    ``calib`` is a data spec ("digits:train", "calib.npz", a folder...) or a Dataset.
    Returns the Artifact; its manifest is written beside it.
    """
    from workbench.export.convert import convert_model

    if isinstance(kw.get("target"), str):  # a board whose backend the exporter picks (executorch): its profile
        from workbench.emulate import load_target

        kw["target"] = load_target(kw["target"])
    return convert_model(model, fmt, out, **kw)


def check_convert(model, fmt: str, **kw):
    """Refuse, before any work, what :func:`convert` would refuse later (same keywords). Returns the handle."""
    from workbench.export.convert import check_convert as _check

    return _check(model, fmt, **kw)


def evaluate(reference, candidate, data, **kw):
    """Run both models in their real runtimes on the same samples and compare (accuracy, drop, SQNR...).
    Keywords as :func:`workbench.evaluate.compare.evaluate_models`."""
    from workbench.evaluate.compare import evaluate_models

    return evaluate_models(reference, candidate, data, **kw)


def export_tflm(model, out: str | Path, **kw):
    """TFLite Micro sources from a .tflite, or from a framework model through PTQ first (int8 by default).
    Keywords as :func:`workbench.export.convert.export_tflm`."""
    from workbench.core.errors import ConfigError
    from workbench.emulate.project import assess_on, npu_compiler, verifier
    from workbench.export.convert import export_tflm as _export_tflm

    verify, tflm_dir = kw.pop("verify", False), kw.pop("tflm_dir", None)
    if verify and kw.get("target") is None:
        raise ConfigError("--verify builds the project for a target: give --target NAME (workbench targets list).")
    if kw.pop("tune", False):
        kw["tune"] = tuner(kw.get("target"))
    if kw.get("target") is not None:
        from workbench.emulate import load_target

        kw.setdefault("assess", assess_on(kw["target"]))
        if load_target(kw["target"]).npu is not None:  # the sources hold the model compiled for the NPU
            if verify:
                raise ConfigError(f"--verify runs the firmware on QEMU, which emulates no Ethos-U NPU; target "
                                  f"'{kw['target']}' cannot be verified that way.", hint="Drop --verify for NPU boards.")
            kw.setdefault("npu", npu_compiler(kw["target"]))
    if verify:
        kw["verify"] = verifier(kw["target"], tflm_dir, kw.get("layout", "plain"), kw.get("lang", "cpp"))
    return _export_tflm(model, out, **kw)


def tuner(target):
    """The ``tune`` function the export stage takes: each convolution with two equivalent forms kept in the one
    that runs faster on ``target``'s firmware (see workbench.emulate.tune)."""
    from workbench.core.errors import ConfigError

    if target is None:
        raise ConfigError("--tune measures op forms on a target's firmware: give --target NAME (workbench targets list).")
    from workbench.emulate.tune import check_tunable

    check_tunable(target)

    def tune(path):
        from workbench.emulate.tune import tune_conv_forms

        return tune_conv_forms(path, target)

    return tune


def strip(model: str | Path, out: str | Path, *, level: str = "portable", overwrite: bool = False, verify: bool = True):
    """A .tflite without what TFLite Micro never reads, checked bit-identical (see workbench.export.strip).
    Returns an Artifact whose metrics hold the byte counts; its manifest is written beside it."""
    from workbench.export.strip import strip_file

    art = strip_file(model, out, level=level, overwrite=overwrite, verify=verify)
    art.write_manifest()
    return art


def emulate(model: str | Path, target: str, **kw):
    """Fit, memory, op support and latency of a .tflite on a target profile (see workbench.emulate)."""
    from workbench.emulate import emulate as _emulate

    return _emulate(model, target, **kw)


def profile(model: str | Path, **kw) -> dict:
    """Measured latency, memory and per-op times on this machine (see workbench.profile)."""
    from workbench.profile import profile as _profile

    return _profile(model, **kw)


def profile_remote(model: str | Path, remote: str, **kw) -> dict:
    """The same, on a board over ssh: the board needs Python, numpy and a TFLite runtime."""
    from workbench.profile import profile_remote as _profile_remote

    return _profile_remote(model, remote, **kw)


def prune(model, out: str | Path, config=None, train=None, val=None, **kw):
    """Prune and fine-tune (magnitude or channel); see workbench.optimize.prune. Returns a PruneReport."""
    from workbench.optimize.config import PruneConfig
    from workbench.optimize.prune import prune as _prune

    return _prune(model, out, config or PruneConfig(), train, val, **kw)


def cluster(model, out: str | Path, config=None, train=None, val=None, **kw):
    """Weight clustering with fine-tuning; see workbench.optimize.cluster. Returns a ClusterReport."""
    from workbench.optimize.cluster import cluster as _cluster
    from workbench.optimize.config import ClusterConfig

    return _cluster(model, out, config or ClusterConfig(), train, val, **kw)


def qat(model, out: str | Path, config=None, train=None, val=None, **kw):
    """Quantization-aware training ending in an int8 .tflite; see workbench.optimize.qat. Returns a QATReport."""
    from workbench.optimize.config import QATConfig
    from workbench.optimize.qat import qat as _qat

    return _qat(model, out, config or QATConfig(), train, val, **kw)
