"""Shared by the PyTorch exporters: a traceable module and a sample input."""

from __future__ import annotations

import numpy as np

from workbench.core.errors import ConfigError, UnsupportedError
from workbench.frontends.handle import ModelHandle
from workbench.frontends.torch_models import eval_mode, import_torch  # noqa: F401  (re-exported)
from workbench.core.quiet import import_quietly


def import_litert_torch():
    """litert_torch prints loader noise from torchao and absl at import: keep it off the user's terminal."""
    return import_quietly("torch", "litert_torch", extra="torch", purpose="Converting PyTorch models to TFLite")


def refuse_torchscript(handle: ModelHandle) -> None:
    """Checked before any work starts (Exporter.precheck): TorchScript cannot go through torch.export."""
    if handle.format == "torchscript":
        raise UnsupportedError(
            f"'{handle.path}' is TorchScript: torch.export, which litert-torch and the ONNX exporter use, cannot trace a "
            "ScriptModule, so this file cannot be converted.",
            hint="From the original Python module, save an ExportedProgram: torch.export.save(torch.export.export(model, "
            "(example,)), 'model.pt2'); or export this file to ONNX (--format onnx, the TorchScript exporter); "
            "or save its state_dict and pass --factory.",
        )


def traceable(handle: ModelHandle):
    torch = import_torch()
    model = handle.obj
    refuse_torchscript(handle)
    if isinstance(model, torch.jit.ScriptModule):
        raise UnsupportedError(f"'{handle.path}' holds a TorchScript module, which torch.export cannot trace.",
                               hint="Save an ExportedProgram (.pt2) from the original module instead.")
    if not handle.inputs or handle.inputs[0].shape is None or None in handle.inputs[0].shape:
        raise ConfigError(f"The input shape of '{handle.path}' is unknown.", hint="Pass --input-shape, batch first (e.g. 1,1,28,28).")
    eval_mode(model)
    sample = torch.zeros(*handle.inputs[0].shape)
    return torch, model, sample


def one_by_one(torch, x: np.ndarray, convert=None):
    """Each sample of ``x`` as a batch-1 float32 tensor (``convert`` applied): exported graphs are specialised to
    the sample's batch of 1, so PT2E calibration and reference runs feed them one sample at a time."""
    for i in range(len(x)):
        t = torch.from_numpy(np.ascontiguousarray(x[i : i + 1], dtype=np.float32))
        yield convert(t) if convert is not None else t


def calibrate(torch, prepared, calib: np.ndarray, convert=None) -> None:
    """Run a PT2E-prepared module over the calibration samples, so its observers see them."""
    with torch.no_grad():
        for t in one_by_one(torch, calib, convert):
            prepared(t)


def outputs_per_sample(torch, run, x: np.ndarray, convert=None) -> list[np.ndarray]:
    """``run(tensor)`` on each sample of ``x``; each output's results concatenated along the batch."""
    results: list[list[np.ndarray]] = []
    with torch.no_grad():
        for t in one_by_one(torch, x, convert):
            ys = run(t)
            ys = list(ys) if isinstance(ys, (tuple, list)) else [ys]
            results = results or [[] for _ in ys]
            for k, y in enumerate(ys):
                results[k].append(y.detach().float().numpy())
    return [np.concatenate(r) for r in results]
