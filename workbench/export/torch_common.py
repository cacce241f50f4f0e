"""Shared by the PyTorch exporters: a traceable module and a sample input."""

from __future__ import annotations

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
