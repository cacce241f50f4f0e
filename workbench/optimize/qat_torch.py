"""Quantization-aware training for PyTorch: PT2E QAT through litert-torch, to an int8 .tflite.

Steps: wrap image models for NHWC input (``litert_torch.to_channel_last_io``, as the PTQ
exporter does), ``torch.export`` with a dynamic batch dimension, ``prepare_qat_pt2e`` with
litert-torch's PT2EQuantizer (``is_qat=True``: fake quantization, batch norm folded into the
convolution's simulated weights), fine-tune with the shared loop (torchao's
``move_exported_model_to_train/eval`` switch the exported graph's modes), ``convert_pt2e``, then
``litert_torch.convert`` with the same quantizer. The result has int8 inputs and outputs.

Optionally the converted model is also exported with ``torch.onnx.export`` (dynamo): the
quantize/dequantize pairs become ONNX QuantizeLinear/DequantizeLinear, an int8 QDQ model that
ONNX Runtime fuses into integer kernels. Its input is NHWC, like the .tflite.

An ExportedProgram (``.pt2``) is trained from the module inside it (``ExportedProgram.module``)
with its input guards off: a program saved at batch 1 guards ``x.size()[0] == 1``, which is a
property of how it was saved, not of its graph. The graph is then re-exported with a dynamic
batch. A graph that bakes its batch size into an operator (``x.view(1, -1)``) cannot take another
batch: it is exported at its own batch size and each training batch runs sample group by sample
group, the gradients summed (:func:`workbench.optimize.train.TorchBackend` ``micro_batch``).

The adapter :func:`pattern_functions_as_modules` works around a torch 2.13 + torchao 0.18
incompatibility: torchao's ``_get_aten_graph_module_for_pattern`` hands plain pattern functions
to ``torch.export.export``, which now accepts only ``nn.Module`` ("Expected `mod` to be an
instance of `torch.nn.Module`, got function"). While QAT runs, the adapter wraps such functions
in a module whose ``forward`` calls them; nothing else changes. ``tests/test_qat.py`` checks
that the unpatched function still fails, and says so when the adapter can be removed.
"""

from __future__ import annotations

import contextlib
import copy
import sys
from pathlib import Path

import numpy as np

from workbench.core.errors import RuntimeFailure
from workbench.core.quiet import captured_output

PATTERN_HELPER = "_get_aten_graph_module_for_pattern"


@contextlib.contextmanager
def pattern_functions_as_modules():
    """Let torchao's pattern matcher export plain functions with torch 2.13 (see the module docstring)."""
    import torch
    import torchao.quantization.pt2e.utils as pt2e_utils

    original = getattr(pt2e_utils, PATTERN_HELPER)

    class PatternModule(torch.nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def forward(self, *args, **kwargs):
            return self.fn(*args, **kwargs)

    def adapted(pattern, example_inputs, is_cuda=False, **kwargs):
        if not isinstance(pattern, torch.nn.Module):
            pattern = PatternModule(pattern)
        return original(pattern, example_inputs, is_cuda, **kwargs)

    patched = [mod for name, mod in list(sys.modules.items())
               if name.startswith(("torchao", "litert_torch")) and getattr(mod, PATTERN_HELPER, None) is original]
    for mod in patched:
        setattr(mod, PATTERN_HELPER, adapted)
    try:
        yield
    finally:
        for mod in patched:
            setattr(mod, PATTERN_HELPER, original)


def _dynamic_batch_export(torch, model, sample):
    from torch.export import Dim, ShapesCollection

    batch = sample.expand(2, *sample.shape[1:]).contiguous()  # size 2: a size-1 dimension would be specialised
    shapes = ShapesCollection()
    shapes[batch] = {0: Dim("batch")}
    return torch.export.export(model, (batch,), dynamic_shapes=shapes.dynamic_shapes(model, (batch,))).module()


def unguarded_module(handle):
    """The trainable module of ``handle``: for an ExportedProgram, its graph without the input guards
    recorded at save time (``x.size()[0] == 1`` for a program saved at batch 1)."""
    ep = (handle.meta or {}).get("exported_program")
    if ep is None:
        return handle.obj
    module = ep.module(check_guards=False)
    module.validate_inputs = False  # the remaining pre-hook would check the saved shapes again
    return module


def trainable_graph(torch, model, sample, from_program: bool):
    """(graph module, micro batch): a dynamic batch when the graph allows it; for an ExportedProgram whose
    graph is fixed to its saved batch, that batch (the training loop then feeds it in groups of that size)."""
    try:
        return _dynamic_batch_export(torch, model, sample), None
    except Exception:
        if not from_program:
            raise
    return torch.export.export(model, (sample,)).module(), int(sample.shape[0])


def run(job, tflite_out: Path, onnx_out: Path | None) -> dict:
    """Train with QAT and write the int8 .tflite (and ONNX); returns extra report fields."""
    from litert_torch.quantize.quant_config import QuantConfig as LtQuantConfig
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    from workbench.export.torch_common import import_litert_torch, traceable
    from workbench.export.torch_tflite import channel_last, pt2e_quantizer
    from workbench.optimize.common import n_outputs
    from workbench.optimize.prune_torch import check_torch_model
    from workbench.optimize.train import Hooks, TorchBackend, fit

    litert_torch = import_litert_torch()
    check_torch_model(job.handle)
    torch, _, sample = traceable(job.handle)
    from_program = job.handle.format == "exported_program"
    model = unguarded_module(job.handle) if from_program else copy.deepcopy(job.handle.obj).eval()
    model, sample, nhwc = channel_last(litert_torch, model, sample, job.handle.inputs[0].layout)
    cfg = job.config
    quantizer = pt2e_quantizer(cfg.per_channel, is_qat=True)
    d = job.data
    to_model = (lambda a: np.ascontiguousarray(np.transpose(a, (0, 2, 3, 1)))) if nhwc else (lambda a: a)
    with pattern_functions_as_modules():
        try:
            with captured_output():
                graph, micro_batch = trainable_graph(torch, model, sample, from_program)
                prepared = prepare_qat_pt2e(graph, quantizer)
        except Exception as exc:
            raise RuntimeFailure(f"PT2E could not prepare '{job.handle.path}' for QAT: {_first_line(exc)}",
                                 hint="Preparing the graph for training failed, not loading it. If `workbench export "
                                 "--scheme int8` converts this model, the model is fine: run with --debug and report the "
                                 "traceback; otherwise fix what that command names first.") from exc
        backend = TorchBackend(prepared, cfg.train, n_outputs(job.handle) or 1, micro_batch=micro_batch,
                               to_train=move_exported_model_to_train, to_eval=move_exported_model_to_eval)
        training = fit(backend, to_model(d.x), d.y, cfg.train, hooks=Hooks(), store=job.store, resume=job.resume,
                       val=(to_model(d.x_val), d.y_val), progress=job.progress)
        move_exported_model_to_eval(prepared)
        for_onnx = copy.deepcopy(prepared) if onnx_out is not None else None
        try:
            with captured_output():
                converted = convert_pt2e(prepared, fold_quantize=False)
                edge = litert_torch.convert(converted, (sample,), quant_config=LtQuantConfig(pt2e_quantizer=quantizer))
                edge.export(str(tflite_out))
        except Exception as exc:
            raise RuntimeFailure(f"litert-torch could not convert the QAT model of '{job.handle.path}': {_first_line(exc)}") from None
    extra = {"training": training, "nhwc_inputs": nhwc,
             "route": ("ExportedProgram.module() -> " if from_program else "")
             + "torch.export -> prepare_qat_pt2e -> train -> convert_pt2e -> litert_torch.convert",
             "train_batch": "dynamic" if micro_batch is None else f"fixed at {micro_batch} (graph specialised to it)"}
    if for_onnx is not None:
        extra["onnx"] = _export_onnx(torch, for_onnx, sample, onnx_out)
    return extra


def _export_onnx(torch, prepared, sample, out: Path) -> dict:
    """The QAT model as a QDQ ONNX file: weights folded to int8 initializers (``fold_quantize=True``)
    feeding DequantizeLinear, activations through QuantizeLinear/DequantizeLinear pairs."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    import warnings

    try:
        with captured_output(), pattern_functions_as_modules(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "exporting in training mode": exported graphs keep .training set
            converted = convert_pt2e(prepared, fold_quantize=True)
            move_exported_model_to_eval(converted)
            torch.onnx.export(converted, (sample,), str(out), dynamo=True, optimize=True, external_data=False)
    except Exception as exc:
        if out.exists():
            out.unlink()
        return {"error": f"torch.onnx.export failed: {_first_line(exc)}"}
    return {"path": str(out)}


def _first_line(exc: Exception) -> str:
    s = str(exc).strip()
    return (s.splitlines()[0] if s else type(exc).__name__)[:400]
